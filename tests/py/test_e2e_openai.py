"""The router over two CPU workers running a tiny random qwen3 model with the
real Qwen3 tokenizer, driven by the official `openai` client. Greedy decoding
makes outputs reproducible, so streaming and non-streaming, n > 1 and stop
strings are checked against each other exactly."""
import json
import re
import socket
import urllib.error
import urllib.request

import openai
import pytest

from router_harness import (API_KEY, Procs, get, make_tiny, metrics, post, start_router,
                            start_worker, tokenize)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    procs = Procs()
    try:
        model = make_tiny(tmp_path_factory.mktemp("m") / "tiny")
        workers = [start_worker(procs, model, f"w{i}", context_length=256) for i in range(2)]
        router, port = start_router(procs, model, workers, "--reasoning-parser", "qwen3")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                               max_retries=0, timeout=60)
        yield {"procs": procs, "port": port, "client": client, "model": model,
               "router": router}
    finally:
        procs.stop()


MSG = [{"role": "user", "content": "Tell me about the sea."}]


def test_chat_stream_matches_non_stream(env):
    c = env["client"]
    r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == "tiny"
    ch = r.choices[0]
    assert ch.finish_reason == "length" and ch.message.role == "assistant"
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert r.usage.prompt_tokens_details.cached_tokens >= 0
    # the prompt the router sent is the template's rendering, tokenized
    rendered = post(env["port"], "/tokenize", {"messages": MSG})[1]
    assert rendered["count"] == r.usage.prompt_tokens

    s = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0,
                                  stream=True, stream_options={"include_usage": True})
    text, reasoning, finish, usage, roles = "", "", None, None, 0
    for chunk in s:
        if chunk.usage:
            usage = chunk.usage
        for d in chunk.choices:
            text += d.delta.content or ""
            reasoning += getattr(d.delta, "reasoning_content", None) or ""
            roles += d.delta.role == "assistant"
            finish = d.finish_reason or finish
    assert roles == 1 and finish == "length"
    assert text == (ch.message.content or "")
    assert reasoning == (getattr(ch.message, "reasoning_content", None) or "")
    assert usage.completion_tokens == 12 and usage.prompt_tokens == r.usage.prompt_tokens


def test_completions_prompts_and_n(env):
    c = env["client"]
    ids = tokenize(env["model"], "The quick brown fox")
    a = c.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6,
                             temperature=0)
    assert a.object == "text_completion" and a.usage.prompt_tokens == len(ids)
    b = c.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0)
    assert b.choices[0].text == a.choices[0].text
    # batch of prompts x n: choices are prompt-major, identical under greedy
    m = c.completions.create(model="tiny", prompt=["The quick brown fox", "Hello"],
                             max_tokens=6, temperature=0, n=2)
    assert [x.index for x in m.choices] == [0, 1, 2, 3]
    assert m.choices[0].text == m.choices[1].text == a.choices[0].text
    assert m.choices[2].text == m.choices[3].text
    assert m.usage.completion_tokens == 24
    # sampled choices with seeds differ from each other but repeat exactly
    s1 = c.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=1.0,
                              n=2, seed=7)
    s2 = c.completions.create(model="tiny", prompt="Hello", max_tokens=8, temperature=1.0,
                              n=2, seed=7)
    assert [x.text for x in s1.choices] == [x.text for x in s2.choices]


def test_stop_strings_and_max_tokens(env):
    c = env["client"]
    full = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16,
                                temperature=0, extra_body={"ignore_eos": True})
    text = full.choices[0].text
    assert full.usage.completion_tokens == 16
    # a stop string from the middle of the greedy output cuts it there
    cut = len(text) // 2
    stop = text[cut:cut + 3]
    assert stop.strip(), repr(text)
    first = text.index(stop)
    r = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16,
                             temperature=0, stop=[stop, "never-seen-stop"],
                             extra_body={"ignore_eos": True})
    assert r.choices[0].text == text[:first]
    assert r.choices[0].finish_reason == "stop"
    # streaming: same text, the stop itself never sent
    s = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=16,
                             temperature=0, stop=stop, stream=True,
                             extra_body={"ignore_eos": True})
    chunks = list(s)
    assert "".join(x.choices[0].text for x in chunks if x.choices) == text[:first]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models_tokenize_metrics(env):
    c = env["client"]
    models = c.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    t = post(env["port"], "/tokenize", {"prompt": "hello world"})[1]
    assert t["tokens"] == tokenize(env["model"], "hello world") and t["max_model_len"] == 256
    d = post(env["port"], "/detokenize", {"tokens": t["tokens"]})[1]
    assert d["text"] == "hello world"
    m = metrics(env["port"])
    assert m['sluice_requests_total{route="/v1/chat/completions",status="200"}'] >= 2
    assert m["sluice_generation_tokens_total"] >= 24
    assert m["sluice_time_to_first_token_seconds_count"] >= 2
    assert sum(v for k, v in m.items() if k.startswith("sluice_worker_up")) == 2


