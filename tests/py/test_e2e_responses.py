"""POST /v1/responses (the OpenAI Responses API) through the router, driven by
the official `openai` client's `client.responses.create`. Plain text runs on a
CPU worker with a tiny random qwen3 model (greedy, so streaming and
non-streaming are compared exactly); reasoning and function calls come from
mock workers that answer with fixed token ids (as in test_e2e_tools.py), so
the parsers' items and their stream events are checked end to end. The
translated prompt is checked against /tokenize of the equivalent chat body."""
import json
import signal

import openai
import pytest

from router_harness import (API_KEY, Procs, get, make_tiny, post, start_mock, start_router,
                            start_worker, tokenize)

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}, "strict": False}]
CHAT_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": TOOLS[0]["parameters"]}}]
USER = "Weather in Paris?"
HERMES = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
THINK = "<think>\nThe user greets me.\n</think>\n\nHello there!"
THINK_CALL = "<think>\nI need the weather.\n</think>\n\n" + HERMES


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    procs = Procs()
    try:
        model = make_tiny(tmp_path_factory.mktemp("m") / "tiny")
        im_end = tokenize(model, "<|im_end|>")

        def client(port):
            return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                                 max_retries=0, timeout=60)

        def mock(reply, *flags):
            ids = ",".join(map(str, tokenize(model, reply) + im_end))
            w = start_mock(procs, f"mock{procs.n}", "--reply-ids", ids)
            _, port = start_router(procs, model, [w], *flags)
            return client(port), port

        w = start_worker(procs, model, "w0", context_length=256)
        _, port = start_router(procs, model, [w], "--reasoning-parser", "qwen3")
        yield {"real": (client(port), port),
               "think": mock(THINK, "--reasoning-parser", "qwen3"),
               "tool": mock(THINK_CALL, "--reasoning-parser", "qwen3", "--tool-call-parser",
                            "hermes")}
    finally:
        procs.stop()


def prompt_tokens(port, chat):
    status, t = post(port, "/tokenize", chat)
    assert status == 200, t
    return t["count"]


def collect(stream):
    """The events of a stream, checked for numbering, start and end."""
    events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[-1].type in ("response.completed", "response.incomplete")
    return events


def item_events(events):
    """Per output index, the event types that concern it, in order."""
    out = {}
    for e in events:
        if hasattr(e, "output_index"):
            out.setdefault(e.output_index, []).append(e.type)
    return out


def test_stream_matches_non_stream(env):
    c, port = env["real"]
    kw = dict(model="tiny", input="Tell me about the sea.", instructions="Be brief.",
              max_output_tokens=12, temperature=0)
    r = c.responses.create(**kw)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 12
    assert r.usage.total_tokens == r.usage.input_tokens + 12
    assert r.usage.input_tokens_details.cached_tokens >= 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.instructions == "Be brief." and r.max_output_tokens == 12 and r.store is False
    # instructions are a system turn before the input
    assert r.usage.input_tokens == prompt_tokens(port, {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about the sea."}]})
    msg = [o for o in r.output if o.type == "message"]
    assert len(msg) == 1 and msg[0].role == "assistant" and msg[0].id.startswith("msg_")
    assert msg[0].content[0].type == "output_text" and msg[0].content[0].annotations == []
    assert r.output_text == msg[0].content[0].text

    events = collect(c.responses.create(**kw, stream=True))
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.status == "incomplete"
    assert last.response.usage.output_tokens == 12
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == text
    assert last.response.output_text == text
    assert [o.type for o in last.response.output] == [o.type for o in r.output]
    for i, types in item_events(events).items():
        assert types[0] == "response.output_item.added"
        assert types[-1] == "response.output_item.done"
        if last.response.output[i].type == "message":
            assert types[1] == "response.content_part.added"
            assert types[-3:-1] == ["response.output_text.done", "response.content_part.done"]
    ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert ids == {o.id for o in last.response.output}


def test_input_items_render(env):
    """Messages in every role and content shape become the chat the template renders."""
    c, port = env["real"]
    items = [{"role": "developer", "content": "Answer in French."},
             {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "Hi"},
                          {"type": "input_text", "text": "there"}]},
             {"role": "assistant", "content": [{"type": "output_text", "text": "Bonjour",
                                                "annotations": []}]},
             {"role": "user", "content": "How are you?"}]
    r = c.responses.create(model="tiny", input=items, instructions="Be kind.",
                           max_output_tokens=2, temperature=0)
    assert r.usage.input_tokens == prompt_tokens(port, {"messages": [
        {"role": "system", "content": "Be kind."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "How are you?"}]})


