/* tests/gpu/ops/ops_misc.c: embed, rope, the elementwise ops, gather_rows, copy_slots
 * and fill_random. */

#include "harness.h"



static const tb_case cases[] = {
    /* embed: vocab, H, T */
    {SL_OP_EMBED, BF, {1000, 512, 37}, 0},
    {SL_OP_EMBED, F32, {300, 4096, 5}, 0},
    /* rope: T, heads, head_dim, rot_dim, max position */
    {SL_OP_ROPE, BF, {19, 8, 128, 128, 40000}, 1e-2},
    {SL_OP_ROPE, BF, {11, 4, 256, 64, 5000}, 1e-2},
    {SL_OP_ROPE, F32, {5, 2, 64, 64, 100000}, 1e-4},
    /* silu_mul: M, I */
    {SL_OP_SILU_MUL, BF, {13, 1536}, 1e-2},
    {SL_OP_SILU_MUL, F32, {3, 1000}, 1e-5},
    /* sigmoid_mul: M, N */
    {SL_OP_SIGMOID_MUL, BF, {21, 4096}, 1e-2},
    {SL_OP_SIGMOID_MUL, BF, {7, 512, 1}, 1e-2},     /* one gate per row */
    /* gather_rows: seqs, q pattern, cols */
    {SL_OP_GATHER_ROWS, BF, {7, 3, 1000}, 0},
    {SL_OP_GATHER_ROWS, F32, {12, 5, 333}, 0},
    /* copy_slots: slots, row elements, n */
    {SL_OP_COPY_SLOTS, F32, {12, 4096, 4}, -1},
    {SL_OP_COPY_SLOTS, BF, {9, 333, 3}, -1},
    /* fill_random: n, scale*1000, offset*1000 */
    {SL_OP_FILL_RANDOM, BF, {100003, 20, 0}, -1},
    {SL_OP_FILL_RANDOM, F32, {65536, 1000, 1000}, -1},
    /* add: rows, cols, b dtype (0 bf16, 1 f32), in place */
    {SL_OP_ADD, BF, {17, 4096, 0, 1}, 1e-2},
    {SL_OP_ADD, F32, {5, 1000, 0, 0}, 1e-6},
    {SL_OP_ADD, BF, {3, 333, 1, 0}, 1e-2},
    /* rows, vocabulary: several 4096-column chunks; bf16 values tie often (the
     * lowest column wins), one chunk, a partial chunk */
    {SL_OP_ARGMAX, BF, {3, 151936}, 0},
    {SL_OP_ARGMAX, F32, {64, 151936}, 0},
    {SL_OP_ARGMAX, F32, {2, 1000}, 0},
    {SL_OP_ARGMAX, BF, {5, 4097}, 0},
};

