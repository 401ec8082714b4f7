"""Parity of `sluice tokenize` with Hugging Face `tokenizers` on the real Qwen3 tokenizer.

Every comparison sends many requests through one `sluice tokenize --jsonl` process:
  {"text": s} / {"hex": h}          -> {"ids": [...]} or {"error": msg}
  {"ids": [...], "skip_special": b, "stream": b} -> {"text": s, "chunks": [...]}
HF receives Python str, so ids are compared on valid UTF-8 only; invalid UTF-8 must come back
as a clear error. Decoding is compared with HF's decode (which reads the concatenated token
bytes as lossy UTF-8), and the streamed chunks must add up to the full decode.
"""
import itertools
import json
import os
import random
import subprocess
import unicodedata
from pathlib import Path

import pytest

import tokenizers

from router_harness import TOKENIZER, data_path

SRC = Path(os.environ.get("SLUICE_SRC", Path(__file__).resolve().parents[2]))
BIN = os.environ.get("SLUICE_BIN", str(SRC / "build" / "bin" / "sluice"))
TOK_DIR = data_path(TOKENIZER / "tokenizer.json").parent
CORPUS = data_path(SRC / "tests" / "data" / "tokenizer_corpus.jsonl")


@pytest.fixture(scope="module")
def hf():
    return tokenizers.Tokenizer.from_file(str(TOK_DIR / "tokenizer.json"))


def sluice(requests, tokenizer=TOK_DIR):
    """Answers of one `sluice tokenize --jsonl` run, one per request."""
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests).encode()
    r = subprocess.run([BIN, "tokenize", "--tokenizer", str(tokenizer), "--jsonl"], input=data,
                       capture_output=True, timeout=600)
    answers = [json.loads(line) for line in r.stdout.split(b"\n") if line]
    assert len(answers) == len(requests), r.stderr.decode()
    any_error = any("error" in a for a in answers)
    assert r.returncode == (1 if any_error else 0), r.stderr.decode()
    return answers


def check_encode(hf_tok, texts, tokenizer=TOK_DIR):
    want = [e.ids for e in hf_tok.encode_batch(texts, add_special_tokens=True)]
    got = sluice([{"text": t} for t in texts], tokenizer)
    bad = [(t, w, g) for t, w, g in zip(texts, want, got) if g.get("ids") != w]
    for t, w, g in bad[:5]:
        print("MISMATCH", repr(t[:120]), "\n  hf    ", w[:40], "\n  sluice", g)
    assert not bad, f"{len(bad)} of {len(texts)} texts differ"
    return want


def corpus():
    with open(CORPUS, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def test_corpus(hf):
    texts = corpus()
    assert len(texts) >= 50
    ids = check_encode(hf, texts)
    assert sum(map(len, ids)) > 4000
    # every added token is recognised as one token wherever it stands
    specials = hf.get_added_tokens_decoder()
    assert len(specials) == 26
    check_encode(hf, [f"x{t.content}y {t.content} {t.content}{t.content}" for t in specials.values()])


def test_every_code_point(hf):
    """Each code point in contexts that exercise every branch of the pre-tokenizer regex and
    NFC: letters, digits, contractions, spaces and newlines on both sides, a combining mark of
    class 1 after it and one of class 240 before it (reordering shows whether its combining
    class is known), and every canonical decomposition (composition). Covers planes 0 and 1
    (every script, digit and emoji block) and the tag characters; samples the rest (the CJK
    ideographs of planes 2-3, private use, unassigned). This is what found that tokenizers'
    NFC tables stop at Unicode 9.0 (docs/tokenizer.md)."""
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000 and
           (c < 0x20000 or c % 97 == 0 or 0xE0000 <= c < 0xE0200)]
    texts = []
    for i in range(0, len(cps), 96):
        texts.append("".join(f"a{chr(c)}b {chr(c)}1'{chr(c)} \n{chr(c)}\ta{chr(c)}\u0334 a\u0345{chr(c)} "
                             for c in cps[i:i + 96]))
    decomposed = []
    for c in cps:
        d = unicodedata.decomposition(chr(c))
        if d and not d.startswith("<"):
            decomposed.append("".join(chr(int(x, 16)) for x in d.split()) + "\u0334 ")
    texts += ["".join(decomposed[i:i + 64]) for i in range(0, len(decomposed), 64)]
    check_encode(hf, texts)


