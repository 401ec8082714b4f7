/* sluice: one program, one subcommand per role or tool. */
#include <stdio.h>
#include <string.h>

#include "router_cmd.h"
#include "sl_version.h"
#include "worker_cmd.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"bench", sl_cmd_bench, "benchmark an OpenAI-compatible server like sglang.bench_serving"},
    {"generate", sl_cmd_generate, "greedy continuation of token ids on a model (CPU or GPU)"},
    {"grammar", sl_cmd_grammar, "check text against a GBNF grammar, or time its token masks"},
    {"logits", sl_cmd_logits, "float32 logits of every position of prompts (golden checks)"},
    {"render", sl_cmd_render, "print the chat-template prompt of a request read on stdin"},
    {"make-tiny", sl_cmd_make_tiny, "write a small random model of any supported architecture"},
    {"quantize", sl_cmd_quantize, "write an FP8 block-wise checkpoint of a bf16 one"},
    {"tokenize", sl_cmd_tokenize, "text <-> token ids with a model's tokenizer.json"},
    {"router", sl_cmd_router, "OpenAI/Anthropic-compatible HTTP front end over workers"},
    {"serve", sl_cmd_serve, "router + local workers in one command (SGLang flags)"},
    {"mock-worker", sl_cmd_mock_worker, "a worker without a model (router tests and benchmarks)"},
    {"worker", sl_cmd_worker, "serve a model to a router over nng (batching, prefix cache)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: sluice <command> [options]   (sluice <command> --help for its options;\n"
               "       sluice --version)\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))) {
        printf("sluice %s%s%s\n", SLUICE_VERSION, *SLUICE_GIT_DESCRIBE ? " " : "",
               SLUICE_GIT_DESCRIBE);
        return 0;
    }
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "sluice: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
