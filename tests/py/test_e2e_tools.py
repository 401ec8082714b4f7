"""Tool calls and reasoning through the router with both tool-call parsers.
A mock worker answers with fixed token ids (the tokenized text of a tool call
in each model family's format), so the router's template, detokenizer,
parsers and OpenAI encoding are checked end to end with the official client."""
import json

import openai
import pytest

from router_harness import API_KEY, Procs, make_tiny, post, start_mock_router

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
MSG = [{"role": "user", "content": "Weather in Paris?"}]
HERMES = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CODER = ("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
         "</function>\n</tool_call>")
THINK = "<think>\nThe user greets me.\n</think>\n\nHello there!"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    procs = Procs()
    try:
        model = make_tiny(tmp_path_factory.mktemp("m") / "tiny")

        def router(reply, *flags):
            port = start_mock_router(procs, model, reply, *flags)
            return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                                 max_retries=0, timeout=30), port

        yield {"model": model,
               "hermes": router(HERMES, "--tool-call-parser", "hermes"),
               "coder": router(CODER, "--tool-call-parser", "qwen3_coder", "--chat-template",
                               "qwen3_coder"),
               "think": router(THINK, "--reasoning-parser", "qwen3"),
               "plain": router(THINK)}
    finally:
        procs.stop()


def rendered(port, body):
    status, t = post(port, "/tokenize", body)
    assert status == 200
    return post(port, "/detokenize", {"tokens": t["tokens"]})[1]["text"]


@pytest.mark.parametrize("family", ["hermes", "coder"])
def test_tool_call(env, family):
    c, port = env[family]
    # the tools are in the prompt, in the family's own format
    with_tools = rendered(port, {"messages": MSG, "tools": TOOLS})
    assert "get_weather" in with_tools and "get_weather" not in rendered(port, {"messages": MSG})
    assert ("<function>" in with_tools) == (family == "coder")

    r = c.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, max_tokens=64)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    assert ch.message.content is None
    [call] = ch.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    s = c.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, max_tokens=64,
                                  stream=True)
    name, args, finish, content = None, "", None, ""
    for chunk in s:
        for d in chunk.choices:
            content += d.delta.content or ""
            for tc in d.delta.tool_calls or []:
                assert tc.index == 0
                name = tc.function.name or name
                args += tc.function.arguments or ""
            finish = d.finish_reason or finish
    assert (name, json.loads(args), finish, content) == ("get_weather", {"city": "Paris"},
                                                         "tool_calls", "")

    # tool_choice "none": no tools in the prompt, the call stays text
    r = c.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, tool_choice="none",
                                  max_tokens=64)
    assert r.choices[0].message.tool_calls is None
    assert "get_weather" in r.choices[0].message.content
    # a named tool_choice must name one of the tools
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        c.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, tool_choice={
            "type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\]"):
        c.chat.completions.create(model="tiny", messages=MSG, tools=[{"type": "function"}])


def test_tool_results_render(env):
    """A follow-up turn with the assistant's call and the tool's result."""
    c, port = env["hermes"]
    msgs = MSG + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    assert "sunny, 21 C" in rendered(port, {"messages": msgs, "tools": TOOLS})
    r = c.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS, max_tokens=64)
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_reasoning(env):
    c, _ = env["think"]
    r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=64)
    m = r.choices[0].message
    assert m.reasoning_content == "The user greets me."
    assert m.content == "Hello there!"
    assert r.choices[0].finish_reason == "stop"
    s = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=64, stream=True)
    reasoning, content = "", ""
    for chunk in s:
        for d in chunk.choices:
            reasoning += getattr(d.delta, "reasoning_content", None) or ""
            content += d.delta.content or ""
    assert (reasoning, content) == ("The user greets me.", "Hello there!")
    # separate_reasoning=false keeps the raw text
    r = c.chat.completions.create(model="tiny", messages=MSG, max_tokens=64,
                                  extra_body={"separate_reasoning": False})
    assert r.choices[0].message.content == THINK
    # without --reasoning-parser the think block is ordinary content
    c2, _ = env["plain"]
    r = c2.chat.completions.create(model="tiny", messages=MSG, max_tokens=64)
    assert r.choices[0].message.content.startswith("<think>")
