"""The prefill attention kernels' index, fragment and shared-memory layout logic, run on the
host: kernels/dev/fa2_emu cuts k_attn_fa2 and k_attn_wg out of kernels/cuda/attention.cu as
they are and runs them with mma.sync, ldmatrix and wgmma emulated (each CUDA thread a host
thread) on random paged batches against a float64 reference. CI has no GPU; this keeps the
code those kernels share with the emulator honest between GPU runs."""
import os
import subprocess
import sys

SRC = os.environ.get("SLUICE_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))


def test_prefill_attention_kernels_on_the_host_emulator():
    r = subprocess.run([sys.executable, os.path.join(SRC, "kernels", "dev", "fa2_emu", "fa2_emu.py")],
                       capture_output=True, text=True, timeout=600)
    lines = r.stdout.splitlines()
    cases = [l for l in lines if l.startswith(("fa2 ", "wg "))]
    assert r.returncode == 0, r.stdout + r.stderr
    # both kernels over every case, each within tolerance of the float64 reference
    assert len([l for l in cases if l.startswith("wg ")]) == len([l for l in cases if l.startswith("fa2 ")]) >= 8
    assert all(l.endswith("-> ok") for l in cases), "\n".join(cases)
    assert lines[-1] == "ALL OK"
