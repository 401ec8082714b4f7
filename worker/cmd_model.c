/* placeholder until the model lands (replaced in the next commits) */
#include <stdio.h>

#include "worker_cmd.h"

static int todo(const char *what)
{
    fprintf(stderr, "sluice %s: not implemented yet\n", what);
    return 1;
}
int sl_cmd_logits(int argc, char **argv) { (void)argc; (void)argv; return todo("logits"); }
int sl_cmd_generate(int argc, char **argv) { (void)argc; (void)argv; return todo("generate"); }
int sl_cmd_make_tiny(int argc, char **argv) { (void)argc; (void)argv; return todo("make-tiny"); }
