"""Prefill/decode disaggregation (docs/disaggregation.md), CPU backend, real
processes: outputs with disaggregation equal unified outputs for the three
architectures (prefix-cache hits on the prefill side, extra_buffer branch
points on qwen3_next), a follow-up turn reuses the decode side's cache, and
killing the prefill worker mid-transfer or the decode worker mid-stream ends
cleanly with every pool empty on the survivors."""
import http.client
import json
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from router_harness import API_KEY, BIN, SLOW, Procs, make_tiny, metrics, post, start_router

MEM = 64 << 20


def start_role(procs, model, name, role, *extra):
    url = procs.ipc(name)
    p = procs.start("worker", "--model", model, "--listen", url, "--mem-bytes", MEM,
                    "--context-length", 1024, "--disaggregation-mode", role,
                    "--disaggregation-timeout", 10 * SLOW, *extra, name=name)
    p.url = url
    return p


def start_pair(procs, model, extra=(), pre_extra=(), dec_extra=()):
    """A unified worker behind one router, and a prefill and a decode worker
    behind a PD router (extra goes to all three). Returns (unified port, PD
    port, prefill URL, decode URL)."""
    uni = procs.ipc("uni")
    procs.start("worker", "--model", model, "--listen", uni, "--mem-bytes", MEM,
                "--context-length", 1024, *extra, name="uni")
    pre = start_role(procs, model, "pre", "prefill", *extra, *pre_extra).url
    dec = start_role(procs, model, "dec", "decode", *extra, *dec_extra).url
    _, up = start_router(procs, model, [uni])
    _, pp = start_router(procs, model, [], "--pd-disaggregation", "--prefill", pre,
                         "--decode", dec, alive=2)
    return up, pp, pre, dec


