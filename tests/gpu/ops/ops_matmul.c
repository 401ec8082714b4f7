/* tests/gpu/ops/ops_matmul.c: matmul (cuBLASLt, the decode GEMV, inside a CUDA graph capture). */
#include <string.h>

#include "harness.h"



static const tb_case cases[] = {
    /* matmul: M, N, K, x dtype (0 bf16, 1 f32), w dtype, x column offset into a wider row,
     * kernel (0 autotuned, 1 forced GEMV, 2 forced GEMV inside a CUDA graph capture) */
    {SL_OP_MATMUL, BF, {1, 512, 1024, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, BF, {3, 77, 1000, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, F32, {8, 300, 520, 0, 0, 8}, 1e-2},
    {SL_OP_MATMUL, BF, {2, 64, 100, 0, 0, 0}, 1e-2},      /* K % 8 != 0: cuBLASLt */
    {SL_OP_MATMUL, BF, {37, 768, 512, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, BF, {130, 200, 328, 0, 0, 8}, 1e-2},
    {SL_OP_MATMUL, F32, {7, 1000, 256, 0, 0, 0}, 5e-3},   /* f32 logits */
    {SL_OP_MATMUL, F32, {9, 300, 256, 1, 0, 0}, 5e-3},    /* f32 x, bf16 w */
    {SL_OP_MATMUL, F32, {9, 300, 256, 1, 1, 0}, 1e-5},    /* all fp32 */
    /* qwen3_next's narrow outputs: shared_expert_gate [1,H] -> [T,1] (ld 1), in_proj_ba -> [T,8],
     * router -> f32 [T,E] */
    {SL_OP_MATMUL, BF, {1, 1, 64, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, BF, {70, 1, 64, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, BF, {9, 8, 64, 0, 0, 0}, 1e-2},
    {SL_OP_MATMUL, F32, {70, 8, 64, 0, 0, 0}, 1e-2},
    /* the decode GEMV forced: every M of a decode batch, N and K tails (N % 16, K % 128), K
     * split over a cluster (narrow N), several staged x chunks per block, one block per
     * weight-row tile (wide N: no split), views, f32 x, f32 out */
    {SL_OP_MATMUL, BF, {1, 4096, 4096, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {1, 77, 1000, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, F32, {2, 300, 520, 0, 0, 8, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {3, 40000, 256, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {4, 2048, 4096, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, F32, {8, 1000, 2056, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, F32, {9, 300, 256, 1, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {13, 600, 12288, 0, 0, 8, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {16, 129, 1032, 0, 0, 8, 1}, 1e-2},
    {SL_OP_MATMUL, F32, {16, 34000, 1000, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {16, 4096, 4096, 0, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL, BF, {5, 1000, 2048, 0, 0, 0, 2}, 1e-2},
    {SL_OP_MATMUL, F32, {16, 2048, 4096, 1, 0, 8, 2}, 1e-2},
};

static void matmul_run(tb *t, const tb_case *c)
{
    const int *p = c->p;
    char desc[96];
    int64_t ne[4];
    tb_pair x, y, w;
    sl_dtype dt = c->dt;
    switch (c->op) {
    case SL_OP_MATMUL: {
        int M = p[0], N = p[1], K = p[2], off = p[5];
        sl_dtype xdt = p[3] ? F32 : BF, wdt = p[4] ? F32 : BF;
        static const char *kern[] = {"", " gemv", " gemv graph"};
        snprintf(desc, sizeof desc, "M=%d N=%d K=%d x%s w%s ->%s%s%s", M, N, K, sl_dtype_name(xdt),
                 sl_dtype_name(wdt), sl_dtype_name(dt), off ? " view" : "", kern[p[6]]);
        tb_pair_rand(t, &x, xdt, 2, (tb_ne2(ne, M, K + 2 * off), ne), -1, 1);
        tb_pair_rand(t, &w, wdt, 2, (tb_ne2(ne, N, K), ne), -1, 1);
        tb_pair_out(t, &y, dt, 2, (tb_ne2(ne, M, N), ne));
        sl_tensor xc = sl_tensor_colview(&x.c, off, K), xg = sl_tensor_colview(&x.g, off, K);
        sl_be_matmul(t->cpu, &y.c, &xc, &w.c);
        if (p[6]) sl_cuda_matmul_force(t->gpu, SL_CUDA_MM_GEMV);
        if (p[6] == 2) { /* captured, then replayed: no sync, no allocation outside the graph */
            cudaStream_t s = (cudaStream_t)sl_cuda_stream(t->gpu);
            cudaGraph_t gr;
            cudaGraphExec_t ge;
            CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
            sl_be_matmul(t->gpu, &y.g, &xg, &w.g);
            CHECK(cudaStreamEndCapture(s, &gr) == cudaSuccess);
            CHECK(cudaGraphInstantiate(&ge, gr, 0) == cudaSuccess);
            CHECK(cudaGraphLaunch(ge, s) == cudaSuccess);
            CHECK(cudaStreamSynchronize(s) == cudaSuccess);
            cudaGraphExecDestroy(ge);
            cudaGraphDestroy(gr);
        } else {
            sl_be_matmul(t->gpu, &y.g, &xg, &w.g);
        }
        if (p[6]) {
            const char *ran = sl_cuda_matmul_last(t->gpu);
            CHECK_MSG(ran && !strcmp(ran, "gemv"), "%s ran %s", desc, ran ? ran : "nothing");
            sl_cuda_matmul_force(t->gpu, SL_CUDA_MM_AUTO);
        }
        tb_compare(t, c->op, desc, "out", &y.c, &y.g, c->tol);
        if (!p[6] && M > 65) { /* M - 1 rows: the same plan (a power-of-two bucket of M), resized */
            tb_pair y2;
            tb_pair_out(t, &y2, dt, 2, (tb_ne2(ne, M - 1, N), ne));
            sl_tensor xc2 = sl_tensor_rowview(&xc, 0, M - 1), xg2 = sl_tensor_rowview(&xg, 0, M - 1);
            sl_be_matmul(t->cpu, &y2.c, &xc2, &w.c);
            sl_be_matmul(t->gpu, &y2.g, &xg2, &w.g);
            tb_compare(t, c->op, desc, "out, M - 1 rows", &y2.c, &y2.g, c->tol);
            tb_pair_free(t, &y2);
        }
        tb_pair_free(t, &x);
        tb_pair_free(t, &w);
        tb_pair_free(t, &y);
        break;
    }
    default:
        SL_ASSERT(0 && "not a matmul op");
    }
}

typedef struct pm_mm {
    sl_tensor w[64], x[64], y[64];
} pm_mm;

static void pf_mm(tb *t, void *ctx, int set)
{
    pm_mm *c = ctx;
    sl_be_matmul(t->gpu, &c->y[set], &c->x[set], &c->w[set]);
}

/* sets: how many (w, x, out) sets to rotate through; 0: enough to exceed 256 MB */
static void perf_matmul(tb *t, const char *name, int M, int N, int K, int sets)
{
    pm_mm c;
    int64_t ne[2];
    int64_t set_bytes = 2 * ((int64_t)M * K + (int64_t)M * N);
    int64_t wb = 2 * (int64_t)N * K;
    int ns = sets ? sets : (int)(TB_L2_ROTATE / (wb + set_bytes) + 1);
    if (ns > 64) ns = 64;
    for (int i = 0; i < ns; i++) {
        c.w[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, N, K), ne), 0.05f);
        c.x[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, M, K), ne), 1.0f);
        c.y[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, M, N), ne), 1.0f);
    }
    double bytes = (double)wb + (double)set_bytes, b2b;
    double ms = tb_time_op(t, pf_mm, &c, ns, 30, &b2b); /* autotuned */
    char desc[96], note[200];
    const char *chosen = sl_cuda_matmul_last(t->gpu);
    snprintf(note, sizeof note, " [%s; b2b %.1f us %.0f%%", chosen, b2b * 1e3,
             100 * bytes / (b2b * 1e-3) / t->peak_bw);
    if (M <= 16) { /* decode: both kernels forced too */
        static const sl_cuda_mm force[] = {SL_CUDA_MM_GEMV, SL_CUDA_MM_CUBLASLT};
        for (int f = 0; f < 2; f++) {
            sl_cuda_matmul_force(t->gpu, force[f]);
            double mf = tb_time_op(t, pf_mm, &c, ns, 30, &b2b);
            size_t n = strlen(note);
            snprintf(note + n, sizeof note - n, "; %s %.1f us %.0f%% b2b %.1f us %.0f%%",
                     f ? "cublaslt" : "gemv", mf * 1e3, 100 * bytes / (mf * 1e-3) / t->peak_bw,
                     b2b * 1e3, 100 * bytes / (b2b * 1e-3) / t->peak_bw);
        }
        sl_cuda_matmul_force(t->gpu, SL_CUDA_MM_AUTO);
    }
    strcat(note, "]");
    snprintf(desc, sizeof desc, "%s M=%d N=%d K=%d%s", name, M, N, K, sets ? " 1 set" : "");
    tb_report(t, "matmul", desc, ms, bytes, 2.0 * M * N * K, note);
    for (int i = 0; i < ns; i++) {
        sl_be_release(t->gpu, &c.w[i]);
        sl_be_release(t->gpu, &c.x[i]);
        sl_be_release(t->gpu, &c.y[i]);
    }
}


static void matmul_perf(tb *t, const char *filter)
{
    /* Qwen3-8B: H=4096, Hq=32, Hkv=8, D=128, I=12288, vocab 151936; Qwen3-30B-A3B attention:
     * H=2048, Hq=32, Hkv=4, D=128. Prefill sizes (M = 64, 4096) only where they were timed before. */
    const struct { const char *n; int N, K, prefill; } ws[] = {
        {"8B qkv", (32 + 2 * 8) * 128, 4096, 1},
        {"8B o", 4096, 32 * 128, 1},
        {"8B gate_up", 2 * 12288, 4096, 1},
        {"8B down", 4096, 12288, 1},
        {"8B lm_head", 151936, 4096, 0},
        {"30B qkv", (32 + 2 * 4) * 128, 2048, 0},
        {"30B o", 2048, 32 * 128, 0},
    };
    int Ms[] = {1, 2, 4, 8, 16, 64, 4096};
    if (tb_perf_on(filter, SL_OP_MATMUL)) {
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            for (size_t j = 0; j < sizeof Ms / sizeof Ms[0]; j++)
                if (Ms[j] <= 16 || ws[i].prefill)
                    perf_matmul(t, ws[i].n, Ms[j], ws[i].N, ws[i].K, 0);
        /* where the fixed cost per call goes: launch + events (a tiny GEMV), and
         * the same weights every call (pages already mapped) against a fresh set */
        perf_matmul(t, "tiny", 1, 64, 256, 0);
        perf_matmul(t, "8B down", 1, 4096, 12288, 1);
    }
}

const tb_family tb_family_matmul = {cases, sizeof cases / sizeof cases[0], matmul_run, matmul_perf};
