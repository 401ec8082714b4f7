/* The matcher: interned frames and states, the expansion of a stack set, its memo of
 * transitions (gram_impl.h describes the layout), and the accept / rollback calls. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gram_impl.h"

static int grow32(uint32_t **v, uint32_t *cap, uint32_t need)
{
    if (need <= *cap) return 0;
    uint32_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    uint32_t *nv = realloc(*v, (size_t)c * sizeof *nv);
    if (!nv) return -1;
    *v = nv;
    *cap = c;
    return 0;
}

/* ---- frames ---- */

static uint64_t frame_hash(uint32_t pos, uint32_t up)
{
    uint64_t x = (uint64_t)pos << 32 | up;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* The frame (pos, up), interned; GRAM_NONE when out of memory. */
static uint32_t frame(sl_gram_matcher *m, uint32_t pos, uint32_t up)
{
    uint64_t h = frame_hash(pos, up);
    for (uint32_t i = gram_map_first(&m->f_map, h); m->f_map.val[i] != GRAM_NONE;
         i = gram_map_after(&m->f_map, i)) {
        uint32_t f = m->f_map.val[i];
        if (m->f_pos[f] == pos && m->f_up[f] == up) return f;
    }
    if (m->n_f == m->cap_f) {
        uint32_t c = m->cap_f * 2;
        uint32_t *np = realloc(m->f_pos, (size_t)c * sizeof *np);
        if (np) m->f_pos = np;
        uint32_t *nu = realloc(m->f_up, (size_t)c * sizeof *nu);
        if (nu) m->f_up = nu;
        uint32_t *ns = realloc(m->f_seen, (size_t)c * sizeof *ns);
        if (ns) m->f_seen = ns;
        if (!np || !nu || !ns) return GRAM_NONE;
        m->cap_f = c;
    }
    if (gram_map_put(&m->f_map, h, m->n_f)) return GRAM_NONE;
    m->f_pos[m->n_f] = pos;
    m->f_up[m->n_f] = up;
    m->f_seen[m->n_f] = 0;
    return m->n_f++;
}

/* ---- expansion: frames to match from -> the stack set ---- */

static int work_push(sl_gram_matcher *m, uint32_t f)
{
    if (f == GRAM_NONE || grow32(&m->work, &m->cap_work, m->n_work + 1)) return -1;
    m->work[m->n_work++] = f;
    return 0;
}

/* Expands the frames on the work list until each stack's top is on a byte element (or is the
 * bottom): a reference pushes a frame for what follows it and goes on with each alternative of
 * the rule; an alternative's end pops. A reference last in its alternative pushes nothing (the
 * caller's frame is the continuation), so right recursion and repetition keep stacks flat. A
 * frame seen before in this expansion is skipped, which ends the cycles of references that
 * match nothing ((x?)*); the cycles that push were refused at compile time. The stacks are
 * appended to found, each once. */
static int expand(sl_gram_matcher *m)
{
    const sl_gram *g = m->g;
    while (m->n_work) {
        uint32_t f = m->work[--m->n_work];
        if (m->f_seen[f] == m->epoch) continue;
        m->f_seen[f] = m->epoch;
        gel el = f ? g->el[m->f_pos[f]] : (gel){GEL_BYTES, 0};
        if (!f || el.kind == GEL_BYTES) {
            if (m->n_found == SL_GRAM_MAX_STACKS) {
                m->too_many = 1;
                return -1;
            }
            if (grow32(&m->found, &m->cap_found, m->n_found + 1)) return -1;
            m->found[m->n_found++] = f;
        } else if (el.kind == GEL_END) {
            if (work_push(m, m->f_up[f])) return -1;
        } else {
            uint32_t cont = m->f_pos[f] + 1, up = m->f_up[f];
            if (g->el[cont].kind != GEL_END && (up = frame(m, cont, up)) == GRAM_NONE) return -1;
            for (uint32_t a = g->alt_off[el.arg]; a < g->alt_off[el.arg + 1]; a++)
                if (work_push(m, frame(m, g->alt_pos[a], up))) return -1;
        }
    }
    return 0;
}

sl_status gram_fail(const sl_gram_matcher *m, sl_err *e)
{
    if (m->too_many)
        return sl_err_set(e, SL_ERR_LIMIT,
                          "the grammar is too ambiguous here: more than %d parse stacks at once",
                          SL_GRAM_MAX_STACKS);
    return sl_err_set(e, SL_ERR_NOMEM, "grammar matcher: out of memory");
}

/* A new expansion: fresh visit marks, empty lists. */
static void expand_begin(sl_gram_matcher *m)
{
    if (++m->epoch == 0) { /* wrapped: no frame may look visited */
        memset(m->f_seen, 0, (size_t)m->n_f * sizeof *m->f_seen);
        m->epoch = 1;
    }
    m->n_work = m->n_found = 0;
    m->too_many = 0;
}

/* ---- states ---- */

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The state of the set found[0..n_found) (sorted here), interned; GRAM_NONE when out of memory. */
static uint32_t state_of_found(sl_gram_matcher *m)
{
    uint32_t n = m->n_found, *f = m->found;
    if (n > 1) qsort(f, n, sizeof *f, u32_cmp);
    uint64_t h = gram_hash(f, (size_t)n * sizeof *f);
    for (uint32_t i = gram_map_first(&m->s_map, h); m->s_map.val[i] != GRAM_NONE;
         i = gram_map_after(&m->s_map, i)) {
        uint32_t s = m->s_map.val[i];
        if (m->s_map.key[i] == h && m->s_len[s] == n &&
            (!n || !memcmp(m->pool + m->s_off[s], f, (size_t)n * sizeof *f)))
            return s;
    }
    size_t nc = (size_t)1 << m->row_shift;
    if (m->n_s == m->cap_s) {
        uint32_t c = m->cap_s, c2 = m->cap_s;
        if (grow32(&m->s_off, &c, m->n_s + 1) || grow32(&m->s_len, &c2, m->n_s + 1)) return GRAM_NONE;
        int32_t *row = realloc(m->row, (size_t)c * nc * sizeof *row);
        if (row) m->row = row;
        gram_loop *loop = realloc(m->loop, (size_t)c * sizeof *loop);
        if (loop) m->loop = loop;
        if (!row || !loop) return GRAM_NONE;
        m->cap_s = c;
    }
    if (m->n_pool + n >= m->cap_pool) { /* >=: the pool exists even for the empty state */
        size_t c = m->cap_pool ? m->cap_pool : 1024;
        while (c < m->n_pool + n)
            c *= 2;
        uint32_t *np = realloc(m->pool, c * sizeof *np);
        if (!np) return GRAM_NONE;
        m->pool = np;
        m->cap_pool = c;
    }
    if (gram_map_put(&m->s_map, h, m->n_s)) return GRAM_NONE;
    if (n) memcpy(m->pool + m->n_pool, f, (size_t)n * sizeof *f);
    m->s_off[m->n_s] = (uint32_t)m->n_pool;
    m->s_len[m->n_s] = n;
    m->n_pool += n;
    memset(m->row + ((size_t)m->n_s << m->row_shift), 0xFF, nc * sizeof *m->row);
    m->loop[m->n_s].known = 0;
    return m->n_s++;
}

/* The state after byte b from s, not memoized. */
static uint32_t step(sl_gram_matcher *m, uint32_t s, unsigned b)
{
    const sl_gram *g = m->g;
    expand_begin(m);
    for (uint32_t k = 0; k < m->s_len[s]; k++) {
        uint32_t f = m->pool[m->s_off[s] + k];
        if (f && gram_set_has(g, g->el[m->f_pos[f]].arg, b) &&
            work_push(m, frame(m, m->f_pos[f] + 1, m->f_up[f])))
            return GRAM_NONE;
    }
    if (expand(m)) return GRAM_NONE;
    return state_of_found(m);
}

static uint32_t initial_state(sl_gram_matcher *m)
{
    const sl_gram *g = m->g;
    expand_begin(m);
    for (uint32_t a = g->alt_off[g->root]; a < g->alt_off[g->root + 1]; a++)
        if (work_push(m, frame(m, g->alt_pos[a], 0))) return GRAM_NONE;
    if (expand(m)) return GRAM_NONE;
    return state_of_found(m);
}

/* ---- canonical content of a state ----
 * [number of stacks, then per stack: its depth and the element positions top to bottom],
 * stacks ordered by a hash of their content, so that the same set gives the same words in any
 * matcher. (Two stacks whose hashes tie keep their frame order: the key may then differ between
 * matchers, which costs a cache miss, never a wrong answer.) */

typedef struct stack_order {
    uint64_t h;
    uint32_t frame;
} stack_order;

static int order_cmp(const void *a, const void *b)
{
    const stack_order *x = a, *y = b;
    if (x->h != y->h) return x->h < y->h ? -1 : 1;
    return x->frame < y->frame ? -1 : x->frame > y->frame;
}

int gram_words_push(gram_words *w, uint32_t x)
{
    if (w->n == w->cap) {
        size_t c = w->cap ? w->cap * 2 : 256;
        uint32_t *v = realloc(w->v, c * sizeof *v);
        if (!v) return -1;
        w->v = v;
        w->cap = c;
    }
    w->v[w->n++] = x;
    return 0;
}

int gram_state_key(sl_gram_matcher *m, uint32_t s, gram_words *key)
{
    uint32_t n = m->s_len[s];
    stack_order *o = malloc((n ? n : 1) * sizeof *o);
    if (!o || gram_words_push(key, n)) {
        free(o);
        return -1;
    }
    for (uint32_t k = 0; k < n; k++) {
        uint64_t h = 0x9E3779B97F4A7C15ull;
        o[k].frame = m->pool[m->s_off[s] + k];
        for (uint32_t f = o[k].frame; f; f = m->f_up[f])
            h = frame_hash(m->f_pos[f], (uint32_t)h) ^ (h >> 29);
        o[k].h = h;
    }
    qsort(o, n, sizeof *o, order_cmp);
    int rc = 0;
    for (uint32_t k = 0; k < n && !rc; k++) {
        size_t at = key->n;
        uint32_t depth = 0;
        rc = gram_words_push(key, 0);
        for (uint32_t f = o[k].frame; f && !rc; f = m->f_up[f], depth++)
            rc = gram_words_push(key, m->f_pos[f]);
        if (!rc) key->v[at] = depth;
    }
    free(o);
    return rc;
}

/* The state whose canonical content is key[*at...], rebuilt in this matcher; *at moves past it. */
static uint32_t state_from_key(sl_gram_matcher *m, const uint32_t *key, size_t *at)
{
    uint32_t n = key[(*at)++];
    m->n_found = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t depth = key[(*at)++], f = 0;
        for (uint32_t d = depth; d > 0; d--) /* bottom first: each frame continues with the last */
            if ((f = frame(m, key[*at + d - 1], f)) == GRAM_NONE) return GRAM_NONE;
        *at += depth;
        if (grow32(&m->found, &m->cap_found, m->n_found + 1)) return GRAM_NONE;
        m->found[m->n_found++] = f;
    }
    return state_of_found(m);
}

