/* tests/gpu/ops/ops_gdn.c: the hybrid (qwen3_next) linear-attention ops: conv1d and
 * the gated delta net, with their state pools; cases with chunked sequences run the gdn
 * twice, on the single chunked kernel and on the split form (sl_cuda_gdn_split). */

#include <string.h>

#include "harness.h"

/* The CUDA gdn runs sequences with at least this many new tokens through the
 * chunked kernel (GDN_CHUNK_MIN in kernels/cuda/gdn.cu). Its matmuls round
 * their operands to tf32 (unit roundoff 2^-11, fp32 accumulation), so the
 * state of such a case is compared at GDN_CHUNK_SSM_TOL instead of 1e-4 (the
 * recurrent kernel is fp32 throughout); the output keeps the case's tol. */
#define GDN_CHUNK_MIN 16
#define GDN_CHUNK_SSM_TOL 5e-3

/* p[6..8], shared by both ops (0: the defaults of tb_batch_hybrid):
 *   p[6] q_len of the odd sequences (0: 1, i.e. decode)
 *   p[7] snapshot of the even sequences after this many tokens (0: about
 *        half, -1: all of them; capped at q_len)
 *   p[8] 0: seq s % 3 == 1 fresh, 1: every sequence fresh, 2: none */
static const tb_case cases[] = {
    /* conv1d: seqs, q_len (even seqs), C, K, -, -, p[6..8] */
    {SL_OP_CONV1D, BF, {3, 40, 512, 4}, 1e-2},
    {SL_OP_CONV1D, BF, {4, 1, 8192, 4}, 1e-2},
    {SL_OP_CONV1D, BF, {3, 130, 512, 4, 0, 0, 2, 64, 0}, 1e-2},   /* odd q=2 < K-1 */
    {SL_OP_CONV1D, BF, {2, 1000, 1024, 4, 0, 0, 1, -1, 2}, 1e-2},
    {SL_OP_CONV1D, BF, {5, 9, 256, 4, 0, 0, 3, 1, 1}, 1e-2},      /* snapshot after 1 */
    {SL_OP_CONV1D, BF, {2, 8000, 8192, 4, 0, 0, 65, 4001, 0}, 1e-2},
    /* gdn: seqs, q_len (even seqs), Hk, Hv, Dk, Dv, p[6..8] */
    {SL_OP_GDN, BF, {3, 20, 2, 4, 128, 128}, 1e-2},
    {SL_OP_GDN, BF, {4, 1, 1, 2, 64, 64}, 1e-2},
    {SL_OP_GDN, BF, {2, 70, 1, 1, 128, 128}, 1e-2},
    {SL_OP_GDN, BF, {2, 9, 2, 4, 64, 64}, 1e-2},          /* the golden qwen3_next */
    /* chunked: lengths around the chunk, snapshots at boundaries and inside */
    {SL_OP_GDN, BF, {2, 63, 2, 4, 128, 128, 65, 0, 0}, 1e-2},
    {SL_OP_GDN, BF, {2, 64, 2, 4, 128, 128, 130, 64, 2}, 1e-2},
    {SL_OP_GDN, BF, {3, 130, 1, 2, 64, 64, 1, 128, 1}, 1e-2},     /* + decode */
    {SL_OP_GDN, BF, {3, 130, 2, 4, 128, 128, 16, 70, 0}, 1e-2},   /* odd: 16 (threshold) */
    {SL_OP_GDN, BF, {2, 65, 1, 2, 128, 128, 15, -1, 2}, 1e-2},    /* odd: 15 (recurrent) */
    {SL_OP_GDN, BF, {1, 300, 1, 2, 128, 128, 0, 1, 0}, 1e-2},     /* snapshot after 1 */
    {SL_OP_GDN, BF, {2, 200, 2, 4, 64, 128, 33, 17, 0}, 1e-2},
    {SL_OP_GDN, BF, {5, 1000, 2, 4, 128, 128, 1, -1, 0}, 1e-2},   /* mixed, snapshot at end */
    {SL_OP_GDN, BF, {1, 1000, 16, 32, 128, 128, 0, 500, 2}, 1e-2}, /* Coder-Next heads */
    {SL_OP_GDN, BF, {1, 8000, 1, 2, 128, 128, 0, 4001, 2}, 1e-2},
    {SL_OP_GDN, BF, {2, 8000, 1, 1, 64, 64, 1000, 4096, 1}, 1e-2},
    /* enough long sequences x value heads for a scan block an SM at 64 value columns */
    {SL_OP_GDN, BF, {5, 300, 16, 32, 128, 128, 200, 0, 0}, 1e-2},
    {SL_OP_GDN, BF, {6, 100, 16, 32, 64, 64, 80, 0, 1}, 1e-2},
    /* q_len 0: a decode step through sl_be_gdn_decode (conv1d + gdn + rmsnorm_gated; CUDA
     * fuses them with SL_CUDA_GDN_FUSE=1): seqs, 0, Hk, Hv, Dk, Dv, -, -, fresh */
    {SL_OP_GDN, BF, {5, 0, 16, 32, 128, 128}, 1e-2},  /* Coder-Next heads */
    {SL_OP_GDN, BF, {3, 0, 2, 2, 128, 128, 0, 0, 1}, 1e-2},
    {SL_OP_GDN, BF, {4, 0, 1, 2, 64, 128, 0, 0, 2}, 1e-2},
    {SL_OP_GDN, BF, {2, 0, 1, 4, 128, 128}, 1e-2},    /* 4 value heads a key head: not fused */
    {SL_OP_GDN, BF, {2, 0, 2, 4, 64, 64}, 1e-2},      /* the golden qwen3_next's dims */
};

