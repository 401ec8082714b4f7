"""POST /v1/messages with the official `anthropic` client, the way Claude Code
uses it through ANTHROPIC_BASE_URL: text, thinking and tool_use blocks,
streaming events, stop sequences, tool results, count_tokens and errors. Mock
workers answer with fixed token ids so every block is known exactly."""
import anthropic
import pytest

from router_harness import API_KEY, TOKENIZER, Procs, make_tiny, post, start_mock_router, tokenize

TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]
HERMES = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
THINK = "<think>\nThe user greets me.\n</think>\n\nHello there!"
MSG = [{"role": "user", "content": "Hi!"}]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    procs = Procs()
    try:
        model = make_tiny(tmp_path_factory.mktemp("m") / "tiny")

        def router(reply):
            port = start_mock_router(procs, model, reply, "--tool-call-parser", "hermes",
                                     "--reasoning-parser", "qwen3")
            return anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=API_KEY,
                                       max_retries=0, timeout=30), port

        yield {"think": router(THINK), "tool": router(HERMES)}
    finally:
        procs.stop()


def test_text_and_thinking(env):
    c, _ = env["think"]
    m = c.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MSG,
                          system="You are terse.")
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "The user greets me."
    assert m.content[1].text == "Hello there!"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.input_tokens > 0 and m.usage.output_tokens == len(
        tokenize_reply(THINK)) + 1

    with c.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=MSG) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    # the raw stream carries a ping right after message_start, as Anthropic's does
    with c.messages.with_streaming_response.create(model="x", max_tokens=64, messages=MSG,
                                                   stream=True) as raw:
        names = [ln[7:] for ln in raw.iter_lines() if ln.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"]
    assert "content_block_delta" in events and "message_delta" in events
    assert [(b.type, getattr(b, "text", None) or getattr(b, "thinking", None))
            for b in final.content] == [("thinking", "The user greets me."),
                                        ("text", "Hello there!")]
    assert final.stop_reason == "end_turn"

    # stop_sequences cut the raw text; the reason says which one
    m = c.messages.create(model="x", max_tokens=64, messages=MSG, stop_sequences=["there"])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "there"
    assert m.content[-1].text.strip() == "Hello"
    # max_tokens
    m = c.messages.create(model="x", max_tokens=3, messages=MSG)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3


def tokenize_reply(text):
    return tokenize(str(TOKENIZER), text)


def test_tool_use(env):
    c, port = env["tool"]
    m = c.messages.create(model="claude-sonnet-4-5", max_tokens=128, tools=TOOLS,
                          messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert m.stop_reason == "tool_use"
    [tu] = [b for b in m.content if b.type == "tool_use"]
    assert tu.name == "get_weather" and tu.input == {"city": "Paris"}
    assert tu.id.startswith("toolu_")  # Anthropic's spelling, not OpenAI's call_

    with c.messages.stream(model="x", max_tokens=128, tools=TOOLS,
                           messages=[{"role": "user", "content": "Weather?"}]) as s:
        deltas = [e.delta.type for e in s if e.type == "content_block_delta"]
        final = s.get_final_message()
    assert "input_json_delta" in deltas
    [tu2] = [b for b in final.content if b.type == "tool_use"]
    assert tu2.input == {"city": "Paris"} and final.stop_reason == "tool_use"
    assert tu2.id.startswith("toolu_")

    # the next turn carries the tool_use and its tool_result
    follow = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": [
                  {"type": "text", "text": "Let me look."},
                  {"type": "tool_use", "id": tu.id, "name": "get_weather",
                   "input": {"city": "Paris"}}]},
              {"role": "user", "content": [
                  {"type": "tool_result", "tool_use_id": tu.id,
                   "content": [{"type": "text", "text": "sunny, 21 C"}]}]}]
    m = c.messages.create(model="x", max_tokens=128, tools=TOOLS, messages=follow)
    assert m.stop_reason == "tool_use"
    n = c.messages.count_tokens(model="x", tools=TOOLS, messages=follow)
    short = c.messages.count_tokens(model="x", messages=follow[:1])
    assert n.input_tokens > short.input_tokens > 0


def test_errors(env):
    c, port = env["think"]
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        c.messages.create(model="x", max_tokens=0, messages=MSG)
    with pytest.raises(anthropic.BadRequestError, match="image blocks are not supported"):
        c.messages.create(model="x", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "AAAA"}}]}])
    with pytest.raises(anthropic.BadRequestError, match="role"):
        c.messages.create(model="x", max_tokens=8, messages=[{"role": "system", "content": "x"}])
    bad = anthropic.Anthropic(base_url=c.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="x", max_tokens=8, messages=MSG)
    status, body = post(port, "/v1/messages", None, raw=b"{oops")
    assert status == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


def test_claude_code_details(env):
    """What Claude Code sends that a text-only model must survive: an image
    inside a tool_result (a screenshot) and Anthropic server tools."""
    c, port = env["tool"]

    def turn(result_content):
        return [{"role": "user", "content": "Look"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": result_content}]}]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "AAAA"}}
    with_image = turn([{"type": "text", "text": "shot:"}, image])
    m = c.messages.create(model="x", max_tokens=64, tools=TOOLS, messages=with_image)
    assert m.stop_reason == "tool_use"
    # the image became the visible placeholder in the prompt
    placeholder = turn([{"type": "text", "text": "shot:"},
                        {"type": "text", "text": "[image omitted: this model reads text only]"}])
    assert c.messages.count_tokens(model="x", tools=TOOLS, messages=with_image).input_tokens == \
        c.messages.count_tokens(model="x", tools=TOOLS, messages=placeholder).input_tokens
    # server tools are left out of the prompt, the request is served
    web = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    m = c.messages.create(model="x", max_tokens=64, tools=TOOLS + [web], messages=MSG)
    assert m.stop_reason == "tool_use"
    assert c.messages.count_tokens(model="x", tools=TOOLS + [web], messages=MSG).input_tokens == \
        c.messages.count_tokens(model="x", tools=TOOLS, messages=MSG).input_tokens
