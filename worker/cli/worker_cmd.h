/* Subcommands implemented by the worker side of sluice (argv[0] is the
 * subcommand name). Each returns a process exit status: 0 ok, 1 runtime
 * failure, 2 usage error; errors are printed to stderr. */
#ifndef SL_WORKER_CMD_H
#define SL_WORKER_CMD_H

int sl_cmd_logits(int argc, char **argv);
int sl_cmd_generate(int argc, char **argv);
int sl_cmd_grammar(int argc, char **argv);
int sl_cmd_make_tiny(int argc, char **argv);
int sl_cmd_quantize(int argc, char **argv);
int sl_cmd_worker(int argc, char **argv);

#endif
