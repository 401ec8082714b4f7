#!/usr/bin/env python3
"""kernels/dev/fa2_emu/fa2_emu.py: runs k_attn_fa2 and k_attn_wg (kernels/cuda/attention.cu)
on the host.

Cuts cu_attn_args, attn_tile_of, attn_load_q, the fa_* helpers, k_attn_fa2, k_attn_wg and
k_attn_combine out of attention.cu, and wg_desc / wg_swz out of wgmma.cuh, as they are,
compiles them with g++ against fa2_emu_shim.hpp (each CUDA thread a std::thread;
ldmatrix, mma.sync m16n8k16 and shuffles emulated as warp collectives with the PTX ISA's
fragment layouts, wgmma as a warpgroup collective reading shared memory through its
descriptors; cp.async as a plain copy) and runs fa2_emu_driver.cpp: random paged batches
against a float64 reference. It checks the index, fragment and layout logic written
without a GPU, not the emulated instructions' own semantics (those are this shim's
reading of the PTX ISA) nor timing or races.

    python3 kernels/dev/fa2_emu/fa2_emu.py        # a few minutes on 2 cores, prints ALL OK
"""
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
src = open(os.path.join(here, "..", "..", "cuda", "attention.cu")).read()
wgmma = open(os.path.join(here, "..", "..", "cuda", "wgmma.cuh")).read()


def cut(a, b, text=None):
    text = src if text is None else text
    i = text.index(a)
    return text[i:text.index(b, i)]


body = "\n".join([cut("__device__ __forceinline__ uint64_t wg_desc", "__device__ __forceinline__ void wg_fence", wgmma),
                  cut("typedef struct cu_attn_args {", "// Shared memory of k_attn:"),
                  cut("#define FA2_WARPS 4", "// ldmatrix x4:"),  # the asm helpers come from the shim
                  cut("// Two floats as a bf16 pair", "// The kernels: 16-row tiles")])
body = body.replace("extern __shared__ __align__(128) char smem[];", "char *smem = emu_smem();")
body = body.replace("extern __shared__ __align__(1024) char smem_raw[];", "char *smem_raw = emu_smem();")
body = body.replace("__global__ void k_attn_combine(", "static void k_attn_combine(")
with tempfile.TemporaryDirectory() as d:
    d = os.environ.get("EMU_DIR", d)
    cpp = os.path.join(d, "emu.cpp")
    with open(cpp, "w") as f:
        f.write('#include "%s"\n' % os.path.join(here, "fa2_emu_shim.hpp"))
        f.write(body + "\n" + open(os.path.join(here, "fa2_emu_driver.cpp")).read())
    exe = os.path.join(d, "emu")
    subprocess.check_call(["g++", "-std=c++20", "-O2", "-pthread", "-Wno-unknown-pragmas", "-o", exe, cpp])
    sys.exit(subprocess.call([exe]))