/* The case's batch: q lengths, snapshots and fresh states per p[6..8]. */
static int gdn_batch(tb *t, tb_batch *b, const int *p)
{
    int S = p[0], q[16] = {0}, pre[16] = {0}, T = 0;
    SL_ASSERT(S <= 16);
    for (int i = 0; i < S; i++) {
        q[i] = i % 2 == 0 ? p[1] : p[6] > 0 ? p[6] : 1;
        pre[i] = 9;
        T += q[i];
    }
    tb_batch_make(t, b, S, q, pre, 16, 10);
    for (int s = 0; s < S; s++) {
        b->state_fresh[s] = p[8] == 0 ? s % 3 == 1 : p[8] == 1;
        b->track_slot[s] = s % 2 == 0 ? S + s : -1;
        int tl = p[7] == 0 ? 1 + (q[s] - 1) / 2 : p[7] < 0 ? q[s] : p[7];
        b->track_len[s] = tl < q[s] ? tl : q[s];
    }
    sl_err e = {0};
    if (sl_be_prepare(t->gpu, &b->m, &e)) tb_die("prepare", &e);
    return T;
}

/* The decode-step case (p[1] == 0): sl_be_gdn_decode on CUDA against the CPU's three ops,
 * and, where CUDA fused them, against its own three ops bit for bit (outputs, both pools). */
