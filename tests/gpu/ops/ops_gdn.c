/* tests/gpu/ops/ops_gdn.c: the hybrid (qwen3_next) linear-attention ops: conv1d and
 * the gated delta net, with their state pools. */

#include "harness.h"



static const tb_case cases[] = {
    /* conv1d: seqs, q_len (even seqs; odd seqs 1), C, K */
    {SL_OP_CONV1D, BF, {3, 40, 512, 4}, 1e-2},
    {SL_OP_CONV1D, BF, {4, 1, 8192, 4}, 1e-2},
    /* gdn: seqs, q_len (even seqs; odd seqs 1), Hk, Hv, Dk, Dv */
    {SL_OP_GDN, BF, {3, 20, 2, 4, 128, 128}, 1e-2},
    {SL_OP_GDN, BF, {4, 1, 1, 2, 64, 64}, 1e-2},
    {SL_OP_GDN, BF, {2, 70, 1, 1, 128, 128}, 1e-2},
    {SL_OP_GDN, BF, {2, 9, 2, 4, 64, 64}, 1e-2},          /* the golden qwen3_next */
};

static void gdn_run(tb *t, const tb_case *c)
{
    const int *p = c->p;
    char desc[96];
    int64_t ne[4];
    tb_pair x, y, w;
    sl_dtype dt = c->dt;
    switch (c->op) {
    case SL_OP_CONV1D:
    case SL_OP_GDN: {
        int S = p[0], q[16], pre[16], T = 0;
        for (int i = 0; i < S; i++) {
            q[i] = i % 2 == 0 ? p[1] : 1;
            pre[i] = 9;
            T += q[i];
        }
        tb_batch b;
        tb_batch_make(t, &b, S, q, pre, 16, 10);
        tb_batch_hybrid(t, &b);
        tb_pair pool;
        if (c->op == SL_OP_CONV1D) {
            int C = p[2], K = p[3];
            snprintf(desc, sizeof desc, "S=%d q=%d C=%d K=%d", S, p[1], C, K);
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
            snprintf(desc, sizeof desc, "S=%d q=%d Hk=%d Hv=%d Dk=%d Dv=%d", S, p[1], Hk, Hv, Dk, Dv);
            int64_t ne4[4] = {2 * S, Hv, Dk, Dv};
            tb_pair_rand(t, &pool, F32, 4, ne4, -0.2f, 0.2f);
            tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, T, 2 * (int64_t)Hk * Dk + (int64_t)Hv * Dv), ne), -1, 1);
            tb_pair aa, bb, al, dtb;
            tb_pair_rand(t, &aa, dt, 2, (tb_ne2(ne, T, Hv), ne), -2, 2);
            tb_pair_rand(t, &bb, dt, 2, (tb_ne2(ne, T, Hv), ne), -2, 2);
            tb_pair_rand(t, &al, F32, 1, (ne[0] = Hv, ne), -1, 1);
            tb_pair_rand(t, &dtb, F32, 1, (ne[0] = Hv, ne), -1, 1);
            tb_pair_out(t, &y, dt, 2, (tb_ne2(ne, T, (int64_t)Hv * Dv), ne));
            sl_be_gdn(t->cpu, &y.c, &x.c, &aa.c, &bb.c, &al.c, &dtb.c, &pool.c, Hk, Hv, Dk, Dv, &b.m);
            sl_be_gdn(t->gpu, &y.g, &x.g, &aa.g, &bb.g, &al.g, &dtb.g, &pool.g, Hk, Hv, Dk, Dv, &b.m);
            tb_compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
            tb_compare(t, c->op, desc, "ssm", &pool.c, &pool.g, 1e-4);
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

const tb_family tb_family_gdn = {cases, sizeof cases / sizeof cases[0], gdn_run, NULL};
