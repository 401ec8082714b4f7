"""Kernels written without a GPU, run on the host: kernels/dev/emu cuts the attention kernels
(the decode k_attn, k_attn_fa2, k_attn_wg in both forms, k_attn_wg2, the warp-specialized k_attn_ws), the grouped FP8 MoE
GEMMs (k_fp8_moe_gemm_tc, k_fp8_moe_wg in both forms, the warp-specialized k_fp8_moe_ws, a block an item and persistent, at its 128-row tiles), the one-token FP8 MoE kernel (k_fp8_moe_one, all its blocks at once), the fused decode GDN kernel (against
the three it replaces, bit for bit) and the chunked GDN prefill (single kernel against the split prep + scan, bit
for bit, both against the recurrence) out of kernels/cuda as they are and runs them with mma.sync, ldmatrix,
wmma and wgmma, mbarriers and named barriers emulated (each CUDA thread a fiber; cp.async landing at its
wait, and in a first run at issue) on random inputs against a float64 reference. CI has no GPU; this keeps their index, fragment and shared-memory layout logic
honest between GPU runs."""
import os
import subprocess
import sys

import pytest

SRC = os.environ.get("SLUICE_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))


# per target, groups of kernels that run the same cases: (kernels, at least this many cases)
@pytest.mark.parametrize("target,groups", [("attn", [(("fa2", "wg", "wgo", "wg2", "ws"), 9), (("dec",), 5)]),
                                           ("fp8", [(("tc", "wg", "wgc"), 7), (("ws", "wsp"), 4)]),
                                           ("moe1", [(("one",), 4)]), ("gdn", [(("gdn",), 6)])])
def test_kernels_on_the_host_emulator(target, groups):
    r = subprocess.run([sys.executable, os.path.join(SRC, "kernels", "dev", "emu", "emu.py"), target],
                       capture_output=True, text=True, timeout=600)
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    # every case on every kernel of a group, each within tolerance of the float64 reference
    for kernels, min_cases in groups:
        counts = [len([l for l in lines if l.split(" ", 1)[0] == k]) for k in kernels]
        assert min(counts) == max(counts) >= min_cases, lines
    assert all(l.endswith("-> ok") for l in lines[:-1]), "\n".join(lines)
    assert lines[-1] == "ALL OK"