static void gdn_decode_run(tb *t, const tb_case *c)
{
    int S = c->p[0], Hk = c->p[2], Hv = c->p[3], Dk = c->p[4], Dv = c->p[5], K = 4;
    int p[9] = {S, 1, Hk, Hv, Dk, Dv, 1, 1, c->p[8]}; /* one token each, snapshots after it */
    int64_t C = 2 * (int64_t)Hk * Dk + (int64_t)Hv * Dv, VD = (int64_t)Hv * Dv, ne[4];
    char desc[96];
    snprintf(desc, sizeof desc, "decode S=%d Hk=%d Hv=%d Dk=%d Dv=%d fresh=%d", S, Hk, Hv, Dk, Dv, c->p[8]);
    tb_batch b;
    int T = gdn_batch(t, &b, p);
    tb_pair mixed, z, cw, cst, ssm, aa, bb, al, dtb, gw, conv, core, normed;
    tb_pair_rand(t, &mixed, c->dt, 2, (tb_ne2(ne, T, C), ne), -2, 2);
    tb_pair_rand(t, &z, c->dt, 2, (tb_ne2(ne, T, VD), ne), -2, 2);
    tb_pair_rand(t, &cw, c->dt, 2, (tb_ne2(ne, C, K), ne), -0.5f, 0.5f);
    tb_pair_rand(t, &cst, F32, 3, (int64_t[]){2 * S, C, K - 1}, -1, 1);
    tb_pair_rand(t, &ssm, F32, 4, (int64_t[]){2 * S, Hv, Dk, Dv}, -0.2f, 0.2f);
    tb_pair_rand(t, &aa, c->dt, 2, (tb_ne2(ne, T, Hv), ne), -2, 2);
    tb_pair_rand(t, &bb, c->dt, 2, (tb_ne2(ne, T, Hv), ne), -2, 2);
    tb_pair_rand(t, &al, F32, 1, (ne[0] = Hv, ne), -1, 1);
    tb_pair_rand(t, &dtb, F32, 1, (ne[0] = Hv, ne), -1, 1);
    tb_pair_rand(t, &gw, c->dt, 1, (ne[0] = Dv, ne), 0.5f, 1.5f);
    tb_pair_out(t, &conv, c->dt, 2, (tb_ne2(ne, T, C), ne));
    tb_pair_out(t, &core, c->dt, 2, (tb_ne2(ne, T, VD), ne));
    tb_pair_out(t, &normed, c->dt, 2, (tb_ne2(ne, T, VD), ne));
    float *cst0 = tb_download(t->gpu, &cst.g), *ssm0 = tb_download(t->gpu, &ssm.g);
    /* the CPU's three ops, then CUDA's three (kept), then the fused op from the same pools */
    sl_be_conv1d(t->cpu, &conv.c, &mixed.c, &cw.c, &cst.c, &b.m);
    sl_be_gdn(t->cpu, &core.c, &conv.c, &aa.c, &bb.c, &al.c, &dtb.c, &ssm.c, Hk, Hv, Dk, Dv, &b.m);
    sl_be_rmsnorm_gated(t->cpu, &normed.c, &core.c, &z.c, &gw.c, 1e-6f, NULL);
    sl_tensor kept[5], *outs[5] = {&conv.g, &core.g, &normed.g, &cst.g, &ssm.g};
    static const char *const names[5] = {"conv", "core", "normed", "conv state", "ssm"};
    sl_be_conv1d(t->gpu, &conv.g, &mixed.g, &cw.g, &cst.g, &b.m);
    sl_be_gdn(t->gpu, &core.g, &conv.g, &aa.g, &bb.g, &al.g, &dtb.g, &ssm.g, Hk, Hv, Dk, Dv, &b.m);
    sl_be_rmsnorm_gated(t->gpu, &normed.g, &core.g, &z.g, &gw.g, 1e-6f, NULL);
    sl_err e = {0};
    for (int i = 0; i < 5; i++)
        if (sl_be_alloc(t->gpu, &kept[i], outs[i]->dtype, outs[i]->ndim, outs[i]->ne, &e) ||
            sl_be_copy(t->gpu, &kept[i], outs[i], &e))
            tb_die("gdn decode keep", &e);
    if (sl_be_upload(t->gpu, &cst.g, cst0, F32, &e) || sl_be_upload(t->gpu, &ssm.g, ssm0, F32, &e))
        tb_die("gdn decode pools", &e);
    for (int i = 0; i < 3; i++) tb_poison(t, outs[i]);
    sl_gdn_layer l = {&cw.g, &al.g, &dtb.g, &gw.g, Hk, Hv, Dk, Dv, 1e-6f};
    int ran = sl_be_gdn_decode(t->gpu, &normed.g, &core.g, &conv.g, &mixed.g, &z.g, &aa.g, &bb.g, &l, &cst.g,
                               &ssm.g, &b.m, NULL);
    const char *on = getenv("SL_CUDA_GDN_FUSE");
    int want = on && !strcmp(on, "1") && Hv / Hk <= 2;
    CHECK_MSG(ran == want, "%s: fused %d, want %d", desc, ran, want);
    if (ran) {
        const sl_tensor *cpu[5] = {&conv.c, &core.c, &normed.c, &cst.c, &ssm.c};
        for (int i = 0; i < 5; i++) {
            tb_compare(t, c->op, desc, names[i], cpu[i], outs[i], i < 3 ? c->tol : 1e-4);
            tb_compare_exact(t, c->op, desc, names[i], &kept[i], outs[i]);
        }
    }
    for (int i = 0; i < 5; i++) sl_be_release(t->gpu, &kept[i]);
    free(cst0);
    free(ssm0);
    tb_pair *all[] = {&mixed, &z, &cw, &cst, &ssm, &aa, &bb, &al, &dtb, &gw, &conv, &core, &normed};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tb_pair_free(t, all[i]);
    tb_batch_free(&b);
}

