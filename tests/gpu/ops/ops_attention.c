/* tests/gpu/ops/ops_attention.c: kv_store, attn_prep and paged attention. */
#include <math.h>
#include <string.h>

#include "harness.h"



static const tb_case cases[] = {
    /* kv_store: seqs, q_len, prefix, page size, Hkv*D */
    {SL_OP_KV_STORE, BF, {3, 20, 30, 16, 512}, 0},
    {SL_OP_KV_STORE, BF, {2, 5, 3, 1, 256}, 0},
    /* attn_prep: seqs, q_len (even seqs; odd seqs decode 1), prefix, page size, Hq, Hkv, D,
     * rot_dim, one_plus */
    {SL_OP_ATTN_PREP, BF, {3, 20, 30, 16, 32, 8, 128, 128, 0}, 1e-2},     /* qwen3 */
    {SL_OP_ATTN_PREP, BF, {4, 1, 500, 1, 32, 4, 128, 128, 0}, 1e-2},      /* decode, page 1 */
    {SL_OP_ATTN_PREP, BF, {2, 9, 3, 16, 16, 2, 256, 64, 1}, 1e-2},        /* qwen3_next */
    {SL_OP_ATTN_PREP, BF, {2, 5, 7, 32, 4, 4, 64, 64, 0}, 1e-2},
    /* attention: seqs, q_len (even seqs; odd seqs decode 1), prefix, page size, Hq, Hkv, D
     * [, fa: prefill on the FlashAttention-2 kernel and again on the wgmma one, plain and
     * overlapped (each its own check), q_len of odd seqs instead of 1]; without fa prefill
     * runs on the wmma kernel */
    {SL_OP_ATTENTION, BF, {4, 1, 300, 16, 32, 8, 128}, 2e-2},     /* decode, GQA 4 */
    {SL_OP_ATTENTION, BF, {2, 1, 3000, 32, 16, 2, 128}, 2e-2},    /* long decode: split-KV */
    {SL_OP_ATTENTION, BF, {3, 45, 70, 64, 8, 4, 64}, 2e-2},       /* mixed prefill + decode */
    {SL_OP_ATTENTION, BF, {2, 33, 0, 1, 4, 4, 256}, 2e-2},        /* MHA, page 1, D 256 */
    {SL_OP_ATTENTION, BF, {3, 70, 20, 16, 32, 4, 128}, 2e-2},     /* GQA 8 prefill */
    {SL_OP_ATTENTION, BF, {2, 17, 40, 32, 16, 16, 64}, 2e-2},
    {SL_OP_ATTENTION, BF, {3, 1, 5000, 16, 16, 2, 256}, 2e-2},    /* qwen3_next decode */
    {SL_OP_ATTENTION, BF, {3, 5, 100, 16, 32, 8, 128}, 2e-2},     /* short chunks: 16-row tiles */
    {SL_OP_ATTENTION, BF, {1, 20, 3000, 16, 16, 2, 128}, 2e-2},   /* 64-row tiles + split-KV */
    {SL_OP_ATTENTION, BF, {2, 30, 10, 16, 12, 2, 64}, 2e-2},      /* G = 6 */
    {SL_OP_ATTENTION, BF, {1, 200, 0, 16, 16, 2, 256}, 2e-2},     /* qwen3_next prefill */
    /* the same and more on k_attn_fa2, k_attn_wg and k_attn_wg2 (sl_cuda_attn_prefill);
     * prefixes p + 37·s are never a multiple of the 128-, 64- or 32-key tile, pages are a
     * random permutation */
    {SL_OP_ATTENTION, BF, {1, 300, 0, 16, 8, 8, 128, 1, 0}, 2e-2},      /* MHA, one prompt */
    {SL_OP_ATTENTION, BF, {2, 300, 41, 1, 4, 4, 128, 1, 7}, 2e-2},      /* GQA 1, page 1 */
    {SL_OP_ATTENTION, BF, {3, 77, 13, 1, 32, 8, 128, 1, 131}, 2e-2},    /* GQA 4 (8B), page 1 */
    {SL_OP_ATTENTION, BF, {4, 45, 100, 16, 32, 4, 128, 1, 17}, 2e-2},   /* GQA 8 (30B) */
    {SL_OP_ATTENTION, BF, {2, 64, 64, 16, 8, 1, 128, 1, 1}, 2e-2},      /* GQA 8, + decode */
    {SL_OP_ATTENTION, BF, {3, 70, 20, 16, 32, 4, 128, 1, 0}, 2e-2},     /* as above, wmma */
    {SL_OP_ATTENTION, BF, {1, 20, 3000, 16, 16, 2, 128, 1, 0}, 2e-2},   /* split-KV */
    {SL_OP_ATTENTION, BF, {1, 200, 0, 16, 16, 2, 256, 1, 0}, 2e-2},     /* qwen3_next prefill */
    {SL_OP_ATTENTION, BF, {2, 129, 29, 1, 16, 2, 256, 1, 63}, 2e-2},    /* D 256, page 1 */
    {SL_OP_ATTENTION, BF, {4, 16, 3, 16, 16, 2, 256, 1, 1}, 2e-2},      /* D 256 + decode */
    {SL_OP_ATTENTION, BF, {3, 19, 61, 16, 8, 2, 256, 1, 250}, 2e-2},    /* D 256, GQA 4 */
    {SL_OP_ATTENTION, BF, {2, 33, 0, 1, 4, 4, 256, 1, 1}, 2e-2},        /* D 256 MHA, page 1 */
    {SL_OP_ATTENTION, BF, {1, 40, 2000, 16, 16, 2, 256, 1, 0}, 2e-2},   /* D 256 split-KV */
    {SL_OP_ATTENTION, BF, {3, 45, 70, 64, 8, 4, 64, 1, 0}, 2e-2},       /* D 64, page 64 */
    {SL_OP_ATTENTION, BF, {2, 30, 10, 16, 12, 2, 64, 1, 99}, 2e-2},     /* G = 6 */
    {SL_OP_ATTENTION, BF, {2, 700, 300, 16, 32, 8, 128, 1, 3}, 2e-2},   /* many 128-row tiles */
};

