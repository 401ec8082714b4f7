/* worker/cli/engine_flags.h: the engine flags, in one table. `sluice worker`
 * parses them into an sl_engine_config; `sluice serve` accepts the same
 * names and passes the ones given through, verbatim, to the workers it
 * spawns (so the worker alone validates them).
 *
 *   sl_engine_flags f; sl_engine_flags_default(&f);
 *   n += sl_engine_flags_opts(&f, opts + n);          // worker: typed
 *   ... sl_opts_parse ...; sl_engine_flags_finish(&f); // f.c is the config
 *
 *   sl_engine_flags_pass p = {0};
 *   n += sl_engine_flags_pass_opts(&p, opts + n);     // serve: as given
 *   ... sl_opts_parse ...; k += sl_engine_flags_pass_argv(&p, argv + k);
 *
 * Threads: one thread (pass_opts writes a static buffer of help texts).
 */
#ifndef SL_ENGINE_FLAGS_H
#define SL_ENGINE_FLAGS_H

#include "engine.h"
#include "sl_opts.h"

#define SL_ENGINE_NFLAGS 19

/* What the worker parses the flags into. */
typedef struct sl_engine_flags {
    sl_engine_config c;
    const char *load_format; /* auto | safetensors | dummy */
    long long seed;          /* dummy weights */
    const char *quantization; /* NULL | "fp8": quantize projections at load */
    int no_shared_fusion;     /* sl_model_load_opts.no_shared_fusion */
    long long mem_bytes;
    const char *strategy; /* extra_buffer | no_buffer */
    int disable_overlap, disable_graph;
} sl_engine_flags;

void sl_engine_flags_default(sl_engine_flags *f);
/* Writes the table's SL_ENGINE_NFLAGS options, bound to f, into out;
 * returns SL_ENGINE_NFLAGS. */
int sl_engine_flags_opts(sl_engine_flags *f, sl_opt *out);
/* Folds the parsed flags into f->c: overlap, graphs, cache bytes, strategy
 * (which must be checked by the caller: anything else than no_buffer is
 * extra_buffer here). */
void sl_engine_flags_finish(sl_engine_flags *f);

/* What serve keeps: each flag as given (NULL / 0: not given). */
typedef struct sl_engine_flags_pass {
    const char *str[SL_ENGINE_NFLAGS];
    int flag[SL_ENGINE_NFLAGS];
} sl_engine_flags_pass;

/* Writes the table's options as pass-through strings (help marked
 * "(workers)") into out; returns SL_ENGINE_NFLAGS. */
int sl_engine_flags_pass_opts(sl_engine_flags_pass *p, sl_opt *out);
/* Appends the flags given to argv (at most 2 * SL_ENGINE_NFLAGS entries);
 * returns how many. */
int sl_engine_flags_pass_argv(const sl_engine_flags_pass *p, char **argv);

#endif