static void gdn_run(tb *t, const tb_case *c)
{
    const int *p = c->p;
    if (c->op == SL_OP_GDN && p[1] == 0) {
        gdn_decode_run(t, c);
        return;
    }
    char desc[96];
    int64_t ne[4];
    tb_pair x, y, w;
    sl_dtype dt = c->dt;
    switch (c->op) {
    case SL_OP_CONV1D:
    case SL_OP_GDN: {
        int S = p[0];
        tb_batch b;
        int T = gdn_batch(t, &b, p);
        int qo = p[6] > 0 ? p[6] : 1, qmax = p[1] > qo ? p[1] : qo;
        tb_pair pool;
        if (c->op == SL_OP_CONV1D) {
            int C = p[2], K = p[3];
            snprintf(desc, sizeof desc, "S=%d q=%d/%d C=%d K=%d snap=%d fresh=%d", S, p[1], qo, C, K,
                     p[7], p[8]);
            int64_t ne3[3] = {2 * S, C, K - 1};
            tb_pair_rand(t, &pool, F32, 3, ne3, -1, 1);
            tb_pair_rand(t, &w, dt, 2, (tb_ne2(ne, C, K), ne), -0.5f, 0.5f);
            tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, T, C), ne), -2, 2);
            tb_pair_out(t, &y, dt, 2, (tb_ne2(ne, T, C), ne));
            sl_be_conv1d(t->cpu, &y.c, &x.c, &w.c, &pool.c, &b.m);
            sl_be_conv1d(t->gpu, &y.g, &x.g, &w.g, &pool.g, &b.m);
            tb_compare(t, c->op, desc, "y", &y.c, &y.g, c->tol);
            tb_compare(t, c->op, desc, "state", &pool.c, &pool.g, 1e-6);
            tb_pair_free(t, &w);
        } else {
            int Hk = p[2], Hv = p[3], Dk = p[4], Dv = p[5];
            snprintf(desc, sizeof desc, "S=%d q=%d/%d Hk=%d Hv=%d Dk=%d Dv=%d snap=%d fresh=%d", S,
                     p[1], qo, Hk, Hv, Dk, Dv, p[7], p[8]);
            int64_t ne4[4] = {2 * S, Hv, Dk, Dv};
            tb_pair_rand(t, &pool, F32, 4, ne4, -0.2f, 0.2f);
            tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, T, 2 * (int64_t)Hk * Dk + (int64_t)Hv * Dv), ne), -1, 1);
            tb_pair aa, bb, al, dtb;
            tb_pair_rand(t, &aa, dt, 2, (tb_ne2(ne, T, Hv), ne), -2, 2);
            tb_pair_rand(t, &bb, dt, 2, (tb_ne2(ne, T, Hv), ne), -2, 2);
            tb_pair_rand(t, &al, F32, 1, (ne[0] = Hv, ne), -1, 1);
            tb_pair_rand(t, &dtb, F32, 1, (ne[0] = Hv, ne), -1, 1);
            tb_pair_out(t, &y, dt, 2, (tb_ne2(ne, T, (int64_t)Hv * Dv), ne));
            /* the pool as it starts (the op updates it in place): the split form runs from it too */
            size_t pn = (size_t)sl_tensor_numel(&pool.c);
            float *pool0 = malloc(sizeof(float) * pn);
            memcpy(pool0, pool.c.data, sizeof(float) * pn);
            sl_be_gdn(t->cpu, &y.c, &x.c, &aa.c, &bb.c, &al.c, &dtb.c, &pool.c, Hk, Hv, Dk, Dv, &b.m);
            /* chunked sequences: the single kernel, then the split form (sl_cuda_gdn_split),
             * each against the CPU (the split form keeps its records in bf16 and runs its
             * products on mma.sync: not the single kernel's arithmetic, kernels/dev/NOTES.md v83) */
            int chunked = qmax >= GDN_CHUNK_MIN;
            for (int split = 0; split < (chunked ? 2 : 1); split++) {
                sl_err e = {0};
                if (split) { /* the pool as it started, the output poisoned again */
                    if (sl_be_upload(t->gpu, &pool.g, pool0, F32, &e)) tb_die("gdn split rerun", &e);
                    tb_poison(t, &y.g);
                }
                int was = sl_cuda_gdn_split(t->gpu, split);
                sl_be_gdn(t->gpu, &y.g, &x.g, &aa.g, &bb.g, &al.g, &dtb.g, &pool.g, Hk, Hv, Dk, Dv, &b.m);
                sl_cuda_gdn_split(t->gpu, was);
                tb_compare(t, c->op, desc, split ? "out split" : "out", &y.c, &y.g, c->tol);
                tb_compare(t, c->op, desc, split ? "ssm split" : "ssm", &pool.c, &pool.g,
                           qmax >= GDN_CHUNK_MIN ? GDN_CHUNK_SSM_TOL : 1e-4);
            }
            free(pool0);
            tb_pair_free(t, &aa);
            tb_pair_free(t, &bb);
            tb_pair_free(t, &al);
            tb_pair_free(t, &dtb);
        }
        tb_pair_free(t, &pool);
        tb_pair_free(t, &x);
        tb_pair_free(t, &y);
        tb_batch_free(&b);
        break;
    }
    default:
        SL_ASSERT(0 && "not a gdn op");
    }
}

