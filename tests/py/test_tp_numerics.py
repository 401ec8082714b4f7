"""Tensor parallelism on the CPU backend with real processes: `sluice logits` and
`sluice generate --tp-size N` fork N ranks joined by the CPU communicator; the
sharded model must give the TP 1 logits (relative L2 <= 1e-5: only the
summation order of the all-reduces differs) and the same greedy tokens, for
every architecture, with checkpoint and dummy weights, vocab-parallel and
replicated vocabularies, whole prompts, chunked prefill and token-by-token
decode (--chunk 1), and KV heads replicated at TP 4 > 2 KV heads."""
import json
import subprocess

import numpy as np
import pytest

ARCHS = ["qwen3", "qwen3_moe", "qwen3_next"]
PROMPTS = [list(range(1, 22)), [5, 9, 200, 7], [42] * 9, [3, 250, 17, 1, 99, 64, 128, 255, 0, 11, 12]]
TOL = 1e-5


def run(*args, ok=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def models(sluice_bin, tmp_path_factory):
    """{(arch, vocab): dir}: vocab 256 divides 2 and 4 (vocab-parallel embedding
    and LM head), 265 (make-tiny's default) does not (replicated)."""
    root = tmp_path_factory.mktemp("tp")
    out = {}
    for arch in ARCHS:
        for vocab in (256, 265):
            d = root / f"{arch}-{vocab}"
            run(sluice_bin, "make-tiny", "--arch", arch, "--out", d, "--vocab-size", vocab)
            out[(arch, vocab)] = d
    ids = root / "ids.json"
    ids.write_text(json.dumps(PROMPTS))
    out["ids"] = ids
    return out


def logits(sluice_bin, models, tmp_path, arch, vocab, tp, *extra):
    out = tmp_path / f"{arch}-{vocab}-tp{tp}-{'_'.join(map(str, extra))}.bin"
    run(sluice_bin, "logits", "--model", models[(arch, vocab)], "--ids-file", models["ids"],
        "--out", out, "--tp-size", tp, *extra)
    x = np.fromfile(out, np.float32)
    assert x.size == sum(map(len, PROMPTS)) * vocab
    return x


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.mark.parametrize("arch", ARCHS)
def test_tp2_logits_equal_tp1(sluice_bin, models, tmp_path, arch):
    ref = logits(sluice_bin, models, tmp_path, arch, 256, 1)
    for extra in ((), ("--chunk", "5"), ("--chunk", "1")):  # whole, chunked prefill, decode steps
        x = logits(sluice_bin, models, tmp_path, arch, 256, 2, *extra)
        err = rel_l2(ref, x)
        print(f"{arch} tp2 {extra or 'whole'}: rel L2 {err:.2e}")
        assert err <= TOL, (arch, extra, err)


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])
def test_tp4_replicated_kv_heads(sluice_bin, models, tmp_path, arch):
    """4 ranks, 2 KV heads: rank r uses KV head r / 2."""
    ref = logits(sluice_bin, models, tmp_path, arch, 256, 1)
    for extra in ((), ("--chunk", "3")):
        err = rel_l2(ref, logits(sluice_bin, models, tmp_path, arch, 256, 4, *extra))
        print(f"{arch} tp4 {extra or 'whole'}: rel L2 {err:.2e}")
        assert err <= TOL, (arch, extra, err)


@pytest.mark.parametrize("arch", ARCHS)
def test_dummy_weights_replicated_vocab(sluice_bin, models, tmp_path, arch):
    """Dummy weights: every rank fills its slice of the same global tensors;
    vocab 265 does not divide 2, so embedding and LM head are replicated."""
    d = ("--load-format", "dummy", "--seed", "5")
    ref = logits(sluice_bin, models, tmp_path, arch, 265, 1, *d)
    err = rel_l2(ref, logits(sluice_bin, models, tmp_path, arch, 265, 2, *d))
    print(f"{arch} tp2 dummy vocab 265: rel L2 {err:.2e}")
    assert err <= TOL
    if arch != "qwen3_next":
        err = rel_l2(ref, logits(sluice_bin, models, tmp_path, arch, 265, 4, *d))
        print(f"{arch} tp4 dummy vocab 265: rel L2 {err:.2e}")
        assert err <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_dummy_fill_is_the_checkpoint_fill(sluice_bin, models, tmp_path, arch):
    """Dummy values are a function of (seed, checkpoint tensor, element): a
    make-tiny checkpoint (bf16) of seed 1 loaded for real is --load-format
    dummy --seed 1 up to bf16 rounding, through every repacking."""
    real = logits(sluice_bin, models, tmp_path, arch, 256, 2)
    dummy = logits(sluice_bin, models, tmp_path, arch, 256, 2, "--load-format", "dummy", "--seed", "1")
    other = logits(sluice_bin, models, tmp_path, arch, 256, 1, "--load-format", "dummy", "--seed", "2")
    assert rel_l2(real, dummy) < 0.05
    assert rel_l2(real, other) > 0.3


@pytest.mark.parametrize("arch,tp", [("qwen3", 2), ("qwen3", 4), ("qwen3_moe", 2), ("qwen3_moe", 4),
                                     ("qwen3_next", 2)])
def test_greedy_continuations_identical(sluice_bin, models, arch, tp):
    for dummy in ((), ("--load-format", "dummy")):
        args = ["generate", "--model", models[(arch, 256)], "--ids", "1,2,3,4,5", "--max-new-tokens", "12",
                "--ignore-eos", *dummy]
        a = run(sluice_bin, *args).stdout.split()
        b = run(sluice_bin, *args, "--tp-size", tp).stdout.split()
        assert len(a) == 12 and a == b, (arch, tp, dummy, a, b)


@pytest.mark.parametrize("arch,tp,dim", [("qwen3", 3, "num_attention_heads 4"),
                                         ("qwen3_moe", 8, "num_attention_heads 4"),
                                         ("qwen3_next", 4, "linear_num_key_heads 2")])
def test_tp_size_that_does_not_divide(sluice_bin, models, tmp_path, arch, tp, dim):
    for cmd in (["logits", "--ids-file", models["ids"], "--out", tmp_path / "x.bin"],
                ["generate", "--ids", "1,2"]):
        r = run(sluice_bin, cmd[0], "--model", models[(arch, 256)], *cmd[1:], "--tp-size", tp, ok=False)
        assert r.returncode == 2, r.stderr
        assert f"--tp-size {tp} does not divide {dim}" in r.stderr, r.stderr