def test_reasoning(env):
    c, _ = env["think"]
    r = c.responses.create(model="tiny", input=USER, max_output_tokens=64)
    assert r.status == "completed" and r.incomplete_details is None
    rs, msg = r.output
    assert rs.type == "reasoning" and rs.id.startswith("rs_") and rs.summary == []
    assert [(p.type, p.text) for p in rs.content] == [("reasoning_text", "The user greets me.")]
    assert msg.type == "message" and r.output_text == "Hello there!"

    events = collect(c.responses.create(model="tiny", input=USER, max_output_tokens=64,
                                        stream=True))
    assert events[-1].type == "response.completed"
    assert item_events(events) == {
        0: ["response.output_item.added", "response.content_part.added"]
           + ["response.reasoning_text.delta"] * sum(
               e.type == "response.reasoning_text.delta" for e in events)
           + ["response.reasoning_text.done", "response.content_part.done",
              "response.output_item.done"],
        1: ["response.output_item.added", "response.content_part.added"]
           + ["response.output_text.delta"] * sum(
               e.type == "response.output_text.delta" for e in events)
           + ["response.output_text.done", "response.content_part.done",
              "response.output_item.done"]}
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert reasoning == "The user greets me."
    [done] = [e for e in events if e.type == "response.reasoning_text.done"]
    assert done.text == reasoning
    final = events[-1].response
    assert final.output_text == "Hello there!"
    assert final.output[0].content[0].text == reasoning


