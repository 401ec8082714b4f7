/* tests/gpu/ops/ops_fp8.c: matmul_fp8 (activation quantization, the tensor-core FP8 GEMV,
 * cuBLASLt's block-scaled FP8 GEMM (128x128 weight blocks as stored, or per-row scales),
 * the own tensor-core GEMM, the CUDA-core GEMM; each case under AUTO and both kernels forced)
 * and moe_experts_fp8 (per-pair GEMVs, and the grouped GEMMs forced with
 * sl_cuda_moe_fp8_path) against the CPU oracle kernels/cpu/fp8.c. */
#include <ctype.h>
#include <string.h>

#include "harness.h"

static const tb_case cases[] = {
    /* matmul_fp8: M, N, K, x dtype (0 bf16, 1 f32), scales (0 per row, 1 per 128-row block) */
    {SL_OP_MATMUL_FP8, BF, {1, 128, 128, 0, 0}, 1e-2},
    {SL_OP_MATMUL_FP8, BF, {1, 320, 192, 0, 1}, 1e-2},   /* partial blocks both ways */
    {SL_OP_MATMUL_FP8, BF, {3, 320, 192, 0, 0}, 1e-2},
    {SL_OP_MATMUL_FP8, BF, {2, 384, 2048, 0, 1}, 1e-2},   /* forced cuBLASLt: too few rows */
    {SL_OP_MATMUL_FP8, BF, {6, 384, 2048, 0, 1}, 1e-2},   /* forced: 4 rows cuBLASLt, 2 GEMV */
    {SL_OP_MATMUL_FP8, BF, {8, 384, 2048, 0, 1}, 1e-2},   /* AUTO: the last GEMV size */
    {SL_OP_MATMUL_FP8, BF, {8, 384, 256, 0, 1}, 1e-2},    /* K < 2048: never cuBLASLt */
    /* GEMVs splitting K over a cluster of 2 blocks (narrow N, K of 96+ groups) */
    {SL_OP_MATMUL_FP8, BF, {1, 4096, 12288, 0, 1}, 1e-2}, /* Qwen3-8B down */
    {SL_OP_MATMUL_FP8, F32, {5, 136, 12288, 1, 0}, 1e-2}, /* partial row tile */
    {SL_OP_MATMUL_FP8, BF, {3, 200, 12200, 0, 1}, 1e-2},  /* partial group: no 16-byte loads */
    {SL_OP_MATMUL_FP8, BF, {9, 640, 2048, 0, 1}, 1e-2},   /* AUTO: the first cuBLASLt size */
    {SL_OP_MATMUL_FP8, BF, {77, 1000, 2048, 0, 1}, 1e-2}, /* cuBLASLt, a partial 128-row block */
    {SL_OP_MATMUL_FP8, F32, {7, 257, 385, 1, 1}, 1e-2},  /* odd everything; K % 16 != 0: scalar path */
    {SL_OP_MATMUL_FP8, BF, {16, 4096, 4096, 0, 1}, 1e-2},
    {SL_OP_MATMUL_FP8, BF, {17, 320, 192, 0, 0}, 1e-2},  /* GEMV, 4 token tiles */
    {SL_OP_MATMUL_FP8, BF, {37, 768, 512, 0, 1}, 1e-2},  /* GEMV, 8 token tiles */
    {SL_OP_MATMUL_FP8, F32, {64, 1000, 4096, 1, 0}, 1e-2}, /* largest GEMV */
    {SL_OP_MATMUL_FP8, F32, {33, 257, 385, 1, 1}, 1e-2}, /* GEMV, scalar weight loads */
    {SL_OP_MATMUL_FP8, BF, {65, 320, 192, 0, 0}, 1e-2},  /* first tensor-core GEMM size */
    {SL_OP_MATMUL_FP8, F32, {130, 200, 328, 1, 0}, 1e-2}, /* K % 16 != 0: CUDA-core GEMM */
    {SL_OP_MATMUL_FP8, F32, {130, 200, 336, 1, 1}, 1e-2}, /* tensor-core GEMM, partial group */
    {SL_OP_MATMUL_FP8, BF, {300, 320, 192, 0, 1}, 1e-2},
    {SL_OP_MATMUL_FP8, BF, {300, 1536, 2048, 0, 1}, 1e-2},
    {SL_OP_MATMUL_FP8, BF, {513, 2304, 1024, 0, 0}, 1e-2},
    /* x's codes made by the op writing x (sl_fp8_act): M, N, K, -, -, producer (1 add_rmsnorm,
     * 2 silu_mul, 3 sigmoid_mul, 4 rmsnorm_gated), norm group D (0: the row) */
    {SL_OP_MATMUL_FP8, BF, {1, 384, 2048, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL_FP8, BF, {8, 384, 4096, 0, 0, 1}, 1e-2},
    {SL_OP_MATMUL_FP8, BF, {9, 384, 2048, 0, 0, 1}, 1e-2},     /* past 8 rows: none made, or (level 2)
                                                                 * cuBLASLt's 8 and the GEMV's 1 */
    {SL_OP_MATMUL_FP8, BF, {64, 4096, 12288, 0, 0, 2}, 1e-2},  /* Qwen3-8B down at batch 64 */
    {SL_OP_MATMUL_FP8, BF, {30, 2048, 4096, 0, 0, 4, 128}, 1e-2}, /* out_proj, 28 + 2 rows */
    {SL_OP_MATMUL_FP8, BF, {16, 320, 4096, 0, 0, 3}, 1e-2},    /* the attention gate at 16 */
    {SL_OP_MATMUL_FP8, BF, {1, 4096, 12288, 0, 0, 2}, 1e-2},   /* Qwen3-8B down, K over a cluster */
    {SL_OP_MATMUL_FP8, BF, {3, 320, 4352, 0, 0, 2}, 1e-2},     /* a block's last columns past K */
    {SL_OP_MATMUL_FP8, BF, {4, 256, 200, 0, 0, 2}, 1e-2},      /* K % 128 != 0: none made */
    {SL_OP_MATMUL_FP8, BF, {5, 320, 4096, 0, 0, 3}, 1e-2},     /* Coder-Next's attention gate */
    {SL_OP_MATMUL_FP8, BF, {1, 2048, 4096, 0, 0, 4, 128}, 1e-2}, /* Coder-Next's out_proj */
    {SL_OP_MATMUL_FP8, BF, {6, 256, 1024, 0, 0, 4, 128}, 1e-2},
    {SL_OP_MATMUL_FP8, BF, {2, 256, 1024, 0, 0, 4, 64}, 1e-2},  /* groups straddle a norm: none */
    /* moe_experts_fp8: T, H, I, E, k, path (0: per-pair GEMVs, 1: grouped GEMMs forced (on
     * wgmma, then again on the mma.sync tiles),
     * 2: per-expert GEMVs forced, 3: moe.cu's few-token kernels forced, 4: one token in one
     * kernel forced) */
    {SL_OP_MOE_EXPERTS_FP8, BF, {1, 256, 128, 8, 2, 0}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {3, 320, 192, 16, 4, 0}, 1e-2}, /* partial groups both ways */
    {SL_OP_MOE_EXPERTS_FP8, F32, {40, 512, 384, 32, 8, 0}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {7, 200, 136, 6, 3, 0}, 1e-2},  /* H % 16 != 0: scalar loads */
    /* grouped: 64-row tiles below 96 pairs an expert, 128-row ones above */
    {SL_OP_MOE_EXPERTS_FP8, BF, {1, 256, 128, 8, 2, 1}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {3, 320, 192, 16, 4, 1}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {7, 200, 136, 6, 3, 1}, 1e-2},    /* H % 16 != 0: GEMVs after all */
    {SL_OP_MOE_EXPERTS_FP8, F32, {40, 512, 384, 32, 8, 1}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {63, 192, 320, 128, 8, 1}, 1e-2},  /* partial 128-blocks */
    {SL_OP_MOE_EXPERTS_FP8, BF, {200, 192, 320, 512, 8, 1}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {1000, 192, 320, 128, 8, 1}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {1000, 320, 192, 8, 4, 1}, 1e-2},  /* 128-row tiles, partial last */
    {SL_OP_MOE_EXPERTS_FP8, BF, {32, 2048, 768, 128, 8, 1}, 1e-2}, /* Qwen3-30B-A3B */
    {SL_OP_MOE_EXPERTS_FP8, BF, {32, 2048, 512, 512, 10, 1}, 1e-2}, /* Qwen3-Coder-Next */
    {SL_OP_MOE_EXPERTS_FP8, BF, {130, 2048, 768, 2, 2, 1}, 1e-2},  /* 128-row tiles, 30B dims */
    /* per-expert GEMVs: 16-token tiles, experts with 1..40 pairs, odd H (scalar loads) */
    {SL_OP_MOE_EXPERTS_FP8, BF, {1, 256, 128, 8, 2, 2}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {7, 200, 136, 6, 3, 2}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, F32, {40, 512, 384, 32, 8, 2}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {80, 320, 192, 8, 4, 2}, 1e-2},     /* 40 pairs an expert: 3 tiles */
    {SL_OP_MOE_EXPERTS_FP8, BF, {16, 2048, 768, 128, 8, 2}, 1e-2},  /* Qwen3-30B-A3B */
    {SL_OP_MOE_EXPERTS_FP8, BF, {64, 2048, 512, 513, 11, 2}, 1e-2}, /* Coder-Next + fused shared */
    /* the few-token kernels (moe.cu): pass-weighted items, x and silu·up quantized before them */
    {SL_OP_MOE_EXPERTS_FP8, BF, {1, 256, 128, 8, 2, 3}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {3, 320, 192, 16, 4, 3}, 1e-2},     /* partial groups both ways */
    {SL_OP_MOE_EXPERTS_FP8, BF, {7, 200, 136, 6, 3, 3}, 1e-2},      /* H % 16 != 0: scalar loads */
    {SL_OP_MOE_EXPERTS_FP8, F32, {40, 512, 384, 32, 8, 3}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {80, 320, 192, 8, 4, 3}, 1e-2},     /* 40 pairs an expert: 5 passes */
    {SL_OP_MOE_EXPERTS_FP8, BF, {1, 2048, 768, 128, 8, 3}, 1e-2},   /* Qwen3-30B-A3B decode */
    {SL_OP_MOE_EXPERTS_FP8, BF, {16, 2048, 768, 128, 8, 3}, 1e-2},
    {SL_OP_MOE_EXPERTS_FP8, BF, {64, 2048, 512, 513, 11, 3}, 1e-2}, /* Coder-Next + shared: 704 pairs */
    /* one token in one kernel (k_fp8_moe_one), bit for bit the per-pair GEMVs' result */
    {SL_OP_MOE_EXPERTS_FP8, BF, {1, 2048, 768, 128, 8, 4}, 1e-2},   /* Qwen3-30B-A3B */
    {SL_OP_MOE_EXPERTS_FP8, BF, {1, 2048, 512, 513, 11, 4}, 1e-2},  /* Coder-Next + fused shared */
    {SL_OP_MOE_EXPERTS_FP8, BF, {1, 320, 192, 16, 4, 4}, 1e-2},     /* partial groups both ways */
    {SL_OP_MOE_EXPERTS_FP8, F32, {1, 336, 128, 6, 2, 4}, 1e-2},     /* a partial last row block */
    {SL_OP_MOE_EXPERTS_FP8, BF, {1, 200, 136, 6, 3, 4}, 1e-2},      /* H % 16 != 0: per pair */
    {SL_OP_MOE_EXPERTS_FP8, BF, {3, 256, 128, 8, 2, 4}, 1e-2},      /* 3 tokens: per pair */
};

/* fp8 weight [N, K] + scales (per row [N, G] or per block [ceil(N/128), G]) on both backends */
static void fp8_weight(tb *t, int N, int K, int per_block, sl_tensor wc_ws[2], sl_tensor wg_ws[2])
{
    int G = (K + 127) / 128, NB = (N + 127) / 128, SR = per_block ? NB : N;
    float *w = malloc(sizeof(float) * (size_t)N * K), *sb = malloc(sizeof(float) * (size_t)NB * G);
    float *s = malloc(sizeof(float) * (size_t)SR * G);
    uint8_t *q = malloc((size_t)N * K);
    for (int64_t i = 0; i < (int64_t)N * K; i++)
        w[i] = (2.0f * sl_rng_uniform(t->seed ^ 0xf8, (uint64_t)i) - 1.0f) * (1.0f + (float)(i / K % 5));
    sl_fp8_quantize_blocks(w, N, K, q, sb);
    for (int r = 0; r < SR; r++)
        for (int g = 0; g < G; g++) s[r * G + g] = sb[(per_block ? r : r / 128) * G + g];
    sl_err e = {0};
    sl_backend *be[2] = {t->cpu, t->gpu};
    sl_tensor *out[2] = {wc_ws, wg_ws};
    for (int b = 0; b < 2; b++) {
        if (sl_be_alloc(be[b], &out[b][0], SL_DTYPE_F8E4M3, 2, (int64_t[]){N, K}, &e) ||
            sl_be_upload(be[b], &out[b][0], q, SL_DTYPE_F8E4M3, &e) ||
            sl_be_alloc(be[b], &out[b][1], F32, 2, (int64_t[]){SR, G}, &e) ||
            sl_be_upload(be[b], &out[b][1], s, F32, &e))
            tb_die("fp8 weight", &e);
    }
    free(w);
    free(sb);
    free(s);
    free(q);
}

/* [E, R, C] fp8 experts and per-row scales [E, R, ceil(C/128)] on both backends */
static void fp8_experts(tb *t, int E, int R, int C, uint64_t salt, sl_tensor wc_ws[2], sl_tensor wg_ws[2])
{
    int G = (C + 127) / 128, RB = (R + 127) / 128;
    float *w = malloc(sizeof(float) * (size_t)R * C), *sb = malloc(sizeof(float) * (size_t)RB * G);
    float *s = malloc(sizeof(float) * (size_t)E * R * G);
    uint8_t *q = malloc((size_t)E * R * C);
    for (int e = 0; e < E; e++) {
        for (int64_t i = 0; i < (int64_t)R * C; i++)
            w[i] = (2.0f * sl_rng_uniform(t->seed ^ salt, (uint64_t)e * R * C + (uint64_t)i) - 1.0f) *
                   (1.0f + (float)((i / C + e) % 5));
        sl_fp8_quantize_blocks(w, R, C, q + (size_t)e * R * C, sb);
        for (int r = 0; r < R; r++)
            for (int g = 0; g < G; g++) s[((size_t)e * R + r) * G + g] = sb[(r / 128) * G + g];
    }
    sl_err er = {0};
    sl_backend *be[2] = {t->cpu, t->gpu};
    sl_tensor *out[2] = {wc_ws, wg_ws};
    for (int b = 0; b < 2; b++) {
        if (sl_be_alloc(be[b], &out[b][0], SL_DTYPE_F8E4M3, 3, (int64_t[]){E, R, C}, &er) ||
            sl_be_upload(be[b], &out[b][0], q, SL_DTYPE_F8E4M3, &er) ||
            sl_be_alloc(be[b], &out[b][1], F32, 3, (int64_t[]){E, R, G}, &er) ||
            sl_be_upload(be[b], &out[b][1], s, F32, &er))
            tb_die("fp8 experts", &er);
    }
    free(w);
    free(sb);
    free(s);
    free(q);
}

static void moe_fp8_run(tb *t, const tb_case *c)
{
    const int *p = c->p;
    int T = p[0], H = p[1], I = p[2], E = p[3], k = p[4], grouped = p[5];
    char desc[96];
    int64_t ne[2];
    tb_pair x, y, ids, wt;
    sl_tensor guc[2], gug[2], dnc[2], dng[2];
    sl_err er = {0};
    static const char *const path_name[] = {"gemv", "grouped", "expert_gemv", "gv", "one"};
    snprintf(desc, sizeof desc, "T=%d H=%d I=%d E=%d k=%d x%s %s", T, H, I, E, k, sl_dtype_name(c->dt),
             path_name[grouped]);
    tb_pair_rand(t, &x, c->dt, 2, (tb_ne2(ne, T, H), ne), -2, 2);
    tb_pair_out(t, &y, c->dt, 2, (tb_ne2(ne, T, H), ne));
    int32_t *iv = malloc(sizeof(int32_t) * (size_t)T * k);
    float *wv = malloc(sizeof(float) * (size_t)T * k);
    for (int i = 0; i < T; i++)
        for (int j = 0; j < k; j++) {
            int m, dup;
            uint64_t n = 0;
            do { /* distinct experts per token */
                m = (int)(sl_rng_uniform(t->seed ^ 0xe8, (uint64_t)(i * 64 + j) * 1000 + n++) * (float)E);
                if (m >= E) m = E - 1;
                dup = 0;
                for (int jj = 0; jj < j; jj++) dup |= iv[i * k + jj] == m;
            } while (dup);
            iv[i * k + j] = m;
            wv[i * k + j] = 0.05f + sl_rng_uniform(t->seed ^ 0xe9, (uint64_t)(i * 64 + j)) * 0.3f;
        }
    tb_pair_alloc(t, &ids, SL_DTYPE_I32, 2, (tb_ne2(ne, T, k), ne));
    if (sl_be_upload(t->cpu, &ids.c, iv, SL_DTYPE_I32, &er) || sl_be_upload(t->gpu, &ids.g, iv, SL_DTYPE_I32, &er))
        tb_die("moe fp8 ids", &er);
    tb_pair_alloc(t, &wt, F32, 2, (tb_ne2(ne, T, k), ne));
    tb_pair_set(t, &wt, wv);
    fp8_experts(t, E, 2 * I, H, 0x9a, guc, gug);
    fp8_experts(t, E, H, I, 0xd0, dnc, dng);
    sl_be_moe_experts_fp8(t->cpu, &y.c, &x.c, &ids.c, &wt.c, &guc[0], &guc[1], &dnc[0], &dnc[1]);
    /* grouped: the wgmma kernel, the mma.sync tiles, the warp-specialized wgmma kernel and
     * that persistent, each its own check */
    static const sl_cuda_moe_fp8 paths[][4] = {
        {SL_CUDA_MOE_FP8_GEMV, -1, -1, -1},
        {SL_CUDA_MOE_FP8_GROUPED, SL_CUDA_MOE_FP8_GROUPED_TC, SL_CUDA_MOE_FP8_GROUPED_WS, SL_CUDA_MOE_FP8_GROUPED_WSP},
        {SL_CUDA_MOE_FP8_EXPERT_GEMV, -1, -1, -1},
        {SL_CUDA_MOE_FP8_GV, -1, -1, -1},
        {SL_CUDA_MOE_FP8_ONE, -1, -1, -1}};
    static const char *const want_grouped[] = {"fp8_moe_grouped_wg", "fp8_moe_grouped_tc", "fp8_moe_grouped_ws",
                                               "fp8_moe_grouped_wsp"};
    static const char *const what[] = {"out", "out tc", "out ws", "out wsp"};
    for (int v = 0; v < 4 && (int)paths[grouped][v] >= 0; v++) {
        sl_cuda_moe_fp8_path(t->gpu, paths[grouped][v]);
        tb_poison(t, &y.g);
        sl_be_moe_experts_fp8(t->gpu, &y.g, &x.g, &ids.g, &wt.g, &gug[0], &gug[1], &dng[0], &dng[1]);
        /* the grouped GEMMs run where the weights allow them (H, I multiples of 16), the
         * per-expert GEMVs everywhere */
        const char *ran = sl_cuda_matmul_last(t->gpu);
        const char *want = grouped == 4 ? (T == 1 && H % 16 == 0 && I % 16 == 0 ? "fp8_moe_one" : "fp8_moe_gemv")
                           : grouped == 3                                  ? "fp8_moe_gv"
                           : grouped == 2                                  ? "fp8_moe_expert_gemv"
                           : grouped == 1 && H % 16 == 0 && I % 16 == 0 ? want_grouped[v]
                                                                        : "fp8_moe_gemv";
        /* the warp-specialized kernel takes 128-row tiles only: the plan's smaller ones run
         * the wgmma kernel */
        if (v >= 2 && ran && !strncmp(ran, "fp8_moe_grouped_wg", 18) && strcmp(ran + 18, "128"))
            want = "fp8_moe_grouped_wg";
        /* the name, or the name and the tile rows */
        size_t wl = strlen(want);
        CHECK_MSG(ran && !strncmp(ran, want, wl) && (!ran[wl] || isdigit((unsigned char)ran[wl])), "%s: ran %s, want %s",
                  desc, ran ? ran : "nothing", want);
        tb_compare(t, c->op, desc, what[v], &y.c, &y.g, c->tol);
        if (grouped) { /* the plan's row order varies from run to run (and the one-token kernel's
                        * blocks finish in any order); the result must not. The one-token
                        * kernel: the per-pair GEMVs' result, bit for bit. */
            sl_tensor y2;
            if (sl_be_alloc(t->gpu, &y2, c->dt, 2, (tb_ne2(ne, T, H), ne), &er)) tb_die("moe fp8 y2", &er);
            sl_be_moe_experts_fp8(t->gpu, &y2, &x.g, &ids.g, &wt.g, &gug[0], &gug[1], &dng[0], &dng[1]);
            tb_compare_exact(t, c->op, desc, "rerun", &y.g, &y2);
            if (grouped == 4) {
                sl_cuda_moe_fp8_path(t->gpu, SL_CUDA_MOE_FP8_GEMV);
                sl_be_moe_experts_fp8(t->gpu, &y2, &x.g, &ids.g, &wt.g, &gug[0], &gug[1], &dng[0], &dng[1]);
                tb_compare_exact(t, c->op, desc, "= per pair", &y.g, &y2);
            }
            sl_be_release(t->gpu, &y2);
        }
    }
    sl_cuda_moe_fp8_path(t->gpu, SL_CUDA_MOE_FP8_GEMV);
    for (int i = 0; i < 2; i++) {
        sl_be_release(t->cpu, &guc[i]);
        sl_be_release(t->gpu, &gug[i]);
        sl_be_release(t->cpu, &dnc[i]);
        sl_be_release(t->gpu, &dng[i]);
    }
    free(iv);
    free(wv);
    tb_pair_free(t, &x);
    tb_pair_free(t, &y);
    tb_pair_free(t, &ids);
    tb_pair_free(t, &wt);
}

/* The codes case (p[5] the producer): the producer's output against the CPU, its codes
 * bit for bit against the k_fp8_quant arithmetic applied to that output on the host (where
 * CUDA makes them: up to 8 rows of whole 128-groups inside the norm groups), and the GEMV
 * reading them against the same GEMV quantizing x itself, bit for bit. */
static void fp8_codes_run(tb *t, const tb_case *c)
{
    const int *p = c->p;
    int M = p[0], N = p[1], K = p[2], prod = p[5], D = p[6] ? p[6] : K, G = (K + 127) / 128;
    static const char *names[] = {"", "add_rmsnorm", "silu_mul", "sigmoid_mul", "rmsnorm_gated"};
    char desc[128];
    snprintf(desc, sizeof desc, "M=%d N=%d K=%d codes from %s D=%d", M, N, K, names[prod], D);
    int64_t ne[2];
    tb_pair x, z, w, y;
    tb_pair_rand(t, &x, BF, 2, (tb_ne2(ne, M, prod == 2 ? 2 * K : K), ne), -2, 2);
    tb_pair_rand(t, &z, BF, 2, (tb_ne2(ne, M, K), ne), -3, 3);
    tb_pair_rand(t, &w, BF, 1, (ne[0] = D, ne), -1, 1);
    tb_pair_out(t, &y, BF, 2, (tb_ne2(ne, M, K), ne));
    sl_fp8_act q;
    sl_err e = {0};
    int64_t rows = sl_be_fp8_act_rows(t->gpu);
    if (sl_be_alloc(t->gpu, &q.codes, SL_DTYPE_F8E4M3, 1, (ne[0] = rows * G * 128, ne), &e) ||
        sl_be_alloc(t->gpu, &q.scales, F32, 1, (ne[0] = rows * G, ne), &e))
        tb_die("codes", &e);
    for (int b = 0; b < 2; b++) { /* the CPU (no codes), then CUDA with them */
        sl_backend *be = b ? t->gpu : t->cpu;
        sl_fp8_act *qq = b ? &q : NULL;
        sl_tensor *X = b ? &x.g : &x.c, *Z = b ? &z.g : &z.c, *W = b ? &w.g : &w.c, *Y = b ? &y.g : &y.c;
        switch (prod) {
        case 1: sl_be_add_rmsnorm(be, Y, Z, X, W, 1e-6f, 1, qq); break;
        case 2: sl_be_silu_mul(be, Y, X, qq); break;
        case 3:
            sl_be_add(be, Y, X, Z); /* y = x + z, then gated in place */
            sl_be_sigmoid_mul(be, Y, Z, qq);
            break;
        default: sl_be_rmsnorm_gated(be, Y, X, Z, W, 1e-6f, qq); break;
        }
    }
    tb_compare(t, c->op, desc, "producer out", &y.c, &y.g, c->tol);
    int level = tb_fp8_act_level(); /* NOTES.md v42, v53, v110 */
    int made = level && (M <= 8 || (level == 2 && M <= rows)) && K % 128 == 0 && D % 128 == 0;
    CHECK_MSG(q.rows == (made ? M : 0) && (!made || q.cols == K), "%s: codes made for %lld rows, want %d", desc,
              (long long)q.rows, made ? M : 0);
    if (made) tb_check_codes(t, desc, &y.g, &q);
    /* the CPU's GEMV takes the GPU producer's output: the two producers differ in the last
     * bf16 bit here and there, and FP8 codes made from such neighbours differ by a whole
     * e4m3 step (rel L2 ~1.5e-2 on an H200, 2026-12-05), which would hide what is checked */
    float *yv = tb_download(t->gpu, &y.g);
    if (sl_be_upload(t->cpu, &y.c, yv, SL_DTYPE_F32, &e)) tb_die("codes y", &e);
    free(yv);
    /* the GEMV on the codes and on x itself (AUTO), and the CPU's */
    sl_tensor wc[2], wg[2];
    tb_pair o1, o2;
    fp8_weight(t, N, K, 1, wc, wg);
    tb_pair_out(t, &o1, BF, 2, (tb_ne2(ne, M, N), ne));
    tb_pair_out(t, &o2, BF, 2, (tb_ne2(ne, M, N), ne));
    sl_be_matmul_fp8(t->cpu, &o1.c, &y.c, &wc[0], &wc[1], NULL);
    sl_be_matmul_fp8(t->gpu, &o1.g, &y.g, &wg[0], &wg[1], &q);
    sl_be_matmul_fp8(t->gpu, &o2.g, &y.g, &wg[0], &wg[1], NULL);
    tb_compare(t, c->op, desc, "out on codes", &o1.c, &o1.g, c->tol);
    tb_compare_exact(t, c->op, desc, "codes = own quantization", &o1.g, &o2.g);
    for (int i = 0; i < 2; i++) {
        sl_be_release(t->cpu, &wc[i]);
        sl_be_release(t->gpu, &wg[i]);
    }
    sl_be_release(t->gpu, &q.codes);
    sl_be_release(t->gpu, &q.scales);
    tb_pair *all[] = {&x, &z, &w, &y, &o1, &o2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tb_pair_free(t, all[i]);
}

static void fp8_run(tb *t, const tb_case *c)
{
    const int *p = c->p;
    if (c->op == SL_OP_MOE_EXPERTS_FP8) {
        moe_fp8_run(t, c);
        return;
    }
    if (p[5]) {
        fp8_codes_run(t, c);
        return;
    }
    int M = p[0], N = p[1], K = p[2];
    char desc[96];
    int64_t ne[2];
    tb_pair x, y;
    sl_tensor wc[2], wg[2];
    snprintf(desc, sizeof desc, "M=%d N=%d K=%d x%s scales per %s -> %s", M, N, K, p[3] ? "f32" : "bf16",
             p[4] ? "block" : "row", sl_dtype_name(c->dt));
    tb_pair_rand(t, &x, p[3] ? F32 : BF, 2, (tb_ne2(ne, M, K), ne), -2, 2);
    tb_pair_out(t, &y, c->dt, 2, (tb_ne2(ne, M, N), ne));
    fp8_weight(t, N, K, p[4], wc, wg);
    sl_be_matmul_fp8(t->cpu, &y.c, &x.c, &wc[0], &wc[1], NULL);
    /* which kernel each mode must run: with K % 128 == 0 and K >= 2048 AUTO takes cuBLASLt
     * from M > 8 and forced cuBLASLt from M = 4 (it takes rows in fours, the own GEMV the
     * 1-3 left: M = 9, 77); forced GEMV the own kernels */
    static const struct { sl_cuda_mm mode; const char *name; } modes[] = {
        {SL_CUDA_MM_AUTO, "auto"}, {SL_CUDA_MM_CUBLASLT, "cublaslt"}, {SL_CUDA_MM_GEMV, "own"}};
    /* the own kernels: GEMV to 16 tokens (to 64 with K % 16 != 0), tensor-core tiles above;
     * the GEMV stages its tile in shared memory where rows take 16-byte copies and the
     * tile (16, 32 or 64 weight rows by K's groups, plus the M rows of x; rows of G·128 +
     * 64 codes and G + 1 scales) fits its 100 KB (fp8.cu, fp8_cp_smem), and only at
     * SL_CUDA_FP8_GEMV_CP=2: by default the dense GEMV keeps its registers (cuda_backend.cu) */
    const char *cpe = getenv("SL_CUDA_FP8_GEMV_CP");
    int G = (K + 127) / 128, wr = G <= 2 ? 64 : G <= 4 ? 32 : 16;
    int cp = cpe && !strcmp(cpe, "2") && K % 16 == 0 && M <= 16 &&
             (wr + M) * (G * 128 + 64 + 4 * (G + 1)) <= 100 * 1024;
    const char *own = M <= 16 || (M <= 64 && K % 16) ? (cp ? "fp8_gemv_cp" : "fp8_gemv_tc")
                      : K % 16 == 0                  ? "fp8_gemm_tc"
                                                     : "fp8_gemm";
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        char what[32];
        int lt = K % 128 == 0 && K >= 2048 &&
                 ((modes[i].mode == SL_CUDA_MM_CUBLASLT && M >= 4) || (modes[i].mode == SL_CUDA_MM_AUTO && M > 8));
        const char *want = lt ? "fp8_cublaslt" : own;
        snprintf(what, sizeof what, "out %s", modes[i].name);
        sl_cuda_matmul_force(t->gpu, modes[i].mode);
        sl_be_matmul_fp8(t->gpu, &y.g, &x.g, &wg[0], &wg[1], NULL);
        const char *ran = sl_cuda_matmul_last(t->gpu);
        CHECK_MSG(ran && !strcmp(ran, want), "%s %s: ran %s, want %s", desc, what, ran ? ran : "nothing", want);
        tb_compare(t, c->op, desc, what, &y.c, &y.g, c->tol);
    }
    sl_cuda_matmul_force(t->gpu, SL_CUDA_MM_AUTO);
    for (int i = 0; i < 2; i++) {
        sl_be_release(t->cpu, &wc[i]);
        sl_be_release(t->gpu, &wg[i]);
    }
    tb_pair_free(t, &x);
    tb_pair_free(t, &y);
}

typedef struct pm_fp8 {
    sl_tensor w[64], s[64], x[64], y[64];
} pm_fp8;

static void pf_fp8(tb *t, void *ctx, int set)
{
    pm_fp8 *c = ctx;
    sl_be_matmul_fp8(t->gpu, &c->y[set], &c->x[set], &c->w[set], &c->s[set], NULL);
}

/* one matmul_fp8 shape under mode (AUTO, or a kernel forced) */
static void perf_fp8(tb *t, const char *name, int M, int N, int K, sl_cuda_mm mode)
{
    pm_fp8 c;
    int64_t ne[2], G = (K + 127) / 128, NB = (N + 127) / 128;
    int64_t wb = (int64_t)N * K + 4 * NB * G, set_bytes = 2 * ((int64_t)M * K + (int64_t)M * N);
    int ns = (int)(TB_L2_ROTATE / (wb + set_bytes) + 1);
    if (ns > 64) ns = 64;
    for (int i = 0; i < ns; i++) {
        c.w[i] = tb_gpu_rand(t, SL_DTYPE_F8E4M3, 2, (tb_ne2(ne, N, K), ne), 448.0f);
        c.s[i] = tb_gpu_rand(t, F32, 2, (tb_ne2(ne, NB, G), ne), 1e-4f); /* 128x128 blocks */
        c.x[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, M, K), ne), 1.0f);
        c.y[i] = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, M, N), ne), 1.0f);
    }
    double b2b, bytes = (double)(wb + set_bytes);
    sl_cuda_matmul_force(t->gpu, mode);
    double ms = tb_time_op(t, pf_fp8, &c, ns, 30, &b2b);
    sl_cuda_matmul_force(t->gpu, SL_CUDA_MM_AUTO);
    char desc[96], note[160];
    snprintf(desc, sizeof desc, "%s M=%d N=%d K=%d", name, M, N, K);
    snprintf(note, sizeof note, " [%s; b2b %.1f us %.0f%% of peak bandwidth; %.0f%% of the fp8 mma rate]",
             sl_cuda_matmul_last(t->gpu), b2b * 1e3, 100 * bytes / (b2b * 1e-3) / t->peak_bw,
             t->peak_fp8 > 0 ? 100 * 2.0 * M * N * K / (ms * 1e-3) / t->peak_fp8 : 0.0);
    tb_report(t, "matmul_fp8", desc, ms, bytes, 2.0 * M * N * K, note);
    for (int i = 0; i < ns; i++) {
        sl_be_release(t->gpu, &c.w[i]);
        sl_be_release(t->gpu, &c.s[i]);
        sl_be_release(t->gpu, &c.x[i]);
        sl_be_release(t->gpu, &c.y[i]);
    }
}

