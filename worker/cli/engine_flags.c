#include "engine_flags.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* One row per flag: name, type, where it lands in sl_engine_flags, help (the
 * default is sl_engine_flags_default's). Flag names follow SGLang's server
 * arguments. */
typedef struct flag_row {
    const char *name;
    sl_opt_kind kind;
    size_t off;
    const char *help;
} flag_row;

#define C_(field) offsetof(sl_engine_flags, c) + offsetof(sl_engine_config, field)
#define F_(field) offsetof(sl_engine_flags, field)

static const flag_row rows[SL_ENGINE_NFLAGS] = {
    {"--load-format", SL_OPT_STR, F_(load_format), "auto (default), safetensors or dummy (random weights)"},
    {"--seed", SL_OPT_I64, F_(seed), "seed of dummy weights (default 0)"},
    {"--quantization", SL_OPT_STR, F_(quantization),
     "fp8: quantize the projections of a bf16 checkpoint to FP8 blocks at load"},
    {"--disable-shared-experts-fusion", SL_OPT_FLAG, F_(no_shared_fusion),
     "keep a MoE shared expert apart instead of routing every token to it as one more expert"},
    {"--mem-fraction-static", SL_OPT_FLOAT, C_(mem_fraction),
     "share of the device this worker's weights and caches may take (default 0.85)"},
    {"--mem-bytes", SL_OPT_I64, F_(mem_bytes),
     "cache budget in bytes (overrides --mem-fraction-static)"},
    {"--page-size", SL_OPT_INT, C_(page_size), "tokens per KV page (default 1)"},
    {"--max-total-tokens", SL_OPT_INT, C_(max_total_tokens), "KV pool size in tokens"},
    {"--max-mamba-cache-size", SL_OPT_INT, C_(max_mamba_slots), "mamba state slots"},
    {"--max-running-requests", SL_OPT_INT, C_(max_running),
     "requests decoding at once (default: from memory)"},
    {"--chunked-prefill-size", SL_OPT_INT, C_(chunked_prefill_size),
     "tokens per batch, decodes included (default 8192; -1 disables chunking)"},
    {"--mixed-prefill-tokens", SL_OPT_INT, C_(mixed_prefill_tokens),
     "prefill tokens of a batch that also decodes (default 0: --chunked-prefill-size alone)"},
    {"--mamba-scheduler-strategy", SL_OPT_STR, F_(strategy),
     "extra_buffer (default) or no_buffer (hybrid models)"},
    {"--mamba-track-interval", SL_OPT_INT, C_(track_interval),
     "decode tokens between cached states (default 256; multiple of --page-size)"},
    {"--disable-overlap-schedule", SL_OPT_FLAG, F_(disable_overlap),
     "build each batch only after the previous one finished"},
    {"--disable-radix-cache", SL_OPT_FLAG, C_(disable_radix), "no prefix caching"},
    {"--cuda-graph-max-bs", SL_OPT_INT, C_(graph_max_bs),
     "largest decode batch replayed from a CUDA graph (default 256)"},
    {"--disable-cuda-graph", SL_OPT_FLAG, F_(disable_graph), "run decode batches eagerly"},
    {"--step-timing", SL_OPT_FLAG, C_(step_timing),
     "log device time and idle gaps of decode steps (every 2000 steps) and each prefill step's device time"},
};

void sl_engine_flags_default(sl_engine_flags *f)
{
    memset(f, 0, sizeof *f);
    sl_engine_config_default(&f->c);
    f->load_format = "auto";
    f->strategy = "extra_buffer";
}

int sl_engine_flags_opts(sl_engine_flags *f, sl_opt *out)
{
    for (int i = 0; i < SL_ENGINE_NFLAGS; i++)
        out[i] = (sl_opt){rows[i].name, NULL, rows[i].kind, (char *)f + rows[i].off, rows[i].help};
    return SL_ENGINE_NFLAGS;
}

void sl_engine_flags_finish(sl_engine_flags *f)
{
    f->c.overlap = !f->disable_overlap;
    if (f->disable_graph) f->c.graph_max_bs = 0;
    f->c.mem_bytes = f->mem_bytes > 0 ? (size_t)f->mem_bytes : 0;
    f->c.strategy = !strcmp(f->strategy, "no_buffer") ? SL_MAMBA_NO_BUFFER : SL_MAMBA_EXTRA_BUFFER;
}

int sl_engine_flags_pass_opts(sl_engine_flags_pass *p, sl_opt *out)
{
    static char help[SL_ENGINE_NFLAGS][160];
    for (int i = 0; i < SL_ENGINE_NFLAGS; i++) {
        int flag = rows[i].kind == SL_OPT_FLAG;
        snprintf(help[i], sizeof help[i], "%s (workers)", rows[i].help);
        out[i] = (sl_opt){rows[i].name, NULL, flag ? SL_OPT_FLAG : SL_OPT_STR,
                          flag ? (void *)&p->flag[i] : (void *)&p->str[i], help[i]};
    }
    return SL_ENGINE_NFLAGS;
}

int sl_engine_flags_pass_argv(const sl_engine_flags_pass *p, char **argv)
{
    int k = 0;
    for (int i = 0; i < SL_ENGINE_NFLAGS; i++) {
        if (rows[i].kind == SL_OPT_FLAG && p->flag[i]) argv[k++] = (char *)rows[i].name;
        if (rows[i].kind != SL_OPT_FLAG && p->str[i]) {
            argv[k++] = (char *)rows[i].name;
            argv[k++] = (char *)p->str[i];
        }
    }
    return k;
}
