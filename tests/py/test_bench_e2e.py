"""`sluice bench` against sluice itself: the router over a mock worker with a
known token pace, and `sluice serve` on a tiny model (CPU)."""
import json
import signal
import socket
import subprocess
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_healthy(port, proc, timeout=60):
    """/health answers 200 only once a worker is ready (/v1/models answers as soon as the router
    listens, and a request then could still get 503)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as m:
                        return json.load(m)
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not come up")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def block(out):
    lines = out.splitlines()
    i = lines.index("============ Serving Benchmark Result ============")
    b = {}
    for line in lines[i + 1:]:
        if ":" in line and not line.startswith("-") and not line.startswith("="):
            k, v = line.rsplit(":", 1)
            b[k.strip()] = v.strip()
    return b


def bench(sluice_bin, port, *args):
    r = subprocess.run([sluice_bin, "bench", "--port", str(port), *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return block(r.stdout)


def test_router_over_mock_worker(sluice_bin, tokenizer_dir, tmp_path):
    """The router adds little to a worker's pace: 50 ms to the first token, 10 ms a token."""
    tok = tokenizer_dir
    url = f"ipc://{tmp_path}/w0"
    port = free_port()
    worker = subprocess.Popen([sluice_bin, "mock-worker", "--listen", url, "--first-token-delay-ms", "50",
                               "--delay-ms", "10"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    router = subprocess.Popen([sluice_bin, "router", "--model-path", str(tok), "--worker", url, "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        models = wait_healthy(port, router)
        assert models["data"][0]["id"]
        b = bench(sluice_bin, port, "--tokenizer", tok, "--num-prompts", 8, "--max-concurrency", 4,
                  "--random-input-len", 64, "--random-output-len", 16, "--random-range-ratio", 1)
        assert b["Successful requests"] == "8"
        assert int(b["Total input tokens"]) == 8 * 64
        assert int(b["Total generated tokens"]) == 8 * 16  # usage from the router, exact
        assert 50 <= float(b["Mean TTFT (ms)"]) < 150
        assert 9 <= float(b["Mean TPOT (ms)"]) < 20
    finally:
        stop(router)
        stop(worker)


def test_serve_tiny_model(sluice_bin, tokenizer_dir, tmp_path):
    """A real engine end to end: every request answered with exactly max_tokens tokens."""
    model = tmp_path / "tiny"
    subprocess.run([sluice_bin, "make-tiny", "--arch", "qwen3", "--out", str(model), "--tokenizer",
                    str(tokenizer_dir)], check=True, capture_output=True)
    port = free_port()
    serve = subprocess.Popen([sluice_bin, "serve", "--model-path", str(model), "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(port, serve, timeout=120)
        out = tmp_path / "r.jsonl"
        b = bench(sluice_bin, port, "--num-prompts", 6, "--max-concurrency", 3, "--random-input-len", 32,
                  "--random-output-len", 8, "--random-range-ratio", 1, "--output-file", out)
        assert b["Successful requests"] == "6" and int(b["Total generated tokens"]) == 48
        assert int(b["Total input tokens"]) == 6 * 32
        j = json.loads(out.read_text())
        assert j["completed"] == 6 and j["failed"] == 0 and j["mean_ttft_ms"] > 0
        assert j["model"] == str(model)  # the served name: the model path, read from /v1/models
    finally:
        stop(serve)
