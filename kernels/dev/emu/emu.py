#!/usr/bin/env python3
"""kernels/dev/emu/emu.py: runs CUDA kernels of kernels/cuda on the host, to check kernels
written without a GPU.

Each target cuts the kernels and what they call out of the CUDA sources as they are,
compiles them with g++ against emu_shim.hpp and runs its driver on random inputs against a
float64 reference. In the shim:
- each CUDA thread is a fiber of one host thread, switched where it waits for others (a
  barrier, a warp collective, an mbarrier, registers); a wait no fiber can ever end aborts;
- ldmatrix, mma.sync and shuffles are warp collectives with the PTX ISA's fragment layouts,
  and wmma tf32 is a warp collective too;
- wgmma is a warpgroup collective reading shared memory through its descriptors;
- wgmma and cp.async are asynchronous: they take effect when a wait retires their commit
  group, and in a first run cp.async lands at issue instead;
- mbarriers (with TMA box copies counting their bytes), named barriers and setmaxnreg's
  per-block register pool are modelled; a TMA box on an mbarrier whose init its thread has
  not yet made visible to the async proxy (wg_fence_smem) aborts.

The targets:

- attn: k_attn (decode), k_attn_fa2, k_attn_wg, k_attn_wg2 and k_attn_ws (attention.cu) on paged batches (attn_driver.cpp);
- fp8:  the grouped FP8 MoE GEMMs k_fp8_moe_gemm_tc, k_fp8_moe_wg and k_fp8_moe_ws (fp8.cu) over routing
        plans (fp8_driver.cpp);
- moe1: one token's FP8 MoE in one kernel, k_fp8_moe_one (fp8.cu), all of its blocks at once
        (they wait on each other's counters), against the CPU op's arithmetic (moe1_driver.cpp);
- gdn:  the fused decode form of k_gdn (conv1d + recurrence + rmsnorm_gated, gdn.cu) against
        k_conv1d, k_gdn and k_norm_warp in turn, bit for bit; the chunked prefill, single
        kernel and split (k_gdn_prep + k_gdn_scan, bf16 records) against the recurrence,
        within the GPU op test's tolerances (gdn_driver.cpp).

It checks the index, fragment and layout logic, not the emulated instructions' own
semantics (those are this shim's reading of the PTX ISA) nor timing, ordering or races.

    python3 kernels/dev/emu/emu.py [attn] [fp8] [moe1] [gdn]     # all by default; prints ALL OK per target
"""
import os
import re
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
cuda = os.path.join(here, "..", "..", "cuda")


def read(name):
    return open(os.path.join(cuda, name)).read()


def cut(text, a, b):
    i = text.index(a)
    return text[i:text.index(b, i)]


# A warp-specialized kernel's producer loop (wgmma.cuh; its barriers are the shim's)
PRODUCE = ("// A producer warpgroup's loop", "// d (64 × N) += A · Bᵀ, A (64 × 16)")

# The register split of a warp-specialized block (wgmma.cuh; setmaxnreg itself is the shim's)
REGS = ("// setmaxnreg moves registers only within a block", "template <int R> __device__ __forceinline__ void wg_regs_dec")

# The FP8 quantization rule and the codes an op writes (fp8.cuh)
CODES = ("// The per-group quantization rule", "// The codes destination of an op")


def assemble(parts, swaps=()):
    """The kernel code of a target: its pieces after FP8_G, cp.async and the named
    shared-memory declarations (swaps: (declaration, its emulation)) turned into the
    shim's; no instruction the shim does not emulate may be left."""
    body = shim_cp_async("\n".join(["#define FP8_G 128"] + parts))
    for old, new in swaps:
        body = body.replace(old, new)
    assert "asm" not in body and "__shared__" not in body, "an instruction the shim does not emulate"
    return body


