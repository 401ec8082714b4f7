#include "sampler.h"

#include <stdlib.h>
#include <string.h>

#include "grammar.h"
#include "sl_log.h"
#include "sl_rng.h"

/* Token counts for the penalties: open addressing, token -> (output count,
 * seen in prompt). Only built when a penalty is active. */
typedef struct tok_count {
    int32_t token; /* -1: empty */
    int32_t out;
    int32_t in_prompt;
} tok_count;

struct sl_sampler_state {
    sl_sampling p;
    uint64_t seed;
    int64_t n_out;
    int32_t last;
    int penalize;
    tok_count *tab;
    int cap, used;
    /* constrained decoding (sl_sampler_set_grammar): the matcher, the ids
     * that end the output (allowed once the grammar can end) and those after
     * which the grammar starts (a reasoning model's end of thinking) */
    sl_gram_matcher *gram;
    int32_t *end_ids, *start_ids;
    int n_end, n_start;
    int gram_on; /* the grammar constrains the next token */
};

static tok_count *tab_slot(sl_sampler_state *s, int32_t tok)
{
    uint32_t h = (uint32_t)tok * 2654435761u;
    for (int i = 0;; i++) {
        tok_count *c = &s->tab[(h + (uint32_t)i) & (uint32_t)(s->cap - 1)];
        if (c->token == tok || c->token < 0) return c;
    }
}

static int tab_add(sl_sampler_state *s, int32_t tok, int out, int in_prompt)
{
    if (tok < 0) return 0;
    if (2 * (s->used + 1) > s->cap) {
        int ncap = s->cap ? 2 * s->cap : 64;
        tok_count *old = s->tab, *nt = malloc(sizeof *nt * (size_t)ncap);
        if (!nt) return -1;
        for (int i = 0; i < ncap; i++)
            nt[i].token = -1;
        int ocap = s->cap;
        s->tab = nt;
        s->cap = ncap;
        for (int i = 0; i < ocap; i++)
            if (old[i].token >= 0) *tab_slot(s, old[i].token) = old[i];
        free(old);
    }
    tok_count *c = tab_slot(s, tok);
    if (c->token < 0) {
        c->token = tok;
        c->out = c->in_prompt = 0;
        s->used++;
    }
    c->out += out;
    c->in_prompt |= in_prompt;
    return 0;
}

sl_sampler_state *sl_sampler_state_new(const sl_sampling *params, const int32_t *prompt,
                                       int n_prompt, uint64_t rid)
{
    sl_sampler_state *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *params;
    if (s->p.top_logprobs > SL_SAMPLER_MAX_TOP) s->p.top_logprobs = SL_SAMPLER_MAX_TOP;
    s->seed = params->has_seed ? params->seed : sl_rng_mix(rid ^ 0x5ca1ab1eull);
    s->last = -1;
    s->penalize = params->repetition_penalty != 1.0f || params->frequency_penalty != 0.0f ||
                  params->presence_penalty != 0.0f;
    if (s->penalize && params->repetition_penalty != 1.0f)
        for (int i = 0; i < n_prompt; i++)
            if (tab_add(s, prompt[i], 0, 1)) {
                sl_sampler_state_free(s);
                return NULL;
            }
    return s;
}

void sl_sampler_state_free(sl_sampler_state *s)
{
    if (!s) return;
    free(s->tab);
    sl_gram_matcher_free(s->gram);
    free(s->end_ids);
    free(s->start_ids);
    free(s);
}

static int has_id(const int32_t *v, int n, int32_t t)
{
    for (int i = 0; i < n; i++)
        if (v[i] == t) return 1;
    return 0;
}

/* Moves the grammar past tok. Returns 1 when the constrained output is
 * complete with tok (the request ends with it). */
