/* Subcommands implemented by the router side of sluice (argv[0] is the
 * subcommand name). Each returns a process exit status: 0 ok, 1 runtime
 * failure, 2 usage error; errors are printed to stderr. */
#ifndef SL_ROUTER_CMD_H
#define SL_ROUTER_CMD_H

int sl_cmd_router(int argc, char **argv);
int sl_cmd_serve(int argc, char **argv);
int sl_cmd_mock_worker(int argc, char **argv);

#endif