/* ---- the memo's bound ---- */

/* The memo's size by what it holds (its arrays keep their capacity when cleared, so at most
 * about twice this is allocated). */
static size_t memo_bytes(const sl_gram_matcher *m)
{
    return (size_t)m->n_f * (3 * sizeof(uint32_t) + 24) +
           (size_t)m->n_s * (2 * sizeof(uint32_t) + 24 + sizeof(gram_loop) + (sizeof(int32_t) << m->row_shift)) +
           m->n_pool * sizeof(uint32_t);
}

/* Forgets every frame and state; 0, or -1 when out of memory. */
static int memo_clear(sl_gram_matcher *m)
{
    m->n_f = 1; /* frame 0: the bottom */
    m->f_pos[0] = m->f_up[0] = GRAM_NONE;
    m->f_seen[0] = 0;
    gram_map_clear(&m->f_map);
    m->n_s = 0;
    m->n_pool = 0;
    gram_map_clear(&m->s_map);
    m->n_found = 0;
    return state_of_found(m) == GRAM_DEAD ? 0 : -1; /* the empty set comes first */
}

/* Empties the memo but for the states in use: the matcher's (start, current, history) and
 * keep[0..n_keep), which are renumbered in place. -1 when out of memory. */
static int memo_rebuild(sl_gram_matcher *m, uint32_t *keep, int n_keep)
{
    uint32_t *ids[2 + SL_GRAM_MAX_ROLLBACK];
    int n_ids = 0, rc = 0;
    ids[n_ids++] = &m->start;
    ids[n_ids++] = &m->state;
    for (int k = 0; k < m->hist_n; k++)
        ids[n_ids++] = &m->hist[(m->hist_at - 1 - k + SL_GRAM_MAX_ROLLBACK) % SL_GRAM_MAX_ROLLBACK].state;
    gram_words key = {0};
    for (int k = 0; k < n_ids && !rc; k++)
        rc = gram_state_key(m, *ids[k], &key);
    for (int k = 0; k < n_keep && !rc; k++)
        rc = gram_state_key(m, keep[k], &key);
    if (!rc) rc = memo_clear(m);
    size_t at = 0;
    for (int k = 0; k < n_ids && !rc; k++)
        rc = (*ids[k] = state_from_key(m, key.v, &at)) == GRAM_NONE;
    for (int k = 0; k < n_keep && !rc; k++)
        rc = (keep[k] = state_from_key(m, key.v, &at)) == GRAM_NONE;
    free(key.v);
    m->stats.dfa_resets++;
    return rc ? -1 : 0;
}

