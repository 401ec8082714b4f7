"""FP8 block-wise checkpoints (CPU): make-tiny --quantization fp8 for every arch,
greedy generation, --quantization fp8 at load == the saved FP8 model (bit-identical
logits) == sluice quantize's checkpoint of the bf16 twin, FP8 vs its bf16 origin (close, not equal), and an FP8 checkpoint with
strongly varied block scales against its own dequantization (catches scales landing
on the wrong rows in the fused layouts)."""
import json
import re
import shutil
import struct

import numpy as np
import pytest

from router_harness import SRC
from test_model_cli import logits, run, st_read, st_write

ARCHS = ["qwen3", "qwen3_moe", "qwen3_next"]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [200, 3, 4]]
# rel L2 of fp8 vs bf16 logits measured on these tiny random models (hidden 192,
# seed 1): qwen3 0.083, qwen3_moe 0.108, qwen3_next 0.202. Random tiny models
# amplify the per-matmul error (~3%) across layers; bounds leave ~1.5x margin.
BOUND = {"qwen3": 0.13, "qwen3_moe": 0.16, "qwen3_next": 0.30}


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def models(sluice_bin, tmp_path_factory):
    out = {}
    for arch in ARCHS:
        d = tmp_path_factory.mktemp(arch)
        run(sluice_bin, "make-tiny", "--arch", arch, "--out", str(d / "bf16"), "--hidden-size", "192")
        run(sluice_bin, "make-tiny", "--arch", arch, "--out", str(d / "fp8"), "--hidden-size", "192",
            "--quantization", "fp8")
        out[arch] = d
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_fp8_checkpoint_layout(models, arch):
    d = models[arch] / "fp8"
    q = json.loads((d / "config.json").read_text())["quantization_config"]
    kept = q.pop("modules_to_not_convert")
    assert q == {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                 "weight_block_size": [128, 128]}
    ts = st_read(d / "model.safetensors")
    # the bf16 linear layers, named as the official releases name them for SGLang / vLLM
    assert kept == sorted(k[:-7] for k, (dt, shape, _) in ts.items()
                          if k.endswith(".weight") and len(shape) == 2 and dt == "BF16" and "embed_tokens" not in k)
    assert ("lm_head" in kept) == ("lm_head.weight" in ts)
    if arch == "qwen3_next":
        assert {"model.layers.0.linear_attn.in_proj_ba", "model.layers.0.mlp.gate",
                "model.layers.0.mlp.shared_expert_gate"} <= set(kept)
    n_fp8 = 0
    for k, (dt, shape, _) in ts.items():
        if dt == "F8_E4M3":
            n_fp8 += 1
            sdt, sshape, _ = ts[k + "_scale_inv"]
            assert sdt == "F32" and sshape == [-(-shape[0] // 128), -(-shape[1] // 128)]
    assert n_fp8 > 0
    assert ts["model.embed_tokens.weight"][0] == "BF16"
    if arch != "qwen3":
        assert ts["model.layers.0.mlp.gate.weight"][0] == "BF16"  # router stays bf16


@pytest.mark.parametrize("arch", ARCHS)
def test_fp8_generate(sluice_bin, models, arch):
    a = run(sluice_bin, "generate", "--model", str(models[arch] / "fp8"), "--ids", "1,2,3",
            "--max-new-tokens", "6", "--ignore-eos").stdout.split()
    assert len(a) == 6 and all(0 <= int(x) < 265 for x in a)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp8_quantize_at_load_equals_saved(sluice_bin, models, arch, tmp_path):
    saved = logits(sluice_bin, models[arch] / "fp8", PROMPTS, tmp_path)
    at_load = logits(sluice_bin, models[arch] / "bf16", PROMPTS, tmp_path, "--quantization", "fp8")
    assert saved.tobytes() == at_load.tobytes()
    bf16 = logits(sluice_bin, models[arch] / "bf16", PROMPTS, tmp_path)
    r = rel(saved, bf16)
    assert 0 < r < BOUND[arch], r


@pytest.mark.parametrize("arch", ARCHS)
def test_quantize_command_equals_make_tiny(sluice_bin, models, arch, tmp_path):
    """sluice quantize --fp8-block on the bf16 twin, split into two indexed shards,
    writes the same shards with make-tiny --quantization fp8's tensors byte for byte
    (scales beside their weights), the same config, the side files but not pickled
    weights, and serves bit-identical logits."""
    src, fp8 = tmp_path / "src", models[arch] / "fp8"
    shutil.copytree(models[arch] / "bf16", src)
    ts = st_read(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    names = list(ts)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for f, ks in shards.items():
        st_write(src / f, {k: ts[k] for k in ks})
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    (src / "LICENSE").write_text("Apache-2.0\n")
    (src / "pytorch_model.bin").write_bytes(b"\0" * 64)
    out = tmp_path / "out"
    r = run(sluice_bin, "quantize", "--fp8-block", str(src), str(out))
    want = st_read(fp8 / "model.safetensors")
    assert f"{sum(dt == 'F8_E4M3' for dt, _, _ in want.values())} projections" in r.stdout
    wm = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    got = {}
    for f in shards:
        part = st_read(out / f)
        assert all(wm[k] == f for k in part)
        got.update(part)
    assert sorted(got) == sorted(want) and all(got[k] == want[k] for k in want)
    assert all(wm[k + "_scale_inv"] == wm[k] for k, (dt, _, _) in got.items() if dt == "F8_E4M3")
    assert json.loads((out / "config.json").read_text()) == json.loads((fp8 / "config.json").read_text())
    assert (out / "LICENSE").read_text() == "Apache-2.0\n" and (out / "tokenizer.json").exists()
    assert not (out / "pytorch_model.bin").exists() and not (out / "model.safetensors").exists()
    a = logits(sluice_bin, out, PROMPTS, tmp_path)
    assert a.tobytes() == logits(sluice_bin, fp8, PROMPTS, tmp_path).tobytes()

    def fails(code, msg, *args):
        r = run(sluice_bin, "quantize", *args, ok=False)
        assert r.returncode == code and msg in r.stderr, r.stderr

    fails(1, "already holds a model", str(src), str(out))
    fails(1, "is already quantized (quantization_config.quant_method 'fp8')", str(out), str(tmp_path / "again"))
    assert not (tmp_path / "again").exists()
    fails(2, "IN and OUT are required", str(src))
    fails(2, "unexpected argument", str(src), str(tmp_path / "x"), "extra")


def test_fp8_block_scales_kept_where_rows_align(sluice_bin, models, tmp_path, monkeypatch):
    """A dense FP8 projection whose packed 128-row blocks each come from one checkpoint block
    keeps the [ceil(rows/128), G] scales (the load log counts them); the others one row per
    weight row. Either way the logits are those of the per-row layout (bit-identical across
    TP sizes, which cut the rows differently: test_fp8_tensor_parallel), real and dummy."""
    monkeypatch.setenv("SLUICE_LOG", "info")  # (ctest runs with warn)

    def counted(model, *extra):
        r = run(sluice_bin, "generate", "--model", str(model), "--ids", "1,2", "--max-new-tokens", "1", *extra)
        m = re.search(r"FP8: (\d+) of (\d+) dense projections keep", r.stderr)
        return (int(m.group(1)), int(m.group(2))) if m else None
    aligned = tmp_path / "a"
    run(sluice_bin, "make-tiny", "--arch", "qwen3", "--out", str(aligned), "--hidden-size", "256",
        "--intermediate-size", "256", "--quantization", "fp8")
    assert counted(aligned) == (8, 8) and counted(aligned, "--load-format", "dummy") == (8, 8)
    # qwen3_next at hidden 192: its fused qkvz / q-gate rows cut 128-row blocks in some layers
    kept, total = counted(models["qwen3_next"] / "fp8")
    assert 0 < kept < total
    assert counted(models["qwen3"] / "bf16") is None


def fp8_golden(arch):
    d = SRC / "tests" / "golden" / "data" / arch
    g = json.loads((d / "golden_fp8.json").read_text())
    return d, g, np.fromfile(d / "logits_fp8.f32", dtype="<f4").reshape(-1, g["vocab_size"])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("chunk", [0, 7])
def test_fp8_golden_matches_emulated_transformers(sluice_bin, arch, chunk, tmp_path):
    """The FP8 fixtures of tests/golden (make_golden.py --fp8: transformers' fp32 forward with
    the block-wise FP8 arithmetic emulated around every FP8 projection). Their agreement is
    fp32 rounding (~3e-7) until an activation lies within that rounding of an e4m3 rounding
    boundary: the two sides then take neighbouring codes for it, a whole e4m3 step (6 %) on
    one element, which the positions it feeds carry on. In these prompts that happens first
    between the 45th and the 70th position (e.g. qwen3's 64-token prompt: one element of
    position 53 within 3e-7 of a boundary, the one position that differs), so every prompt's
    first 40 positions and every prompt of up to 64 tokens must agree within 1e-4 and the
    longer prompts' remainder within a few %; greedy continuations are identical, and so is
    every figure with the prompts fed in chunks of 7 tokens (codes are per token). The
    fixtures' checkpoint is also exactly what sluice quantize writes for the bf16 golden
    model (torch's e4m3 cast against sl_fp8_quantize_blocks)."""
    d, g, ref = fp8_golden(arch)
    out = logits(sluice_bin, d / "model_fp8", g["prompts"], tmp_path, "--chunk", str(chunk)).reshape(ref.shape)
    o = 0
    for p in g["prompts"]:
        a, b = out[o:o + len(p)], ref[o:o + len(p)]
        n = len(p) if len(p) <= 64 else 40
        assert rel(a[:n], b[:n]) <= 1e-4, (len(p), rel(a[:n], b[:n]))
        assert rel(a, b) <= 0.1, (len(p), rel(a, b))
        o += len(p)
    for gr in g["greedy"]:
        r = run(sluice_bin, "generate", "--model", str(d / "model_fp8"), "--ids", ",".join(map(str, gr["prompt"])),
                "--max-new-tokens", str(len(gr["output"])), "--ignore-eos")
        assert [int(t) for t in r.stdout.split()] == gr["output"]
    q = tmp_path / "q"
    run(sluice_bin, "quantize", str(d / "model"), str(q))
    want = st_read(d / "model_fp8" / "model.safetensors")
    got = st_read(q / "model.safetensors")
    assert sorted(got) == sorted(want) and all(got[k] == want[k] for k in want)
    assert json.loads((q / "config.json").read_text()) == json.loads((d / "model_fp8" / "config.json").read_text())


def e4m3(v):
    v = v.astype(np.int64)
    e, m = (v >> 3) & 15, v & 7
    x = np.where(e == 0, m * 2.0 ** -9, (8 + m) * 2.0 ** (e - 10.0))
    return np.where(v & 0x80, -x, x)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp8_varied_scales_match_dequantized(sluice_bin, models, arch, tmp_path):
    """Scales spread over 2^-3..2^3 per block: the fp8 model must stay close to the f32
    model holding w·scale_inv (only activation quantization differs), as it would not if
    any scale row were misplaced by the fused-layout repacking."""
    src = models[arch] / "fp8"
    ts = st_read(src / "model.safetensors")
    rng = np.random.default_rng(3)
    fp8, deq = {}, {}
    for k, (dt, shape, raw) in ts.items():
        if k.endswith("_scale_inv"):
            continue
        if dt != "F8_E4M3":
            fp8[k] = deq[k] = (dt, shape, raw)
            continue
        sdt, sshape, sraw = ts[k + "_scale_inv"]
        s = np.frombuffer(sraw, "<f4").reshape(sshape) * 2.0 ** rng.integers(-3, 4, size=sshape)
        s = s.astype("<f4")
        fp8[k] = (dt, shape, raw)
        fp8[k + "_scale_inv"] = (sdt, sshape, s.tobytes())
        full = np.repeat(np.repeat(s, 128, 0), 128, 1)[:shape[0], :shape[1]]
        w = e4m3(np.frombuffer(raw, np.uint8)).reshape(shape) * full
        deq[k] = ("F32", shape, w.astype("<f4").tobytes())
    cfg = json.loads((src / "config.json").read_text())
    for name, tensors, quant in [("v8", fp8, True), ("vd", deq, False)]:
        d = tmp_path / name
        d.mkdir()
        c = dict(cfg)
        if not quant:
            del c["quantization_config"]
        (d / "config.json").write_text(json.dumps(c))
        shutil.copy(src / "generation_config.json", d / "generation_config.json")
        st_write(d / "model.safetensors", tensors)
    # one-token prompts: long ones let the recurrent and routed models drift
    # chaotically; measured (seed 1): qwen3 0.057, qwen3_moe 0.137, qwen3_next 0.065,
    # where one scale row off by up to 64x would be far outside
    a = logits(sluice_bin, tmp_path / "v8", [[5], [200]], tmp_path)
    b = logits(sluice_bin, tmp_path / "vd", [[5], [200]], tmp_path)
    r = rel(a, b)
    assert 0 < r < 0.25, r


def test_fp8_tensors_held_in_bf16_are_dequantized(sluice_bin, models, tmp_path):
    """A weight_scale_inv on a tensor sluice keeps in bf16 (LM head, router,
    shared-expert gate, embeddings) loads as its real weight code · block scale:
    bit-identical logits to the checkpoint holding those products in F32."""
    src = models["qwen3_next"] / "fp8"
    ts = st_read(src / "model.safetensors")
    rng = np.random.default_rng(5)
    fp8, deq = dict(ts), dict(ts)
    held = [k for k in ts if k == "lm_head.weight" or k == "model.embed_tokens.weight"
            or k.endswith(".mlp.gate.weight") or k.endswith(".shared_expert_gate.weight")]
    assert len(held) == 2 + 2 * 3
    for k in held:
        shape = ts[k][1]
        codes = rng.integers(0, 0x7f, size=shape, dtype=np.uint8) | (rng.integers(0, 2, size=shape, dtype=np.uint8) << 7)
        sshape = [-(-shape[0] // 128), -(-shape[1] // 128)]
        sc = (rng.uniform(0.5, 2.0, size=sshape) / 448 * 0.05).astype("<f4")
        full = np.repeat(np.repeat(sc, 128, 0), 128, 1)[:shape[0], :shape[1]]
        fp8[k] = ("F8_E4M3", shape, codes.tobytes())
        fp8[k + "_scale_inv"] = ("F32", sshape, sc.tobytes())
        deq[k] = ("F32", shape, (e4m3(codes) * full).astype("<f4").tobytes())
    out = []
    for name, tensors in [("held8", fp8), ("heldd", deq)]:
        d = tmp_path / name
        shutil.copytree(src, d)
        st_write(d / "model.safetensors", tensors)
        out.append(logits(sluice_bin, d, PROMPTS, tmp_path))
    assert np.isfinite(out[0]).all() and out[0].tobytes() == out[1].tobytes()


def test_fp8_dummy_and_errors(sluice_bin, models, tmp_path):
    src = models["qwen3"] / "fp8"
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(PROMPTS))
    run(sluice_bin, "logits", "--model", str(src), "--load-format", "dummy", "--ids-file", str(ids),
        "--out", str(tmp_path / "d.f32"))
    assert np.isfinite(np.fromfile(tmp_path / "d.f32", dtype="<f4")).all()

    def broken(name, edit_cfg=None, edit_ts=None):
        d = tmp_path / name
        shutil.copytree(src, d)
        if edit_cfg:
            c = json.loads((d / "config.json").read_text())
            edit_cfg(c["quantization_config"])
            (d / "config.json").write_text(json.dumps(c))
        if edit_ts:
            ts = st_read(d / "model.safetensors")
            edit_ts(ts)
            st_write(d / "model.safetensors", ts)
        r = run(sluice_bin, "generate", "--model", str(d), "--ids", "1", "--max-new-tokens", "1", ok=False)
        assert r.returncode != 0
        return r.stderr

    assert "e5m2" in broken("fmt", lambda q: q.update(fmt="e5m2"))
    assert "weight_block_size" in broken("bs", lambda q: q.update(weight_block_size=[64, 64]))
    assert "static" in broken("static", lambda q: q.update(activation_scheme="static"))
    assert "'awq' is not supported" in broken("method", lambda q: q.update(quant_method="awq"))
    k = "model.layers.1.self_attn.k_proj.weight_scale_inv"
    assert k in broken("missing", edit_ts=lambda ts: ts.pop(k))
    err = broken("shape", edit_ts=lambda ts: ts.update({k: ("F32", [2, 2], b"\0" * 16)}))
    assert k in err and "[1, 2]" in err
    nan = np.frombuffer(st_read(src / "model.safetensors")[k][2], dtype="<f4").copy()
    nan[1] = np.nan
    err = broken("nan", edit_ts=lambda ts: ts.update({k: ("F32", [1, 2], nan.tobytes())}))
    assert k in err and "non-finite" in err and "[0, 1]" in err
    w = k.replace("_scale_inv", "")
    e5 = broken("e5m2w", edit_ts=lambda ts: ts.update({w: ("F8_E5M2",) + ts[w][1:]}))
    assert w in e5 and "F8_E5M2" in e5
    bf = broken("bf16w", edit_ts=lambda ts: ts.update({w: ("BF16", ts[w][1], ts[w][2] * 2)}))
    assert w in bf and "has a weight_scale_inv" in bf


def test_fp8_tensor_parallel(sluice_bin, tmp_path):
    """FP8 x TP on qwen3 with hidden 256 / intermediate 256: o_proj and down_proj
    inputs are 128 per rank at TP 2, whole FP8 blocks. TP 2 == TP 1 for the FP8
    checkpoint, for --quantization fp8 of its bf16 twin (blocks of the global tensor)
    and for dummy FP8 weights; a TP size that cuts a 128-block exits 2 naming it."""
    dims = ["--hidden-size", "256", "--intermediate-size", "256"]
    fp8, bf16 = tmp_path / "fp8", tmp_path / "bf16"
    run(sluice_bin, "make-tiny", "--arch", "qwen3", "--out", str(fp8), *dims, "--quantization", "fp8")
    run(sluice_bin, "make-tiny", "--arch", "qwen3", "--out", str(bf16), *dims)
    ref = logits(sluice_bin, fp8, PROMPTS, tmp_path)
    assert np.isfinite(ref).all()
    assert rel(logits(sluice_bin, fp8, PROMPTS, tmp_path, "--tp-size", "2"), ref) <= 1e-5
    q2 = logits(sluice_bin, bf16, PROMPTS, tmp_path, "--quantization", "fp8", "--tp-size", "2")
    assert rel(q2, ref) <= 1e-5
    d1 = logits(sluice_bin, fp8, PROMPTS, tmp_path, "--load-format", "dummy", "--seed", "3")
    d2 = logits(sluice_bin, fp8, PROMPTS, tmp_path, "--load-format", "dummy", "--seed", "3", "--tp-size", "2")
    assert np.isfinite(d1).all() and rel(d2, d1) <= 1e-5

    def split_fails(model, tp, msg, *extra):
        r = run(sluice_bin, "generate", "--model", str(model), "--ids", "1,2,3", "--max-new-tokens", "2",
                "--tp-size", tp, *extra, ok=False)
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr, r.stderr

    block = "is not a multiple of the 128-wide FP8 block"
    split_fails(fp8, "4", f"--tp-size 4: o_proj input dim 256/4 = 64 {block}")
    split_fails(bf16, "4", f"--tp-size 4: o_proj input dim 256/4 = 64 {block}", "--quantization", "fp8")
    wide = tmp_path / "wide"
    run(sluice_bin, "make-tiny", "--arch", "qwen3", "--out", str(wide), "--hidden-size", "256",
        "--intermediate-size", "384", "--quantization", "fp8")
    split_fails(wide, "2", f"--tp-size 2: down_proj input dim 384/2 = 192 {block}")