def test_pre_tokenizer_every_code_point(hf):
    """Piece boundaries of the regex split alone, for every code point, against HF's
    pre_tokenizer: contexts where a letter, a digit, white space and anything else all split
    differently ("x?x", "??", "?!", "?-J"), so a class the two regex engines disagree on shows
    even where the ids happen to agree. This is what found the Unicode 15/16 letters and
    digits pcre2 lacks. Planes 0-3 and 14 in full; planes 4-13 (never assigned) and 15-16
    (private use) sampled."""
    cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000 and
           (c < 0x40000 or 0xE0000 <= c < 0xF0000 or c % 97 == 0)]
    texts = ["".join(f"x{chr(c)}x {chr(c)}{chr(c)} {chr(c)}! {chr(c)}-J\n" for c in cps[i:i + 32])
             for i in range(0, len(cps), 32)]
    got = sluice([{"text": t, "split": True} for t in texts])
    bad = 0
    for t, g in zip(texts, got):
        # HF's pieces come out in the byte-level alphabet: one character per byte
        want = list(itertools.accumulate(len(p) for p, _ in hf.pre_tokenizer.pre_tokenize_str(t)))
        if g.get("ends") != want:
            bad += 1
            print("MISMATCH", repr(t[:60]), want[:12], g)
    assert bad == 0, f"{bad} of {len(texts)} texts split differently"


def random_text(rng, pieces):
    ranges = [(0x20, 0x7F, 40), (0x09, 0x0E, 6), (0xA0, 0x250, 6), (0x300, 0x370, 6),
              (0x400, 0x500, 4), (0x900, 0x980, 3), (0xE00, 0xE80, 2), (0x1100, 0x1200, 3),
              (0x3040, 0x3100, 4), (0x4E00, 0x9FFF, 8), (0xAC00, 0xD7A4, 4), (0x2000, 0x2070, 4),
              (0xFE00, 0xFE10, 2), (0x1F300, 0x1FAFF, 6), (0x10000, 0x10FFFF, 2)]
    weights = [w for _, _, w in ranges]
    out = []
    for _ in range(rng.randrange(1, 80)):
        r = rng.random()
        if r < 0.06:
            out.append(rng.choice(pieces))
        elif r < 0.12:
            out.append(" " * rng.randrange(1, 40) + rng.choice(["", "\n", "\r\n", "x"]))
        else:
            lo, hi, _ = rng.choices(ranges, weights)[0]
            c = rng.randrange(lo, hi)
            if not 0xD800 <= c < 0xE000:
                out.append(chr(c))
    return "".join(out)


def test_random_strings(hf):
    rng = random.Random(1234)
    specials = [t.content for t in hf.get_added_tokens_decoder().values()]
    pieces = specials + [w for t in corpus() for w in t.split(" ")[:20] if w]
    texts = [random_text(rng, pieces) for _ in range(3000)]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30))) for _ in range(500)]
    check_encode(hf, texts)


def test_long_prompt(hf):
    """A 100k+-token prompt: the whole corpus many times over, specials included."""
    text = "\n".join(corpus()) * 26
    ids = check_encode(hf, [text])[0]
    assert len(ids) > 100_000


def test_invalid_utf8(hf):
    cases = [b"\xff", b"abc\x80def", b"\xc0\x80", b"\xc3", b"\xe4\xbd", b"ok \xed\xa0\x80 surrogate",
             b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x28\xa1", b"<|im_end|>\xfe"]
    rng = random.Random(99)
    for _ in range(400):
        cases.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24))))
    answers = sluice([{"hex": c.hex()} for c in cases])
    n_invalid = 0
    for c, a in zip(cases, answers):
        try:
            s = c.decode("utf-8")
        except UnicodeDecodeError as err:
            n_invalid += 1
            assert "error" in a, c
            assert a["error"] == (f"text is not valid UTF-8 (byte 0x{c[err.start]:02X} at offset "
                                  f"{err.start})"), (c, a)
            continue
        assert a.get("ids") == hf.encode(s).ids, (c, a)
    assert n_invalid > 300


