"""`sluice serve`: one command starts --dp-size CPU workers and the router;
SIGTERM drains and stops everything it started."""
import os
import re
import signal
import subprocess
import time

import openai

from router_harness import API_KEY, SLOW, Procs, children_of, make_tiny, start_router


def test_serve_dp2(tmp_path):
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "tiny")
        # worker flags pass through (--mixed-prefill-tokens: the workers would refuse an
        # unknown one and serve would not come up)
        serve, port = start_router(procs, model, [], "--dp-size", 2, "--mem-bytes", 64 << 20,
                                   "--context-length", 128, "--tool-call-parser", "hermes",
                                   "--chunked-prefill-size", 256, "--mixed-prefill-tokens", 64,
                                   command="serve", alive=2)
        workers = children_of(serve.pid)
        assert len(workers) == 2
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                          max_retries=0)
        r = c.chat.completions.create(model="tiny", max_tokens=3,
                                      messages=[{"role": "user", "content": "Hi"}])
        assert r.usage.completion_tokens == 3
        # --context-length reached the workers: their report is the limit
        assert c.models.list().data[0].model_extra["max_model_len"] == 128
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(15) == 0
        for w in workers:  # its workers are gone too
            assert not os.path.exists(f"/proc/{w}") or \
                open(f"/proc/{w}/stat").read().split()[2] == "Z"
    finally:
        procs.stop()


def test_serve_stops_when_a_worker_dies(tmp_path):
    """Weights that do not load: the worker exits, so serve exits 1 instead of
    serving 503s forever."""
    model = make_tiny(tmp_path / "tiny")
    with open(os.path.join(model, "model.safetensors"), "r+b") as f:
        f.truncate(100)
    r = subprocess.run([os.environ.get("SLUICE_BIN", "build/bin/sluice"), "serve",
                        "--model-path", model, "--port", "0", "--mem-bytes", str(64 << 20)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "worker group 0 exited" in r.stderr, r.stderr


def test_serve_bad_flags():
    r = subprocess.run([os.environ.get("SLUICE_BIN", "build/bin/sluice"), "serve",
                        "--model-path", "/nonexistent", "--dp-size", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--dp-size" in r.stderr
    r = subprocess.run([os.environ.get("SLUICE_BIN", "build/bin/sluice"), "router",
                        "--model-path", "/nonexistent", "--worker", "tcp://127.0.0.1:1"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "/nonexistent" in r.stderr
    r = subprocess.run([os.environ.get("SLUICE_BIN", "build/bin/sluice"), "router",
                        "--model-path", "x", "--policy", "fastest", "--worker", "tcp://a:1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "fastest" in r.stderr


def test_serve_ctrl_c_drains(tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process
    group: the workers must keep serving while the router drains, so a
    stream in flight ends normally (it used to end with a 502 error event)."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "tiny")
        serve, port = start_router(procs, model, [], "--mem-bytes", 64 << 20,
                                   "--context-length", 512, command="serve", alive=1)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                          max_retries=0, timeout=30)
        s = c.completions.create(model="tiny", prompt="The sea", max_tokens=120, stream=True,
                                 extra_body={"ignore_eos": True})
        it = iter(s)
        next(it)
        os.killpg(serve.pid, signal.SIGINT)  # what the terminal does
        rest = list(it)
        assert rest[-1].choices[0].finish_reason == "length"
        assert serve.wait(15) == 0
    finally:
        procs.stop()


def test_shared_experts_fusion_flag(tmp_path):
    """A qwen3_next model (its shared expert as wide as the routed ones) served
    with the shared expert fused (the default) and with
    --disable-shared-experts-fusion gives the same greedy text and logprobs
    (rounding apart): the flag reaches the workers through serve."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "next", arch="qwen3_next")
        out = []
        for extra in ((), ("--disable-shared-experts-fusion",)):
            serve, port = start_router(procs, model, [], "--mem-bytes", 64 << 20, "--context-length", 256,
                                       "--log-level", "info", *extra, command="serve", alive=1)
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
            r = c.completions.create(model="tiny", prompt=[5, 17, 33, 2, 90, 41, 8, 64], max_tokens=12,
                                     temperature=0, logprobs=1)
            out.append((r.choices[0].text, r.choices[0].logprobs.token_logprobs))
            procs.stop(serve)
            fused = "shared expert fused into the routed experts" in procs.log_of(serve)
            assert fused == (not extra), procs.log_of(serve)[-2000:]
        assert out[0][0] == out[1][0]
        assert max(abs(a - b) for a, b in zip(out[0][1], out[1][1])) < 1e-3, out
    finally:
        procs.stop()


def test_router_teardown_is_bounded(tmp_path, monkeypatch):
    """nng 1.5's socket close can deadlock (nanomsg/nng#1543): a router stuck closing its
    worker sockets after a drain would ignore every later signal. A stall stands in for
    that hang here; the router still exits within its 5 s bound, with the drain's status."""
    monkeypatch.setenv("SLUICE_TEST_TEARDOWN_STALL_MS", "120000")
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "tiny")
        router, _ = start_router(procs, model, ["tcp://127.0.0.1:1"], alive=0)
        t0 = time.time()
        router.send_signal(signal.SIGTERM)
        assert router.wait(30 * SLOW) == 0
        assert time.time() - t0 > 4.5
        assert "did not finish within 5 s after the drain" in procs.log_of(router)
    finally:
        procs.stop()


def test_step_timing_logs_prefill_steps(tmp_path):
    """--step-timing logs each prefill step's tokens, sequences and device time (what
    tests/gpu/bench_e2e.sh sets beside the TTFT): a 37-token prompt is one step of 37 tokens
    of one sequence; decode steps log no such line."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "m")
        serve, port = start_router(procs, model, [], "--mem-bytes", 64 << 20, "--context-length", 256,
                                   "--log-level", "info", "--step-timing", command="serve", alive=1)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
        c.completions.create(model="tiny", prompt=list(range(3, 40)), max_tokens=6, temperature=0)
        procs.stop(serve)
        steps = [l for l in procs.log_of(serve).splitlines() if "prefill step:" in l]
        assert len(steps) == 1, procs.log_of(serve)[-2000:]
        m = re.search(r"prefill step: (\d+) tokens of (\d+) sequences, device ([0-9.]+) ms", steps[0])
        assert m and (int(m[1]), int(m[2])) == (37, 1) and float(m[3]) > 0, steps[0]
    finally:
        procs.stop()
