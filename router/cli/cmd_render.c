/* `sluice render`: the chat-template prompt of a request read on stdin
 * (docs/cli.md). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "chat_template.h"
#include "router_cmd.h"
#include "sl_hub.h"
#include "sl_opts.h"

int sl_cmd_render(int argc, char **argv)
{
    const char *model = NULL, *name = NULL;
    sl_opt opts[] = {{"--model", "--model-path", SL_OPT_STR, &model,
                      "model directory (or Hugging Face model id ORG/NAME) whose chat template "
                      "is used"},
                     {"--chat-template", NULL, SL_OPT_STR, &name,
                      "force a template family: qwen3 | qwen3_coder"},
                     {0}};
    const char *summary = "reads a chat-completions request (JSON) on stdin, prints the prompt";
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            sl_opts_usage(stdout, "render", summary, opts);
            return 0;
        }
    sl_err e = {0};
    if (sl_opts_parse(argc, argv, opts, &e) || (!model && !name &&
        sl_err_set(&e, SL_ERR_INVALID, "--model or --chat-template is required"))) {
        fprintf(stderr, "sluice render: %s\n", e.msg);
        sl_opts_usage(stderr, "render", summary, opts);
        return 2;
    }
    char dir[SL_HUB_PATH_MAX];
    if (model && sl_hub_resolve(model, NULL, SL_HUB_TEXT, dir, sizeof dir, &e)) {
        fprintf(stderr, "sluice render: %s\n", e.msg);
        return 1;
    }
    sl_chat_template_family fam;
    if (sl_chat_template_load(model ? dir : NULL, name, &fam, &e)) {
        fprintf(stderr, "sluice render: %s\n", e.msg);
        return name ? 2 : 1;
    }
    json_error_t je;
    json_t *body = json_loadf(stdin, 0, &je);
    if (!body) {
        fprintf(stderr, "sluice render: request is not valid JSON: %s (line %d, column %d)\n",
                je.text, je.line, je.column);
        return 1;
    }
    sl_buf prompt = {0};
    sl_status s = sl_chat_template_render(fam, body, &prompt, NULL, &e);
    json_decref(body);
    if (s) {
        fprintf(stderr, "sluice render: %s\n", e.msg);
        sl_buf_free(&prompt);
        return 1;
    }
    int ok = fwrite(prompt.data, 1, prompt.len, stdout) == prompt.len && fflush(stdout) == 0;
    sl_buf_free(&prompt);
    if (!ok) fprintf(stderr, "sluice render: writing the prompt failed\n");
    return ok ? 0 : 1;
}