def shim_cp_async(body):
    """cp.async, wherever fp8.cu defines and issues it: the shim's"""
    body = re.sub(r"__device__ __forceinline__ void cp_async(16|4)\(.*?\n}\n", "", body, flags=re.S)
    body = re.sub(r'asm volatile\("cp\.async\.commit_group;\\n" ::\);', "emu_cp_commit();", body)
    body = re.sub(r'asm volatile\("cp\.async\.wait_group %0;\\n" ::"n"\(([^;]*?)\)(?: : "memory")?\);', r"emu_cp_wait(\1);", body)
    return re.sub(r'asm volatile\("cp\.async\.wait_group 0;\\n" ::: "memory"\);', "emu_cp_wait(0);", body)


TYPED = ("// Typed loads: cu_typed", "// The column loop of a row-wise kernel")


def attn_body():
    src, wg, f8, com = read("attention.cu"), read("wgmma.cuh"), read("fp8.cuh"), read("cuda_common.cuh")
    return assemble([cut(com, *TYPED),
                     cut(f8, *CODES),
                     cut(wg, "__device__ __forceinline__ uint64_t wg_desc", "__device__ __forceinline__ void wg_fence"),
                     cut(wg, *PRODUCE),
                     cut(wg, *REGS),
                     cut(src, "typedef struct cu_attn_args {", "// Prefill: 4 warps own 16 query rows"),
                     cut(src, "#define FA2_WARPS 4", "// The kernels: 16-row tiles")],  # mma.cuh's helpers: the shim's
                    [("extern __shared__ __align__(128) char smem[];", "char *smem = emu_smem();"),
                     ("extern __shared__ __align__(1024) char smem_raw[];", "char *smem_raw = emu_smem();"),
                     ("__shared__ float mx[4];", "float *mx = emu_static_floats();"),
                     ("__shared__ float wm[ATTN_WARPS][16], wl[ATTN_WARPS][16];",
                      "float (*wm)[16] = (float (*)[16])emu_static_floats(), (*wl)[16] = wm + ATTN_WARPS;"),
                     ("extern __shared__ float cs[];", "float *cs = (float *)emu_smem();"),
                     ("__global__ void k_attn_combine(", "static void k_attn_combine("),
                     ('asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));', "y = emu_ex2_ftz(x);")])


def fp8_body():
    src, wg, moe, com = read("fp8.cu"), read("wgmma.cuh"), read("moe.cuh"), read("cuda_common.cuh")
    return assemble([cut(com, *TYPED),
                     cut(wg, "__device__ __forceinline__ uint64_t wg_desc", "__device__ __forceinline__ void wg_fence"),
                     cut(wg, *PRODUCE),
                     cut(wg, *REGS),
                     cut(moe, "typedef struct cu_moe_plan {", "// Plans the pairs"),
                     cut(src, "typedef struct fp8_args {", "#define GV8_WARPS"),
                     cut(src, "#define TC_BM 128", "// ---- CUDA-core GEMM")],
                    [("extern __shared__ __align__(128) uint8_t tc_smem[];", "uint8_t *tc_smem = (uint8_t *)emu_smem();"),
                     ("extern __shared__ __align__(1024) uint8_t wg8_smem[];", "uint8_t *wg8_smem = (uint8_t *)emu_smem();"),
                     # a block's static __shared__ array: one per block, not per thread
                     ("__shared__ int xr[BM];", "int *xr = emu_static_ints();"),
                     ("__shared__ int xr[BT];", "int *xr = emu_static_ints();")])


