"""Model loading and the model commands: make-tiny, generate, logits, bad input."""
import json
import shutil
import struct
import subprocess

import numpy as np
import pytest


def run(*args, ok=True):
    r = subprocess.run(list(args), capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def st_read(path):
    """Minimal safetensors reader: {name: (dtype, shape, bytes)} in file order."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    hdr.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in hdr.items()}


def st_write(path, tensors):
    hdr, off, blobs = {}, 0, []
    for k, (dt, shape, data) in tensors.items():
        hdr[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


@pytest.fixture(scope="module")
def tiny(sluice_bin, tmp_path_factory):
    models = {}
    for arch in ["qwen3", "qwen3_moe", "qwen3_next"]:
        d = tmp_path_factory.mktemp(arch)
        run(sluice_bin, "make-tiny", "--arch", arch, "--out", str(d))
        models[arch] = d
    return models


def logits(sluice_bin, model, prompts, tmp_path, *extra):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(prompts))
    out = tmp_path / "o.f32"
    run(sluice_bin, "logits", "--model", str(model), "--ids-file", str(ids), "--out", str(out), *extra)
    return np.fromfile(out, dtype="<f4")


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe", "qwen3_next"])
def test_make_tiny_generate_deterministic(sluice_bin, tiny, arch):
    a = run(sluice_bin, "generate", "--model", str(tiny[arch]), "--ids", "1,2,3", "--max-new-tokens", "8",
            "--ignore-eos").stdout.split()
    b = run(sluice_bin, "generate", "--model", str(tiny[arch]), "--ids", "1,2,3", "--max-new-tokens", "8",
            "--ignore-eos").stdout.split()
    assert len(a) == 8 and a == b
    assert all(0 <= int(x) < 265 for x in a)


def test_sharded_and_dtypes_give_same_logits(sluice_bin, tiny, tmp_path):
    src = tiny["qwen3_next"]
    prompts = [[5, 6, 7, 8, 9, 10, 11]]
    ref = logits(sluice_bin, src, prompts, tmp_path)
    # two shards + index, one shard converted to f32 and one tensor to f16-exact values
    d = tmp_path / "sharded"
    d.mkdir()
    for f in ["config.json", "generation_config.json"]:
        shutil.copy(src / f, d / f)
    ts = st_read(src / "model.safetensors")
    names = list(ts)
    half = len(names) // 2
    a = {k: ts[k] for k in names[:half]}
    b = {}
    for k in names[half:]:
        dt, shape, data = ts[k]
        f32 = (np.frombuffer(data, dtype="<u2").astype("<u4") << 16).view("<f4")
        b[k] = ("F32", shape, f32.tobytes())
    st_write(d / "model-00001-of-00002.safetensors", a)
    st_write(d / "model-00002-of-00002.safetensors", b)
    wm = {k: "model-00001-of-00002.safetensors" for k in a}
    wm.update({k: "model-00002-of-00002.safetensors" for k in b})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    out = logits(sluice_bin, d, prompts, tmp_path)
    assert np.array_equal(out, ref)


def test_rope_parameters_style_config(sluice_bin, tiny, tmp_path):
    # the same model with transformers-5-style rope_parameters must give the same logits
    src = tiny["qwen3_next"]
    d = tmp_path / "rp"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    theta, prf = cfg.pop("rope_theta"), cfg.pop("partial_rotary_factor")
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": prf}
    (d / "config.json").write_text(json.dumps(cfg))
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert np.array_equal(logits(sluice_bin, d, prompts, tmp_path), logits(sluice_bin, src, prompts, tmp_path))
    # and a different theta changes them (the value is really read)
    cfg["rope_parameters"]["rope_theta"] = 12345.0
    (d / "config.json").write_text(json.dumps(cfg))
    assert not np.array_equal(logits(sluice_bin, d, prompts, tmp_path), logits(sluice_bin, src, prompts, tmp_path))


def test_dummy_load_format_needs_no_weights(sluice_bin, tiny, tmp_path):
    d = tmp_path / "cfgonly"
    d.mkdir()
    shutil.copy(tiny["qwen3_moe"] / "config.json", d / "config.json")
    a = run(sluice_bin, "generate", "--model", str(d), "--load-format", "dummy", "--ids", "1,2",
            "--max-new-tokens", "4", "--ignore-eos").stdout
    b = run(sluice_bin, "generate", "--model", str(d), "--load-format", "dummy", "--seed", "7", "--ids", "1,2",
            "--max-new-tokens", "4", "--ignore-eos").stdout
    assert len(a.split()) == 4 and a != b
    r = run(sluice_bin, "generate", "--model", str(d), "--ids", "1,2", ok=False)
    assert r.returncode == 1 and "model.safetensors" in r.stderr


def test_clear_errors(sluice_bin, tiny, tmp_path):
    src = tiny["qwen3"]
    # unknown architecture
    d = tmp_path / "arch"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    r = run(sluice_bin, "generate", "--model", str(d), "--ids", "1", ok=False)
    assert r.returncode == 1 and "unsupported architecture 'LlamaForCausalLM'" in r.stderr
    # misshapen tensor: config says a wider MLP than the weights have
    d = tmp_path / "shape"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (d / "config.json").write_text(json.dumps(cfg))
    r = run(sluice_bin, "generate", "--model", str(d), "--ids", "1", ok=False)
    assert r.returncode == 1
    assert "model.layers.0.mlp.gate_proj.weight has shape [128, 64], expected [100, 64]" in r.stderr
    # missing tensor
    d = tmp_path / "missing"
    shutil.copytree(src, d)
    ts = st_read(d / "model.safetensors")
    del ts["model.layers.1.self_attn.k_norm.weight"]
    st_write(d / "model.safetensors", ts)
    r = run(sluice_bin, "generate", "--model", str(d), "--ids", "1", ok=False)
    assert "missing tensor model.layers.1.self_attn.k_norm.weight (expected shape [64])" in r.stderr
    # truncated file, bad header
    d = tmp_path / "trunc"
    shutil.copytree(src, d)
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    r = run(sluice_bin, "generate", "--model", str(d), "--ids", "1", ok=False)
    assert r.returncode == 1 and "do not match" in r.stderr
    # bad ids and options
    r = run(sluice_bin, "generate", "--model", str(src), "--ids", "1,x", ok=False)
    assert r.returncode == 2 and "--ids" in r.stderr
    r = run(sluice_bin, "generate", "--model", str(src), "--ids", "99999", ok=False)
    assert r.returncode == 2 and "[0, 265)" in r.stderr
    r = run(sluice_bin, "generate", "--model", str(src), "--bogus", "1", ok=False)
    assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr
    r = run(sluice_bin, "make-tiny", "--arch", "gpt2", "--out", str(tmp_path / "x"), ok=False)
    assert r.returncode == 2 and "unknown --arch" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[[1, 2], [3, -1]]")
    r = run(sluice_bin, "logits", "--model", str(src), "--ids-file", str(bad), "--out", str(tmp_path / "o"),
            ok=False)
    assert r.returncode == 2 and "prompt 1, position 1" in r.stderr


def test_make_tiny_builtin_tokenizer(sluice_bin, tiny, tmp_path):
    # without --tokenizer the model carries a byte-level tokenizer of its own that
    # HF tokenizers reads identically, with the Qwen chat special tokens
    from tokenizers import Tokenizer
    d = tiny["qwen3"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["vocab_size"] == 265 and cfg["eos_token_id"] == [258, 256]
    text = "Hi, wörld 🙂\n<|im_start|>user\n<think>x</think><|im_end|>"
    hf = Tokenizer.from_file(str(d / "tokenizer.json")).encode(text).ids
    r = subprocess.run([sluice_bin, "tokenize", "--tokenizer", str(d)], input=text, capture_output=True,
                       text=True, check=True)
    assert list(map(int, r.stdout.split())) == hf
    assert 257 in hf and 258 in hf and 259 in hf and 260 in hf
    # a vocabulary too small for it gets no tokenizer (weights-only models for engine tests)
    small = tmp_path / "small"
    run(sluice_bin, "make-tiny", "--arch", "qwen3", "--out", str(small), "--vocab-size", "64")
    assert not (small / "tokenizer.json").exists()


def test_make_tiny_with_real_tokenizer(sluice_bin, tokenizer_dir, tmp_path):
    tok = tokenizer_dir
    d = tmp_path / "withtok"
    r = run(sluice_bin, "make-tiny", "--arch", "qwen3", "--out", str(d), "--tokenizer", str(tok))
    assert "vocab 151669" in r.stdout
    assert (d / "tokenizer.json").exists() and (d / "tokenizer_config.json").exists()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["vocab_size"] == 151669 and cfg["eos_token_id"] == [151645, 151643]
    out = run(sluice_bin, "generate", "--model", str(d), "--ids", "151644,872,198", "--max-new-tokens", "3",
              "--ignore-eos").stdout.split()
    assert len(out) == 3