/* moe_experts_fp8 at Qwen3-30B-A3B / Coder-Next shapes, per-pair GEMVs vs grouped GEMMs;
 * bytes: the active experts' weights (scales included) plus x and out */
#define MOE_FP8_SETS 4
typedef struct pm_moe_fp8 {
    sl_tensor x, y, wt, gu, gus, dn, dns, ids[MOE_FP8_SETS];
} pm_moe_fp8;

static void pf_moe_fp8(tb *t, void *ctx, int set)
{
    pm_moe_fp8 *c = ctx;
    sl_be_moe_experts_fp8(t->gpu, &c->y, &c->x, &c->ids[set], &c->wt, &c->gu, &c->gus, &c->dn, &c->dns);
}

static void perf_moe_fp8(tb *t, const char *name, int T, int H, int I, int E, int k, int shared,
                         sl_cuda_moe_fp8 path)
{
    pm_moe_fp8 c;
    int64_t ne[3], GH = (H + 127) / 128, GI = (I + 127) / 128;
    c.gu = tb_gpu_rand(t, SL_DTYPE_F8E4M3, 3, (int64_t[]){E, 2 * (int64_t)I, H}, 448.0f);
    c.gus = tb_gpu_rand(t, F32, 3, (int64_t[]){E, 2 * (int64_t)I, GH}, 1e-4f);
    c.dn = tb_gpu_rand(t, SL_DTYPE_F8E4M3, 3, (int64_t[]){E, H, I}, 448.0f);
    c.dns = tb_gpu_rand(t, F32, 3, (int64_t[]){E, H, GI}, 1e-4f);
    c.x = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, H), ne), 1.0f);
    c.y = tb_gpu_rand(t, BF, 2, (tb_ne2(ne, T, H), ne), 1.0f);
    int active = tb_moe_perf_ids(t, T, k, E, shared, c.ids, MOE_FP8_SETS, &c.wt);
    sl_cuda_moe_fp8_path(t->gpu, path);
    double b2b = 0, ms = tb_time_op(t, pf_moe_fp8, &c, MOE_FP8_SETS, 10, &b2b);
    double bytes = (double)active * (3.0 * I * H + 4.0 * (2.0 * I * GH + (double)H * GI)) + 4.0 * T * H;
    double flops = 2.0 * T * k * 3.0 * I * H;
    char desc[96], note[64];
    snprintf(desc, sizeof desc, "%s T=%d E=%d k=%d I=%d (%d active)", name, T, E, k, I, active);
    snprintf(note, sizeof note, " [%s] b2b %.4f ms", sl_cuda_matmul_last(t->gpu), b2b);
    tb_report(t, "moe_experts_fp8", desc, ms, bytes, flops, note);
    sl_cuda_moe_fp8_path(t->gpu, SL_CUDA_MOE_FP8_GEMV);
    sl_tensor *ts[] = {&c.x, &c.y, &c.wt, &c.gu, &c.gus, &c.dn, &c.dns};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) sl_be_release(t->gpu, ts[i]);
    for (int st = 0; st < MOE_FP8_SETS; st++) sl_be_release(t->gpu, &c.ids[st]);
}

