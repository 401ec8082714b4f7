/* Subcommands implemented by the router side of sluice (argv[0] is the subcommand name). Each
 * returns a process exit status: 0 ok, 1 runtime failure (bad input, unreadable files), 2 usage
 * error; errors are printed to stderr. */
#ifndef SL_ROUTER_CMD_H
#define SL_ROUTER_CMD_H

/* text <-> token ids with a model's tokenizer.json (cmd_tokenize.c; docs/cli.md) */
int sl_cmd_tokenize(int argc, char **argv);

#endif
