"""Constrained decoding end to end: a real CPU worker running a tiny model with
random weights (so nothing but the grammar makes its output well-formed), the
router, and the official openai / anthropic clients. Every constrained output
must parse and validate (jsonschema, re.fullmatch); what cannot be enforced
is a 400 that names it."""
import json
import re

import anthropic
import jsonschema
import openai
import pytest

from router_harness import API_KEY, Procs, make_tiny, post, start_router, start_worker

# Bounded schemas: a random model must still reach the end inside max_tokens.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", None]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "home": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/city"}]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
    "$defs": {"city": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                       "required": ["zip"], "additionalProperties": False}},
}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Time in a zone",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                       "required": ["zone"], "additionalProperties": False}}}]
MSG = [{"role": "user", "content": "Answer in JSON."}]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    procs = Procs()
    try:
        model = make_tiny(tmp_path_factory.mktemp("m") / "tiny")
        w = start_worker(procs, model, "w0", context_length=2048)
        _, port = start_router(procs, model, [w], "--tool-call-parser", "hermes")
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0,
                          timeout=120)
        yield {"port": port, "client": c}
    finally:
        procs.stop()


def chat(env, stream=False, **kw):
    c = env["client"]
    kw.setdefault("max_tokens", 400)
    kw.setdefault("messages", MSG)
    if not stream:
        r = c.chat.completions.create(model="tiny", **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for ch in c.chat.completions.create(model="tiny", stream=True, **kw):
        if ch.choices and ch.choices[0].delta.content:
            text += ch.choices[0].delta.content
        if ch.choices and ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    return text, finish


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_validates(env, stream, temperature):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(3):
        text, finish = chat(env, stream, response_format=rf, temperature=temperature, seed=seed)
        assert finish == "stop", (finish, text)
        jsonschema.validate(json.loads(text), PERSON)


def test_sglang_json_schema_string_and_n(env):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer",
              "minimum": -5, "maximum": 5}}, "required": ["ok", "n"], "additionalProperties": False}
    r = env["client"].chat.completions.create(
        model="tiny", messages=MSG, n=3, temperature=1.0, max_tokens=100,
        extra_body={"json_schema": json.dumps(schema)})
    assert len(r.choices) == 3
    for ch in r.choices:
        assert ch.finish_reason == "stop"
        jsonschema.validate(json.loads(ch.message.content), schema)


def test_regex_and_ebnf_on_completions(env):
    c = env["client"]
    for seed in range(3):
        r = c.completions.create(model="tiny", prompt="Say:", max_tokens=60, temperature=1.0, seed=seed,
                                 extra_body={"regex": r"(yes|no)-[0-9]{1,3}\.( ok)?"})
        assert r.choices[0].finish_reason == "stop"
        assert re.fullmatch(r"(yes|no)-[0-9]{1,3}\.( ok)?", r.choices[0].text), r.choices[0].text
    g = 'root ::= "a" [bc]{2,4} tail\ntail ::= "." | "!" digit\ndigit ::= [0-9]'
    r = c.completions.create(model="tiny", prompt="Say:", max_tokens=60, temperature=1.0,
                             extra_body={"ebnf": g})
    assert re.fullmatch(r"a[bc]{2,4}(\.|![0-9])", r.choices[0].text), r.choices[0].text


def test_json_object(env):
    text, finish = chat(env, response_format={"type": "json_object"}, max_tokens=64, temperature=0)
    assert text.startswith("{"), text
    if finish == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("parallel", [True, False])
def test_tool_choice_required(env, parallel):
    c = env["client"]
    for seed in range(2):
        r = c.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, tool_choice="required",
                                      parallel_tool_calls=parallel, temperature=1.0, seed=seed,
                                      max_tokens=400)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls", ch
        calls = ch.message.tool_calls
        assert calls and (parallel or len(calls) == 1)
        for call in calls:
            tool = next(t for t in TOOLS if t["function"]["name"] == call.function.name)
            jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_tool_choice_named(env):
    r = env["client"].chat.completions.create(
        model="tiny", messages=MSG, tools=TOOLS, temperature=1.0, max_tokens=400,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = r.choices[0].message.tool_calls
    assert calls and all(c.function.name == "get_time" for c in calls)
    assert json.loads(calls[0].function.arguments)["zone"] in ("UTC", "CET")


def test_anthropic_tool_choice_any(env):
    c = anthropic.Anthropic(base_url=f"http://127.0.0.1:{env['port']}", api_key=API_KEY, max_retries=0)
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in TOOLS]
    m = c.messages.create(model="tiny", max_tokens=400, messages=[{"role": "user", "content": "Weather?"}],
                          tools=tools, tool_choice={"type": "tool", "name": "get_weather",
                                                    "disable_parallel_tool_use": True})
    uses = [b for b in m.content if b.type == "tool_use"]
    assert m.stop_reason == "tool_use" and len(uses) == 1 and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, TOOLS[0]["function"]["parameters"])


def test_anthropic_output_format(env):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    st, o = post(env["port"], "/v1/messages", {
        "model": "tiny", "max_tokens": 100, "messages": [{"role": "user", "content": "ok?"}],
        "output_format": {"type": "json_schema", "schema": schema}})
    assert st == 200, o
    jsonschema.validate(json.loads(o["content"][0]["text"]), schema)


def test_responses_text_format(env):
    c = env["client"]
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "blue"]}}, "required": ["color"],
              "additionalProperties": False}
    r = c.responses.create(model="tiny", input="Pick a color.", max_output_tokens=100,
                           text={"format": {"type": "json_schema", "name": "c", "schema": schema}})
    jsonschema.validate(json.loads(r.output_text), schema)


@pytest.mark.parametrize("body,needle", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}}, "not"),
    ({"regex": "(a)\\1"}, "backreference"),
    ({"ebnf": "root ::= \"a\" b"}, "b"),
    ({"ebnf": "start ::= \"a\""}, "root"),
    ({"regex": "a+", "response_format": {"type": "json_object"}}, "both constrain"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
])
def test_refused_with_a_named_reason(env, body, needle):
    st, o = post(env["port"], "/v1/chat/completions", {"model": "tiny", "messages": MSG, **body})
    assert st == 400, (st, o)
    assert o["error"]["type"] == "invalid_request_error"
    assert needle.lower() in o["error"]["message"].lower(), o
