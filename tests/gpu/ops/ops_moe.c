/* tests/gpu/ops/ops_moe.c: moe_route, moe_router and moe_experts (the few-token path, the
 * grouped GEMM, CUDA graph replay). */
#include <string.h>

#include "harness.h"

/* Routing for moe_experts (draw `round` of it): distinct experts per token;
 * with a pool, CPU ids ic index pool_e (the GPU's ids iv); without one, ids
 * skew toward low ids so some experts get many tokens (several GEMM tiles)
 * and some none. */
static void moe_draw_ids(uint64_t rs, int round, int T, int k, int E, int pool,
                         const int32_t *pool_e, int32_t *iv, int32_t *ic, float *wv)
{
    uint64_t salt = (uint64_t)round << 40;
    for (int i = 0; i < T; i++)
        for (int j = 0; j < k; j++) {
            int m, dup;
            uint64_t n = 0;
            do {
                float u = sl_rng_uniform(rs, salt + (uint64_t)(i * 64 + j) * 1000 + n++);
                m = pool ? (int)(u * (float)pool) : (int)(u * u * (float)E);
                dup = 0;
                for (int jj = 0; jj < j; jj++)
                    dup |= ic[i * k + jj] == m;
            } while (dup);
            ic[i * k + j] = m;
            iv[i * k + j] = pool_e[m];
            wv[i * k + j] = 0.05f + sl_rng_uniform(rs, salt + (uint64_t)(i * 64 + j)) * 0.3f;
        }
}

/* moe_experts. With a pool, ids come from `pool` random experts of E (each
 * token distinct ones, so tokens share experts), the GPU gets the full
 * [E, ...] weights with every other expert NaN (reading a wrong expert
 * fails the case) and the CPU only the pool's experts, ids remapped: the
 * real model shapes without E full experts on the host. The GPU op also
 * runs captured in a CUDA graph: bit for bit the direct run, then replayed
 * on other routing. */