def test_errors(env):
    c, port = env["client"], env["port"]
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model="tiny", messages=MSG, extra_body={"max_tokens": "x"})
    with pytest.raises(openai.BadRequestError, match="temperature"):
        c.chat.completions.create(model="tiny", messages=MSG, temperature=5)
    with pytest.raises(openai.BadRequestError, match="messages"):
        c.chat.completions.create(model="tiny", messages=[])
    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        c.chat.completions.create(model="gpt-4o", messages=MSG)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 256"):
        c.completions.create(model="tiny", prompt="word " * 300, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        c.chat.completions.create(model="tiny", messages=MSG, tool_choice="required")
    # counts a client controls are bounded on their own, not only by the body size
    with pytest.raises(openai.BadRequestError, match="messages: at most 4096 entries, got 4097"):
        c.chat.completions.create(model="tiny", messages=MSG * 4097)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError, match="tools: at most 512 entries, got 513"):
        c.chat.completions.create(model="tiny", messages=MSG, tools=[tool] * 513)
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    # malformed JSON and a non-object body, straight over HTTP
    for body in (b'{"messages": [', b"[1, 2]"):
        status, err = post(port, "/v1/chat/completions", None, raw=body)
        assert status == 400 and err["error"]["type"] == "invalid_request_error"
    # /health needs no key; everything still works after the errors
    assert json.loads(get(port, "/health", key="none"))["workers_alive"] == 2
    r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    assert r.usage.completion_tokens == 2


def test_client_disconnect_aborts(env):
    """A streaming request whose client goes away frees its worker slot."""
    port = env["port"]
    body = json.dumps({"model": "tiny", "prompt": "Go on and on", "max_tokens": 200,
                       "ignore_eos": True, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
              API_KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
              b"\r\n\r\n" + body)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()
    import time
    for _ in range(100):
        m = metrics(port)
        if m["sluice_aborted_requests_total"] >= 1 and \
                sum(v for k, v in m.items() if k.startswith("sluice_worker_inflight")) == 0:
            break
        time.sleep(0.05)
    assert m["sluice_aborted_requests_total"] >= 1
    assert sum(v for k, v in m.items() if k.startswith("sluice_worker_inflight")) == 0
    assert m["sluice_generation_tokens_total"] < 10_000


def test_stream_logprobs_and_n_usage(env):
    """Streamed chat logprobs carry each chunk's entries (they were always
    empty), and with n=2 the cached share is counted once per prompt."""
    c = env["client"]
    kw = dict(model="tiny", messages=MSG, max_tokens=8, temperature=0, logprobs=True,
              top_logprobs=2)
    r = c.chat.completions.create(**kw)
    want = [(e.token, e.logprob) for e in r.choices[0].logprobs.content]
    assert len(want) == 8
    got = []
    for chunk in c.chat.completions.create(**kw, stream=True):
        for d in chunk.choices:
            if d.logprobs and d.logprobs.content:
                assert all(len(e.top_logprobs) == 2 for e in d.logprobs.content)
                got += [(e.token, e.logprob) for e in d.logprobs.content]
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [lp for _, lp in got] == pytest.approx([lp for _, lp in want], abs=1e-4)

    long = [{"role": "user", "content": "The sea, the sea, the endless sea " * 4}]
    for _ in range(2):  # the second time the prompt is cached
        r = c.chat.completions.create(model="tiny", messages=long, max_tokens=2, n=2,
                                      temperature=0)
        u = r.usage
        assert 0 <= u.prompt_tokens_details.cached_tokens <= u.prompt_tokens
    assert u.prompt_tokens_details.cached_tokens > 0


def flush(port, method="POST", key=API_KEY):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/flush_cache", method=method,
                                 data=b"" if method == "POST" else None, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_flush_cache(env):
    """/flush_cache (SGLang's) empties both workers' prefix caches: a prompt
    cached before the flush is computed from scratch after it."""
    c, port = env["client"], env["port"]
    msgs = [{"role": "user", "content": "Tides come, tides go, and the harbour waits " * 3}]

    def cached():
        r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=2, temperature=0)
        return r.usage.prompt_tokens_details.cached_tokens, r.usage.prompt_tokens

    def tree_tokens():  # the router's record of what the workers cache
        return sum(v for k, v in metrics(port).items()
                   if k.startswith("sluice_worker_route_tree_tokens"))

    cached()
    hit, n = cached()
    assert 0 < hit <= n and tree_tokens() > 0
    st, body = flush(port)
    assert st == 200, body
    m = re.match(r"Cache flushed: (\d+) KV pages freed on 2 worker\(s\)\.", body)
    assert m and int(m.group(1)) > 0, body
    assert tree_tokens() == 0
    assert cached()[0] == 0
    assert cached()[0] == hit  # cached again after one more run
    st, body = flush(port, "GET")
    assert st == 200 and "freed on 2 worker(s)" in body
    st, body = flush(port, key=None)
    assert st == 401 and "error" in json.loads(body)
    st, body = flush(port, "PUT")
    assert st == 405 and "/flush_cache takes POST" in json.loads(body)["error"]["message"]