def stream(port, ids, max_tokens, on_chunk):
    """Streams a greedy completion; on_chunk(n) after every chunk. Returns the text."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60 * SLOW)
    body = {"model": "tiny", "prompt": ids, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}
    c.request("POST", "/v1/completions", json.dumps(body),
              {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    text, n = "", 0
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        d = json.loads(line[6:])
        assert "error" not in d, d
        text += d["choices"][0]["text"]
        n += 1
        on_chunk(n)
    return text


def complete(port, ids, max_tokens=12, stream=False, **kw):
    body = {"model": "tiny", "prompt": ids, "max_tokens": max_tokens, "temperature": 0,
            "logprobs": 1, **kw}
    st, r = post(port, "/v1/completions", body)
    assert st == 200 and "choices" in r, r
    c = r["choices"][0]
    return c["text"], c["logprobs"]["token_logprobs"], r["usage"]


def prompts(vocab_hi=2000):
    shared = [(i * 37 + 11) % vocab_hi + 5 for i in range(140)]  # >= 128 shared tokens
    return [
        [(i * 13 + 7) % vocab_hi + 5 for i in range(20)],
        shared + [17, 23, 99],
        shared + [5, 6, 7, 8, 9],  # prefill-side prefix hit (branch point on qwen3_next)
        shared + [5, 6, 7, 8, 9, 10, 11],
        [(i * 29 + 3) % vocab_hi + 5 for i in range(70)],
        [42],
    ]


def pools_empty(port, urls, timeout=20 * SLOW, until=lambda m: True):
    """Every worker in urls reports nothing running or waiting and all its
    pages and slots free (or evictable cache), and until(metrics) holds (load
    reports come every heartbeat: counters catch up with a delay)."""
    time.sleep(0.5)  # a fresh load report from everyone (heartbeats every 200 ms)
    deadline = time.time() + timeout
    while True:
        m = metrics(port)
        bad = []
        for u in urls:
            k = f'{{worker="{u}"}}'
            if (m.get("sluice_worker_running" + k) or m.get("sluice_worker_queued" + k) or
                    m.get("sluice_worker_pd_waiting" + k) or
                    m["sluice_worker_free_kv_pages" + k] != m["sluice_worker_total_kv_pages" + k]
                    or m["sluice_worker_free_mamba_slots" + k] !=
                    m["sluice_worker_total_mamba_slots" + k]):
                bad.append(u)
        if not bad and until(m):
            return m
        if time.time() > deadline:
            raise AssertionError(f"pools not empty on {bad}: " +
                                 json.dumps({k: v for k, v in m.items() if "worker" in k}))
        time.sleep(0.1)


@pytest.mark.parametrize("arch,page", [("qwen3", 1), ("qwen3_moe", 16), ("qwen3_next", 1)])
def test_pd_equals_unified(tmp_path, arch, page):
    """qwen3_moe runs with 16-token pages: partial last pages travel whole and
    the decode side's cached prefix is page aligned."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "m", arch=arch)
        extra = ["--mamba-scheduler-strategy", "extra_buffer"] if arch == "qwen3_next" else []
        extra += ["--page-size", page]
        up, pp, pre, dec = start_pair(procs, model, extra)
        ps = prompts()
        want = [complete(up, p) for p in ps]
        # one after the other: the later shared-prefix prompts hit the prefill cache
        got = [complete(pp, p) for p in ps]
        for w, g in zip(want, got):
            assert g[0] == w[0]
            assert g[1] == pytest.approx(w[1], abs=1e-4)
        # and concurrently (a batch on both sides)
        with ThreadPoolExecutor(6) as ex:
            got = list(ex.map(lambda p: complete(pp, p), ps[::-1]))
        for w, g in zip(want[::-1], got):
            assert g[0] == w[0]
        n = 2 * len(ps)
        m = pools_empty(pp, [pre, dec], until=lambda m: (
            m["sluice_pd_prefill_done_total"] == n and
            m[f'sluice_worker_pd_transfers{{worker="{dec}"}}'] == n and
            m[f'sluice_worker_pd_transfers{{worker="{pre}"}}'] == n))
        assert m["sluice_pd_pairs_total"] == 2 * len(ps)
        assert m["sluice_pd_prefill_done_total"] == 2 * len(ps)
        assert m["sluice_pd_fallbacks_total"] == 0
        assert m[f'sluice_worker_pd_transfers{{worker="{dec}"}}'] == 2 * len(ps)
        assert m[f'sluice_worker_pd_transfer_bytes{{worker="{pre}"}}'] > 0
        assert m[f'sluice_worker_pd_failures{{worker="{dec}"}}'] == 0
        for w in (pre, dec):  # queue waits and holds are reported on both sides
            assert m[f'sluice_worker_pd_queue_seconds{{worker="{w}"}}'] > 0
            assert m[f'sluice_worker_pd_hold_seconds{{worker="{w}"}}'] >= 0

        # a follow-up turn: the decode side reuses what it received and generated
        first = ps[1] + [7, 8]
        text, _, usage = complete(pp, first, max_tokens=4)
        ids = post(pp, "/tokenize", {"model": "tiny", "prompt": text})[1]["tokens"]
        second = first + ids + [300, 301, 302]
        want2 = complete(up, second, max_tokens=6)
        got2 = complete(pp, second, max_tokens=6)
        assert got2[0] == want2[0]
        assert got2[2]["prompt_tokens_details"]["cached_tokens"] >= len(first) // page * page
        # constrained decoding: the prefill side masks the first token, the decode side
        # replays it through its own matcher and masks the rest; greedy equals unified
        body = {"model": "tiny", "prompt": ps[0], "max_tokens": 40, "temperature": 0,
                "regex": r"(yes|no)-[0-9]{1,3}\.( ok)?"}
        cu, cp = post(up, "/v1/completions", body), post(pp, "/v1/completions", body)
        assert cu[0] == cp[0] == 200, (cu, cp)
        assert re.fullmatch(body["regex"], cp[1]["choices"][0]["text"]), cp
        assert cp[1]["choices"][0]["text"] == cu[1]["choices"][0]["text"]
        pools_empty(pp, [pre, dec])
    finally:
        procs.stop()