static void run_moe_experts(tb *t, const tb_case *c)
{
    const int *p = c->p;
    int T = p[0], H = p[1], I = p[2], E = p[3], k = p[4], pool = p[5];
    char desc[96];
    snprintf(desc, sizeof desc, "T=%d H=%d I=%d E=%d k=%d%s %s", T, H, I, E, k,
             pool ? " pooled" : "", sl_dtype_name(c->dt));
    int64_t ne[3];
    tb_pair x, y, ids, wt;
    tb_pair_rand(t, &x, c->dt, 2, (tb_ne2(ne, T, H), ne), -2, 2);
    int n_cpu = pool ? pool : E;
    int32_t *pool_e = malloc(sizeof(int32_t) * (size_t)n_cpu); /* CPU expert -> GPU expert */
    uint64_t rs = sl_rng_mix(t->seed++);
    for (int i = 0; i < n_cpu; i++) {
        int e, dup;
        uint64_t n = 0;
        do {
            e = pool ? (int)(sl_rng_uniform(rs, 5000000u + (uint64_t)i * 1000 + n++) * (float)E)
                     : i;
            dup = 0;
            for (int j = 0; j < i; j++)
                dup |= pool_e[j] == e;
        } while (dup);
        pool_e[i] = e;
    }
    /* weights: CPU [n_cpu, ...] f32; GPU [E, ...] bf16, experts outside the pool NaN */
    sl_tensor gu_c, dn_c, gu_g, dn_g;
    sl_err e = {0};
    int64_t gu_n = 2 * (int64_t)I * H, dn_n = (int64_t)H * I;
    int64_t ne_gu[3] = {n_cpu, 2 * (int64_t)I, H}, ne_dn[3] = {n_cpu, H, I};
    if (sl_be_alloc(t->cpu, &gu_c, F32, 3, ne_gu, &e) ||
        sl_be_alloc(t->cpu, &dn_c, F32, 3, ne_dn, &e))
        tb_die("alloc", &e);
    ne_gu[0] = ne_dn[0] = E;
    if (sl_be_alloc(t->gpu, &gu_g, BF, 3, ne_gu, &e) ||
        sl_be_alloc(t->gpu, &dn_g, BF, 3, ne_dn, &e))
        tb_die("alloc", &e);
    if (pool) {
        TB_CK(cudaMemset(gu_g.data, 0xff, sizeof(uint16_t) * (size_t)(E * gu_n))); /* bf16 NaN */
        TB_CK(cudaMemset(dn_g.data, 0xff, sizeof(uint16_t) * (size_t)(E * dn_n)));
        TB_CK(cudaDeviceSynchronize()); /* before uploads on the backend's stream */
    }
    for (int i = 0; i < n_cpu; i++) {
        sl_tensor *cs[2] = {&gu_c, &dn_c}, *gs[2] = {&gu_g, &dn_g};
        int64_t n2[2] = {gu_n, dn_n};
        for (int w = 0; w < 2; w++) {
            float *hc = (float *)cs[w]->data + (int64_t)i * n2[w];
            uint64_t s = sl_rng_mix(t->seed++);
            for (int64_t j = 0; j < n2[w]; j++)
                hc[j] = tb_bf16_round(-0.1f + 0.2f * sl_rng_uniform(s, (uint64_t)j));
            sl_tensor slice =
                sl_tensor_make((uint16_t *)gs[w]->data + (int64_t)pool_e[i] * n2[w], BF, 1, &n2[w]);
            slice.on_device = 1;
            if (sl_be_upload(t->gpu, &slice, hc, F32, &e)) tb_die("upload", &e);
        }
    }
    int32_t *iv = malloc(sizeof(int32_t) * (size_t)(T * k)),
            *ic = malloc(sizeof(int32_t) * (size_t)(T * k));
    float *wv = malloc(sizeof(float) * (size_t)(T * k));
    moe_draw_ids(rs, 0, T, k, E, pool, pool_e, iv, ic, wv);
    tb_pair_alloc(t, &ids, SL_DTYPE_I32, 2, (tb_ne2(ne, T, k), ne));
    if (sl_be_upload(t->cpu, &ids.c, ic, SL_DTYPE_I32, &e) ||
        sl_be_upload(t->gpu, &ids.g, iv, SL_DTYPE_I32, &e))
        tb_die("upload", &e);
    tb_pair_alloc(t, &wt, F32, 2, (tb_ne2(ne, T, k), ne));
    tb_pair_set(t, &wt, wv);
    tb_pair_out(t, &y, c->dt, 2, (tb_ne2(ne, T, H), ne));
    sl_tensor y2;
    if (sl_be_alloc(t->gpu, &y2, c->dt, 2, (tb_ne2(ne, T, H), ne), &e)) tb_die("alloc", &e);
    sl_be_moe_experts(t->cpu, &y.c, &x.c, &ids.c, &wt.c, &gu_c, &dn_c);
    sl_be_moe_experts(t->gpu, &y.g, &x.g, &ids.g, &wt.g, &gu_g, &dn_g);
    tb_compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
    /* as a decode graph runs it: captured once, replayed (bit-identical to the
     * direct run), then replayed with other ids and weights in the same tensors */
    cudaStream_t st = (cudaStream_t)sl_cuda_stream(t->gpu);
    cudaGraph_t gr;
    cudaGraphExec_t ge;
    TB_CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    sl_be_moe_experts(t->gpu, &y2, &x.g, &ids.g, &wt.g, &gu_g, &dn_g);
    TB_CK(cudaStreamEndCapture(st, &gr));
    TB_CK(cudaGraphInstantiate(&ge, gr, 0));
    TB_CK(cudaGraphLaunch(ge, st));
    tb_compare_exact(t, c->op, desc, "graph", &y.g, &y2);
    moe_draw_ids(rs, 1, T, k, E, pool, pool_e, iv, ic, wv);
    if (sl_be_upload(t->cpu, &ids.c, ic, SL_DTYPE_I32, &e) ||
        sl_be_upload(t->gpu, &ids.g, iv, SL_DTYPE_I32, &e))
        tb_die("upload", &e);
    tb_pair_set(t, &wt, wv);
    sl_be_moe_experts(t->cpu, &y.c, &x.c, &ids.c, &wt.c, &gu_c, &dn_c);
    TB_CK(cudaGraphLaunch(ge, st));
    tb_compare(t, c->op, desc, "replay", &y.c, &y2, c->tol);
    TB_CK(cudaGraphExecDestroy(ge));
    TB_CK(cudaGraphDestroy(gr));
    free(pool_e);
    free(iv);
    free(ic);
    free(wv);
    sl_be_release(t->cpu, &gu_c);
    sl_be_release(t->cpu, &dn_c);
    sl_be_release(t->gpu, &gu_g);
    sl_be_release(t->gpu, &dn_g);
    sl_be_release(t->gpu, &y2);
    tb_pair_free(t, &ids);
    tb_pair_free(t, &wt);
    tb_pair_free(t, &x);
    tb_pair_free(t, &y);
}