uint32_t gram_next(sl_gram_matcher *m, uint32_t s, uint32_t c, uint32_t *keep, int n_keep)
{
    int32_t t = m->row[((size_t)s << m->row_shift) + c];
    if (t >= 0) return (uint32_t)t;
    if (!m->pinned && memo_bytes(m) > m->memo_limit) {
        /* s rides along as one more kept state */
        uint32_t *all = malloc(((size_t)n_keep + 1) * sizeof *all);
        if (!all) return GRAM_NONE;
        memcpy(all, keep, (size_t)n_keep * sizeof *all);
        all[n_keep] = s;
        int rc = memo_rebuild(m, all, n_keep + 1);
        memcpy(keep, all, (size_t)n_keep * sizeof *all);
        s = all[n_keep];
        free(all);
        if (rc) return GRAM_NONE;
    }
    uint32_t next = step(m, s, m->g->cls_byte[c]);
    if (next != GRAM_NONE) m->row[((size_t)s << m->row_shift) + c] = (int32_t)next;
    return next;
}

/* ---- loop summaries ---- */

/* The UTF-8 characters from U+0080 on, by lead byte: continuation bytes after it, and the range
 * of the first one (the later ones are 80..BF). */
static const struct {
    uint8_t lo, hi, n, lo2, hi2;
} utf8_leads[] = {{0xC2, 0xDF, 1, 0x80, 0xBF}, {0xE0, 0xE0, 2, 0xA0, 0xBF}, {0xE1, 0xEC, 2, 0x80, 0xBF},
                  {0xED, 0xED, 2, 0x80, 0x9F}, {0xEE, 0xEF, 2, 0x80, 0xBF}, {0xF0, 0xF0, 3, 0x90, 0xBF},
                  {0xF1, 0xF3, 3, 0x80, 0xBF}, {0xF4, 0xF4, 3, 0x80, 0x8F}};