static void misc_run(tb *t, const tb_case *c)
{
    const int *p = c->p;
    char desc[96];
    int64_t ne[4];
    tb_pair x, y, w, z;
    sl_dtype dt = c->dt;
    switch (c->op) {
    case SL_OP_EMBED: {
        snprintf(desc, sizeof desc, "V=%d H=%d T=%d %s", p[0], p[1], p[2], sl_dtype_name(dt));
        int q[1] = {p[2]}, pre[1] = {0};
        tb_batch b;
        tb_batch_make(t, &b, 1, q, pre, 16, p[0]);
        tb_pair_rand(t, &w, dt, 2, (tb_ne2(ne, p[0], p[1]), ne), -1, 1);
        tb_pair_out(t, &y, dt, 2, (tb_ne2(ne, p[2], p[1]), ne));
        sl_be_embed(t->cpu, &y.c, &w.c, &b.m);
        sl_be_embed(t->gpu, &y.g, &w.g, &b.m);
        tb_compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
        tb_pair_free(t, &w);
        tb_pair_free(t, &y);
        tb_batch_free(&b);
        break;
    }
    case SL_OP_ADD: {
        int R = p[0], C = p[1];
        snprintf(desc, sizeof desc, "R=%d C=%d b %s%s %s", R, C, p[2] ? "f32" : "bf16",
                 p[3] ? " in-place" : "", sl_dtype_name(dt));
        tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, R, C), ne), -2, 2);
        tb_pair_rand(t, &z, p[2] ? F32 : BF, 2, (tb_ne2(ne, R, C), ne), -2, 2);
        if (!p[3]) tb_pair_out(t, &y, dt, 2, (tb_ne2(ne, R, C), ne));
        tb_pair *o = p[3] ? &x : &y;
        sl_be_add(t->cpu, &o->c, &x.c, &z.c);
        sl_be_add(t->gpu, &o->g, &x.g, &z.g);
        tb_compare(t, c->op, desc, "out", &o->c, &o->g, c->tol);
        tb_pair_free(t, &x);
        tb_pair_free(t, &z);
        if (!p[3]) tb_pair_free(t, &y);
        break;
    }
    case SL_OP_ROPE: {
        int T = p[0], Hh = p[1], D = p[2], rot = p[3];
        snprintf(desc, sizeof desc, "T=%d heads=%d D=%d rot=%d pos<%d %s", T, Hh, D, rot, p[4],
                 sl_dtype_name(dt));
        int q[1] = {T}, pre[1] = {p[4] - T};
        tb_batch b;
        tb_batch_make(t, &b, 1, q, pre, 16, 10);
        /* x is a column view of a wider row, as q inside a fused qkv projection */
        tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, T, (int64_t)(Hh + 2) * D), ne), -2, 2);
        sl_tensor xc = sl_tensor_colview(&x.c, D, (int64_t)Hh * D);
        sl_tensor xg = sl_tensor_colview(&x.g, D, (int64_t)Hh * D);
        sl_be_rope(t->cpu, &xc, Hh, D, rot, 1e6f, &b.m);
        sl_be_rope(t->gpu, &xg, Hh, D, rot, 1e6f, &b.m);
        tb_compare(t, c->op, desc, "x", &x.c, &x.g, c->tol);
        tb_pair_free(t, &x);
        tb_batch_free(&b);
        break;
    }
    case SL_OP_SILU_MUL:
    case SL_OP_SIGMOID_MUL: {
        int M = p[0], N = p[1];
        snprintf(desc, sizeof desc, "M=%d N=%d %s", M, N, sl_dtype_name(dt));
        tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, M, 2 * (int64_t)N), ne), -4, 4);
        if (c->op == SL_OP_SILU_MUL) {
            tb_pair_out(t, &y, dt, 2, (tb_ne2(ne, M, N), ne));
            sl_be_silu_mul(t->cpu, &y.c, &x.c, NULL);
            sl_be_silu_mul(t->gpu, &y.g, &x.g, NULL);
            tb_compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
            tb_pair_free(t, &y);
        } else { /* gate read from the second half of x's rows, or its last column */
            tb_pair_rand(t, &y, dt, 2, (tb_ne2(ne, M, N), ne), -2, 2);
            int gn = p[2] ? 1 : N;
            sl_tensor gc = sl_tensor_colview(&x.c, 2 * N - gn, gn);
            sl_tensor gg = sl_tensor_colview(&x.g, 2 * N - gn, gn);
            sl_be_sigmoid_mul(t->cpu, &y.c, &gc, NULL);
            sl_be_sigmoid_mul(t->gpu, &y.g, &gg, NULL);
            tb_compare(t, c->op, desc, "x", &y.c, &y.g, c->tol);
            tb_pair_free(t, &y);
        }
        tb_pair_free(t, &x);
        break;
    }
    case SL_OP_GATHER_ROWS: { /* the last token row of each sequence */
        int S = p[0], C = p[2];
        snprintf(desc, sizeof desc, "seqs=%d C=%d %s", S, C, sl_dtype_name(dt));
        int q[16], pre[16], T = 0;
        for (int i = 0; i < S; i++) {
            q[i] = 1 + (p[1] * i) % 7;
            pre[i] = 5;
            T += q[i];
        }
        tb_batch b;
        tb_batch_make(t, &b, S, q, pre, 16, 10);
        tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, T, C), ne), -1, 1);
        tb_pair_out(t, &y, dt, 2, (tb_ne2(ne, S, C), ne));
        sl_be_gather_rows(t->cpu, &y.c, &x.c, &b.m);
        sl_be_gather_rows(t->gpu, &y.g, &x.g, &b.m);
        tb_compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
        tb_pair_free(t, &x);
        tb_pair_free(t, &y);
        tb_batch_free(&b);
        break;
    }
    case SL_OP_COPY_SLOTS: {
        int S = p[0], C = p[1], n = p[2];
        snprintf(desc, sizeof desc, "slots=%d row=%d n=%d %s", S, C, n, sl_dtype_name(dt));
        int32_t dst[8], src[8];
        for (int i = 0; i < n; i++) {
            dst[i] = i;
            src[i] = i == n - 1 ? -1 : n + 2 * i; /* the last one zeroes its slot */
        }
        int64_t ne3[3] = {S, 2, C / 2 + 1};
        tb_pair_rand(t, &x, dt, 3, ne3, -1, 1);
        sl_be_copy_slots(t->cpu, &x.c, dst, src, n);
        sl_be_copy_slots(t->gpu, &x.g, dst, src, n);
        tb_compare(t, c->op, desc, "pool", &x.c, &x.g, c->tol);
        tb_pair_free(t, &x);
        break;
    }
    case SL_OP_FILL_RANDOM: {
        int64_t n = p[0];
        float scale = (float)p[1] / 1000.0f, offset = (float)p[2] / 1000.0f;
        snprintf(desc, sizeof desc, "n=%lld scale=%g offset=%g %s", (long long)n, scale, offset,
                 sl_dtype_name(dt));
        tb_pair_out(t, &x, dt, 1, &n);
        /* the CPU side in the GPU dtype too: bit-exact after the same rounding */
        sl_tensor cref;
        sl_err e = {0};
        if (sl_be_alloc(t->cpu, &cref, dt, 1, &n, &e)) tb_die("alloc", &e);
        uint64_t seed = sl_rng_mix(t->seed++);
        sl_be_fill_random(t->cpu, &cref, seed, scale, offset);
        sl_be_fill_random(t->gpu, &x.g, seed, scale, offset);
        tb_compare(t, c->op, desc, "t", &cref, &x.g, c->tol);
        sl_be_release(t->cpu, &cref);
        tb_pair_free(t, &x);
        break;
    }
    case SL_OP_ARGMAX: {
        snprintf(desc, sizeof desc, "rows=%d cols=%d %s", p[0], p[1], sl_dtype_name(dt));
        tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, p[0], p[1]), ne), -1, 1);
        tb_pair_out(t, &y, SL_DTYPE_I32, 1, (int64_t[]){p[0]});
        sl_be_argmax(t->cpu, &y.c, &x.c);
        sl_be_argmax(t->gpu, &y.g, &x.g);
        tb_compare(t, c->op, desc, "ids", &y.c, &y.g, c->tol);
        tb_pair_free(t, &x);
        tb_pair_free(t, &y);
        break;
    }
    default:
        SL_ASSERT(0 && "not a misc op");
    }
}

const tb_family tb_family_misc = {cases, sizeof cases / sizeof cases[0], misc_run, NULL};