def test_function_call_round_trip(env):
    c, port = env["tool"]
    r = c.responses.create(model="tiny", input=USER, tools=TOOLS, max_output_tokens=64)
    assert r.status == "completed"
    assert [o.type for o in r.output] == ["reasoning", "function_call"]
    rs, call = r.output
    assert rs.content[0].text == "I need the weather."
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert [t.name for t in r.tools] == ["get_weather"] and r.tools[0].type == "function"

    events = collect(c.responses.create(model="tiny", input=USER, tools=TOOLS,
                                        max_output_tokens=64, stream=True))
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [i.type for i in added] == ["reasoning", "function_call"]
    assert added[1].name == "get_weather" and added[1].status == "in_progress"
    args = "".join(e.delta for e in events
                   if e.type == "response.function_call_arguments.delta")
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == args and json.loads(args) == {"city": "Paris"}
    assert done.output_index == 1
    final = events[-1].response
    assert final.status == "completed"
    assert final.output[1].call_id == added[1].call_id
    assert json.loads(final.output[1].arguments) == {"city": "Paris"}

    # the next turn sends the items back with the tool's result
    items = [{"role": "user", "content": USER},
             rs.model_dump(exclude_none=True),
             call.model_dump(exclude_none=True),
             {"type": "function_call_output", "call_id": call.call_id,
              "output": "sunny, 21 C"}]
    r2 = c.responses.create(model="tiny", input=items, tools=TOOLS, max_output_tokens=64)
    assert r2.output[-1].type == "function_call"
    assert r2.usage.input_tokens == prompt_tokens(port, {"tools": CHAT_TOOLS, "messages": [
        {"role": "user", "content": USER},
        {"role": "assistant", "content": "", "reasoning_content": "I need the weather.",
         "tool_calls": [{"id": call.call_id, "type": "function", "function": {
             "name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"}]})

    # tool_choice "none": no tools in the prompt, the call stays text
    r3 = c.responses.create(model="tiny", input=USER, tools=TOOLS, tool_choice="none",
                            max_output_tokens=64)
    assert [o.type for o in r3.output] == ["reasoning", "message"]
    assert "get_weather" in r3.output_text
    assert r3.usage.input_tokens == prompt_tokens(port, {"messages": [
        {"role": "user", "content": USER}]})


def test_errors(env):
    c, port = env["real"]
    with pytest.raises(openai.BadRequestError, match="previous_response_id is not supported: "
                       "this server keeps no responses; send the full input"):
        c.responses.create(model="tiny", input="hi", previous_response_id="resp_123")

    def bad(body, param, match=None):
        status, e = post(port, "/v1/responses", {"model": "tiny", **body})
        assert status == 400, (body, e)
        assert e["error"]["type"] == "invalid_request_error"
        assert e["error"]["param"] == param, e
        assert (match or param) in e["error"]["message"]

    bad({}, "input")
    bad({"input": 5}, "input")
    bad({"input": []}, "input")
    bad({"input": [{"role": "user", "content": 5}]}, "input[0].content")
    bad({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role")
    bad({"input": ["hi"]}, "input[0]")
    bad({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        "input[0].content[0]", "input_image parts are not supported")
    bad({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]},
        "input[0].arguments")
    bad({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id")
    bad({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", "item_reference")
    bad({"input": [{"type": "web_search_call"}]}, "input[0].type")
    bad({"input": "hi", "instructions": 3}, "instructions")
    bad({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name")
    bad({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type",
        "web_search tools are not supported")
    # enforced tool choices need the server's tool-call format (this one has none)
    bad({"input": "hi", "tools": TOOLS, "tool_choice": "required"}, "tool_choice",
        "--tool-call-parser")
    bad({"input": "hi", "tools": TOOLS, "tool_choice": {"type": "function",
                                                        "name": "get_weather"}},
        "tool_choice", "--tool-call-parser")
    bad({"input": "hi", "tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}},
        "tool_choice", "not among the tools")
    bad({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x",
                                            "schema": {"not": {"type": "string"}}}}},
        "text.format.schema", "unsupported keyword `not`")
    bad({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type")
    bad({"input": "hi", "temperature": "hot"}, "temperature")
    bad({"input": "hi", "max_output_tokens": 0}, "max_output_tokens")
    bad({"input": "hi", "stream": "yes"}, "stream")
    bad({"input": "hi", "metadata": []}, "metadata")
    bad({"input": "hi", "background": True}, "background")
    bad({"input": "hi", "conversation": "conv_1"}, "conversation")

    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="gpt-5", input="hi")
    # accepted and ignored: store (nothing is stored), reasoning, metadata, user, include
    r = c.responses.create(model="tiny", input="hi", store=True, reasoning={"effort": "low"},
                           metadata={"k": "v"}, user="u1", parallel_tool_calls=False,
                           include=["reasoning.encrypted_content"], max_output_tokens=2)
    assert r.store is False and r.metadata == {"k": "v"} and r.user == "u1"
    assert r.parallel_tool_calls is False and r.reasoning.effort == "low"
    # the route takes POST only
    with pytest.raises(Exception, match="405"):
        get(port, "/v1/responses")


def test_stream_error_event(env, tmp_path):
    """A worker that dies mid-stream (no other to continue): an `error` event,
    then response.failed, still numbered."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "tiny")
        ids = ",".join(map(str, tokenize(model, "one two three four five six seven " * 8)))
        url = procs.ipc("slow")
        w = procs.start("mock-worker", "--listen", url, "--reply-ids", ids, "--delay-ms", 50,
                        name="slow")
        _, port = start_router(procs, model, [url])
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                          max_retries=0, timeout=60)
        events = []
        for e in c.responses.create(model="tiny", input=USER, stream=True):
            events.append(e)
            if e.type == "response.output_text.delta" and w.poll() is None:
                procs.stop(w, sig=signal.SIGKILL)
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert [e.type for e in events[-2:]] == ["error", "response.failed"]
        assert "generation failed" in events[-2].message
        assert events[-1].response.status == "failed"
        assert events[-1].response.error.code == "server_error"
    finally:
        procs.stop()
