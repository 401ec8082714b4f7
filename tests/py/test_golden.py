"""sluice's CPU backend against golden logits and greedy continuations recorded
from Hugging Face transformers (tests/golden/make_golden.py)."""
import json
import subprocess

import numpy as np
import pytest

ARCHS = ["qwen3", "qwen3_moe", "qwen3_next"]


def golden(repo, arch):
    d = repo / "tests" / "golden" / "data" / arch
    g = json.loads((d / "golden.json").read_text())
    ref = np.fromfile(d / "logits.f32", dtype="<f4").reshape(-1, g["vocab_size"])
    return d, g, ref


def run_logits(sluice_bin, model, prompts, tmp_path, *extra):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(prompts))
    out = tmp_path / "out.f32"
    subprocess.run([sluice_bin, "logits", "--model", str(model), "--ids-file", str(ids),
                    "--out", str(out), *extra], check=True)
    return np.fromfile(out, dtype="<f4")


def per_prompt_err(out, ref, prompts):
    errs, o = [], 0
    for p in prompts:
        a, b = out[o:o + len(p)], ref[o:o + len(p)]
        errs.append(float(np.linalg.norm(a - b) / np.linalg.norm(b)))
        o += len(p)
    return errs


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("chunk", [0, 7, 1])
def test_logits_match_transformers(sluice_bin, repo, tmp_path, arch, chunk):
    # chunk 0: one full forward per prompt; 7: chunked prefill continuing from
    # the KV cache and recurrent state; 1: pure token-by-token decode.
    d, g, ref = golden(repo, arch)
    out = run_logits(sluice_bin, d / "model", g["prompts"], tmp_path, "--chunk", str(chunk))
    out = out.reshape(ref.shape)
    errs = per_prompt_err(out, ref, g["prompts"])
    assert max(errs) <= 1e-3, errs
    # and the argmax agrees everywhere it is not a near-tie
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    assert (out.argmax(1) == ref.argmax(1))[clear].all()


@pytest.mark.parametrize("arch", ARCHS)
def test_incremental_equals_full(sluice_bin, repo, tmp_path, arch):
    d, g, _ = golden(repo, arch)
    full = run_logits(sluice_bin, d / "model", g["prompts"], tmp_path)
    inc = run_logits(sluice_bin, d / "model", g["prompts"], tmp_path, "--chunk", "1")
    assert float(np.linalg.norm(full - inc) / np.linalg.norm(full)) < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_transformers(sluice_bin, repo, arch):
    d, g, _ = golden(repo, arch)
    for case in g["greedy"]:
        r = subprocess.run([sluice_bin, "generate", "--model", str(d / "model"), "--ids",
                            ",".join(map(str, case["prompt"])), "--max-new-tokens",
                            str(len(case["output"]))], check=True, capture_output=True, text=True)
        assert list(map(int, r.stdout.split())) == case["output"]
