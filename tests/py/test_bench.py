"""`sluice bench` against a fake OpenAI-compatible server with a known token pace.

The server (asyncio, raw HTTP/1.1 with keep-alive) streams completions: the
first token 50 ms after the request arrives, then one every 10 ms, each token
scheduled from the request's arrival so jitter does not accumulate. It records
every payload, when each request arrived and when each chunk left, and the peak
number of requests in flight, so the tests check what the client sent and
compare what it measured with the server's own record (which keeps them
meaningful when a loaded machine makes the server late)."""
import asyncio
import json
import math
import pathlib
import subprocess
import threading
import time

import numpy as np
import pytest

TTFT = 0.050
ITL = 0.010


class FakeServer:
    """One asyncio loop in a thread; options change how it answers."""

    def __init__(self, tokens_per_chunk=1, fail_every=0, send_usage=True, chunk_usage=False,
                 never_stream=False, hang_up=None, flush_status=200):
        self.tokens_per_chunk = tokens_per_chunk
        self.fail_every = fail_every  # every n-th completion gets HTTP 500
        self.send_usage = send_usage  # final usage chunk when asked for
        self.chunk_usage = chunk_usage  # usage (running count) in every chunk
        self.never_stream = never_stream  # answer plain JSON even when asked to stream
        # close each connection after one completion: "announced" says so in a
        # Connection: close header, "silent" just hangs up (a stale keep-alive)
        self.hang_up = hang_up
        self.flush_status = flush_status  # what POST /flush_cache answers
        self.flushes = []  # per POST /flush_cache: completions received before it
        self.payloads = []
        self.record = []  # per completion: {"recv": t, "sends": [(t, tokens so far)]}
        self.in_flight = 0
        self.peak = 0
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait()

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._conn, "127.0.0.1", 0, backlog=256))
        self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    def close(self):
        async def stop():
            self.server.close()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    async def _conn(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                t0 = time.monotonic()
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if l)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if method == "GET" and path == "/v1/models":
                    self._send_json(writer, 200, {"object": "list", "data": [{"id": "fake-model"}]})
                elif method == "POST" and path == "/flush_cache":
                    self.flushes.append(len(self.payloads))
                    self._send_json(writer, self.flush_status, {"error": {"message": "busy"}}
                                    if self.flush_status != 200 else {})
                elif method == "POST" and path == "/v1/completions":
                    await self._completion(writer, json.loads(body), headers, t0)
                    if self.hang_up:
                        await writer.drain()
                        break
                else:
                    self._send_json(writer, 404, {"error": {"message": f"no route {path}"}})
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _send_json(self, writer, status, obj):
        data = json.dumps(obj).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
                     % (status, len(data), self._connection_header()) + data)

    def _connection_header(self):
        return b"Connection: close\r\n" if self.hang_up == "announced" else b""

    async def _completion(self, writer, req, headers, t0):
        self.payloads.append({**req, "authorization": headers.get("authorization")})
        rec = {"recv": t0, "sends": []}
        self.record.append(rec)
        n = len(self.payloads)
        if self.fail_every and n % self.fail_every == 0:
            self._send_json(writer, 500, {"error": {"message": "injected failure"}})
            return
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            total = req["max_tokens"]
            if not req.get("stream") or self.never_stream:
                await asyncio.sleep(TTFT + ITL * (total - 1))
                rec["sends"].append((time.monotonic(), total))
                self._send_json(writer, 200, {"choices": [{"text": "x" * total}],
                                              "usage": {"completion_tokens": total}})
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n%s\r\n" % self._connection_header())

            def event(obj):
                data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))

            sent = 0
            while sent < total:
                # token number `sent` is due at t0 + TTFT + sent * ITL
                await asyncio.sleep(max(0.0, t0 + TTFT + sent * ITL - time.monotonic()))
                k = 1 if sent == 0 else min(self.tokens_per_chunk, total - sent)
                if k > 1:  # wait for the last token of the chunk
                    await asyncio.sleep(max(0.0, t0 + TTFT + (sent + k - 1) * ITL - time.monotonic()))
                sent += k
                rec["sends"].append((time.monotonic(), sent))
                chunk = {"choices": [{"text": "t" * k, "index": 0}]}
                if self.chunk_usage:
                    chunk["usage"] = {"completion_tokens": sent}
                event(chunk)
                await writer.drain()
            if self.send_usage and (req.get("stream_options") or {}).get("include_usage"):
                event({"choices": [], "usage": {"prompt_tokens": len(req["prompt"]),
                                                "completion_tokens": total}})
            event(b"[DONE]")
            writer.write(b"0\r\n\r\n")
        finally:
            self.in_flight -= 1


