"""`sluice render` against the Jinja reference, byte for byte.

The reference is what Hugging Face transformers' apply_chat_template does:
jinja2's ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and the
loopcontrols extension, HF's tojson override (json.dumps, ensure_ascii=False)
and a raise_exception global; messages, tools, add_generation_prompt and the
request's chat_template_kwargs are the template's variables. Before rendering,
both sides apply the normalisation documented in router/text/chat_template.h
(content null -> "", text parts joined; qwen3_coder decodes JSON-string
arguments and gives a tool without parameters an empty object).
"""
import copy
import json
import os
import subprocess

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from router_harness import CODER_TEMPLATE, TOKENIZER, data_path

SRC = os.environ.get("SLUICE_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SLUICE_BIN", os.path.join(SRC, "build", "bin", "sluice"))
QWEN3_DIR = str(data_path(TOKENIZER / "tokenizer_config.json").parent)
CODER_DIR = str(data_path(CODER_TEMPLATE / "chat_template.jinja").parent)


def template_text(family):
    if family == "qwen3":
        with open(os.path.join(QWEN3_DIR, "tokenizer_config.json"), encoding="utf-8") as f:
            return json.load(f)["chat_template"]
    with open(os.path.join(CODER_DIR, "chat_template.jinja"), encoding="utf-8") as f:
        return f.read()


def hf_environment():
    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


TEMPLATES = {f: hf_environment().from_string(template_text(f)) for f in ("qwen3", "qwen3_coder")}


def normalise(family, req):
    msgs = copy.deepcopy(req["messages"])
    for m in msgs:
        c = m.get("content")
        if c is None:
            m["content"] = ""
        elif isinstance(c, list):
            m["content"] = "\n".join(p["text"] for p in c)
        if family == "qwen3_coder":
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function", tc)
                if isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.loads(fn["arguments"])
    tools = copy.deepcopy(req.get("tools"))
    if family == "qwen3_coder":
        for t in tools or []:
            t.get("function", t).setdefault("parameters", {})
    return msgs, tools


def reference(family, body):
    req = json.loads(body)
    msgs, tools = normalise(family, req)
    return TEMPLATES[family].render(messages=msgs, tools=tools,
                                    add_generation_prompt=req.get("add_generation_prompt", True),
                                    **(req.get("chat_template_kwargs") or {}))


def render(args, body):
    return subprocess.run([BIN, "render", *args], input=body.encode(), capture_output=True,
                          timeout=30)


# ---- requests ----

WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "description": "  Current weather for a city.\n",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Zürich"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        "days": {"type": "integer", "minimum": 1, "maximum": 14.5, "x-order": None},
    }, "required": ["city"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search_files",
    "description": "Search files\u00a0 ",
    "parameters": {"type": "object", "properties": {
        "query": {"type": ["string", "null"], "description": 'Pattern with "quotes" and \'apostrophes\''},
        "filters": {"type": "object", "properties": {"ext": {"type": "array", "items": {"type": "string"}}},
                    "required": ["ext"], "additionalProperties": False},
        "paths": {"type": "array", "items": {"type": "string"}, "min-items": 0, "$comment": "c", "x y": [1, 2.5, True]},
        "flags": {"required": "ab", "nullable": True},
    }, "required": ["query", 3]},
    "return": {"type": "array"}}}
BARE_TOOL = {"name": "noop", "description": "No parameters at all"}

ARGS_OBJ = {"city": "Paris", "days": 3, "opts": {"nested": [1, 2.5, -0.0, 1e20, 1.25e-7, True, None, "x\"y'z"]},
            "note": "line1\nline2 \u00e9\u4e2d\U0001f600", "flag": False, "empty": {}}


def call(name, args, as_string, cid="call_1"):
    return {"id": cid, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args) if as_string else args}}


