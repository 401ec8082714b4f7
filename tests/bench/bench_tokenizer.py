#!/usr/bin/env python3
"""Single-thread encode throughput: sluice vs Hugging Face `tokenizers`, same inputs, one run.

Two workloads:
  corpus  the test corpus (tests/data/tokenizer_corpus.jsonl: code, many scripts, emoji,
          whitespace runs, special tokens) repeated to --mb megabytes, encoded one document at
          a time;
  long    one prompt of 100k+ tokens (the corpus joined and repeated).
HF runs with TOKENIZERS_PARALLELISM=false and RAYON_NUM_THREADS=1, one `encode` call per
document (no encode_batch); sluice runs `sluice tokenize --jsonl --bench N` (one thread, time
measured inside the process, so start-up and JSON parsing are excluded on both sides). Both
report the best of N passes.

  python3 tests/bench/bench_tokenizer.py [--sluice build/bin/sluice] [--mb 4] [--passes 3]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
import tokenizers  # noqa: E402  (after the environment it reads)

REPO = Path(__file__).resolve().parents[2]
TOK_DIR = REPO / "tests" / "data" / "qwen3-tokenizer"


def hf_bench(tok, docs, passes):
    tokens = sum(len(tok.encode(d).ids) for d in docs)  # warm-up pass, counts tokens
    best = min(timed(lambda: [tok.encode(d) for d in docs]) for _ in range(passes))
    return tokens, best


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sluice_bench(binary, docs, passes):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    try:
        with open(f.name, "rb") as inp:
            r = subprocess.run([binary, "tokenize", "--tokenizer", str(TOK_DIR), "--jsonl",
                                "--bench", str(passes)], stdin=inp, capture_output=True, check=True)
    finally:
        os.unlink(f.name)
    out = json.loads(r.stdout)
    return out["tokens"], out["best_s"]


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sluice", default=str(REPO / "build" / "bin" / "sluice"))
    ap.add_argument("--mb", type=float, default=4.0, help="size of the corpus workload")
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()

    with open(REPO / "tests" / "data" / "tokenizer_corpus.jsonl", encoding="utf-8") as f:
        base = [json.loads(line)["text"] for line in f]
    base = [t for t in base if t]
    base_bytes = sum(len(t.encode()) for t in base)
    reps = max(1, int(args.mb * 1e6 / base_bytes + 0.999))
    workloads = {"corpus": base * reps, "long": ["\n".join(base) * 26]}

    tok = tokenizers.Tokenizer.from_file(str(TOK_DIR / "tokenizer.json"))
    print(f"# tokenizers {tokenizers.__version__}, CPU: {cpu_model()}, "
          f"{os.cpu_count()} cores, one thread each, best of {args.passes}")
    print("| workload | docs | MB | tokens | HF MB/s | HF tokens/s | sluice MB/s | sluice tokens/s "
          "| speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, docs in workloads.items():
        nbytes = sum(len(d.encode()) for d in docs)
        hf_tokens, hf_s = hf_bench(tok, docs, args.passes)
        sl_tokens, sl_s = sluice_bench(args.sluice, docs, args.passes)
        if sl_tokens != hf_tokens:
            sys.exit(f"{name}: token counts differ (HF {hf_tokens}, sluice {sl_tokens})")
        print(f"| {name} | {len(docs)} | {nbytes / 1e6:.2f} | {hf_tokens} | {nbytes / hf_s / 1e6:.2f} "
              f"| {hf_tokens / hf_s:,.0f} | {nbytes / sl_s / 1e6:.2f} | {sl_tokens / sl_s:,.0f} "
              f"| {hf_s / sl_s:.1f}x |")


if __name__ == "__main__":
    main()