@pytest.fixture
def server():
    servers = []

    def make(**kw):
        s = FakeServer(**kw)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return tokenizer_dir


def bench(sluice_bin, port, *args, ok=True):
    r = subprocess.run([sluice_bin, "bench", "--port", str(port), *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def parse_block(out):
    """The printed result block as {label: value string}."""
    lines = out.splitlines()
    i = lines.index("============ Serving Benchmark Result ============")
    block = {}
    for line in lines[i + 1:]:
        if line.startswith("=" * 50):
            break
        if ":" in line and not line.startswith("-"):
            k, v = line.rsplit(":", 1)
            block[k.strip()] = v.strip()
    return block, lines[i:]


def truth(srv, skip=0):
    """The server's view of the completions after the first `skip`: mean TTFT,
    mean ITL (gaps split evenly over the tokens of a chunk) and mean E2E, in ms."""
    recs = [r for r in srv.record[skip:] if r["sends"]]
    ttft = [r["sends"][0][0] - r["recv"] for r in recs]
    span = sum(r["sends"][-1][0] - r["sends"][0][0] for r in recs)
    gaps = sum(r["sends"][-1][1] - r["sends"][0][1] for r in recs)
    e2e = [r["sends"][-1][0] - r["recv"] for r in recs]
    return np.mean(ttft) * 1000, span / gaps * 1000 if gaps else 0.0, np.mean(e2e) * 1000


def near_truth(b, srv, skip=0):
    """The client's TTFT, ITL and E2E against the server's record: the client
    sees each event a little later than the server sent it, never earlier (the
    slack is for a loaded machine; a wrong clock start or end is off by more)."""
    ttft, itl, e2e = truth(srv, skip)
    assert ttft - 1 <= float(b["Mean TTFT (ms)"]) <= ttft + 30
    assert abs(float(b["Mean ITL (ms)"]) - itl) <= 1.5
    assert e2e - 1 <= float(b["Mean E2E Latency (ms)"]) <= e2e + 30
    return ttft, itl


def timed_run(server, sluice_bin, args, check, **srv_kw):
    """Runs the benchmark against a fresh server and applies check(block, srv).
    The timing checks compare the client with the server's record; a loaded
    machine can still skew one run (a process descheduled for tens of ms), so a
    failed check gets one fresh attempt before it counts: a client that measures
    wrong fails both."""
    for attempt in (1, 2):
        srv = server(**srv_kw)
        r = bench(sluice_bin, srv.port, *args)
        b, lines = parse_block(r.stdout)
        try:
            check(b, srv)
            return b, lines, srv, r
        except AssertionError:
            if attempt == 2:
                raise


def special_ids(tokenizer):
    t = json.loads((tokenizer / "tokenizer.json").read_text())
    return {a["id"] for a in t["added_tokens"] if a["special"]}, len(t["model"]["vocab"])


def test_stream_metrics_and_payloads(sluice_bin, server, tokenizer, tmp_path):
    def timing(b, srv):
        # the server's pace (50 ms, then 10 ms a token; late only when the
        # machine is loaded) as the server itself recorded it
        ttft, itl = near_truth(b, srv, skip=1)
        assert 49 <= ttft < 150 and 8 <= itl < 20
        assert float(b["Mean TTFT (ms)"]) >= 49
        assert abs(float(b["Mean TPOT (ms)"]) - itl) < 2

    out = tmp_path / "res.jsonl"
    b, lines, srv, r = timed_run(
        server, sluice_bin, ["--tokenizer", tokenizer, "--num-prompts", 8, "--max-concurrency", 2,
                             "--random-input-len", 64, "--random-output-len", 20, "--random-range-ratio",
                             0.5, "--seed", 7, "--output-file", out, "--output-details", "--api-key", "sk-test"],
        timing)

    # the block: sglang's labels in sglang's order, sglang's widths
    heads = [l.split(":")[0] if ":" in l else l for l in lines[1:lines.index("=" * 50)]]
    dist = lambda name: [f"{s} {name} (ms)" for s in ("Mean", "Median", "P90", "P95", "P99")]
    assert heads == [
        "Backend", "Traffic request rate", "Max request concurrency", "Successful requests",
        "Benchmark duration (s)", "Total input tokens", "Total generated tokens",
        "Request throughput (req/s)", "Input token throughput (tok/s)", "Output token throughput (tok/s)",
        "Peak output token throughput (tok/s)", "Peak concurrent requests", "Total token throughput (tok/s)",
        "Concurrency",
        "----------------End-to-End Latency----------------", *dist("E2E Latency"),
        "---------------Time to First Token----------------", *dist("TTFT"),
        "-----Time per Output Token (excl. 1st token)------", *dist("TPOT"),
        "---------------Inter-Token Latency----------------", *dist("ITL"), "Max ITL (ms)"]
    assert all(len(l) >= 51 and l[40] == " " for l in lines[1:] if ":" in l)  # "{:<40} {:<10}"
    assert lines[1] == "Backend:                                 sglang-oai"
    assert b["Traffic request rate"] == "inf" and b["Max request concurrency"] == "2"
    assert b["Successful requests"] == "8"

    # what was sent: the model from /v1/models, the drawn lengths, real ids
    main = srv.payloads[1:]  # the first is the warmup
    assert len(main) == 8
    warm = srv.payloads[0]
    assert warm["max_tokens"] == min(main[0]["max_tokens"], 32) and warm["prompt"] == main[0]["prompt"]
    specials, nvocab = special_ids(tokenizer)
    np.random.seed(7)  # sglang's draws for the same seed
    want_in = np.random.randint(32, 65, size=8)
    want_out = np.random.randint(10, 21, size=8)
    assert sorted(len(p["prompt"]) for p in main) == sorted(want_in.tolist())
    assert sorted(p["max_tokens"] for p in main) == sorted(want_out.tolist())
    for p in main:
        assert p["model"] == "fake-model" and p["stream"] is True and p["ignore_eos"] is True
        assert p["temperature"] == 0 and p["stream_options"] == {"include_usage": True}
        assert p["authorization"] == "Bearer sk-test"
        assert all(isinstance(i, int) and 0 <= i < nvocab and i not in specials for i in p["prompt"])
    assert int(b["Total input tokens"]) == want_in.sum()
    assert int(b["Total generated tokens"]) == want_out.sum()
    assert srv.peak == 2  # the cap was reached and never exceeded
    assert srv.connections == 1 + 1 + 2  # /v1/models, the warmup, then 2 kept alive

    # what was measured: see timing() above
    dur = float(b["Benchmark duration (s)"])
    assert abs(float(b["Request throughput (req/s)"]) - 8 / dur) < 0.02 * 8 / dur + 0.01
    assert abs(float(b["Output token throughput (tok/s)"]) - want_out.sum() / dur) < 0.02 * want_out.sum() / dur + 0.01
    assert 1.7 < float(b["Concurrency"]) <= 2.0
    # sglang counts requests touching each 1-second bucket: all 8 overlap the first second
    assert 2 <= int(b["Peak concurrent requests"]) <= 8
    assert 0 < float(b["Peak output token throughput (tok/s)"]) <= want_out.sum()

    # the JSON line carries the same numbers
    res = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(res) in (1, 2)  # one line per run (two if the timing needed a second attempt)
    j = res[-1]
    for k in ["backend", "dataset_name", "request_rate", "max_concurrency", "random_input_len",
              "random_output_len", "random_range_ratio", "duration", "completed", "total_input_tokens",
              "total_output_tokens", "request_throughput", "input_throughput", "output_throughput",
              "total_throughput", "mean_e2e_latency_ms", "median_e2e_latency_ms", "p99_e2e_latency_ms",
              "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
              "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "p95_itl_ms", "p99_itl_ms", "max_itl_ms",
              "concurrency", "max_output_tokens_per_s", "max_concurrent_requests"]:
        assert k in j, k
    assert j["completed"] == 8 and j["failed"] == 0 and j["max_concurrency"] == 2
    assert float(j["request_rate"]) == math.inf
    assert j["total_output_tokens"] == want_out.sum()
    assert f"{j['mean_ttft_ms']:.2f}" == b["Mean TTFT (ms)"]
    assert f"{j['duration']:.2f}" == b["Benchmark duration (s)"]
    # --output-details: one entry per request, in prompt order
    assert sorted(j["input_lens"]) == sorted(want_in.tolist()) and sum(j["input_lens"]) == want_in.sum()
    assert sorted(j["output_lens"]) == sorted(want_out.tolist())
    assert [len(g) for g in j["itls"]] == [n - 1 for n in j["output_lens"]]
    assert all(t >= TTFT for t in j["ttfts"]) and j["errors"] == [""] * 8
    assert abs(np.mean(np.concatenate(j["itls"])) * 1000 - j["mean_itl_ms"]) < 1e-6


def test_poisson_rate_and_no_cap(sluice_bin, server, tokenizer):
    # sglang's arrivals: gaps of np.random.exponential(1/40) drawn after the lengths
    np.random.seed(1)
    np.random.randint(16, 17, size=12), np.random.randint(5, 6, size=12)
    gaps = np.random.exponential(1 / 40, size=12)
    want = np.concatenate([[0], np.cumsum(gaps[:-1])])

    def timing(b, srv):
        near_truth(b, srv)
        got = np.array([r["recv"] for r in srv.record]) - srv.record[0]["recv"]
        late = got - want
        late -= np.median(late)  # the server's clock of the first arrival may itself be late
        assert np.mean(np.abs(late)) < 0.012 and np.max(np.abs(late)) < 0.05, late

    b, _, srv, r = timed_run(server, sluice_bin, [
        "--tokenizer", tokenizer, "--num-prompts", 12, "--request-rate", 40, "--random-input-len", 16,
        "--random-output-len", 5, "--random-range-ratio", 1, "--warmup-requests", 0], timing)
    assert b["Traffic request rate"] == "40.0" and b["Max request concurrency"] == "not set"
    assert b["Successful requests"] == "12" and int(b["Total generated tokens"]) == 60
    # the run waits out the gap after the last request, as sglang's does
    assert float(b["Benchmark duration (s)"]) >= max(gaps.sum(), want[-1] + TTFT + 4 * ITL) - 0.01


def test_multi_token_chunks(sluice_bin, server, tokenizer):
    """Chunks of 4 tokens with a running usage count: each counts as 4 gaps of 1/4."""
    def timing(b, srv):
        # 4 chunks of 4 after the first token: 16 gaps of ~10 ms each, not 4 of ~40
        ttft, itl = near_truth(b, srv)
        assert 8 <= itl < 20 and float(b["Median ITL (ms)"]) < 30

    b, _, _, _ = timed_run(server, sluice_bin, [
        "--tokenizer", tokenizer, "--num-prompts", 3, "--random-input-len", 8, "--random-output-len", 17,
        "--random-range-ratio", 1, "--warmup-requests", 0], timing, tokens_per_chunk=4, chunk_usage=True)
    assert int(b["Total generated tokens"]) == 51


def test_no_usage_counts_chunks(sluice_bin, server, tokenizer):
    b, _, _, _ = timed_run(server, sluice_bin, [
        "--tokenizer", tokenizer, "--num-prompts", 2, "--random-input-len", 8, "--random-output-len", 9,
        "--random-range-ratio", 1, "--warmup-requests", 0], near_truth, send_usage=False)
    assert int(b["Total generated tokens"]) == 18


def test_disable_stream(sluice_bin, server, tokenizer):
    def timing(b, srv):
        _, _, e2e_truth = truth(srv)
        e2e = float(b["Mean E2E Latency (ms)"])
        assert e2e_truth >= 100 and e2e_truth - 1 <= e2e <= e2e_truth + 30

    b, _, srv, _ = timed_run(server, sluice_bin, [
        "--tokenizer", tokenizer, "--num-prompts", 2, "--random-input-len", 8, "--random-output-len", 6,
        "--random-range-ratio", 1, "--warmup-requests", 0, "--disable-stream", "--disable-ignore-eos",
        "--model", "named"], timing)
    assert all(p["stream"] is False and p["ignore_eos"] is False and "stream_options" not in p
               and p["model"] == "named" for p in srv.payloads)
    assert float(b["Mean TTFT (ms)"]) == float(b["Mean E2E Latency (ms)"])  # TTFT = latency unstreamed
    assert int(b["Total generated tokens"]) == 12


def test_extra_request_body(sluice_bin, server, tokenizer):
    srv = server()
    extra = {"regex": "[a-z]+", "response_format": {"type": "json_object"}, "temperature": 0.7}
    bench(sluice_bin, srv.port, "--tokenizer", tokenizer, "--num-prompts", 3, "--random-input-len", 8,
          "--random-output-len", 4, "--extra-request-body", json.dumps(extra))
    # every request (warmup too) carries the fields; a field the bench sets is overridden
    assert len(srv.payloads) == 4 and all(
        p["regex"] == "[a-z]+" and p["response_format"] == {"type": "json_object"}
        and p["temperature"] == 0.7 and p["max_tokens"] > 0 for p in srv.payloads)


def test_flush_cache(sluice_bin, server, tokenizer):
    """--flush-cache: one POST /flush_cache between the warmup and the run
    (sglang's order); a server that refuses it stops the bench."""
    srv = server()
    args = ["--tokenizer", tokenizer, "--num-prompts", 3, "--random-input-len", 8,
            "--random-output-len", 2, "--flush-cache"]
    bench(sluice_bin, srv.port, *args)
    assert srv.flushes == [1] and len(srv.payloads) == 4
    bench(sluice_bin, srv.port, *args[:-1])
    assert srv.flushes == [1]  # not without the flag
    srv = server(flush_status=400)
    r = bench(sluice_bin, srv.port, *args, ok=False)
    assert r.returncode == 1 and len(srv.payloads) == 1  # the warmup only
    assert f"--flush-cache: POST /flush_cache on 127.0.0.1:{srv.port}: HTTP 400: busy" in r.stderr


def test_server_errors_are_failures(sluice_bin, server, tokenizer):
    srv = server(fail_every=3)
    r = bench(sluice_bin, srv.port, "--tokenizer", tokenizer, "--num-prompts", 6, "--random-input-len", 8,
              "--random-output-len", 3, "--random-range-ratio", 1, "--warmup-requests", 0)
    b, _ = parse_block(r.stdout)
    assert b["Successful requests"] == "4" and int(b["Total generated tokens"]) == 12
    assert "2 of 6 requests failed" in r.stderr
    assert r.stderr.count("HTTP 500: injected failure") == 1  # once, with its count
    assert "2 x HTTP 500: injected failure" in r.stderr


@pytest.mark.parametrize("hang_up", ["announced", "silent"])
def test_server_closing_connections(sluice_bin, server, tokenizer, hang_up):
    """A server that closes after each response, saying so or not: nothing is lost,
    a connection the server dropped is replaced (the request sent again)."""
    srv = server(hang_up=hang_up)
    r = bench(sluice_bin, srv.port, "--tokenizer", tokenizer, "--num-prompts", 6, "--max-concurrency", 2,
              "--random-input-len", 8, "--random-output-len", 3, "--random-range-ratio", 1)
    b, _ = parse_block(r.stdout)
    assert b["Successful requests"] == "6" and int(b["Total generated tokens"]) == 18
    assert srv.connections >= 1 + 1 + 6  # /v1/models, warmup, then one per request
    assert len(srv.payloads) >= 7


def test_stream_without_events_fails(sluice_bin, server, tokenizer):
    srv = server(never_stream=True)
    r = bench(sluice_bin, srv.port, "--tokenizer", tokenizer, "--num-prompts", 2, "--random-input-len", 8,
              "--random-output-len", 2, "--warmup-requests", 0, ok=False)
    assert r.returncode == 1 and "2 x the response carried no server-sent events" in r.stderr
    b, _ = parse_block(r.stdout)
    assert b["Successful requests"] == "0" and b["Mean TTFT (ms)"] == "0.00"


def test_connection_refused(sluice_bin, tokenizer):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = bench(sluice_bin, port, "--tokenizer", tokenizer, ok=False)
    assert r.returncode == 1
    assert "connection refused" in r.stderr and f"127.0.0.1:{port}" in r.stderr
    r = bench(sluice_bin, port, "--tokenizer", tokenizer, "--model", "m", "--num-prompts", 2, ok=False)
    assert r.returncode == 1 and "warmup failed" in r.stderr and "connection refused" in r.stderr


@pytest.mark.parametrize("args,msg", [
    (["--num-prompts", "0"], "--num-prompts"),
    (["--random-range-ratio", "1.5"], "--random-range-ratio"),
    (["--request-rate", "0"], "--request-rate"),
    (["--request-rate", "fast"], "--request-rate"),
    (["--max-concurrency", "0"], "--max-concurrency"),
    (["--backend", "sglang-oai-chat"], "chat"),
    (["--backend", "trt"], "--backend"),
    (["--base-url", "https://x"], "--base-url"),
    (["--bogus"], "--bogus"),
    (["--model", "m"], "no tokenizer"),
    (["--output-details"], "--output-file"),
    (["--extra-request-body", "[1]"], "--extra-request-body"),
    (["--extra-request-body", "{bad"], "--extra-request-body"),
])
def test_bad_flags(sluice_bin, args, msg):
    r = subprocess.run([sluice_bin, "bench", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and msg in r.stderr, r.stderr
