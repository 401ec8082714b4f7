"""Worker deaths lose no request: a choice whose worker dies mid-stream moves
to another worker with the tokens it already streamed (GenerateRequest
output_ids) and the client's stream goes on with no token lost or repeated;
one whose worker dies before its first token is retried; only with no worker
left does the client get an error. Real CPU workers (a tiny random model)
prove greedy continuations equal undisturbed runs; mock workers make the
timing of the other cases exact."""
import itertools
import signal
import threading
import time

import openai
import pytest

from router_harness import API_KEY, TOKENIZER, metrics, post, start_router, start_worker

PROMPT_A = "The history of the lighthouse keepers on the northern coast"
PROMPT_B = "A recipe for bread with seeds and a long cold rise"
CTX = 1024
LONG = 240  # output tokens of the long greedy streams (the kill comes after 30)


def client(port):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                         max_retries=0, timeout=180)


def greedy(c, prompt, stream, max_tokens=LONG):
    return c.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens,
                                temperature=0, logprobs=0, stream=stream,
                                extra_body={"ignore_eos": True})


def collect(stream, on_chunk=None):
    """(text, token strings, finish reason) of a completions stream."""
    text, toks, finish, n = "", [], None, 0
    for ev in stream:
        ch = ev.choices[0]
        text += ch.text
        if ch.logprobs and ch.logprobs.tokens:
            toks += ch.logprobs.tokens
        finish = ch.finish_reason or finish
        n += 1
        if on_chunk:
            on_chunk(n)
    return text, toks, finish


def inflight_of(port, url):
    return metrics(port)[f'sluice_worker_inflight{{worker="{url}"}}']


def wait_up(port, url, up=1):
    for _ in range(200):
        if metrics(port)[f'sluice_worker_up{{worker="{url}"}}'] == up:
            return
        time.sleep(0.05)
    raise AssertionError(f"{url} never became up={up}")


def test_mid_stream_death_migrates_without_loss(procs, model):
    urls = [procs.ipc(f"w{i}") for i in range(2)]
    workers = [procs.start("worker", "--model", model, "--listen", u, "--mem-bytes", 64 << 20,
                           "--context-length", CTX, name=f"w{i}") for i, u in enumerate(urls)]
    _, port = start_router(procs, model, urls, "--policy", "round_robin")
    c = client(port)
    ref = {}
    for p in (PROMPT_A, PROMPT_B):
        r = greedy(c, p, stream=False)
        assert r.usage.completion_tokens == LONG
        ref[p] = (r.choices[0].text, r.choices[0].logprobs.tokens)

    # A starts alone, so the worker running it is the one with a request
    a = greedy(c, PROMPT_A, stream=True)
    it = iter(a)
    first = [next(it) for _ in range(5)]
    victim = next(i for i in range(2) if inflight_of(port, urls[i]) == 1)
    b = greedy(c, PROMPT_B, stream=True)  # round robin: on the other worker, unless a
    itb = iter(b)                          # heartbeat late under load made it skip that one
    first_b = next(itb)
    on_victim = inflight_of(port, urls[victim])  # A's, and B's if it went there too
    assert on_victim in (1, 2) and on_victim + inflight_of(port, urls[1 - victim]) == 2

    killed = {}

    def kill_at(n):
        if n == 30 and not killed:
            procs.stop(workers[victim], sig=9)
            killed["t"] = time.time()

    text_a, toks_a, fin_a = collect(itertools.chain(first, it), kill_at)
    assert killed, "the stream ended before the kill"
    text_b, toks_b, fin_b = collect(itertools.chain([first_b], itb))
    # nothing lost, nothing repeated: the stream equals the undisturbed run
    assert (text_a, toks_a, fin_a) == (*ref[PROMPT_A], "length")
    assert (text_b, toks_b, fin_b) == (*ref[PROMPT_B], "length")
    m = metrics(port)
    assert m["sluice_migrations_total"] == on_victim and m["sluice_lost_total"] == 0
    assert m[f'sluice_worker_up{{worker="{urls[victim]}"}}'] == 0

    # the killed worker, restarted on its address, rejoins; with the other one
    # gone it serves the same greedy text
    procs.start("worker", "--model", model, "--listen", urls[victim], "--mem-bytes", 64 << 20,
                "--context-length", CTX, name="again")
    wait_up(port, urls[victim])
    procs.stop(workers[1 - victim], sig=9)
    wait_up(port, urls[1 - victim], 0)
    r = greedy(c, PROMPT_A, stream=False, max_tokens=50)
    assert r.choices[0].text == "".join(ref[PROMPT_A][1][:50])


