/* tests/gpu/ops/ops_norm.c: rmsnorm, add_rmsnorm and rmsnorm_gated; --perf also times
 * silu_mul with them (the row-wise ops). */

#include "harness.h"



static const tb_case cases[] = {
    /* rmsnorm: rows, cols, one_plus, in place, group D (0: whole row) */
    {SL_OP_RMSNORM, BF, {64, 128, 0, 0}, 1e-2},
    {SL_OP_RMSNORM, BF, {19, 8 * 128, 0, 1, 128}, 1e-2},   /* per-head q/k norm */
    {SL_OP_RMSNORM, BF, {5, 4 * 256, 1, 0, 256}, 1e-2},
    {SL_OP_RMSNORM, BF, {6, 3 * 100, 0, 0, 100}, 1e-2},    /* unaligned: scalar path */
    {SL_OP_RMSNORM, BF, {7, 4096, 1, 0}, 1e-2},
    {SL_OP_RMSNORM, BF, {33, 2048, 0, 1}, 1e-2},
    {SL_OP_RMSNORM, F32, {5, 3000, 1, 0}, 1e-5},
    /* add_rmsnorm: rows, D, one_plus, resid dtype (0 bf16, 1 f32) */
    {SL_OP_ADD_RMSNORM, BF, {17, 4096, 0, 0}, 1e-2},
    {SL_OP_ADD_RMSNORM, BF, {9, 2048, 1, 1}, 1e-2},
    {SL_OP_ADD_RMSNORM, BF, {40, 256, 0, 1}, 1e-2},
    /* rmsnorm_gated: rows, cols, -, -, group D */
    {SL_OP_RMSNORM_GATED, BF, {48, 128, 0, 0, 0}, 1e-2},
    {SL_OP_RMSNORM_GATED, BF, {9, 4 * 128, 0, 0, 128}, 1e-2},
    {SL_OP_RMSNORM_GATED, BF, {70, 4 * 64, 0, 0, 64}, 1e-2},
};

static void norm_run(tb *t, const tb_case *c)
{
    const int *p = c->p;
    char desc[96];
    int64_t ne[4];
    tb_pair x, y, w, z;
    sl_dtype dt = c->dt;
    switch (c->op) {
    case SL_OP_RMSNORM:
    case SL_OP_ADD_RMSNORM:
    case SL_OP_RMSNORM_GATED: {
        int R = p[0], D = p[1], one = p[2], G = p[4] ? p[4] : p[1];
        snprintf(desc, sizeof desc, "R=%d C=%d D=%d%s%s %s", R, D, G, one ? " 1+w" : "",
                 c->op == SL_OP_RMSNORM && p[3] ? " in-place"
                 : c->op == SL_OP_ADD_RMSNORM && p[3] ? " resid f32" : "",
                 sl_dtype_name(dt));
        tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, R, D), ne), -2, 2);
        tb_pair_rand(t, &w, dt, 1, (ne[0] = G, ne), -1, 1);
        int inplace = c->op == SL_OP_RMSNORM && p[3];
        if (!inplace) tb_pair_out(t, &y, dt, 2, (tb_ne2(ne, R, D), ne));
        tb_pair *o = inplace ? &x : &y;
        if (c->op == SL_OP_RMSNORM) {
            sl_be_rmsnorm(t->cpu, &o->c, &x.c, &w.c, 1e-6f, one);
            sl_be_rmsnorm(t->gpu, &o->g, &x.g, &w.g, 1e-6f, one);
        } else if (c->op == SL_OP_ADD_RMSNORM) {
            tb_pair_rand(t, &z, p[3] ? F32 : BF, 2, (tb_ne2(ne, R, D), ne), -3, 3);
            sl_be_add_rmsnorm(t->cpu, &o->c, &z.c, &x.c, &w.c, 1e-6f, one, NULL);
            sl_be_add_rmsnorm(t->gpu, &o->g, &z.g, &x.g, &w.g, 1e-6f, one, NULL);
            tb_compare(t, c->op, desc, "resid", &z.c, &z.g, c->tol);
            tb_pair_free(t, &z);
        } else {
            tb_pair_rand(t, &z, dt, 2, (tb_ne2(ne, R, D), ne), -3, 3);
            sl_be_rmsnorm_gated(t->cpu, &o->c, &x.c, &z.c, &w.c, 1e-6f, NULL);
            sl_be_rmsnorm_gated(t->gpu, &o->g, &x.g, &z.g, &w.g, 1e-6f, NULL);
            tb_pair_free(t, &z);
        }
        tb_compare(t, c->op, desc, "out", &o->c, &o->g, c->tol);
        tb_pair_free(t, &x);
        tb_pair_free(t, &w);
        if (!inplace) tb_pair_free(t, &y);
        break;
    }
    default:
        SL_ASSERT(0 && "not a norm op");
    }
}