/* 1 when every byte of [lo, hi] (by class) leads u to a live state and, after `more` further
 * continuation bytes, back to home. */
static int utf8_returns(sl_gram_matcher *m, uint32_t home, uint32_t u, unsigned lo, unsigned hi, int more)
{
    uint8_t done[256] = {0};
    for (unsigned b = lo; b <= hi; b++) {
        uint32_t c = m->g->cls[b];
        if (done[c]) continue;
        done[c] = 1;
        uint32_t t = gram_next(m, u, c, NULL, 0);
        if (t == GRAM_NONE || t == GRAM_DEAD) return 0;
        if (more ? !utf8_returns(m, home, t, 0x80, 0xBF, more - 1) : t != home) return 0;
    }
    return 1;
}

const gram_loop *gram_state_loop(sl_gram_matcher *m, uint32_t s)
{
    gram_loop *l = &m->loop[s];
    if (l->known) return l;
    gram_loop r = {{0, 0}, 1, 1};
    uint8_t done[256] = {0}, loops[256] = {0};
    m->pinned = 1; /* s and the states below stay numbered as they are */
    for (unsigned b = 0; b < 0x80; b++) {
        uint32_t c = m->g->cls[b];
        if (!done[c]) {
            uint32_t t = gram_next(m, s, c, NULL, 0);
            if (t == GRAM_NONE) {
                m->pinned = 0;
                return NULL;
            }
            done[c] = 1;
            loops[c] = t == s;
        }
        if (loops[c]) r.ascii[b >> 6] |= 1ull << (b & 63);
    }
    for (size_t k = 0; k < sizeof utf8_leads / sizeof *utf8_leads && r.utf8; k++) {
        memset(done, 0, sizeof done);
        for (unsigned b = utf8_leads[k].lo; b <= utf8_leads[k].hi && r.utf8; b++) {
            uint32_t c = m->g->cls[b], t;
            if (done[c]) continue;
            done[c] = 1;
            t = gram_next(m, s, c, NULL, 0);
            r.utf8 = t != GRAM_NONE && t != GRAM_DEAD &&
                     utf8_returns(m, s, t, utf8_leads[k].lo2, utf8_leads[k].hi2, utf8_leads[k].n - 1);
        }
    }
    m->pinned = 0;
    m->too_many = 0; /* a failure here only means "no loop" */
    l = &m->loop[s]; /* the arrays may have grown */
    *l = r;
    return l;
}