def test_roundtrip(hf):
    texts = corpus() + [random_text(random.Random(i), ["<|im_end|>", "<think>"]) for i in range(300)]
    enc = sluice([{"text": t} for t in texts])
    dec = sluice([{"ids": e["ids"]} for e in enc])
    for t, d in zip(texts, dec):
        want = t if hf.normalizer.normalize_str(t) == t else hf.normalizer.normalize_str(t)
        assert d["text"] == want


def test_decode_and_stream(hf):
    """Random id sequences, heavy on single-byte tokens and specials, so characters split
    across tokens, ill-formed bytes and special tokens all occur; full decodes match HF's and
    the streamed chunks add up to them."""
    rng = random.Random(7)
    byte_ids = hf.encode("".join(chr(c) for c in range(0x21, 0x7F))).ids
    byte_ids += [hf.token_to_id(t) for t in hf.get_vocab() if len(t) == 1]
    specials = list(hf.get_added_tokens_decoder())
    emoji = hf.encode("👨‍👩‍👧‍👦🎉你好, мир é\u0301").ids
    seqs = []
    for _ in range(1500):
        seq = []
        for _ in range(rng.randrange(1, 40)):
            r = rng.random()
            seq.append(rng.choice(byte_ids) if r < 0.4 else rng.choice(specials) if r < 0.5
                       else rng.choice(emoji) if r < 0.7 else rng.randrange(hf.get_vocab_size()))
        seqs.append(seq)
    reqs = [{"ids": s, "skip_special": skip, "stream": True} for s in seqs for skip in (False, True)]
    answers = sluice(reqs)
    for req, a in zip(reqs, answers):
        want = hf.decode(req["ids"], skip_special_tokens=req["skip_special"])
        assert a["text"] == want, req
        assert "".join(a["chunks"]) == want
        assert len(a["chunks"]) == len(req["ids"]) + 1  # one per token, one from finish


def test_stream_holds_partial_characters(hf):
    ids = hf.encode("🎉x你").ids + [151645]
    a = sluice([{"ids": ids, "stream": True}])[0]
    assert a["text"] == "🎉x你<|im_end|>"
    assert "\ufffd" not in "".join(a["chunks"])
    assert all(c == "" or c in a["text"] for c in a["chunks"])
    # an emoji spelled byte by byte appears whole, at its last byte
    one_byte = {b: hf.token_to_id(t) for t, b in byte_alphabet().items()}
    ids = [one_byte[b] for b in "🎉".encode()]
    a = sluice([{"ids": ids, "stream": True}])[0]
    assert a["chunks"] == ["", "", "", "🎉", ""]
    # a dangling lead byte becomes one U+FFFD at the end of the stream
    a = sluice([{"ids": ids[:2], "stream": True}])[0]
    assert a["chunks"] == ["", "", "\ufffd"]


