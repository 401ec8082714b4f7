"""`sluice grammar`: --check exit statuses and messages, compile errors, bad flags, and a short
--bench over the Qwen3 vocabulary (docs/cli.md)."""
import re
import subprocess

from router_harness import BIN, SRC, TOKENIZER

JSON = str(SRC / "tests" / "data" / "grammar" / "json.gbnf")
LOG = str(SRC / "tests" / "data" / "grammar" / "log.gbnf")


def grammar(*args):
    return subprocess.run([BIN, "grammar", *args], capture_output=True, text=True, timeout=120)


def test_check_accepts_and_rejects():
    r = grammar("--grammar", JSON, "--check", '{"a": [1, 2.5e3, "x\\u00e9"]}')
    assert r.returncode == 0 and r.stdout == "accepted\n", r.stderr
    r = grammar("--grammar", JSON, "--check", '{"a": [1, 2}')
    assert r.returncode == 1 and r.stdout == "rejected: byte 11 (0x7D) is not allowed by the grammar here\n"
    r = grammar("--grammar", JSON, "--check", '{"a": ')
    assert r.returncode == 1 and "incomplete" in r.stdout


def test_check_file(tmp_path):
    text = tmp_path / "log.txt"
    text.write_bytes("2025-01-02 03:04:05 WARN db.pool: slow query (1.2 s) \u00e9\n".encode())
    r = grammar("--grammar", LOG, "--check-file", str(text))
    assert r.returncode == 0 and r.stdout == "accepted\n", r.stdout + r.stderr
    text.write_bytes(b"2025-01-02 03:04:05 DEBUG db: x\n")
    r = grammar("--grammar", LOG, "--check-file", str(text))
    assert r.returncode == 1 and "byte 20 (0x44)" in r.stdout


def test_compile_error_exits_2(tmp_path):
    g = tmp_path / "bad.gbnf"
    g.write_text('root ::= "a" valu\n')
    r = grammar("--grammar", str(g), "--check", "a")
    assert r.returncode == 2
    assert r.stderr == "sluice grammar: %s: 1:14: undefined rule 'valu'\n" % g


def test_bad_flags_exit_2():
    assert grammar("--check", "x").returncode == 2  # no --grammar
    assert grammar("--grammar", JSON).returncode == 2  # nothing to do
    assert grammar("--grammar", JSON, "--bench").returncode == 2  # no --tokenizer
    assert grammar("--grammar", JSON, "--check", "1", "--bench", "--tokenizer", str(TOKENIZER)).returncode == 2
    r = grammar("--grammar", "/nonexistent.gbnf", "--check", "1")
    assert r.returncode == 1 and "nonexistent" in r.stderr


def test_bench_reports_times():
    r = grammar("--grammar", JSON, "--tokenizer", str(TOKENIZER), "--vocab-size", "151936", "--eos", "151645",
                "--bench", "--steps", "50", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "vocabulary: 151936 ids" in r.stdout
    assert re.search(r"mask: mean [0-9.]+ us, p50 [0-9.]+ us, p99 [0-9.]+ us", r.stdout)
    hits = re.search(r"cache hits: ([0-9.]+)% \(([0-9]+)\)", r.stdout)
    misses = re.search(r"misses: ([0-9]+);", r.stdout)
    assert hits and misses and int(hits.group(2)) + int(misses.group(1)) == 50