def moe1_body():
    src, hdr, com = read("fp8.cu"), read("fp8.cuh"), read("cuda_common.cuh")
    # the staged GEMVs and k_fp8_moe_one; the acquire load is the shim's
    staged = re.sub(r"__device__ __forceinline__ unsigned moe1_ld_acquire\(.*?\n}\n", "",
                    cut(src, "// ---- decode GEMV through shared memory", "// ---- tensor-core GEMM"), flags=re.S)
    return assemble([cut(com, *TYPED),
                     cut(hdr, "__host__ __device__ __forceinline__ int fp8_groups", "// 16 weight codes of row wr"),
                     cut(hdr, *CODES),
                     cut(src, "// One warp quantizes the 128-group g", "#define FP8_QUANT_WARPS"),
                     cut(src, "typedef struct fp8_args {", "template <int NT>\n__global__ void __launch_bounds__(32 * GV8_WARPS, NT <= 4"),
                     staged],
                    [("extern __shared__ __align__(16) uint8_t cp_sm[];", "uint8_t *cp_sm = (uint8_t *)emu_smem();"),
                     ("extern __shared__ __align__(16) uint8_t m1_sm[];", "uint8_t *m1_sm = (uint8_t *)emu_smem();"),
                     ("__shared__ float red[GV8_WARPS][16][NT * 8 + 1];",
                      "float (*red)[16][NT * 8 + 1] = (float (*)[16][NT * 8 + 1])emu_static_floats();"),
                     ("__shared__ float red[GV8_WARPS][16][9];", "float (*red)[16][9] = (float (*)[16][9])emu_static_floats();"),
                     ("__shared__ int last;", "int &last = emu_static_ints()[0];")])


def gdn_body():
    src, com, f8, nh, nc = read("gdn.cu"), read("cuda_common.cuh"), read("fp8.cuh"), read("norm.cuh"), read("norm.cu")
    return assemble([cut(com, "// A load in flight (cu_ldv_start", "__device__ __forceinline__ float cu_warp_max"),
                     cut(com, "// Sum over the block", "// Whether cu_ld8 / cu_st8 may be used"),
                     cut(f8, *CODES),
                     cut(nh, "typedef struct cu_norm_args {", "void cu_rmsnorm("),
                     cut(nc, "template <bool VEC, bool Q>\n__global__ void k_norm_warp", "template <bool VEC, bool Q>\n__global__ void k_norm_block"),
                     cut(src, "#define CONV_MAXK 8", "// Register array element i"),
                     cut(src, "typedef struct cu_gdn_args {", "// ---- the split form's launches")],
                    [("__shared__ float qs[DK], ks[DK], red[32];", "float *qs = emu_static_floats(), *ks = qs + DK, *red = ks + DK;"),
                     ("extern __shared__ __align__(128) float sm[];", "float *sm = (float *)emu_smem();"),
                     ("extern __shared__ __align__(128) char smc[];", "char *smc = emu_smem();")])


def run(name, body, driver):
    with tempfile.TemporaryDirectory() as d:
        d = os.environ.get("EMU_DIR", d)
        cpp = os.path.join(d, name + ".cpp")
        with open(cpp, "w") as f:
            f.write('#include "%s"\n' % os.path.join(here, "emu_shim.hpp"))
            f.write(body + "\n" + open(os.path.join(here, driver)).read())
        exe = os.path.join(d, name)
        subprocess.check_call(["g++", "-std=c++20", "-O2", "-Wno-unknown-pragmas", "-o", exe, cpp])
        # first with every cp.async landing at issue (a buffer refilled while still read),
        # printed only if it fails; then landing at its wait (a buffer read before it landed)
        eager = subprocess.run([exe], env=dict(os.environ, EMU_CP_EAGER="1"), capture_output=True, text=True)
        if eager.returncode:
            print("%s, cp.async landing at issue:\n%s%s" % (name, eager.stdout, eager.stderr), flush=True)
            return eager.returncode
        return subprocess.call([exe])


targets = {"attn": (attn_body, "attn_driver.cpp"), "fp8": (fp8_body, "fp8_driver.cpp"),
           "moe1": (moe1_body, "moe1_driver.cpp"), "gdn": (gdn_body, "gdn_driver.cpp")}
rc = 0
for t in sys.argv[1:] or list(targets):
    body, driver = targets[t]
    rc |= run(t, body(), driver)
sys.exit(rc)