static int gram_advance(sl_sampler_state *s, int32_t tok)
{
    if (!s->gram) return 0;
    if (!s->gram_on) {
        s->gram_on = has_id(s->start_ids, s->n_start, tok);
        return 0;
    }
    if (has_id(s->end_ids, s->n_end, tok)) return sl_gram_matcher_can_end(s->gram);
    if (sl_gram_matcher_accept_token(s->gram, tok, NULL)) {
        /* only a backend without the mask gets here: end rather than go on unconstrained */
        SL_LOGW("sampler", "token %d is outside the grammar; ending the output", (int)tok);
        return 1;
    }
    return sl_gram_matcher_must_end(s->gram);
}

static int record(sl_sampler_state *s, int32_t tok)
{
    s->last = tok;
    s->n_out++;
    if (s->penalize) tab_add(s, tok, 1, 0); /* out of memory only weakens a penalty */
    return gram_advance(s, tok);
}

static int32_t *dup_ids(const int32_t *v, int n)
{
    int32_t *d = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    if (d && n) memcpy(d, v, sizeof(int32_t) * (size_t)n);
    return d;
}

sl_status sl_sampler_set_grammar(sl_sampler_state *s, sl_gram_matcher *m, const int32_t *end_ids,
                                 int n_end, const int32_t *start_ids, int n_start, sl_err *e)
{
    int32_t *ends = dup_ids(end_ids, n_end), *starts = dup_ids(start_ids, n_start);
    if (!ends || !starts) {
        free(ends);
        free(starts);
        return sl_err_set(e, SL_ERR_NOMEM, "out of memory");
    }
    sl_gram_matcher_free(s->gram);
    free(s->end_ids);
    free(s->start_ids);
    s->gram = m;
    s->end_ids = ends;
    s->start_ids = starts;
    s->n_end = n_end;
    s->n_start = n_start;
    s->gram_on = n_start == 0;
    return SL_OK;
}

int sl_sampler_constrained(const sl_sampler_state *s)
{
    return s->gram != NULL;
}

int sl_sampler_fill_mask(sl_sampler_state *s, uint32_t *bits, int words, int vocab)
{
    if (!s->gram || !s->gram_on) return 0;
    sl_err e = {0};
    if (sl_gram_matcher_fill_mask(s->gram, bits, &e)) { /* out of memory */
        SL_LOGW("sampler", "no grammar mask for this token: %s", e.msg);
        return 0;
    }
    int can_end = sl_gram_matcher_can_end(s->gram);
    for (int i = 0; i < s->n_end; i++) {
        int32_t t = s->end_ids[i];
        if (t < 0 || t >= vocab) continue;
        if (can_end)
            bits[t >> 5] |= 1u << (t & 31);
        else
            bits[t >> 5] &= ~(1u << (t & 31));
    }
    for (int w = 0; w < words; w++)
        if (bits[w]) return 1;
    /* nothing allowed (a grammar that cannot end, with no end id): sample
     * unconstrained rather than from an empty set; the next commit ends it */
    SL_LOGW("sampler", "the grammar allows no token here; the output ends");
    return 0;
}

void sl_sampler_state_add_output(sl_sampler_state *s, const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++)
        record(s, ids[i]);
}

int32_t sl_sampler_last_token(const sl_sampler_state *s)
{
    return s->last;
}
const sl_sampling *sl_sampler_params(const sl_sampler_state *s)
{
    return &s->p;
}

int sl_sampler_is_argmax(const sl_sampler_state *s)
{
    const sl_sampling *p = &s->p;
    return !s->penalize && !s->gram && !p->logprobs && p->top_logprobs <= 0 &&
           (p->temperature <= 0.0f || p->top_k == 1);
}

float sl_sampler_uniform(const sl_sampler_state *s, int ahead)
{
    return sl_rng_uniform(s->seed, (uint64_t)s->n_out + (uint64_t)ahead);
}

int sl_sampler_pen_count(const sl_sampler_state *s)
{
    return s->used; /* the table is only filled when a penalty is set */
}

void sl_sampler_pen_fill(const sl_sampler_state *s, int32_t *tok, int32_t *out, int32_t *prompt)
{
    int n = 0;
    for (int i = 0; i < s->cap; i++) {
        const tok_count *c = &s->tab[i];
        if (c->token < 0) continue;
        tok[n] = c->token;
        out[n] = c->out;
        prompt[n] = c->in_prompt;
        n++;
    }
}