def test_pd_failures(tmp_path):
    """A decode worker dies mid-stream: the choice moves to the other decode
    worker (paired with a prefill worker again). Then the prefill workers die
    with the decode side waiting for its transfer: the choice runs unified on
    its decode worker. Pools end empty on the survivors."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "m", arch="qwen3_next")
        extra = ["--mamba-scheduler-strategy", "extra_buffer"]
        uni = procs.ipc("uni")
        procs.start("worker", "--model", model, "--listen", uni, "--mem-bytes", MEM,
                    "--context-length", 1024, *extra, name="uni")
        pres = [start_role(procs, model, f"pre{i}", "prefill", *extra) for i in range(2)]
        decs = [start_role(procs, model, f"dec{i}", "decode", *extra) for i in range(2)]
        _, up = start_router(procs, model, [uni])
        # a frozen worker counts as dead only after 10 s: the kills below are
        # seen at once (its pipe drops)
        _, pp = start_router(procs, model, [], "--pd-disaggregation",
                             "--prefill", pres[0].url, "--prefill", pres[1].url,
                             "--decode", decs[0].url, "--decode", decs[1].url,
                             "--dead-after-ms", 10000, alive=4)
        ids = prompts()[1]

        # 1. the decode worker dies mid-stream
        want = stream(up, ids, 600, lambda n: None)
        killed = []

        def kill_decoder(n):
            if n != 3:
                return
            m = metrics(pp)
            for d in decs:
                if m.get(f'sluice_worker_inflight{{worker="{d.url}"}}'):
                    d.kill()
                    killed.append(d)

        got = stream(pp, ids, 600, kill_decoder)
        assert len(killed) == 1
        assert got == want
        alive = [d for d in decs if d not in killed]
        m = pools_empty(pp, [p.url for p in pres] + [alive[0].url],
                        until=lambda m: m["sluice_pd_prefill_done_total"] == 2)
        assert m["sluice_pd_pairs_total"] == 2  # the move paired again

        # 2. the prefill workers die while the decode side waits for its transfer
        want = complete(up, ids, max_tokens=16)
        for p in pres:
            p.send_signal(signal.SIGSTOP)
        res = {}
        t = threading.Thread(target=lambda: res.update(r=complete(pp, ids, max_tokens=16)))
        t.start()
        deadline = time.time() + 10
        while not metrics(pp).get(f'sluice_worker_pd_waiting{{worker="{alive[0].url}"}}'):
            assert time.time() < deadline, "the decode side never waited"
            time.sleep(0.05)
        for p in pres:
            p.kill()
        t.join(30)
        assert res["r"][0] == want[0]
        m = pools_empty(pp, [alive[0].url])
        assert m["sluice_pd_fallbacks_total"] == 1
    finally:
        procs.stop()


def test_pd_layout_mismatch(tmp_path):
    """Workers whose caches differ (here the page size; a dtype the
    same way) are refused with a clear error, and nothing is left held."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "m")
        pre = start_role(procs, model, "pre", "prefill", "--page-size", 2).url
        dec = start_role(procs, model, "dec", "decode").url
        _, pp = start_router(procs, model, [], "--pd-disaggregation", "--prefill", pre,
                             "--decode", dec, alive=2)
        st, r = post(pp, "/v1/completions", {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 3})
        assert st >= 400 and "lay out their caches differently" in json.dumps(r), r
        pools_empty(pp, [pre, dec])
    finally:
        procs.stop()