static void attention_run(tb *t, const tb_case *c)
{
    const int *p = c->p;
    char desc[96];
    int64_t ne[4];
    tb_pair x, y, z;
    sl_dtype dt = c->dt;
    switch (c->op) {
    case SL_OP_KV_STORE:
    case SL_OP_ATTENTION: {
        int S = p[0], P = p[3];
        int Hq = p[4], Hkv = p[5], D = p[6], C = c->op == SL_OP_KV_STORE ? p[4] : Hkv * D;
        int q[16], pre[16], T = 0;
        int fa = c->op == SL_OP_ATTENTION && p[7], q_odd = fa && p[8] ? p[8] : 1;
        for (int s = 0; s < S; s++) {
            q[s] = s % 2 == 0 ? p[1] : q_odd;
            pre[s] = p[2] + 37 * s;
            T += q[s];
        }
        if (c->op == SL_OP_KV_STORE)
            snprintf(desc, sizeof desc, "S=%d q=%d pre=%d page=%d C=%d", S, p[1], p[2], P, C);
        else
            snprintf(desc, sizeof desc, "S=%d q=%d,%d pre=%d page=%d Hq=%d Hkv=%d D=%d", S,
                     p[1], q_odd, p[2], P, Hq, Hkv, D);
        tb_batch b;
        tb_batch_make(t, &b, S, q, pre, P, 10);
        int64_t rows = (int64_t)b.n_pages * P;
        tb_pair kc, vc;
        tb_pair_rand(t, &kc, dt, 2, (tb_ne2(ne, rows, C), ne), -2, 2); /* cached prefix: random */
        tb_pair_rand(t, &vc, dt, 2, (tb_ne2(ne, rows, C), ne), -2, 2);
        tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, T, C), ne), -2, 2);
        tb_pair_rand(t, &z, dt, 2, (tb_ne2(ne, T, C), ne), -2, 2);
        sl_be_kv_store(t->cpu, &kc.c, &vc.c, &x.c, &z.c, &b.m);
        sl_be_kv_store(t->gpu, &kc.g, &vc.g, &x.g, &z.g, &b.m);
        if (c->op == SL_OP_KV_STORE) {
            tb_compare(t, c->op, desc, "kcache", &kc.c, &kc.g, c->tol);
            tb_compare(t, c->op, desc, "vcache", &vc.c, &vc.g, c->tol);
        } else {
            tb_pair qq;
            tb_pair_rand(t, &qq, dt, 2, (tb_ne2(ne, T, (int64_t)Hq * D), ne), -2, 2);
            tb_pair_out(t, &y, dt, 2, (tb_ne2(ne, T, (int64_t)Hq * D), ne));
            float scale = 1.0f / sqrtf((float)D);
            sl_be_attention(t->cpu, &y.c, &qq.c, &kc.c, &vc.c, Hq, Hkv, D, scale, &b.m, NULL);
            static const int kern[][5] = {{SL_CUDA_ATTN_WMMA, -1, -1, -1, -1},
                                          {SL_CUDA_ATTN_FA2, SL_CUDA_ATTN_WG, SL_CUDA_ATTN_WGO, SL_CUDA_ATTN_WG2,
                                           SL_CUDA_ATTN_WS}};
            static const char *kname[] = {"out", "out fa2", "out wg", "out wgo", "out wg2", "out ws"};
            for (int k = 0; k < 5 && kern[fa][k] >= 0; k++) {
                int was = sl_cuda_attn_prefill(t->gpu, kern[fa][k]);
                sl_be_attention(t->gpu, &y.g, &qq.g, &kc.g, &vc.g, Hq, Hkv, D, scale, &b.m, NULL);
                sl_cuda_attn_prefill(t->gpu, was);
                tb_compare(t, c->op, desc, kname[kern[fa][k]], &y.c, &y.g, c->tol);
                tb_poison(t, &y.g); /* the next kernel must write every element again */
            }
            /* decode batches: the output's FP8 codes (SL_CUDA_FP8_ACT, on unless 0; past 8
             * rows with 2), made by the merge of the key splits (the long contexts here have them) */
            int level = tb_fp8_act_level();
            int64_t qrows = sl_be_fp8_act_rows(t->gpu);
            if (level && (T <= 8 || (level == 2 && T <= qrows))) {
                sl_fp8_act oq;
                sl_err e = {0};
                int64_t Kq = (int64_t)Hq * D;
                if (sl_be_alloc(t->gpu, &oq.codes, SL_DTYPE_F8E4M3, 1, (ne[0] = qrows * Kq, ne), &e) ||
                    sl_be_alloc(t->gpu, &oq.scales, F32, 1, (ne[0] = qrows * Kq / 128 + 1, ne), &e))
                    tb_die("attention codes", &e);
                sl_be_attention(t->gpu, &y.g, &qq.g, &kc.g, &vc.g, Hq, Hkv, D, scale, &b.m, &oq);
                int want = D % 128 == 0 && p[2] >= 3000;
                CHECK_MSG(!want || oq.rows == T, "%s: codes made for %lld rows, want %d", desc, (long long)oq.rows, T);
                if (oq.rows == T) tb_check_codes(t, desc, &y.g, &oq);
                sl_be_release(t->gpu, &oq.codes);
                sl_be_release(t->gpu, &oq.scales);
            }
            tb_pair_free(t, &qq);
            tb_pair_free(t, &y);
        }
        tb_pair_free(t, &kc);
        tb_pair_free(t, &vc);
        tb_pair_free(t, &x);
        tb_pair_free(t, &z);
        tb_batch_free(&b);
        break;
    }
    case SL_OP_ATTN_PREP: {
        int S = p[0], P = p[3], Hq = p[4], Hkv = p[5], D = p[6], rot = p[7], op1 = p[8];
        int q[16], pre[16], T = 0;
        for (int s = 0; s < S; s++) {
            q[s] = s % 2 == 0 ? p[1] : 1;
            pre[s] = p[2] + 37 * s;
            T += q[s];
        }
        snprintf(desc, sizeof desc, "S=%d q=%d page=%d Hq=%d Hkv=%d D=%d rot=%d%s", S, p[1], P,
                 Hq, Hkv, D, rot, op1 ? " 1+w" : "");
        tb_batch b;
        tb_batch_make(t, &b, S, q, pre, P, 10);
        int64_t rows = (int64_t)b.n_pages * P, C = (int64_t)Hkv * D, W = (int64_t)(Hq + 2 * Hkv) * D;
        tb_pair kc, vc, qn, kn;
        tb_pair_rand(t, &kc, dt, 2, (tb_ne2(ne, rows, C), ne), -2, 2);
        tb_pair_rand(t, &vc, dt, 2, (tb_ne2(ne, rows, C), ne), -2, 2);
        tb_pair_rand(t, &x, dt, 2, (tb_ne2(ne, T, W), ne), -2, 2); /* the fused qkv projection */
        tb_pair_rand(t, &qn, SL_DTYPE_F32, 1, (ne[0] = D, ne), -1, 1);
        tb_pair_rand(t, &kn, SL_DTYPE_F32, 1, (ne[0] = D, ne), -1, 1);
        for (int side = 0; side < 2; side++) {
            sl_backend *be = side ? t->gpu : t->cpu;
            sl_tensor *xx = side ? &x.g : &x.c;
            sl_tensor qv = sl_tensor_colview(xx, 0, (int64_t)Hq * D);
            sl_tensor kv = sl_tensor_colview(xx, (int64_t)Hq * D, C);
            sl_tensor vv = sl_tensor_colview(xx, (int64_t)Hq * D + C, C);
            sl_be_attn_prep(be, &qv, &kv, &vv, side ? &qn.g : &qn.c, side ? &kn.g : &kn.c, 1e-6f,
                            op1, D, rot, 1e6f, side ? &kc.g : &kc.c, side ? &vc.g : &vc.c, &b.m);
        }
        tb_compare(t, c->op, desc, "qkv", &x.c, &x.g, c->tol);
        tb_compare(t, c->op, desc, "kcache", &kc.c, &kc.g, c->tol);
        tb_compare(t, c->op, desc, "vcache", &vc.c, &vc.g, c->tol);
        tb_pair_free(t, &kc);
        tb_pair_free(t, &vc);
        tb_pair_free(t, &qn);
        tb_pair_free(t, &kn);
        tb_pair_free(t, &x);
        tb_batch_free(&b);
        break;
    }
    default:
        SL_ASSERT(0 && "not an attention op");
    }
}