def conv_tool_calls(as_string):
    return [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in Paris and files?"},
        {"role": "assistant", "content": "Let me check.\n\n",
         "tool_calls": [call("get_weather", ARGS_OBJ, as_string),
                        call("search_files", {"query": "*.c", "paths": ["a", "b"]}, as_string, "call_2")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
        {"role": "tool", "tool_call_id": "call_2", "content": "a.c\nb.c"},
        {"role": "assistant", "content": "It is 21 degrees."},
        {"role": "user", "content": "Thanks"},
    ]


CASES = {
    "plain": {"messages": [{"role": "user", "content": "Hello"}]},
    "system": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
    "multi_turn": {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "2+2?"}]},
    "no_generation_prompt": {"add_generation_prompt": False, "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    "tools": {"tools": [WEATHER, SEARCH], "messages": [{"role": "user", "content": "Weather?"}]},
    "tools_with_system": {"tools": [WEATHER, SEARCH, BARE_TOOL], "messages": [
        {"role": "system", "content": "You are a bot."}, {"role": "user", "content": "Weather?"}]},
    "tool_calls_string_args": {"tools": [WEATHER, SEARCH], "messages": conv_tool_calls(True)},
    "tool_calls_object_args": {"tools": [WEATHER, SEARCH], "messages": conv_tool_calls(False)},
    "tool_call_null_content": {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call("get_weather", {"city": "Oslo"}, True)]},
        {"role": "tool", "content": "cold"}]},
    "multi_step_tools": {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in two cities?"},
        {"role": "assistant", "content": "", "reasoning_content": "\nFirst Oslo.\n",
         "tool_calls": [call("get_weather", {"city": "Oslo"}, False)]},
        {"role": "tool", "content": "cold"},
        {"role": "assistant", "content": "\nNow Rome.", "reasoning_content": "Then Rome.",
         "tool_calls": [call("get_weather", {"city": "Rome"}, False)]},
        {"role": "tool", "content": "warm"},
        {"role": "user", "content": "<tool_response>\nextra\n</tool_response>"}]},
    "reasoning_content": {"messages": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "old thoughts"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "\n\nA2", "reasoning_content": "\nnew thoughts\n\n"}]},
    "think_in_content": {"add_generation_prompt": False, "messages": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "pre<think>\n\nx</think>y</think>\n\nA2"}]},
    "empty_reasoning_not_last": {"messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A", "reasoning_content": None},
        {"role": "assistant", "content": "B"}]},
    "thinking_off": {"chat_template_kwargs": {"enable_thinking": False},
                     "messages": [{"role": "user", "content": "Hi"}]},
    "thinking_on": {"chat_template_kwargs": {"enable_thinking": True},
                    "messages": [{"role": "user", "content": "Hi"}]},
    "thinking_zero_is_not_false": {"chat_template_kwargs": {"enable_thinking": 0},
                                   "messages": [{"role": "user", "content": "Hi"}]},
    "unicode": {"messages": [
        {"role": "system", "content": "Réponds en français \u2028 ok"},
        {"role": "user", "content": "\u4f60\u597d \U0001f600 e\u0301 \x01\x7f tab\t"},
        {"role": "assistant", "content": "\u00a0Bonjour\u3000"}]},
    "content_parts": {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}]},
    "late_system_and_unknown_role": {"messages": [
        {"role": "user", "content": "Hi"}, {"role": "system", "content": "Late system"},
        {"role": "developer", "content": "dev note"}, {"role": "user", "content": "Go"}]},
    "tool_first": {"messages": [{"role": "tool", "content": "orphan result"}, {"role": "user", "content": "ok"}]},
    "system_then_tool": {"messages": [
        {"role": "system", "content": "S"}, {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"}]},
    "numbers": {"messages": [
        {"role": "user", "content": "n"},
        {"role": "assistant", "content": "", "tool_calls": [call("f", {
            "floats": [0.1, 1 / 3, 1e16, 1e15, 123456789.125, 5e-324, 1.7976931348623157e308, 1e-4, 1e-5,
                       -2.5e-300, 100.0, 12345678901234567890.0],
            "ints": [0, -1, 9007199254740993, -9223372036854775808], "f": 0.5}, False)]}]},
    "empty_tools_and_calls": {"tools": [], "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "tool_calls": []}]},
    "null_tools": {"tools": None, "messages": [{"role": "user", "content": "x"}]},
    "bare_tool_call": {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "  spaced  ",
         "tool_calls": [{"name": "get_weather", "arguments": {"city": "Lima", "list": [1, "a", None]}}]}]},
}


@pytest.mark.parametrize("family", ["qwen3", "qwen3_coder"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_jinja(family, case):
    body = json.dumps(CASES[case], ensure_ascii=False)
    want = reference(family, body)
    got = render(["--chat-template", family], body)
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout.decode() == want


def test_object_and_string_arguments_agree_for_coder():
    a = render(["--chat-template", "qwen3_coder"], json.dumps(CASES["tool_calls_string_args"]))
    b = render(["--chat-template", "qwen3_coder"], json.dumps(CASES["tool_calls_object_args"]))
    assert a.returncode == 0 and a.stdout == b.stdout
    assert b"<parameter=opts>\n{'nested': [1, 2.5, -0.0, 1e+20, 1.25e-07, True, None, 'x\"y\\'z']}\n" in a.stdout


def test_model_dir_selects_family():
    body = json.dumps(CASES["tool_calls_object_args"])
    for d, family in ((QWEN3_DIR, "qwen3"), (CODER_DIR, "qwen3_coder")):
        got = render(["--model", d], body)
        assert got.returncode == 0, got.stderr.decode()
        assert got.stdout.decode() == reference(family, body)
    # the override wins over the directory's template
    got = render(["--model", QWEN3_DIR, "--chat-template", "qwen3_coder"], body)
    assert got.stdout.decode() == reference("qwen3_coder", body)


def test_fingerprint_survives_edits_and_rejects_others(tmp_path):
    body = json.dumps(CASES["plain"])
    edited = tmp_path / "edited"
    edited.mkdir()
    # reformatted whitespace and an added comment keep the family
    (edited / "chat_template.jinja").write_text("{# local copy #}\n" + template_text("qwen3_coder").replace("\n\n", "\n"))
    assert render(["--model", str(edited)], body).stdout.decode() == reference("qwen3_coder", body)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "x"}, {"name": "default", "template": template_text("qwen3")}]}))
    assert render(["--model", str(cfg)], body).stdout.decode() == reference("qwen3", body)

    other = tmp_path / "other"
    other.mkdir()
    (other / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    got = render(["--model", str(other)], body)
    assert got.returncode == 1 and b"not recognised" in got.stderr and b"chat_template.jinja" in got.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tokenizer_config.json").write_text("{}")
    got = render(["--model", str(empty)], body)
    assert got.returncode == 1 and b"no chat_template" in got.stderr


@pytest.mark.parametrize("args,body,code,msg", [
    (["--chat-template", "qwen3"], "{not json", 1, b"not valid JSON"),
    (["--chat-template", "qwen3"], "[]", 1, b"request must be a JSON object"),
    (["--chat-template", "qwen3"], '{"messages": []}', 1, b"messages must be a non-empty array"),
    (["--chat-template", "qwen3"], '{"messages": [{"role": 1, "content": "x"}]}', 1, b"messages[0].role"),
    (["--chat-template", "qwen3"], '{"messages": [{"role": "user", "content": 5}]}', 1, b"messages[0].content"),
    (["--chat-template", "qwen3"], '{"messages": [{"role": "user", "content": "x"}], "tools": {}}', 1, b"tools must be an array"),
    (["--chat-template", "qwen3"], '{"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": 1}', 1,
     b"add_generation_prompt"),
    (["--chat-template", "qwen3_coder"],
     '{"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}]}',
     1, b"messages[0].tool_calls[0].function.arguments is not JSON"),
    (["--chat-template", "qwen3_coder"],
     '{"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]}',
     1, b"must be a JSON object"),
    (["--chat-template", "llama"], '{"messages": []}', 2, b"unknown chat template 'llama'"),
    ([], '{}', 2, b"--model or --chat-template is required"),
])
def test_bad_input_is_a_clear_error(args, body, code, msg):
    got = render(args, body)
    assert got.returncode == code, got.stderr.decode()
    assert msg in got.stderr
    assert got.stdout == b""
