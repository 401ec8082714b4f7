#include "sl_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

sl_status sl_file_read(const char *path, char **out, size_t *len, sl_err *e)
{
    FILE *f = fopen(path, "rb");
    if (!f) return sl_err_set(e, SL_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            return sl_err_set(e, SL_ERR_NOMEM, "reading %s: out of memory", path);
        }
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        cap *= 2;
        char *p = realloc(buf, cap);
        if (!p) free(buf);
        buf = p;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return sl_err_set(e, SL_ERR_IO, "cannot read %s", path);
    }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return SL_OK;
}

sl_status sl_file_write(const char *path, const void *data, size_t len, sl_err *e)
{
    FILE *f = fopen(path, "wb");
    if (!f) return sl_err_set(e, SL_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    size_t w = fwrite(data, 1, len, f);
    if (fclose(f) != 0 || w != len) return sl_err_set(e, SL_ERR_IO, "cannot write %s", path);
    return SL_OK;
}

int sl_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

sl_status sl_mmap_open(sl_mmap *m, const char *path, sl_err *e)
{
    m->data = NULL;
    m->len = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return sl_err_set(e, SL_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return sl_err_set(e, SL_ERR_IO, "cannot stat %s", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return sl_err_set(e, SL_ERR_PARSE, "%s is empty", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return sl_err_set(e, SL_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    m->data = p;
    m->len = (size_t)st.st_size;
    return SL_OK;
}

void sl_mmap_close(sl_mmap *m)
{
    if (m->data) munmap(m->data, m->len);
    m->data = NULL;
    m->len = 0;
}

char *sl_path_join(char *out, size_t n, const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    snprintf(out, n, "%s%s%s", dir, (dl && dir[dl - 1] == '/') ? "" : "/", name);
    return out;
}

sl_status sl_mkdirs(const char *path, sl_err *e)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return sl_err_set(e, SL_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return sl_err_set(e, SL_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    return SL_OK;
}