def test_serve_pd_layout(tmp_path):
    """`sluice serve --pd-prefill 1 --pd-decode 1` starts a PD layout (the
    transfer backend passed on to both workers)."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "m")
        _, port = start_router(procs, model, [], "--pd-prefill", 1, "--pd-decode", 1,
                               "--disaggregation-transfer-backend", "nng",
                               "--mem-bytes", MEM, command="serve", alive=2)
        text, _, usage = complete(port, prompts()[0], max_tokens=5)
        assert usage["completion_tokens"] == 5
        m = pools_empty(port, [], until=lambda m: m["sluice_pd_prefill_done_total"] == 1)
        assert m["sluice_pd_pairs_total"] == 1
        roles = sorted(v for k, v in m.items() if k.startswith("sluice_worker_pd_role"))
        assert roles == [1, 2]
    finally:
        procs.stop()


def test_transfer_backend_flag(tmp_path):
    """A transfer backend other than auto or nng is a usage error, named."""
    model = make_tiny(tmp_path / "m")
    r = subprocess.run([BIN, "worker", "--model", str(model), "--listen", "ipc:///tmp/x",
                        "--disaggregation-mode", "prefill", "--disaggregation-transfer-backend",
                        "nixl"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--disaggregation-transfer-backend must be auto or nng" in r.stderr, r.stderr


def test_pd_client_disconnect(tmp_path):
    """The client goes away while the decode side waits for its transfer (the
    prefill worker frozen), and again mid-stream: both sides free everything."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "m", arch="qwen3_next")
        pre = start_role(procs, model, "pre", "prefill")
        dec = start_role(procs, model, "dec", "decode")
        _, pp = start_router(procs, model, [], "--pd-disaggregation", "--prefill", pre.url,
                             "--decode", dec.url, "--dead-after-ms", 10000, alive=2)
        ids = prompts()[1]

        def open_stream():
            c = http.client.HTTPConnection("127.0.0.1", pp, timeout=60 * SLOW)
            body = {"model": "tiny", "prompt": ids, "max_tokens": 600, "temperature": 0,
                    "ignore_eos": True, "stream": True}
            c.request("POST", "/v1/completions", json.dumps(body),
                      {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
            return c

        pre.send_signal(signal.SIGSTOP)
        c = open_stream()
        deadline = time.time() + 10
        while not metrics(pp).get(f'sluice_worker_pd_waiting{{worker="{dec.url}"}}'):
            assert time.time() < deadline, "the decode side never waited"
            time.sleep(0.05)
        c.close()  # the router aborts both sides
        time.sleep(0.3)
        pre.send_signal(signal.SIGCONT)  # it reads the abort after its generate
        m = pools_empty(pp, [pre.url, dec.url])
        assert m["sluice_aborted_requests_total"] == 1
        # the prefill side may still compute and send (it reads the abort late):
        # the decode side drops what arrives for a request it no longer has
        assert m[f'sluice_worker_pd_transfers{{worker="{dec.url}"}}'] == 0

        c = open_stream()
        r = c.getresponse()
        for _ in range(3):
            r.readline()
        c.close()
        m = pools_empty(pp, [pre.url, dec.url])
        assert m["sluice_aborted_requests_total"] == 2
        assert m["sluice_pd_failed_total"] == 0
    finally:
        procs.stop()


def test_pd_decode_memory(tmp_path):
    """The decode side honours its own pool: two prompts that do not fit
    together wait for each other there (both complete, equal to unified), and
    a prompt longer than the decode side's context fails cleanly; nothing
    stays held."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "m")
        up, pp, pre, dec = start_pair(procs, model, dec_extra=["--max-total-tokens", 420,
                                                               "--context-length", 400])
        a = [(i * 13 + 1) % 1900 + 5 for i in range(300)]
        b = [(i * 17 + 2) % 1900 + 5 for i in range(300)]
        want = [complete(up, p, max_tokens=20) for p in (a, b)]
        with ThreadPoolExecutor(2) as ex:
            got = list(ex.map(lambda p: complete(pp, p, max_tokens=20), (a, b)))
        assert [g[0] for g in got] == [w[0] for w in want]
        st, r = post(pp, "/v1/completions", {"model": "tiny", "prompt": a + b, "max_tokens": 3})
        assert st == 400 and "maximum context length is 400" in json.dumps(r), r
        pools_empty(pp, [pre, dec])
    finally:
        procs.stop()