def mocks(procs, n, *extra):
    urls = [procs.ipc(f"m{i}") for i in range(n)]
    ps = [procs.start("mock-worker", "--listen", u, *extra, name=f"m{i}")
          for i, u in enumerate(urls)]
    return urls, ps


def victim_of(port, urls):
    for _ in range(100):
        busy = [i for i, u in enumerate(urls) if inflight_of(port, u) == 1]
        if busy:
            return busy[0]
        time.sleep(0.01)
    raise AssertionError("no worker took the request")


def test_death_before_first_token_retries(procs):
    urls, ps = mocks(procs, 2, "--first-token-delay-ms", 400)
    _, port = start_router(procs, str(TOKENIZER), urls)
    c = client(port)
    s = c.completions.create(model="tiny", prompt="one two three", max_tokens=6, stream=True)
    victim = victim_of(port, urls)
    procs.stop(ps[victim], sig=9)
    text, _, finish = collect(s)
    # the mock echoes the prompt's tokens: the whole answer came from the survivor
    assert text == "one two threeone two three" and finish == "length"
    assert metrics(port)["sluice_migrations_total"] == 1


def test_no_worker_left_is_a_clean_error(procs):
    urls, ps = mocks(procs, 2, "--delay-ms", 30)
    _, port = start_router(procs, str(TOKENIZER), urls)
    c = client(port)
    # streaming: the error arrives in the stream once both are gone
    s = c.completions.create(model="tiny", prompt="count with me", max_tokens=500, stream=True)
    it = iter(s)
    next(it)
    victim = victim_of(port, urls)
    procs.stop(ps[victim], sig=9)
    for _ in range(3):
        next(it)  # still streaming, from the other worker
    procs.stop(ps[1 - victim], sig=9)
    with pytest.raises(openai.APIError, match="no other worker could continue it"):
        for _ in it:
            pass
    m = metrics(port)
    assert m["sluice_migrations_total"] == 1 and m["sluice_lost_total"] == 1
    # non-streaming with nobody to take it: 503 JSON at once
    status, body = post(port, "/v1/completions", {"model": "tiny", "prompt": "x"})
    assert status == 503 and "no worker is available" in body["error"]["message"]


def test_migration_limit_bounds_the_moves(procs):
    urls, ps = mocks(procs, 3, "--delay-ms", 30)
    _, port = start_router(procs, str(TOKENIZER), urls, "--migration-limit", 1)
    status, body = [None], [None]

    def run():
        status[0], body[0] = post(port, "/v1/completions",
                                  {"model": "tiny", "prompt": "a b c", "max_tokens": 400})
    t = threading.Thread(target=run)
    t.start()
    victim = victim_of(port, urls)
    procs.stop(ps[victim], sig=9)
    alive = [i for i in range(3) if i != victim]
    time.sleep(0.2)
    second = next(i for i in alive if inflight_of(port, urls[i]) == 1)
    procs.stop(ps[second], sig=9)
    t.join(30)
    # one move was allowed; the second death fails the request with a 502
    assert status[0] == 502, body[0]
    assert "no other worker could continue it" in body[0]["error"]["message"]
    assert metrics(port)["sluice_migrations_total"] == 1


def test_silent_worker_is_replaced_and_told_to_stop(procs):
    """A worker that stops answering (SIGSTOP: its socket stays up) is dead
    after --dead-after-ms; its stream moves on, and when it wakes up it is
    told to drop what it was running."""
    urls, ps = mocks(procs, 2, "--delay-ms", 5)
    _, port = start_router(procs, str(TOKENIZER), urls)
    c = client(port)
    s = c.completions.create(model="tiny", prompt="one two three", max_tokens=400, stream=True)
    it = iter(s)
    first = [next(it) for _ in range(3)]
    victim = victim_of(port, urls)
    ps[victim].send_signal(signal.SIGSTOP)
    text, _, finish = collect(itertools.chain(first, it))
    words = ["one", " two", " three"]
    assert text == "".join(words[i % 3] for i in range(400)) and finish == "length"
    assert metrics(port)["sluice_migrations_total"] == 1
    ps[victim].send_signal(signal.SIGCONT)
    wait_up(port, urls[victim])
    # left alone it would run ~2 s more (397 tokens at 5 ms): the abort ends it now
    running = lambda: metrics(port)[f'sluice_worker_running{{worker="{urls[victim]}"}}']
    t0 = time.time()
    while running() and time.time() - t0 < 1.0:
        time.sleep(0.05)
    assert running() == 0