typedef struct pm_attn {
    sl_tensor kc, vc, q[16], y[16];
    tb_batch b;
    int Hq, Hkv, D;
} pm_attn;

static void pf_attn(tb *t, void *ctx, int set)
{
    pm_attn *c = ctx;
    sl_be_attention(t->gpu, &c->y[set], &c->q[set], &c->kc, &c->vc, c->Hq, c->Hkv, c->D,
                    0.088f, &c->b.m, NULL);
}

/* kern: the prefill kernel for this timing (an sl_cuda_attn_kernel; the name says which) */
static void perf_attention(tb *t, const char *name, int S, int qlen, int ctx, int P, int Hq,
                           int Hkv, int D, int kern)
{
    int was = sl_cuda_attn_prefill(t->gpu, kern);
    pm_attn c;
    int q[256], pre[256], T = 0;
    double kv_tokens = 0, flops = 0;
    for (int s = 0; s < S; s++) {
        q[s] = qlen;
        pre[s] = ctx - qlen;
        T += qlen;
        kv_tokens += ctx;
        for (int i = 0; i < qlen; i++) flops += 4.0 * (pre[s] + i + 1) * D * Hq;
    }
    tb_batch_make(t, &c.b, S, q, pre, P, 10);
    int64_t ne[2];
    int64_t rows = (int64_t)c.b.n_pages * P;
    c.kc = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, rows, (int64_t)Hkv * D), ne), 1.0f);
    c.vc = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, rows, (int64_t)Hkv * D), ne), 1.0f);
    int ns = 4;
    for (int i = 0; i < ns; i++) {
        c.q[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, (int64_t)Hq * D), ne), 1.0f);
        c.y[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, (int64_t)Hq * D), ne), 1.0f);
    }
    c.Hq = Hq;
    c.Hkv = Hkv;
    c.D = D;
    double ms = tb_time_op(t, pf_attn, &c, ns, 20, NULL);
    double bytes = kv_tokens * Hkv * D * 2 * 2 + 2.0 * 2 * T * Hq * D;
    char desc[96];
    snprintf(desc, sizeof desc, "%s S=%d q=%d ctx=%d page=%d", name, S, qlen, ctx, P);
    tb_report(t, "attention", desc, ms, bytes, flops, "");
    sl_be_release(t->gpu, &c.kc);
    sl_be_release(t->gpu, &c.vc);
    for (int i = 0; i < ns; i++) {
        sl_be_release(t->gpu, &c.q[i]);
        sl_be_release(t->gpu, &c.y[i]);
    }
    tb_batch_free(&c.b);
    sl_cuda_attn_prefill(t->gpu, was);
}


