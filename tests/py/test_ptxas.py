"""What ptxas says of the CUDA kernels, without a GPU: kernels/dev/ptxas_check.sh compiles every
kernels/cuda/*.cu to PTX for sm_90a and runs ptxas -v over it. A wgmma pipeline ptxas serialises
(C7514, "Potential Performance Loss") or waits on (C7517, an injected warpgroup.wait) runs, and
passes every correctness test, at a fraction of its speed: the overlapped FP8 MoE GEMM did so
unnoticed from v36 to v69 (kernels/dev/NOTES.md). Skipped where there is no CUDA toolkit."""
import os
import shutil
import subprocess

import pytest

SRC = os.environ.get("SLUICE_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
NVCC = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"  # where CMakeLists.txt looks too


@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(NVCC), "ptxas")), reason="no CUDA toolkit")
def test_no_wgmma_pipeline_is_serialised():
    r = subprocess.run(["bash", os.path.join(SRC, "kernels", "dev", "ptxas_check.sh")], capture_output=True,
                       text=True, timeout=1500)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    serialised = [l for l in r.stdout.splitlines() if ": C75" in l]
    assert serialised == [] and r.returncode == 0, "\n".join(serialised)