def byte_alphabet():
    """GPT-2's byte-level alphabet: printable character -> byte."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[chr(b)] = b
        else:
            out[chr(0x100 + extra)] = b
            extra += 1
    return out


def test_added_token_flags(hf, tmp_path):
    """lstrip / rstrip / single_word / normalized added tokens, as tokenizers applies them."""
    tok = tokenizers.Tokenizer.from_file(str(TOK_DIR / "tokenizer.json"))
    AT = tokenizers.AddedToken
    tok.add_tokens([AT("[L]", lstrip=True, normalized=False), AT("[R]", rstrip=True, normalized=False),
                    AT("[LR]", lstrip=True, rstrip=True, normalized=False),
                    AT("word", single_word=True, normalized=False),
                    AT("caf\u00e9", normalized=True), AT("<x y>", normalized=False)])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    texts = ["a [L] b", "a   [L]b", "\u3000\t[L]", "a [R]   b", "[R]\n\n x", "a  [LR]  b",
             "[R] [L]", "[R]   [LR]   [L] z", "word words sword word, _word word_ 1word word1 wordé",
             "cafe\u0301 caf\u00e9 cafe", "x<x y>y <x y>", "[L][L] [R][R]"]
    check_encode(tok, texts, tokenizer=path)
    dec = sluice([{"ids": tok.encode(t).ids} for t in texts], tokenizer=path)
    assert [d["text"] for d in dec] == [tok.decode(tok.encode(t).ids, skip_special_tokens=False)
                                        for t in texts]


@pytest.mark.parametrize("variant", ["gpt2_regex", "no_normalizer", "nfc_sequence"])
def test_pipeline_variants(variant, tmp_path):
    """The other pipelines the loader accepts, built from the Qwen3 file: GPT-2's regex (a
    ByteLevel pre-tokenizer with use_regex), no normalizer, NFC inside a Sequence."""
    cfg = json.loads((TOK_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    if variant == "gpt2_regex":
        cfg["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False,
                                "trim_offsets": False, "use_regex": True}
    elif variant == "no_normalizer":
        cfg["normalizer"] = None
    else:
        cfg["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFC"}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    tok = tokenizers.Tokenizer.from_file(str(path))
    rng = random.Random(5)
    texts = corpus() + [random_text(rng, ["<|im_end|>", " the", "e\u0301"]) for _ in range(300)]
    check_encode(tok, texts, tokenizer=path)


def run_cli(args, stdin):
    return subprocess.run([BIN, "tokenize", *args], input=stdin, capture_output=True, timeout=120)


def test_cli_plain_modes(hf):
    text = "Hello, 世界! <|im_end|>\n"
    r = run_cli(["--tokenizer", str(TOK_DIR)], text.encode())
    assert r.returncode == 0
    ids = [int(x) for x in r.stdout.decode().split()]
    assert ids == hf.encode(text).ids and r.stdout.decode().count("\n") == 1
    r = run_cli(["--tokenizer", str(TOK_DIR / "tokenizer.json"), "--decode"],
                " ".join(map(str, ids)).encode())
    assert r.returncode == 0 and r.stdout.decode() == text
    r = run_cli(["--tokenizer", str(TOK_DIR), "--decode", "--skip-special"], b"9707 151645 11")
    assert r.returncode == 0 and r.stdout.decode() == "Hello,"


@pytest.mark.parametrize("args,stdin,status,message", [
    (["--tokenizer", "/nonexistent/dir"], b"x", 1, "does not exist"),
    ([], b"x", 2, "--tokenizer is required"),
    (["--tokenizer", str(TOK_DIR), "--bogus"], b"x", 2, "unknown option"),
    (["--tokenizer", str(TOK_DIR), "--decode"], b"1 2 abc", 1, "item 3 ('abc') is not a token id"),
    (["--tokenizer", str(TOK_DIR), "--decode"], b"5 -1", 1, "item 2 ('-1') is not a token id"),
    (["--tokenizer", str(TOK_DIR), "--decode"], b"5 151669", 1,
     "ids[1]: token id 151669 is not in the vocabulary (size 151669)"),
    (["--tokenizer", str(TOK_DIR), "--decode"], b"99999999999", 1, "is not a token id"),
    (["--tokenizer", str(TOK_DIR)], b"abc\xff", 1, "not valid UTF-8 (byte 0xFF at offset 3)"),
])
def test_cli_errors(args, stdin, status, message):
    r = run_cli(args, stdin)
    assert r.returncode == status
    assert message in r.stderr.decode()
    assert r.stdout == b""


def test_cli_bad_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}')
    r = run_cli(["--tokenizer", str(tmp_path)], b"a")
    assert r.returncode == 1 and "tokenizer.json: line" in r.stderr.decode()
    (tmp_path / "tokenizer.json").write_text(json.dumps(
        {"model": {"type": "Unigram", "vocab": []}, "decoder": {"type": "ByteLevel"}}))
    r = run_cli(["--tokenizer", str(tmp_path)], b"a")
    assert r.returncode == 1 and "unsupported model" in r.stderr.decode()
