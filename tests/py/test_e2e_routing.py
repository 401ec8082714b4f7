"""Routing over two workers: prefix affinity (the real CPU worker's prefix
cache proves where a request ran), load imbalance overriding affinity,
a killed worker failing its requests fast while the next ones go elsewhere,
the worker rejoining, and a router restart that needs no worker restart."""
import socket
import time

import openai
import pytest

from router_harness import (API_KEY, TOKENIZER, metrics, start_mock, start_router,
                            start_worker)

SYSTEM = ("You are a careful assistant for a shipping company. Answer questions about "
          "parcels, tracking numbers, customs forms and delivery windows. ") * 3


def client(port):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                         max_retries=0, timeout=30)


def inflight(port):
    m = metrics(port)
    return sorted(int(v) for k, v in m.items() if k.startswith("sluice_worker_inflight"))


def test_shared_prefix_lands_on_one_worker(procs, model):
    workers = [start_worker(procs, model, f"w{i}") for i in range(2)]
    _, port = start_router(procs, model, workers)
    c = client(port)
    first = c.completions.create(model="tiny", prompt=SYSTEM + "Question 0?", max_tokens=1)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    prefix = first.usage.prompt_tokens - 8
    for i in range(1, 5):
        r = c.completions.create(model="tiny", prompt=SYSTEM + f"Question {i}?", max_tokens=1)
        # the worker that holds the prefix served it from its cache
        assert r.usage.prompt_tokens_details.cached_tokens >= prefix, (i, r.usage)
    trees = sorted(v for k, v in metrics(port).items()
                   if k.startswith("sluice_worker_route_tree_tokens"))
    assert trees[0] == 0 and trees[1] > prefix
    # an unrelated prompt goes to the idle worker with the empty tree
    other = c.completions.create(model="tiny", prompt="Completely different words here",
                                 max_tokens=1)
    assert other.usage.prompt_tokens_details.cached_tokens == 0
    trees = sorted(v for k, v in metrics(port).items()
                   if k.startswith("sluice_worker_route_tree_tokens"))
    assert trees[0] > 0


def open_stream(port, prompt, max_tokens=400):
    """A streaming request left running; returns its socket."""
    import json
    body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": max_tokens,
                       "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              API_KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
              b"\r\n\r\n" + body)
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    return s


def test_imbalance_overrides_affinity(procs):
    workers = [start_mock(procs, f"m{i}", "--delay-ms", 50) for i in range(2)]
    _, port = start_router(procs, str(TOKENIZER), workers, "--balance-abs-threshold", 2,
                           "--balance-rel-threshold", 1.5)
    socks = []
    for i in range(3):
        socks.append(open_stream(port, SYSTEM + f"Q{i}"))
        time.sleep(0.05)
    # affinity held while the gap was <= 2: all three on one worker
    assert inflight(port) == [0, 3]
    socks.append(open_stream(port, SYSTEM + "Q3"))
    time.sleep(0.05)
    # 3 vs 0 is imbalanced: the shared prefix no longer wins
    assert inflight(port) == [1, 3]
    for s in socks:
        s.close()
    for _ in range(100):
        if inflight(port) == [0, 0]:
            break
        time.sleep(0.02)
    assert inflight(port) == [0, 0]


def test_dead_worker_fails_fast_and_rejoins(procs):
    tok = str(TOKENIZER)
    urls = [procs.ipc(f"m{i}") for i in range(2)]
    mocks = [procs.start("mock-worker", "--listen", u, "--delay-ms", 20, name=f"m{i}")
             for i, u in enumerate(urls)]
    # --migration-limit 0: no move to the other worker (test_e2e_faults.py has those)
    router, port = start_router(procs, tok, urls, "--migration-limit", 0)
    c = client(port)
    s = c.completions.create(model="tiny", prompt="Count slowly", max_tokens=500, stream=True)
    next(iter(s))
    victim = next(i for i in range(2)
                  if metrics(port)[f'sluice_worker_inflight{{worker="{urls[i]}"}}'] == 1)
    t0 = time.time()
    procs.stop(mocks[victim], sig=9)
    with pytest.raises(openai.APIError, match="disconnected"):
        for _ in s:
            pass
    assert time.time() - t0 < 1.0
    for i in range(4):
        r = c.completions.create(model="tiny", prompt=f"Next {i}", max_tokens=2)
        assert r.choices[0].finish_reason == "length"
    m = metrics(port)
    assert m[f'sluice_worker_up{{worker="{urls[victim]}"}}'] == 0
    # back on the same address: it rejoins without touching the router
    procs.start("mock-worker", "--listen", urls[victim], name="again")
    for _ in range(100):
        if metrics(port)[f'sluice_worker_up{{worker="{urls[victim]}"}}'] == 1:
            break
        time.sleep(0.05)
    assert metrics(port)[f'sluice_worker_up{{worker="{urls[victim]}"}}'] == 1
    # a router restart needs no worker restart
    procs.stop(router)
    router, port = start_router(procs, tok, urls)
    r = client(port).completions.create(model="tiny", prompt="After restart", max_tokens=3)
    assert r.usage.completion_tokens == 3


def test_sse_keepalive_during_long_prefill(procs):
    """While the first token is slow to come, the stream stays alive."""
    w = start_mock(procs, "slow", "--first-token-delay-ms", 700)
    _, port = start_router(procs, str(TOKENIZER), [w], "--keepalive-ms", 100)
    s = open_stream(port, "Hello", max_tokens=2)
    s.settimeout(5)
    got = b""
    while b"[DONE]" not in got:
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    s.close()
    first_data = got.index(b"data: {")
    assert got.count(b": keep-alive\n\n", 0, first_data) >= 3, got


def test_worker_dns(procs):
    """--worker-dns: every address of the name is a worker."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs.start("mock-worker", "--listen", f"tcp://127.0.0.1:{port}", name="dns")
    r, http = start_router(procs, str(TOKENIZER), [], "--worker-dns", f"localhost:{port}",
                           alive=1)
    assert f'sluice_worker_up{{worker="tcp://127.0.0.1:{port}"}}' in metrics(http)
    out = client(http).completions.create(model="tiny", prompt="via dns", max_tokens=2)
    assert out.usage.completion_tokens == 2
