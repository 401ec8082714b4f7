/* sl_opts: long-option parsing for the sluice subcommands.
 *
 *   const char *model = NULL; int n = 16; int quiet = 0;
 *   sl_opt opts[] = {
 *       {"--model", "--model-path", SL_OPT_STR, &model, "model directory"},
 *       {"--max-new-tokens", NULL, SL_OPT_INT, &n, "tokens to generate"},
 *       {"--quiet", NULL, SL_OPT_FLAG, &quiet, "print less"},
 *       {0}};
 *   if (sl_opts_parse(argc, argv, opts, &e)) ...   // "--x v" and "--x=v" forms
 *
 * Unknown options, missing values and malformed numbers are errors naming
 * the option. SL_OPT_STRS collects a repeatable option into an sl_strs. */
#ifndef SL_OPTS_H
#define SL_OPTS_H

#include <stdio.h>

#include "sl_err.h"

typedef enum sl_opt_kind {
    SL_OPT_STR,   /* const char ** */
    SL_OPT_INT,   /* int * */
    SL_OPT_I64,   /* long long * */
    SL_OPT_FLOAT, /* double * */
    SL_OPT_FLAG,  /* int *, set to 1 */
    SL_OPT_STRS,  /* sl_strs *, repeatable */
} sl_opt_kind;

typedef struct sl_strs {
    const char *v[64];
    int n;
} sl_strs;

typedef struct sl_opt {
    const char *name;
    const char *alias; /* may be NULL */
    sl_opt_kind kind;
    void *dst;
    const char *help;
} sl_opt;

/* Parses argv[1..argc). An entry whose name does not start with "--"
 * (e.g. {"IN", NULL, SL_OPT_STR, &in, "..."}) is positional: the arguments
 * that are not options fill those entries in table order; one more is an
 * error. Positional entries are not checked for presence here. */
sl_status sl_opts_parse(int argc, char **argv, const sl_opt *opts, sl_err *e);
void sl_opts_usage(FILE *f, const char *cmd, const char *summary, const sl_opt *opts);

/* The prologue of a subcommand: --help or -h anywhere prints the usage on
 * stdout and gives 0; a bad option prints "sluice CMD: error (see sluice CMD
 * --help)" on stderr and gives 2; otherwise -1: run the command. */
int sl_opts_cli(int argc, char **argv, const char *cmd, const char *summary, const sl_opt *opts);
/* Prints "sluice CMD: msg (see sluice CMD --help)" on stderr; returns 2. */
int sl_opts_usage_error(const char *cmd, const char *msg);

#endif