static const tb_case cases[] = {
    /* moe_route: T, E, k, norm, shared (logits get a shared expert's gate column) */
    {SL_OP_MOE_ROUTE, F32, {33, 128, 8, 1}, 1e-5},
    {SL_OP_MOE_ROUTE, F32, {9, 60, 4, 0}, 1e-5},
    {SL_OP_MOE_ROUTE, F32, {33, 512, 10, 1, 1}, 1e-5}, /* + a shared expert's gate column */
    {SL_OP_MOE_ROUTE, F32, {5, 60, 4, 0, 1}, 1e-5},
    {SL_OP_MOE_ROUTE, F32, {7, 256, 8, 1}, 1e-5},      /* 8 experts a lane */
    {SL_OP_MOE_ROUTE, F32, {4, 1000, 32, 0, 1}, 1e-5}, /* 32 a lane, k at its limit */
    {SL_OP_MOE_ROUTE, BF, {65, 128, 8, 1}, 1e-5},      /* bf16 logits: many equal values */
    /* moe_experts: T, H, I, E, k, pool (experts drawn from a random pool of that many; 0: all
     * E, skewed to low ids). Up to MOE_GV_MAX_PAIRS (moe.cu) pairs T*k take the few-token path,
     * more the grouped GEMM. */
    {SL_OP_MOE_EXPERTS, BF, {5, 256, 96, 16, 4}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {70, 512, 128, 32, 8}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {150, 512, 128, 32, 8}, 2e-2},       /* grouped GEMM */
    {SL_OP_MOE_EXPERTS, BF, {1, 256, 96, 16, 4}, 2e-2},          /* tiny shape */
    {SL_OP_MOE_EXPERTS, BF, {3, 256, 96, 16, 4, 5}, 2e-2},
    {SL_OP_MOE_EXPERTS, F32, {8, 264, 40, 16, 4, 6}, 2e-2},      /* f32 x/out, ragged tiles */
    {SL_OP_MOE_EXPERTS, BF, {64, 256, 96, 16, 4, 6}, 2e-2},      /* ~43 tokens per expert */
    {SL_OP_MOE_EXPERTS, BF, {1, 2048, 768, 128, 8, 8}, 2e-2},    /* Qwen3-30B-A3B */
    {SL_OP_MOE_EXPERTS, BF, {3, 2048, 768, 128, 8, 12}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {8, 2048, 768, 128, 8, 16}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {64, 2048, 768, 128, 8, 24}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {1, 2048, 512, 512, 10, 10}, 2e-2},  /* Qwen3-Coder-Next */
    {SL_OP_MOE_EXPERTS, BF, {8, 2048, 512, 512, 10, 24}, 2e-2},
    {SL_OP_MOE_EXPERTS, BF, {64, 2048, 512, 512, 10, 32}, 2e-2},
    /* moe_router (logits then routing; CUDA: one kernel up to 8 tokens): T, H, E, k, norm,
     * shared */
    {SL_OP_MOE_ROUTER, BF, {1, 2048, 128, 8, 1}, 1e-4},     /* Qwen3-30B-A3B */
    {SL_OP_MOE_ROUTER, BF, {8, 2048, 512, 10, 1, 1}, 1e-4}, /* Qwen3-Coder-Next */
    {SL_OP_MOE_ROUTER, BF, {3, 256, 60, 4, 0, 1}, 1e-4},    /* a partial last block of rows */
    {SL_OP_MOE_ROUTER, BF, {5, 4096, 1000, 16, 1}, 1e-4},   /* 32 experts a lane, H at its limit */
    {SL_OP_MOE_ROUTER, BF, {9, 2048, 128, 8, 1}, 1e-4},     /* too many tokens: matmul + route */
    {SL_OP_MOE_ROUTER, BF, {2, 200, 64, 4, 1}, 1e-4},       /* H % 256 != 0: matmul + route */
    /* p[6]: with the residual add + RMSNorm before it (sl_be_add_rmsnorm_router; CUDA fuses
     * them with SL_CUDA_ROUTER_NORM=1), p[7] one_plus: bit for bit the two ops on CUDA */
    {SL_OP_MOE_ROUTER, BF, {1, 2048, 128, 8, 1, 0, 1, 0}, 1e-4},
    {SL_OP_MOE_ROUTER, BF, {4, 2048, 512, 10, 1, 1, 1, 1}, 1e-4},
    {SL_OP_MOE_ROUTER, BF, {5, 4096, 1000, 16, 1, 0, 1, 1}, 1e-4},  /* x and resid past 48 KB: two ops */
    {SL_OP_MOE_ROUTER, BF, {6, 2048, 512, 10, 1, 1, 1, 0}, 1e-4},   /* exactly 48 KB: no room for the rest */
    {SL_OP_MOE_ROUTER, BF, {5, 2048, 512, 10, 1, 1, 1, 0}, 1e-4},   /* Coder-Next's most fused rows */
    {SL_OP_MOE_ROUTER, BF, {9, 2048, 128, 8, 1, 0, 1, 0}, 1e-4},    /* too many tokens: two ops */
};