/* ---- the matcher ---- */

void sl_gram_matcher_free(sl_gram_matcher *m)
{
    if (!m) return;
    free(m->f_pos), free(m->f_up), free(m->f_seen);
    gram_map_free(&m->f_map);
    free(m->s_off), free(m->s_len), free(m->pool), free(m->row), free(m->loop);
    gram_map_free(&m->s_map);
    free(m->work), free(m->found), free(m->key.v), free(m->walk);
    sl_gram_free(m->g);
    sl_gram_vocab_free(m->v);
    free(m);
}

sl_status sl_gram_matcher_new(sl_gram *g, sl_gram_vocab *v, sl_gram_matcher **out, sl_err *e)
{
    *out = NULL;
    sl_gram_matcher *m = calloc(1, sizeof *m);
    if (!m) return sl_err_set(e, SL_ERR_NOMEM, "grammar matcher: out of memory");
    m->g = sl_gram_ref(g);
    m->v = v ? sl_gram_vocab_ref(v) : NULL;
    m->memo_limit = SL_GRAM_MEMO_DEFAULT;
    while ((1u << m->row_shift) < g->n_cls)
        m->row_shift++;
    m->cap_f = 1024;
    if (gram_map_init(&m->f_map, 1024) || gram_map_init(&m->s_map, 256) ||
        !(m->f_pos = malloc(m->cap_f * sizeof *m->f_pos)) ||
        !(m->f_up = malloc(m->cap_f * sizeof *m->f_up)) ||
        !(m->f_seen = malloc(m->cap_f * sizeof *m->f_seen)) ||
        (v && !(m->walk = malloc(((size_t)v->max_depth + 1) * sizeof *m->walk))) || memo_clear(m))
        goto oom;
    if ((m->start = initial_state(m)) == GRAM_NONE) {
        sl_status st = gram_fail(m, e);
        sl_gram_matcher_free(m);
        return st;
    }
    m->state = m->start;
    m->stats.dfa_states = m->n_s;
    *out = m;
    return SL_OK;
oom:
    sl_gram_matcher_free(m);
    return sl_err_set(e, SL_ERR_NOMEM, "grammar matcher: out of memory");
}

void sl_gram_matcher_set_memo_bytes(sl_gram_matcher *m, size_t bytes)
{
    m->memo_limit = bytes;
}

void sl_gram_matcher_reset(sl_gram_matcher *m)
{
    m->state = m->start;
    m->ended = 0;
    m->hist_n = 0;
}

static void hist_push(sl_gram_matcher *m)
{
    m->hist[m->hist_at] = (gram_hist){m->state, m->ended};
    m->hist_at = (m->hist_at + 1) % SL_GRAM_MAX_ROLLBACK;
    if (m->hist_n < SL_GRAM_MAX_ROLLBACK) m->hist_n++;
}

/* Runs bytes from the current state; commits only when every byte is accepted. A refusal is
 * SL_ERR_INVALID with *bad the offset of the byte no stack accepts, and e left for the caller to
 * word; other failures are set in e (gram_fail). */