static void attention_perf(tb *t, const char *filter)
{
    if (tb_perf_on(filter, SL_OP_ATTENTION)) {
        const int A = SL_CUDA_ATTN_AUTO; /* the default: what the models run */
        perf_attention(t, "8B decode", 32, 1, 4096, 16, 32, 8, 128, A);
        perf_attention(t, "8B decode", 8, 1, 16384, 16, 32, 8, 128, A);
        perf_attention(t, "8B decode", 128, 1, 1024, 64, 32, 8, 128, A);
        perf_attention(t, "30B decode", 32, 1, 4096, 16, 32, 4, 128, A);
        perf_attention(t, "8B prefill", 1, 4096, 4096, 16, 32, 8, 128, A);
        perf_attention(t, "8B prefill", 4, 1024, 1024, 16, 32, 8, 128, A);
        perf_attention(t, "next decode", 32, 1, 4096, 16, 16, 2, 256, A);
        perf_attention(t, "next decode", 64, 1, 8192, 16, 16, 2, 256, A); /* 8000/1000 at c=64: no key splits */
        perf_attention(t, "next prefill", 1, 4096, 4096, 16, 16, 2, 256, A);
        /* the wmma, FlashAttention-2 and wgmma kernels (plain, overlapped, 128-row,
         * warp-specialized), same shapes */
        static const char *nm[] = {" wmma", " fa2", " wg", " wgo", " wg2", " ws"};
        for (int k = SL_CUDA_ATTN_WMMA; k <= SL_CUDA_ATTN_WS; k++) {
            char n1[32], n2[32];
            snprintf(n1, sizeof n1, "8B prefill%s", nm[k]);
            snprintf(n2, sizeof n2, "next prefill%s", nm[k]);
            perf_attention(t, n1, 1, 4096, 4096, 16, 32, 8, 128, k);
            perf_attention(t, n1, 4, 1024, 1024, 16, 32, 8, 128, k);
            perf_attention(t, n2, 1, 4096, 4096, 16, 16, 2, 256, k);
        }
    }
}

const tb_family tb_family_attention = {cases, sizeof cases / sizeof cases[0], attention_run, attention_perf};
