"""The measuring variants of kernels/dev still fit the kernels they measure: each *_probe.py
rewrites a copy of its CUDA source with clock64 probes beside whole lines of it and asserts on a
line that moved, so a kernel edit that moves one breaks the probe the next GPU session needs
(gdn_probe.py went unnoticed from v59 to the twentieth session). And the unmeasured kernel
patches in kernels/dev/wip still apply to the tree, in their order. Python and git only: no GPU, no nvcc."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

SRC = os.environ.get("SLUICE_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
PROBES = [("attn_probe.py", "attention.cu", None), ("gdn_probe.py", "gdn.cu", None), ("moe_probe.py", "fp8.cu", None),
          ("moe_probe.py", "fp8.cu", "wg")]


@pytest.mark.parametrize("probe,source,mode", PROBES)
def test_probe_fits_its_source(tmp_path, probe, source, mode):
    orig = pathlib.Path(SRC, "kernels", "cuda", source)
    copy = tmp_path / source
    shutil.copy(orig, copy)
    r = subprocess.run([sys.executable, os.path.join(SRC, "kernels", "dev", probe), str(copy)] + ([mode] if mode else []),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = copy.read_text()
    assert text != orig.read_text() and "PROBE" in text and "clock64()" in text


WIP = sorted(pathlib.Path(SRC, "kernels", "dev", "wip").glob("*.patch"),
             key=lambda p: (int("".join(filter(str.isdigit, p.stem)) or 0), p.name))


def test_wip_patches_apply_in_order(tmp_path):
    """A kernel change written without a GPU waits in kernels/dev/wip as a patch: each must apply
    on the committed tree with the ones numbered before it, as kernels/dev/wip_variants.sh builds
    them (one variant a patch, each on the ones before it), or the next GPU session measures
    nothing. Applied to a scratch index, so the work tree is never touched."""
    if not pathlib.Path(SRC, ".git").exists():
        pytest.skip("not a git checkout")
    env = dict(os.environ, GIT_INDEX_FILE=str(tmp_path / "index"))
    git = lambda *a: subprocess.run(["git", *a], cwd=SRC, env=env, capture_output=True, text=True, timeout=60)
    assert git("read-tree", "HEAD").returncode == 0
    for patch in WIP:
        r = git("apply", "--cached", str(patch))
        assert r.returncode == 0, f"{patch.name}: {r.stderr}"