/* ---- perf --------------------------------------------------------------------- */

typedef struct pm_gdn {
    sl_tensor qkv[4], y[4], a, b, A_log, dt_bias, pool, w;
    tb_batch bt;
    int Hk, Hv, Dk, Dv;
} pm_gdn;

static void pf_gdn(tb *t, void *ctx, int set)
{
    pm_gdn *c = ctx;
    sl_be_gdn(t->gpu, &c->y[set], &c->qkv[set], &c->a, &c->b, &c->A_log, &c->dt_bias, &c->pool,
              c->Hk, c->Hv, c->Dk, c->Dv, &c->bt.m);
}

static void pf_conv(tb *t, void *ctx, int set)
{
    pm_gdn *c = ctx;
    sl_be_conv1d(t->gpu, &c->y[set], &c->qkv[set], &c->w, &c->pool, &c->bt.m);
}

/* S sequences of q new tokens each (not fresh, no snapshot). gdn flops: the
 * chunked form's matmuls per (64-token chunk, value head), whole tiles, as
 * 2C(3C·Dk + 2C·Dv + 3·Dk·Dv) (K Kᵀ, Q Kᵀ, W, U, W·S, Q·S, QKᵀ·v_new,
 * state update); recurrent sequences (q < GDN_CHUNK_MIN) count 8·Dk·Dv a
 * token. conv1d: bytes only (x read, y written). */