static void moe_run(tb *t, const tb_case *c)
{
    const int *p = c->p;
    char desc[96];
    int64_t ne[4];
    tb_pair x, y, w;
    sl_dtype dt = c->dt;
    switch (c->op) {
    case SL_OP_MOE_ROUTE: {
        int T = p[0], E = p[1], k = p[2], sh = p[4];
        snprintf(desc, sizeof desc, "T=%d E=%d k=%d%s%s", T, E, k, p[3] ? " norm" : "", sh ? " shared" : "");
        tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, T, E + sh), ne), -4, 4);
        tb_pair_out(t, &y, SL_DTYPE_I32, 2, (tb_ne2(ne, T, k + sh), ne));
        tb_pair_out(t, &w, F32, 2, (tb_ne2(ne, T, k + sh), ne));
        sl_be_moe_route(t->cpu, &y.c, &w.c, &x.c, k, p[3], sh);
        sl_be_moe_route(t->gpu, &y.g, &w.g, &x.g, k, p[3], sh);
        tb_compare(t, c->op, desc, "ids", &y.c, &y.g, -1);
        tb_compare(t, c->op, desc, "weights", &w.c, &w.g, c->tol);
        tb_pair_free(t, &x);
        tb_pair_free(t, &y);
        tb_pair_free(t, &w);
        break;
    }
    case SL_OP_MOE_ROUTER: {
        int T = p[0], H = p[1], E = p[2], k = p[3], sh = p[5];
        tb_pair r, lg;
        snprintf(desc, sizeof desc, "T=%d H=%d E=%d k=%d%s%s%s", T, H, E, k, p[4] ? " norm" : "",
                 sh ? " shared" : "", p[6] ? " +rmsnorm" : "");
        /* x·r of a few units (|x|, |r| < 1/sqrt(H) each): softmax weights far from 0 and 1 */
        float a = 2.0f / sqrtf((float)H);
        tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, T, H), ne), -1, 1);
        tb_pair_rand(t, &r, dt, 2, (tb_ne2(ne, E + sh, H), ne), -a, a);
        tb_pair_out(t, &lg, F32, 2, (tb_ne2(ne, T, E + sh), ne));
        tb_pair_out(t, &y, SL_DTYPE_I32, 2, (tb_ne2(ne, T, k + sh), ne));
        tb_pair_out(t, &w, F32, 2, (tb_ne2(ne, T, k + sh), ne));
        sl_be_moe_router(t->cpu, &y.c, &w.c, &lg.c, &x.c, &r.c, k, p[4], sh);
        sl_be_moe_router(t->gpu, &y.g, &w.g, &lg.g, &x.g, &r.g, k, p[4], sh);
        tb_compare(t, c->op, desc, "logits", &lg.c, &lg.g, c->tol);
        /* the routing against the CPU's of the GPU's own logits: summation order moves
         * logits by an ulp, which may swap two experts that nearly tie */
        float *gl = tb_download(t->gpu, &lg.g);
        memcpy(lg.c.data, gl, sizeof(float) * (size_t)(T * (E + sh)));
        free(gl);
        sl_be_moe_route(t->cpu, &y.c, &w.c, &lg.c, k, p[4], sh);
        tb_compare(t, c->op, desc, "ids", &y.c, &y.g, -1);
        tb_compare(t, c->op, desc, "weights", &w.c, &w.g, c->tol);
        if (p[6]) { /* x as d of the residual add + norm; resid, the norm weights drawn */
            tb_pair rs, nw, xn, lg2, y2, w2;
            tb_pair_rand(t, &rs, dt, 2, (tb_ne2(ne, T, H), ne), -2, 2);
            tb_pair_rand(t, &nw, dt, 1, (ne[0] = H, ne), 0.5f, 1.5f);
            tb_pair_out(t, &xn, dt, 2, (tb_ne2(ne, T, H), ne));
            tb_pair_out(t, &lg2, F32, 2, (tb_ne2(ne, T, E + sh), ne));
            tb_pair_out(t, &y2, SL_DTYPE_I32, 2, (tb_ne2(ne, T, k + sh), ne));
            tb_pair_out(t, &w2, F32, 2, (tb_ne2(ne, T, k + sh), ne));
            sl_err e = {0};
            sl_tensor rs2, xn2;
            if (sl_be_alloc(t->gpu, &rs2, dt, 2, rs.g.ne, &e) || sl_be_copy(t->gpu, &rs2, &rs.g, &e) ||
                sl_be_alloc(t->gpu, &xn2, dt, 2, xn.g.ne, &e))
                tb_die("router norm", &e);
            /* the two ops on CUDA, then the one */
            sl_be_add_rmsnorm(t->gpu, &xn.g, &rs.g, &x.g, &nw.g, 1e-6f, p[7], NULL);
            sl_be_moe_router(t->gpu, &y.g, &w.g, &lg.g, &xn.g, &r.g, k, p[4], sh);
            sl_be_add_rmsnorm_router(t->gpu, &xn2, &rs2, &x.g, &nw.g, 1e-6f, p[7], &y2.g, &w2.g, &lg2.g, &r.g, k, p[4],
                                     sh);
            static const char *const what[] = {"+norm resid", "+norm x", "+norm logits", "+norm ids", "+norm weights"};
            const sl_tensor *two[] = {&rs.g, &xn.g, &lg.g, &y.g, &w.g}, *one[] = {&rs2, &xn2, &lg2.g, &y2.g, &w2.g};
            for (int i = 0; i < 5; i++) tb_compare_exact(t, c->op, desc, what[i], two[i], one[i]);
            sl_be_release(t->gpu, &rs2);
            sl_be_release(t->gpu, &xn2);
            tb_pair *all[] = {&rs, &nw, &xn, &lg2, &y2, &w2};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tb_pair_free(t, all[i]);
        }
        tb_pair_free(t, &x);
        tb_pair_free(t, &r);
        tb_pair_free(t, &lg);
        tb_pair_free(t, &y);
        tb_pair_free(t, &w);
        break;
    }
    case SL_OP_MOE_EXPERTS:
        run_moe_experts(t, c);
        break;
    default:
        SL_ASSERT(0 && "not a moe op");
    }
}