static void fp8_perf(tb *t, const char *filter)
{
    if (tb_perf_on(filter, SL_OP_MOE_EXPERTS_FP8)) {
        /* decode batches (16, 64) and prefill (128 to 8192 tokens), the default (AUTO)
         * and every path forced: where AUTO's switches belong */
        int Ts[] = {1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
        static const sl_cuda_moe_fp8 paths[] = {SL_CUDA_MOE_FP8_AUTO, SL_CUDA_MOE_FP8_GEMV, SL_CUDA_MOE_FP8_EXPERT_GEMV,
                                                SL_CUDA_MOE_FP8_GROUPED_TC, SL_CUDA_MOE_FP8_GROUPED,
                                                SL_CUDA_MOE_FP8_GV, SL_CUDA_MOE_FP8_ONE,
                                                SL_CUDA_MOE_FP8_GROUPED_WS, SL_CUDA_MOE_FP8_GROUPED_WSP};
        for (size_t i = 0; i < sizeof Ts / sizeof Ts[0] && Ts[i] <= t->max_tokens; i++)
            for (size_t p = 0; p < sizeof paths / sizeof paths[0]; p++) {
                if (Ts[i] < t->min_tokens) continue;
                if (Ts[i] > 64 && paths[p] == SL_CUDA_MOE_FP8_GV) continue; /* past its pairs */
                if (Ts[i] > 1 && paths[p] == SL_CUDA_MOE_FP8_ONE) continue;  /* one token only */
                if (Ts[i] >= 4096 && paths[p] == SL_CUDA_MOE_FP8_EXPERT_GEMV) continue; /* 256 tiles an expert */
                if (Ts[i] >= 1024 && paths[p] == SL_CUDA_MOE_FP8_GEMV) continue;       /* a pass per pair */
                perf_moe_fp8(t, "30B-A3B", Ts[i], 2048, 768, 128, 8, 0, paths[p]);
                /* Coder-Next with its shared expert fused, as the model runs it: 513
                 * experts, 11 a token, the last one every token's */
                perf_moe_fp8(t, "Coder-Next", Ts[i], 2048, 512, 513, 11, 1, paths[p]);
            }
    }
    /* Qwen3-8B projections (H=4096, I=12288): decode GEMV bandwidth, prefill GEMM
     * TFLOP/s; the other models' attention / GDN projections (hidden 2048) */
    const struct { const char *n; int N, K; } ws[] = {
        {"8B qkv", (32 + 2 * 8) * 128, 4096},
        {"8B o", 4096, 4096},
        {"8B gate_up", 2 * 12288, 4096},
        {"8B up", 12288, 4096},
        {"8B down", 4096, 12288},
        {"30B-A3B qkv", (32 + 2 * 4) * 128, 2048},
        {"30B-A3B o", 2048, 4096},
        {"Coder-Next qkvz", 12288, 2048},
        {"Coder-Next out", 2048, 4096},
    };
    int Ms[] = {1, 4, 8, 16, 32, 64, 512, 4096};
    if (!tb_perf_on(filter, SL_OP_MATMUL_FP8)) return;
    /* AUTO, then each kernel forced (cuBLASLt against the own: where AUTO's switch belongs) */
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
        for (size_t j = 0; j < sizeof Ms / sizeof Ms[0] && Ms[j] <= t->max_tokens; j++) {
            if (Ms[j] < t->min_tokens) continue;
            perf_fp8(t, ws[i].n, Ms[j], ws[i].N, ws[i].K, SL_CUDA_MM_AUTO);
            perf_fp8(t, ws[i].n, Ms[j], ws[i].N, ws[i].K, SL_CUDA_MM_CUBLASLT);
            perf_fp8(t, ws[i].n, Ms[j], ws[i].N, ws[i].K, SL_CUDA_MM_GEMV);
        }
}

const tb_family tb_family_fp8 = {cases, sizeof cases / sizeof cases[0], fp8_run, fp8_perf};