typedef struct pm_row {
    sl_op op;
    sl_tensor x[64], y[64], r[64], w;
} pm_row;

static void pf_row(tb *t, void *ctx, int set)
{
    pm_row *c = ctx;
    switch (c->op) {
    case SL_OP_RMSNORM: sl_be_rmsnorm(t->gpu, &c->y[set], &c->x[set], &c->w, 1e-6f, 0); break;
    case SL_OP_ADD_RMSNORM:
        sl_be_add_rmsnorm(t->gpu, &c->y[set], &c->r[set], &c->x[set], &c->w, 1e-6f, 0, NULL);
        break;
    default: sl_be_silu_mul(t->gpu, &c->y[set], &c->x[set], NULL); break;
    }
}

static void perf_row(tb *t, sl_op op, int M, int N)
{
    pm_row c;
    c.op = op;
    int64_t ne[2];
    int xin = op == SL_OP_SILU_MUL ? 2 * N : N;
    c.w = tb_gpu_rand(t, BF, 1, (ne[0] = N, ne), 1.0f);
    int64_t set_bytes = 2 * ((int64_t)M * xin + (int64_t)M * N) * (op == SL_OP_ADD_RMSNORM ? 2 : 1);
    int ns = (int)(TB_L2_ROTATE / set_bytes + 1);
    if (ns > 64) ns = 64;
    for (int i = 0; i < ns; i++) {
        c.x[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, M, xin), ne), 1.0f);
        c.y[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, M, N), ne), 1.0f);
        if (op == SL_OP_ADD_RMSNORM) c.r[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, M, N), ne), 1.0f);
    }
    double ms = tb_time_op(t, pf_row, &c, ns, 30, NULL);
    /* add_rmsnorm: x, resid read; resid, out written */
    double bytes = op == SL_OP_ADD_RMSNORM ? 2.0 * M * N * 4 : 2.0 * ((double)M * xin + (double)M * N);
    char desc[96];
    snprintf(desc, sizeof desc, "M=%d N=%d bf16", M, N);
    tb_report(t, sl_op_name(op), desc, ms, bytes, 0, "");
    sl_be_release(t->gpu, &c.w);
    for (int i = 0; i < ns; i++) {
        sl_be_release(t->gpu, &c.x[i]);
        sl_be_release(t->gpu, &c.y[i]);
        if (op == SL_OP_ADD_RMSNORM) sl_be_release(t->gpu, &c.r[i]);
    }
}

static void norm_perf(tb *t, const char *filter)
{
    if (tb_perf_on(filter, SL_OP_RMSNORM)) perf_row(t, SL_OP_RMSNORM, 4096, 4096);
    if (tb_perf_on(filter, SL_OP_ADD_RMSNORM)) perf_row(t, SL_OP_ADD_RMSNORM, 4096, 4096);
    if (tb_perf_on(filter, SL_OP_SILU_MUL)) perf_row(t, SL_OP_SILU_MUL, 4096, 12288);
    if (tb_perf_on(filter, SL_OP_RMSNORM)) perf_row(t, SL_OP_RMSNORM, 64, 4096);
}

const tb_family tb_family_norm = {cases, sizeof cases / sizeof cases[0], norm_run, norm_perf};
