/* Backend selection by name: the one place that knows every backend. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"

sl_backend *sl_backend_new(const char *name, sl_err *e)
{
    if (!name || !strcmp(name, "cpu")) return sl_backend_cpu_new();
    if (!strncmp(name, "cuda", 4)) {
        int dev = 0;
        if (name[4] == ':') dev = (int)strtol(name + 5, NULL, 10);
        else if (name[4]) goto bad;
        return sl_backend_cuda_new(dev, e);
    }
bad:
    sl_err_set(e, SL_ERR_INVALID, "unknown backend '%s' (expected cpu or cuda[:N])", name);
    return NULL;
}

