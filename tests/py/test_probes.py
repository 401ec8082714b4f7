"""The measuring variants of kernels/dev still fit the kernels they measure: each *_probe.py
rewrites a copy of its CUDA source with clock64 probes beside whole lines of it and asserts on a
line that moved, so a kernel edit that moves one breaks the probe the next GPU session needs
(gdn_probe.py went unnoticed from v59 to the twentieth session). And each unmeasured kernel
patch in kernels/dev/wip still applies to the tree. Python and git only: no GPU, no nvcc."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

SRC = os.environ.get("SLUICE_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
PROBES = [("attn_probe.py", "attention.cu"), ("gdn_probe.py", "gdn.cu"), ("moe_probe.py", "fp8.cu")]


@pytest.mark.parametrize("probe,source", PROBES)
def test_probe_fits_its_source(tmp_path, probe, source):
    orig = pathlib.Path(SRC, "kernels", "cuda", source)
    copy = tmp_path / source
    shutil.copy(orig, copy)
    r = subprocess.run([sys.executable, os.path.join(SRC, "kernels", "dev", probe), str(copy)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = copy.read_text()
    assert text != orig.read_text() and "PROBE" in text and "clock64()" in text


WIP = sorted(pathlib.Path(SRC, "kernels", "dev", "wip").glob("*.patch"))


@pytest.mark.parametrize("patch", WIP, ids=[p.name for p in WIP])
def test_wip_patch_applies(patch):
    """A kernel change written without a GPU waits in kernels/dev/wip as a patch on the tree: it
    must still apply, or the next GPU session measures nothing (kernels/dev/wip_variants.sh
    builds one variant a patch, each on the ones before it)."""
    if not pathlib.Path(SRC, ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "apply", "--check", str(patch)], cwd=SRC, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
