"""The front door an SGLang user meets: readiness while the model loads,
SGLang's info endpoints, HEAD/CORS, /metrics names, SGLang command lines
(flags mapped, accepted with a warning, or refused clearly), logs."""
import json
import os
import pathlib
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from router_harness import API_KEY, BIN, TOKENIZER, Procs, post, start_mock, start_router


def http(port, path, method="GET", key=None, headers=None):
    h = dict(headers or {})
    if key:
        h["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def run(*args, env=None, timeout=30):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_readiness_during_slow_load(model, monkeypatch):
    """/health is 503 (saying why) until the worker has loaded, then 200."""
    procs = Procs()
    try:
        monkeypatch.setenv("SLUICE_TEST_LOAD_DELAY_MS", "2500")
        p = procs.start("serve", "--model-path", model, "--port", 0, "--mem-bytes", 64 << 20,
                        "--context-length", 128, "--log-level", "info", name="serve")
        port = None
        deadline = time.time() + 20
        while not port and time.time() < deadline:
            m = re.search(r"listening on http://[^ ]+:(\d+)$", procs.log_of(p), re.M)
            port = m and int(m.group(1))
            time.sleep(0.05)
        assert port, procs.log_of(p)
        st, body, _ = http(port, "/health")
        assert st == 503
        b = json.loads(body)
        assert b["status"] == "starting" and b["workers_alive"] == 0 and "loading" in b["message"]
        assert http(port, "/health", "HEAD")[0] == 503
        assert http(port, "/health_generate")[0] == 503
        while http(port, "/health")[0] != 200:
            assert time.time() < deadline, procs.log_of(p)
            time.sleep(0.1)
        st, body, hdr = http(port, "/health", "HEAD")
        assert st == 200 and body == "" and int(hdr["Content-Length"]) > 0
        assert http(port, "/health_generate")[0] == 200
        log = procs.log_of(p)
        assert "loading weights" in log or "dummy weights" in log or "weights: layer" in log
        assert "model loaded in" in log and "ready" in log
    finally:
        procs.stop()


def test_port_in_use_fails_before_loading(model, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        monkeypatch.setenv("SLUICE_TEST_LOAD_DELAY_MS", "20000")
        t = time.time()
        r = run("serve", "--model-path", model, "--port", s.getsockname()[1])
        assert r.returncode == 1 and "cannot listen" in r.stderr and time.time() - t < 5
    finally:
        s.close()


@pytest.fixture(scope="module")
def rt(model):
    procs = Procs()
    try:
        w = start_mock(procs, "mock")
        p, port = start_router(procs, model, [w], "--allow-origin", "https://app.example",
                               "--log-level", "info", "--stats-interval-ms", 300,
                               "--enable-metrics", "--trust-remote-code",
                               "--skip-server-warmup", "--dtype", "bfloat16",
                               "--schedule-policy", "lpm", "--attention-backend", "fa3",
                               "--grammar-backend", "xgrammar", "--kv-cache-dtype", "auto",
                               "--mamba-ssm-dtype", "float32", "--allow-auto-truncate",
                               "--tokenizer-path", model)
        yield {"procs": procs, "p": p, "port": port}
    finally:
        procs.stop()


def test_info_endpoints(rt, model):
    port = rt["port"]
    st, body, _ = http(port, "/version")
    assert st == 200 and json.loads(body)["version"] in run("--version").stdout
    assert re.match(r"sluice \d+\.\d+\.\d+", run("--version").stdout)
    st, body, _ = http(port, "/get_model_info", key=API_KEY)
    info = json.loads(body)
    assert st == 200 and info["model_path"] == model and info["tokenizer_path"] == model
    assert info["is_generation"] is True and info["model_type"] == "qwen3"
    assert http(port, "/get_model_info")[0] == 401
    st, body, _ = http(port, "/get_server_info", key=API_KEY)
    si = json.loads(body)
    assert st == 200 and si["model_path"] == model and si["served_model_name"] == "tiny"
    assert "api_key" not in si and API_KEY not in body
    assert si["workers_alive"] == 1
    # HEAD on a GET route: headers, no body
    st, body, hdr = http(port, "/v1/models", "HEAD", key=API_KEY)
    assert st == 200 and body == "" and int(hdr["Content-Length"]) > 10
    st, body, _ = http(port, "/health_generate")
    assert st == 200


def test_cors_metrics_access_log(rt):
    port = rt["port"]
    st, _, hdr = http(port, "/v1/chat/completions", "OPTIONS",
                      headers={"Origin": "https://app.example",
                               "Access-Control-Request-Method": "POST"})
    assert st == 204 and hdr["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in hdr["Access-Control-Allow-Methods"]
    assert "Authorization" in hdr["Access-Control-Allow-Headers"]
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
    r = c.completions.with_raw_response.create(model="tiny", prompt=[1, 2, 3], max_tokens=2)
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    # /metrics needs no key, and carries SGLang's names
    st, text, _ = http(port, "/metrics")
    assert st == 200
    for name in ["sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:gen_throughput",
                 "sglang:prompt_tokens_total", "sglang:generation_tokens_total",
                 "sglang:time_to_first_token_seconds_bucket",
                 "sglang:e2e_request_latency_seconds_count", "sglang:cache_hit_rate",
                 "sglang:token_usage"]:
        assert re.search("^" + re.escape(name) + r"[ {]", text, re.M), name
    assert re.search(r"^sglang:prompt_tokens_total [1-9]", text, re.M)
    deadline = time.time() + 5
    while "stats[" not in rt["procs"].log_of(rt["p"]) and time.time() < deadline:
        time.sleep(0.1)
    log = rt["procs"].log_of(rt["p"])
    assert re.search(r"access.*POST /v1/completions 200 prompt_tokens=3 completion_tokens=2 "
                     r"[\d.]+ms", log), log
    assert "Hello" not in log
    assert re.search(r"stats.*#running-req \d+, #queue-req \d+.*gen throughput", log), log
    for flag in ["--schedule-policy lpm", "--attention-backend fa3",
                 "--mamba-ssm-dtype", "--allow-auto-truncate"]:
        assert flag in log, flag
    # --grammar-backend xgrammar: sluice's own engine serves it, so no warning
    assert "--grammar-backend" not in log


def test_grammar_backend_none_refuses_constraints(model):
    procs = Procs()
    try:
        w = start_mock(procs, "mock")
        _, port = start_router(procs, model, [w], "--grammar-backend", "none")
        st, o = post(port, "/v1/completions", {"prompt": "a", "max_tokens": 2, "regex": "a+"})
        assert st == 400 and "--grammar-backend none" in o["error"]["message"], o
        st, o = post(port, "/v1/completions", {"prompt": "a", "max_tokens": 2})
        assert st == 200, o
    finally:
        procs.stop()


def test_metrics_require_key(model):
    procs = Procs()
    try:
        w = start_mock(procs, "mock")
        _, port = start_router(procs, model, [w], "--metrics-require-key")
        assert http(port, "/metrics")[0] == 401
        assert http(port, "/metrics", key=API_KEY)[0] == 200
    finally:
        procs.stop()


def test_sglang_flags_refused_clearly(model, tmp_path):
    base = ["router", "--model-path", model, "--worker", "ipc:///nonexistent"]
    cases = [(["--dtype", "float16"], "bfloat16"),
             (["--kv-cache-dtype", "fp8_e5m2"], "bfloat16"),
             (["--reasoning-parser", "deepseek-r1"], "qwen3"),
             (["--tool-call-parser", "qwen3"], "tool-call-parser qwen3: unknown"),
             (["--log-level", "loud"], "debug, info"),
             (["--schedule-policy", "best"], "fcfs"),
             (["--grammar-backend", "regexy"], "xgrammar, outlines, llguidance or none"),
             (["--no-such-flag"], "no-such-flag")]
    for extra, want in cases:
        r = run(*base, *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert re.search(want, r.stderr), (extra, r.stderr)
    r = run(*base, "--tool-call-parser", "qwen3")
    assert "qwen3_coder" in r.stderr and "hermes" in r.stderr
    bad = tmp_path / "other.jinja"
    bad.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    r = run(*base, "--chat-template", bad)
    assert r.returncode == 2 and str(bad) in r.stderr and "qwen3_coder" in r.stderr


def test_chat_template_file_and_hf_cache(model, tmp_path):
    procs = Procs()
    try:
        w = start_mock(procs, "mock")
        tpl = TOKENIZER.parent / "qwen3-coder-template" / "chat_template.jinja"
        # SGLang's other names for the same parsers start too
        start_router(procs, model, [w], "--chat-template", tpl, "--tool-call-parser", "qwen",
                     "--reasoning-parser", "qwen3-thinking")
        # a Qwen3 template file taken from tokenizer_config.json works too
        cfg = json.loads((TOKENIZER / "tokenizer_config.json").read_text())
        q3 = tmp_path / "qwen3.jinja"
        q3.write_text(cfg["chat_template"])
        w2 = start_mock(procs, "mock2")
        start_router(procs, model, [w2], "--chat-template", q3)
        # --model-path ORG/NAME found in the Hugging Face cache layout
        hub = tmp_path / "hf" / "hub" / "models--Org--Tiny"
        (hub / "refs").mkdir(parents=True)
        commit = "abc123" * 6 + "abcd"  # 40 hex digits, as the Hub's commits
        (hub / "refs" / "main").write_text(commit)
        (hub / "snapshots").mkdir()
        os.symlink(model, hub / "snapshots" / commit)
        env = dict(os.environ, HF_HOME=str(tmp_path / "hf"))
        w3 = start_mock(procs, "mock3")
        old = os.environ.get("HF_HOME")
        os.environ["HF_HOME"] = env["HF_HOME"]
        try:
            _, port = start_router(procs, "Org/Tiny", [w3])
        finally:
            if old is None:
                del os.environ["HF_HOME"]
            else:
                os.environ["HF_HOME"] = old
        st, body, _ = http(port, "/get_model_info", key=API_KEY)
        assert json.loads(body)["model_path"].endswith("snapshots/" + commit)
        # a model not in the cache is downloaded (tests/py/test_hub.py), unless offline
        env["HF_HUB_OFFLINE"] = "1"
        r = run("router", "--model-path", "Org/Missing", "--worker", "ipc:///x", env=env)
        assert r.returncode == 2 and "models--Org--Missing" in r.stderr
        assert "HF_HUB_OFFLINE is set" in r.stderr
    finally:
        procs.stop()


def test_ipv6_listen_line(model):
    procs = Procs()
    try:
        w = start_mock(procs, "mock")
        p = procs.start("router", "--model-path", model, "--worker", w, "--host", "::",
                        "--port", 0, name="router")
        deadline = time.time() + 10
        while "listening" not in procs.log_of(p) and time.time() < deadline:
            assert p.poll() is None or "Address family" in procs.log_of(p), procs.log_of(p)
            time.sleep(0.05)
        if p.poll() is not None:
            pytest.skip("no IPv6 here")
        assert re.search(r"listening on http://\[::\]:\d+$", procs.log_of(p), re.M)
    finally:
        procs.stop()


def test_flush_cache_refused_while_busy(model):
    """/flush_cache flushes nothing while a worker runs requests (400, as
    SGLang), works once it is idle, and is 503 without a live worker."""
    procs = Procs()
    try:
        w = start_mock(procs, "slow", "--delay-ms", 40)
        _, port = start_router(procs, model, [w])
        done = {}

        def long_request():
            done["r"] = post(port, "/v1/completions",
                             {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 60})

        t = threading.Thread(target=long_request)
        t.start()
        time.sleep(0.5)  # the mock now has the request running
        st, body, _ = http(port, "/flush_cache", "POST", key=API_KEY)
        assert st == 400, body
        msg = json.loads(body)["error"]["message"]
        assert "cache flushed on 0 of 1 workers" in msg and "requests running" in msg
        t.join(30)
        assert done["r"][0] == 200
        st, body, _ = http(port, "/flush_cache", "POST", key=API_KEY)
        assert st == 200 and body.startswith("Cache flushed:"), body
        _, port2 = start_router(procs, model, [procs.ipc("nobody")], alive=0)
        st, body, _ = http(port2, "/flush_cache", "POST", key=API_KEY)
        assert st == 503 and "no worker is alive" in json.loads(body)["error"]["message"]
    finally:
        procs.stop()
