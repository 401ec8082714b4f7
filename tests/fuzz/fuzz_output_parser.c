/* libFuzzer: model output through the reasoning + tool-call parsers.
 * Byte 0 picks reasoning mode, call format and whether the request had
 * tools; byte 1 a cut point; the rest is the text. The text fed whole, cut
 * in two and in 3-byte pieces must fold into the same message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "output_parser.h"

static const char *const tools_json =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "
    "{\"properties\": "
    "{\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\"}, \"ok\": {\"type\": "
    "\"boolean\"}, "
    "\"o\": {\"type\": \"object\"}, \"x\": {\"type\": \"number\"}}}}}, {\"name\": \"list_files\"}]";

static json_t *message(const sl_output_parser_config *c, const char *text, size_t n, size_t cut,
                       size_t step)
{
    sl_output_parser *p = sl_output_parser_new(c);
    sl_deltas d = {0};
    sl_err e = {0};
    if (step) {
        for (size_t at = 0; at < n; at += step)
            sl_output_parser_feed(p, text + at, n - at < step ? n - at : step, &d, &e);
    } else {
        sl_output_parser_feed(p, text, cut, &d, &e);
        sl_output_parser_feed(p, text + cut, n - cut, &d, &e);
    }
    sl_output_parser_finish(p, &d, &e);
    json_t *m = sl_deltas_message(&d);
    sl_deltas_free(&d);
    sl_output_parser_free(p);
    return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static json_t *tools;
    if (!tools) tools = json_loads(tools_json, 0, NULL);
    if (size < 2) return 0;
    sl_output_parser_config c = {.reasoning = (sl_reasoning_mode)(data[0] % 3),
                                 .tool_calls = 1,
                                 .tool_kind = (data[0] >> 2) & 1 ? SL_TOOL_PARSER_KIND_HERMES
                                                                 : SL_TOOL_PARSER_KIND_QWEN3_CODER,
                                 .tools = (data[0] >> 3) & 1 ? NULL : tools,
                                 .seed = 1};
    const char *text = (const char *)data + 2;
    size_t n = size - 2, cut = n ? data[1] % (n + 1) : 0;
    json_t *whole = message(&c, text, n, n, 0), *two = message(&c, text, n, cut, 0),
           *pieces = message(&c, text, n, 0, 3);
    if (!whole || !json_equal(whole, two) || !json_equal(whole, pieces)) __builtin_trap();
    json_decref(whole);
    json_decref(two);
    json_decref(pieces);
    return 0;
}