/* MoE experts at Qwen3-30B-A3B and Qwen3-Coder-Next shapes; bytes count the distinct
 * active experts' weights (what a decode step must stream) plus x and out */
#define MOE_SETS 8
typedef struct pm_moe {
    sl_tensor x, ids[MOE_SETS], wt, gu, dn, y;
} pm_moe;

static void pf_moe(tb *t, void *ctx, int set)
{
    pm_moe *c = ctx;
    sl_be_moe_experts(t->gpu, &c->y, &c->x, &c->ids[set], &c->wt, &c->gu, &c->dn);
}

static void perf_moe(tb *t, const char *name, int T, int H, int I, int E, int k, int shared)
{
    pm_moe c;
    int64_t ne[3] = {E, 2 * (int64_t)I, H};
    c.gu = tb_gpu_rand(t, BF, 3, ne, 0.05f);
    ne[1] = H;
    ne[2] = I;
    c.dn = tb_gpu_rand(t, BF, 3, ne, 0.05f);
    c.x = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, H), ne), 1.0f);
    c.y = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, H), ne), 1.0f);
    int active = tb_moe_perf_ids(t, T, k, E, shared, c.ids, MOE_SETS, &c.wt);
    double ms = tb_time_op(t, pf_moe, &c, MOE_SETS, 24, NULL);
    double bytes = (double)active * 3.0 * I * H * 2 + 2.0 * T * H * 2;
    double flops = 2.0 * T * k * 3.0 * I * H;
    char desc[96];
    snprintf(desc, sizeof desc, "%s T=%d E=%d k=%d I=%d (%d active)", name, T, E, k, I, active);
    tb_report(t, "moe_experts", desc, ms, bytes, flops, "");
    if (T <= 128) { /* decode sizes: also as a captured graph replays them */
        ms = tb_time_graph(t, pf_moe, &c, MOE_SETS, 10);
        snprintf(desc, sizeof desc, "%s T=%d graph", name, T);
        tb_report(t, "moe_experts", desc, ms, bytes, flops, "");
    }
    sl_be_release(t->gpu, &c.x);
    sl_be_release(t->gpu, &c.y);
    for (int st = 0; st < MOE_SETS; st++) sl_be_release(t->gpu, &c.ids[st]);
    sl_be_release(t->gpu, &c.wt);
    sl_be_release(t->gpu, &c.gu);
    sl_be_release(t->gpu, &c.dn);
}

static void moe_perf(tb *t, const char *filter)
{
    if (tb_perf_on(filter, SL_OP_MOE_EXPERTS)) {
        /* 1-128 tokens: the few-token path (T*k <= MOE_GV_MAX_PAIRS in moe.cu) and its
         * threshold; 4096: the grouped GEMM */
        int moe_T[] = {1, 8, 64, 128};
        for (size_t i = 0; i < sizeof moe_T / sizeof moe_T[0]; i++) {
            perf_moe(t, "30B-A3B", moe_T[i], 2048, 768, 128, 8, 0);
            /* with the shared expert fused, as the model runs it (every token's 11th) */
            perf_moe(t, "Coder-Next", moe_T[i], 2048, 512, 513, 11, 1);
        }
        perf_moe(t, "30B-A3B", 4096, 2048, 768, 128, 8, 0);
    }
}

const tb_family tb_family_moe = {cases, sizeof cases / sizeof cases[0], moe_run, moe_perf};