static sl_status advance(sl_gram_matcher *m, const uint8_t *p, size_t n, size_t *bad, sl_err *e)
{
    uint32_t s = m->state;
    for (size_t i = 0; i < n; i++) {
        uint32_t t = gram_next(m, s, m->g->cls[p[i]], NULL, 0);
        if (t == GRAM_NONE) return gram_fail(m, e);
        if (t == GRAM_DEAD) {
            *bad = i;
            return SL_ERR_INVALID;
        }
        s = t;
    }
    hist_push(m);
    m->state = s;
    m->stats.dfa_states = m->n_s;
    return SL_OK;
}

sl_status sl_gram_matcher_accept_bytes(sl_gram_matcher *m, const void *bytes, size_t n,
                                       sl_err *e)
{
    if (m->ended)
        return sl_err_set(e, SL_ERR_INVALID, "the grammar has ended (an eos token was accepted)");
    size_t bad = 0;
    sl_status st = advance(m, bytes, n, &bad, e);
    if (st == SL_ERR_INVALID)
        return sl_err_set(e, st, "byte %zu (0x%02X) is not allowed by the grammar here", bad,
                          ((const uint8_t *)bytes)[bad]);
    return st;
}

sl_status sl_gram_matcher_accept_token(sl_gram_matcher *m, int32_t id, sl_err *e)
{
    const sl_gram_vocab *v = m->v;
    if (!v) return sl_err_set(e, SL_ERR_INVALID, "grammar matcher has no vocabulary");
    if (id < 0 || id >= v->n)
        return sl_err_set(e, SL_ERR_INVALID, "token %d is outside the vocabulary (size %d)", id,
                          v->n);
    if (m->ended)
        return sl_err_set(e, SL_ERR_INVALID, "token %d after the end of the grammar", id);
    if (sl_gram_vocab_is_eos(v, id)) {
        if (!gram_state_can_end(m, m->state))
            return sl_err_set(e, SL_ERR_INVALID,
                              "eos token %d is not allowed: the grammar cannot end here", id);
        hist_push(m);
        m->ended = 1;
        return SL_OK;
    }
    size_t len, bad = 0;
    const uint8_t *b = sl_gram_vocab_token(v, id, &len);
    if (!b)
        return sl_err_set(e, SL_ERR_INVALID,
                          "token %d is special or unused: a grammar never allows it", id);
    sl_status st = advance(m, b, len, &bad, e);
    if (st == SL_ERR_INVALID && e) {
        char shown[48];
        size_t k = 0;
        for (size_t i = 0; i < len && k + 5 < sizeof shown; i++)
            k += (size_t)snprintf(shown + k, sizeof shown - k,
                                  b[i] >= 0x20 && b[i] < 0x7F && b[i] != '"' && b[i] != '\\' ? "%c" : "\\x%02X",
                                  b[i]);
        return sl_err_set(e, st, "token %d (\"%s\") is not allowed by the grammar here (byte %zu)",
                          id, shown, bad);
    }
    return st;
}

int sl_gram_matcher_can_end(const sl_gram_matcher *m)
{
    return m->ended || gram_state_can_end(m, m->state);
}

int sl_gram_matcher_must_end(const sl_gram_matcher *m)
{
    return m->ended || (m->s_len[m->state] == 1 && gram_state_can_end(m, m->state));
}

sl_status sl_gram_matcher_rollback(sl_gram_matcher *m, int n, sl_err *e)
{
    if (n < 0 || n > m->hist_n)
        return sl_err_set(e, SL_ERR_LIMIT, "cannot roll back %d steps: %d are kept", n, m->hist_n);
    for (int k = 0; k < n; k++) {
        m->hist_at = (m->hist_at - 1 + SL_GRAM_MAX_ROLLBACK) % SL_GRAM_MAX_ROLLBACK;
        m->state = m->hist[m->hist_at].state;
        m->ended = m->hist[m->hist_at].ended;
    }
    m->hist_n -= n;
    return SL_OK;
}

void sl_gram_matcher_stats(const sl_gram_matcher *m, sl_gram_stats *s)
{
    *s = m->stats;
    s->dfa_states = m->n_s;
}
