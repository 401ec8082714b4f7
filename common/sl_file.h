/* sl_file: whole-file reads and read-only memory maps. */
#ifndef SL_FILE_H
#define SL_FILE_H

#include <stddef.h>

#include "sl_err.h"

/* Reads path into a malloc'd NUL-terminated buffer (caller frees). */
sl_status sl_file_read(const char *path, char **out, size_t *len, sl_err *e);
sl_status sl_file_write(const char *path, const void *data, size_t len, sl_err *e);
int sl_file_exists(const char *path);

typedef struct sl_mmap {
    void *data;
    size_t len;
} sl_mmap;

sl_status sl_mmap_open(sl_mmap *m, const char *path, sl_err *e);
void sl_mmap_close(sl_mmap *m);

/* Joins dir and name into out (size n); returns out. */
char *sl_path_join(char *out, size_t n, const char *dir, const char *name);
/* mkdir -p */
sl_status sl_mkdirs(const char *path, sl_err *e);

#endif
