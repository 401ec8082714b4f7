#include "sampler_op.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(SL_SAMPLER_MAX_TOP == SL_SAMPLE_MAX_TOP, "sl_sample holds the op's top logprobs");

void sl_sample_pen_free(sl_sample_pen *pen)
{
    free(pen->tok);
    free(pen->out);
    free(pen->prompt);
    *pen = (sl_sample_pen){0};
}

static int grow(int32_t **arr, int cap)
{
    int32_t *p = realloc(*arr, sizeof(int32_t) * (size_t)cap);
    if (!p) return -1;
    *arr = p;
    return 0;
}

static int pen_reserve(sl_sample_pen *pen, int need)
{
    if (need <= pen->cap) return 0;
    int cap = pen->cap ? pen->cap : 256;
    while (cap < need)
        cap *= 2;
    /* on failure the arrays grown so far keep their contents */
    if (grow(&pen->tok, cap) || grow(&pen->out, cap) || grow(&pen->prompt, cap)) return -1;
    pen->cap = cap;
    return 0;
}

sl_status sl_sampler_row(const sl_sampler_state *s, sl_sample_row *row, sl_sample_pen *pen,
                         int32_t pending, sl_err *e)
{
    const sl_sampling *p = sl_sampler_params(s);
    int n = sl_sampler_pen_count(s);
    if (pen_reserve(pen, pen->n + n))
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory for %d penalty entries", pen->n + n);
    *row = (sl_sample_row){
        .temperature = p->temperature,
        .top_k = p->top_k,
        .top_p = p->top_p,
        .min_p = p->min_p,
        .repetition_penalty = p->repetition_penalty,
        .frequency_penalty = p->frequency_penalty,
        .presence_penalty = p->presence_penalty,
        .u = sl_sampler_uniform(s, pending >= 0),
        .logprobs = p->logprobs || p->top_logprobs > 0,
        .n_top = p->top_logprobs > 0 ? p->top_logprobs : 0,
        .pen_start = pen->n,
        .pen_n = n,
        .pending = pending,
        .mask_row = -1, /* the runner sets it for a constrained row */
    };
    if (n) /* the arrays are NULL until a row has penalties */
        sl_sampler_pen_fill(s, pen->tok + pen->n, pen->out + pen->n, pen->prompt + pen->n);
    pen->n += n;
    return SL_OK;
}

void sl_sampler_commit(sl_sampler_state *s, int32_t token, const float *lp_row, sl_sample *out)
{
    sl_sampler_take(s, token, out);
    if (lp_row) {
        out->logprob = lp_row[0];
        out->n_top = (int)lp_row[1];
        for (int j = 0; j < out->n_top; j++) {
            out->top_ids[j] = (int32_t)lp_row[2 + j];
            out->top_logprobs[j] = lp_row[2 + SL_SAMPLE_MAX_TOP + j];
        }
    }
}
