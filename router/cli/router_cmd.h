/* Subcommands implemented by the router side of sluice (argv[0] is the
 * subcommand name). Each returns a process exit status: 0 ok, 1 runtime
 * failure (bad input, unreadable files), 2 usage error; errors are printed to
 * stderr. */
#ifndef SL_ROUTER_CMD_H
#define SL_ROUTER_CMD_H

/* text <-> token ids with a model's tokenizer.json (cmd_tokenize.c; docs/cli.md) */
int sl_cmd_tokenize(int argc, char **argv);
/* request body on stdin -> chat-template prompt on stdout (cmd_render.c) */
int sl_cmd_render(int argc, char **argv);
/* the HTTP front end (cmd_router.c), router + local workers (cmd_serve.c) */
int sl_cmd_router(int argc, char **argv);
int sl_cmd_serve(int argc, char **argv);
/* a worker without a model, for router tests and benchmarks (mock_worker.c) */
int sl_cmd_mock_worker(int argc, char **argv);
/* benchmark an OpenAI-compatible server like sglang.bench_serving (cmd_bench.c, bench.h;
 * docs/cli.md) */
int sl_cmd_bench(int argc, char **argv);

#endif
