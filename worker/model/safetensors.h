/* worker/safetensors.h: read-only access to Hugging Face safetensors
 * checkpoints (one model.safetensors or shards listed by
 * model.safetensors.index.json), memory-mapped; and a writer for the small
 * models sluice makes itself.
 *
 *   sl_safetensors *st; sl_safetensors_open(&st, dir, &e);
 *   const sl_safetensors_tensor *t = sl_safetensors_find(st, "model.norm.weight");
 *   ... t->data is valid until sl_safetensors_close(st)
 *
 * Every header is validated (dtype known, shape × dtype size equal to the
 * byte range, range inside the file) before any tensor is handed out. */
#ifndef SL_SAFETENSORS_H
#define SL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "sl_err.h"

typedef struct sl_safetensors_tensor {
    const char *name;
    sl_dtype dtype;
    int ndim;
    int64_t shape[SL_MAX_DIMS];
    const void *data;
    size_t nbytes;
    int file; /* the shard holding it (sl_safetensors_file_name) */
} sl_safetensors_tensor;

typedef struct sl_safetensors sl_safetensors;

sl_status sl_safetensors_open(sl_safetensors **out, const char *dir, sl_err *e);
/* NULL if absent. */
const sl_safetensors_tensor *sl_safetensors_find(const sl_safetensors *st, const char *name);
void sl_safetensors_close(sl_safetensors *st);
/* Every tensor, sorted by name: i in [0, sl_safetensors_count). */
int sl_safetensors_count(const sl_safetensors *st);
const sl_safetensors_tensor *sl_safetensors_at(const sl_safetensors *st, int i);
/* The shard files in the order opened ("model.safetensors" without an index). */
int sl_safetensors_files(const sl_safetensors *st);
const char *sl_safetensors_file_name(const sl_safetensors *st, int file);

/* Parses one file image (header + data); exposed for the fuzzer and tests. */
sl_status sl_safetensors_parse(sl_safetensors *st, const void *file, size_t len, const char *fname, sl_err *e);
sl_safetensors *sl_safetensors_new_empty(void);

/* Writes tensors to a single safetensors file (dtype of each as given). */
sl_status sl_safetensors_write(const char *path, const sl_safetensors_tensor *ts, int n, sl_err *e);

#endif