static void perf_gdn(tb *t, sl_op op, const char *name, int S, int q, int Hk, int Hv, int Dk,
                     int Dv)
{
    int qs[256], pre[256], T = S * q;
    if (T < t->min_tokens || T > t->max_tokens) return; /* one row's kernel table (SL_CUDA_PROFILE) */
    pm_gdn c;
    memset(&c, 0, sizeof c);
    for (int s = 0; s < S; s++) {
        qs[s] = q;
        pre[s] = 0;
    }
    tb_batch_make(t, &c.bt, S, qs, pre, 16, 10);
    int64_t ne[4], C = 2 * (int64_t)Hk * Dk + (int64_t)Hv * Dv;
    int ns = 4;
    double bytes, flops = 0;
    char desc[96];
    if (op == SL_OP_GDN) {
        for (int i = 0; i < ns; i++) {
            c.qkv[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, C), ne), 1.0f);
            c.y[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, (int64_t)Hv * Dv), ne), 1.0f);
        }
        c.a = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, Hv), ne), 1.0f);
        c.b = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, Hv), ne), 1.0f);
        c.A_log = tb_gpu_rand(t, F32, 1, (ne[0] = Hv, ne), 1.0f);
        c.dt_bias = tb_gpu_rand(t, F32, 1, (ne[0] = Hv, ne), 1.0f);
        int64_t ne4[4] = {S, Hv, Dk, Dv};
        c.pool = tb_gpu_rand(t, F32, 4, ne4, 0.1f);
        c.Hk = Hk;
        c.Hv = Hv;
        c.Dk = Dk;
        c.Dv = Dv;
        double Cc = 64, chunks = (q + 63) / 64;
        if (q >= GDN_CHUNK_MIN)
            flops = S * Hv * chunks * 2 * Cc * (3 * Cc * Dk + 2 * Cc * Dv + 3.0 * Dk * Dv);
        else flops = (double)T * Hv * 8.0 * Dk * Dv;
        bytes = (double)T * C * 2 + (double)T * Hv * Dv * 2 + 2.0 * S * Hv * Dk * Dv * 4;
        snprintf(desc, sizeof desc, "%s S=%d q=%d Hk=%d Hv=%d Dk=%d Dv=%d", name, S, q, Hk, Hv,
                 Dk, Dv);
        double ms = tb_time_op(t, pf_gdn, &c, ns, 10, NULL);
        tb_report(t, "gdn", desc, ms, bytes, flops, q >= GDN_CHUNK_MIN ? " (chunked)" : "");
        if (q >= GDN_CHUNK_MIN) { /* the split form on the same shape */
            int was = sl_cuda_gdn_split(t->gpu, 1);
            ms = tb_time_op(t, pf_gdn, &c, ns, 10, NULL);
            sl_cuda_gdn_split(t->gpu, was);
            tb_report(t, "gdn", desc, ms, bytes, flops, " (chunked, split)");
        }
    } else {
        for (int i = 0; i < ns; i++) {
            c.qkv[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, C), ne), 1.0f);
            c.y[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, C), ne), 1.0f);
        }
        c.w = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, C, 4), ne), 0.5f);
        int64_t ne3[3] = {S, C, 3};
        c.pool = tb_gpu_rand(t, F32, 3, ne3, 1.0f);
        bytes = (double)T * C * 2 * 2;
        snprintf(desc, sizeof desc, "%s S=%d q=%d C=%lld K=4", name, S, q, (long long)C);
        double ms = tb_time_op(t, pf_conv, &c, ns, 10, NULL);
        tb_report(t, "conv1d", desc, ms, bytes, 0, "");
    }
    for (int i = 0; i < ns; i++) {
        sl_be_release(t->gpu, &c.qkv[i]);
        sl_be_release(t->gpu, &c.y[i]);
    }
    sl_tensor *more[] = {&c.a, &c.b, &c.A_log, &c.dt_bias, &c.pool, &c.w};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
        if (more[i]->data) sl_be_release(t->gpu, more[i]);
    tb_batch_free(&c.bt);
}

static void gdn_perf(tb *t, const char *filter)
{
    if (tb_perf_on(filter, SL_OP_GDN)) {
        perf_gdn(t, SL_OP_GDN, "next prefill", 1, 8192, 16, 32, 128, 128);
        perf_gdn(t, SL_OP_GDN, "next prefill", 1, 1000, 16, 32, 128, 128);
        perf_gdn(t, SL_OP_GDN, "next prefill", 4, 1024, 16, 32, 128, 128);
        perf_gdn(t, SL_OP_GDN, "next decode", 32, 1, 16, 32, 128, 128);
    }
    if (tb_perf_on(filter, SL_OP_CONV1D)) {
        perf_gdn(t, SL_OP_CONV1D, "next prefill", 1, 8192, 16, 32, 128, 128);
        perf_gdn(t, SL_OP_CONV1D, "next decode", 32, 1, 16, 32, 128, 128);
    }
}

const tb_family tb_family_gdn = {cases, sizeof cases / sizeof cases[0], gdn_run, gdn_perf};