void sl_sampler_take(sl_sampler_state *s, int32_t token, sl_sample *out)
{
    memset(out, 0, sizeof *out);
    out->token = token;
    out->complete = record(s, token);
}

/* ---- table -------------------------------------------------------------------- */

/* Segments of TAB_SEG entries, allocated as needed and never moved: up to
 * TAB_NSEG * TAB_SEG states alive at once (queued and running requests). */
#define TAB_SEG 1024
#define TAB_NSEG 4096

typedef struct tab_entry {
    sl_sampler_state *s; /* NULL: free */
    uint32_t gen;        /* bumped on remove: older ids go stale */
    uint32_t next_free;  /* free list link (index + 1; 0: end) */
} tab_entry;

struct sl_sampler_table {
    tab_entry *seg[TAB_NSEG];
    uint32_t n;         /* entries made so far */
    uint32_t free_head; /* index + 1 of a free entry; 0: none */
};

static tab_entry *tab_entry_at(const sl_sampler_table *t, uint32_t i)
{
    return &t->seg[i / TAB_SEG][i % TAB_SEG];
}

sl_status sl_sampler_table_new(sl_sampler_table **out, sl_err *e)
{
    *out = calloc(1, sizeof **out);
    return *out ? SL_OK : sl_err_set(e, SL_ERR_NOMEM, "sampler table: out of memory");
}

void sl_sampler_table_free(sl_sampler_table *t)
{
    if (!t) return;
    for (uint32_t i = 0; i < t->n; i++)
        sl_sampler_state_free(tab_entry_at(t, i)->s);
    for (int k = 0; k < TAB_NSEG && t->seg[k]; k++)
        free(t->seg[k]);
    free(t);
}

sl_status sl_sampler_table_add(sl_sampler_table *t, sl_sampler_state *s, sl_sampler_id *id,
                               sl_err *e)
{
    uint32_t i;
    if (t->free_head) {
        i = t->free_head - 1;
        t->free_head = tab_entry_at(t, i)->next_free;
    } else {
        if (t->n == (uint32_t)TAB_NSEG * TAB_SEG)
            return sl_err_set(e, SL_ERR_LIMIT, "more than %d requests at once",
                              TAB_NSEG * TAB_SEG);
        i = t->n;
        if (!t->seg[i / TAB_SEG] && !(t->seg[i / TAB_SEG] = calloc(TAB_SEG, sizeof(tab_entry))))
            return sl_err_set(e, SL_ERR_NOMEM, "sampler table: out of memory");
        t->n++;
        tab_entry_at(t, i)->gen = 1;
    }
    tab_entry *en = tab_entry_at(t, i);
    en->s = s;
    en->next_free = 0;
    *id = (sl_sampler_id){(uint64_t)en->gen << 32 | i};
    return SL_OK;
}

void sl_sampler_table_remove(sl_sampler_table *t, sl_sampler_id id)
{
    sl_sampler_state *s = sl_sampler_table_get(t, id);
    if (!s) return;
    uint32_t i = (uint32_t)id.v;
    tab_entry *en = tab_entry_at(t, i);
    sl_sampler_state_free(s);
    en->s = NULL;
    en->gen = en->gen == UINT32_MAX ? 1 : en->gen + 1; /* never 0: {0} stays "none" */
    en->next_free = t->free_head;
    t->free_head = i + 1;
}

sl_sampler_state *sl_sampler_table_get(const sl_sampler_table *t, sl_sampler_id id)
{
    uint32_t i = (uint32_t)id.v, gen = (uint32_t)(id.v >> 32);
    if (!gen || i >= (uint32_t)TAB_NSEG * TAB_SEG || !t->seg[i / TAB_SEG]) return NULL;
    const tab_entry *en = tab_entry_at(t, i);
    return en->gen == gen ? en->s : NULL;
}
