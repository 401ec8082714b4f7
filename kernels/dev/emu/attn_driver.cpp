// kernels/dev/emu/attn_driver.cpp: random paged batches (pages a random permutation, NaN in
// the cache rows past a sequence's keys, NaN-poisoned output, garbage shared memory) through k_attn (decode), k_attn_fa2, k_attn_wg (both forms),
// k_attn_wg2 and k_attn_ws (+ k_attn_combine for key splits), compared with a float64 reference; appended to the kernel code by emu.py.
static uint64_t rs = 88172645463325252ull;
static uint32_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (uint32_t)rs; }
static float frand(float lo, float hi) { return lo + (hi - lo) * (rnd() >> 8) / 16777216.0f; }

// kernel: 0 FA2, 1 wgmma, 2 wgmma overlapped, 3 wgmma on 128-row tiles, 4 the same warp-specialized,
// 5 the decode kernel (16-row tiles: fewer than 16 new tokens a sequence)
template <int D, int KV>
static int run_case(int S, const int *qlen, const int *pre, int P, int Hq, int Hkv, int nsplit, int qf32)
{
    int G = Hq / Hkv, T = 0;
    std::vector<int> q_start(S + 1), kv_len(S);
    for (int s = 0; s < S; s++) { q_start[s] = T; T += qlen[s]; kv_len[s] = pre[s] + qlen[s]; }
    q_start[S] = T;
    int max_pages = 0, n_pages = 0;
    for (int s = 0; s < S; s++) { int np = (kv_len[s] + P - 1) / P; max_pages = max(max_pages, np); n_pages += np; }
    std::vector<int> perm(n_pages);
    for (int i = 0; i < n_pages; i++) perm[i] = i;
    for (int i = n_pages - 1; i > 0; i--) std::swap(perm[i], perm[rnd() % (i + 1)]);
    std::vector<int> pt((size_t)S * max_pages, -1), seq_of(T);
    int pi = 0;
    for (int s = 0; s < S; s++) for (int p = 0; p < (kv_len[s] + P - 1) / P; p++) pt[(size_t)s * max_pages + p] = perm[pi++];
    for (int s = 0; s < S; s++) for (int t = q_start[s]; t < q_start[s + 1]; t++) seq_of[t] = s;
    int64_t rows = (int64_t)n_pages * P, C = (int64_t)Hkv * D;
    std::vector<__nv_bfloat16> kc(rows * C), vc(rows * C), qb((size_t)T * Hq * D), out((size_t)T * Hq * D);
    std::vector<float> qfv((size_t)T * Hq * D);
    for (auto &x : kc) x = __float2bfloat16_rn(frand(-2, 2));
    for (auto &x : vc) x = __float2bfloat16_rn(frand(-2, 2));
    for (size_t i = 0; i < qb.size(); i++) { qb[i] = __float2bfloat16_rn(frand(-2, 2)); qfv[i] = __bfloat162float(qb[i]); }
    for (auto &x : out) x.b = 0x7fc1; // NaN poison
    // the cache rows of a sequence's last page past its keys: NaN (a kernel must not let them into O)
    for (int s = 0; s < S; s++)
        for (int j = kv_len[s]; j % P; j++) {
            int64_t row = (int64_t)pt[(size_t)s * max_pages + j / P] * P + j % P;
            for (int64_t c = 0; c < C; c++) kc[row * C + c].b = vc[row * C + c].b = 0x7fc1;
        }
    // as cu_attention, prefill path
    cu_attn_args a;
    memset(&a, 0, sizeof a);
    a.q = {qf32 ? (void *)qfv.data() : (void *)qb.data(), qf32 ? SL_DTYPE_F32 : SL_DTYPE_BF16, T, (int64_t)Hq * D, (int64_t)Hq * D};
    a.out = {out.data(), SL_DTYPE_BF16, T, (int64_t)Hq * D, (int64_t)Hq * D};
    a.kc = kc.data(); a.vc = vc.data(); a.kld = C; a.vld = C;
    a.Hq = Hq; a.G = G; a.gh = 1;
    const int tile_rows = KV == 5 ? 16 : 64; // as cu_attention: 16-row tiles decode
    while (a.G % (a.gh * 2) == 0 && a.gh * 2 <= tile_rows) a.gh *= 2;
    int level = 0, kv = KV;
    if (kv == 5) {
        int max_q = *std::max_element(qlen, qlen + S);
        while (max_q > (1 << level) && (a.gh << (level + 1)) <= 16) level++;
    } else {
        while ((a.gh << level) < 64) level++;
        if (kv >= 3) { // 128-row tiles one level up, else k_attn_wg
            if (level + 1 < 7) level++;
            else kv = 1;
        }
    }
    if ((kv == 3 || kv == 4) && P % 16 == 0) { // as attn_tma_maps: whole boxes by TMA
        a.tma = 1;
        a.tk = {(const char *)kc.data(), 2, {C, rows, 1}, {C * 2, 0}, {64, 16}};
        a.tv = {(const char *)vc.data(), 2, {C, rows, 1}, {C * 2, 0}, {64, 16}};
    }
    const unsigned nth = kv == 4 ? 384 : kv == 3 ? 256 : 128;
    a.qt = 1 << level;
    float scale = 1.0f / sqrtf((float)D);
    a.scale_log2 = scale * 1.4426950408889634f;
    std::vector<int2> tiles;
    for (int s = 0; s < S; s++) for (int i0 = 0; i0 < qlen[s]; i0 += a.qt) tiles.push_back({s, i0});
    a.tiles = tiles.data(); a.q_start = q_start.data(); a.kv_len = kv_len.data(); a.page_table = pt.data();
    a.seq_of = seq_of.data(); a.page_size = P; a.max_pages = max_pages; a.nsplit = nsplit;
    std::vector<float> part;
    if (nsplit > 1) { part.assign((size_t)T * Hq * nsplit * (D + 2), NAN); a.part = part.data(); }
    int n_hb = a.G / a.gh;
    emu_grid({(unsigned)tiles.size(), (unsigned)(Hkv * n_hb), (unsigned)nsplit}, nth,
             kv == 5 ? attn_smem<D>::BYTES : kv == 4 ? ws_cfg<D>::BYTES : kv == 3 ? wg2_cfg<D>::BYTES
                 : kv ? wg_cfg<D>::BYTES : fa2_cfg<D>::BYTES, [&] {
                 if (kv == 5) k_attn<D>(a);
                 else if (kv == 4) k_attn_ws<D>(a);
                 else if (kv == 3 && a.tma) k_attn_wg2<D, true>(a);
                 else if (kv == 3) k_attn_wg2<D, false>(a);
                 else if (kv == 2) k_attn_wg<D, true>(a);
                 else if (kv) k_attn_wg<D, false>(a);
                 else k_attn_fa2<D>(a);
                 SL_ASSERT(emu_wg_idle());
             });
    // the merge of the splits, 128 threads a (token, head), with the output's FP8 codes
    // where a head is whole 128-groups (sl_fp8_act), checked below
    int G8 = Hq * D / 128, codes_on = nsplit > 1 && D % 128 == 0;
    std::vector<uint8_t> codes((size_t)T * Hq * D, 0xff);
    std::vector<float> scales((size_t)T * G8, NAN);
    if (codes_on) a.oq = {codes.data(), scales.data(), G8};
    if (nsplit > 1)
        emu_grid({(unsigned)T, (unsigned)Hq, 1}, 128, 2 * sizeof(float) * nsplit, [&] { k_attn_combine(a, D); });
    int code_bad = 0; // the codes of each 128-group of the stored output: k_fp8_quant's rule
    for (int t = 0; codes_on && t < T; t++)
        for (int g = 0; g < G8; g++) {
            float mx = 0.0f;
            for (int c = g * 128; c < g * 128 + 128; c++) mx = fmaxf(mx, fabsf(__bfloat162float(out[(size_t)t * Hq * D + c])));
            float sc = mx / SL_FP8_MAX;
            code_bad += memcmp(&sc, &scales[(size_t)t * G8 + g], 4) != 0;
            for (int c = g * 128; c < g * 128 + 128; c++) {
                uint8_t want = sc > 0.0f ? cu_f32_to_e4m3(__bfloat162float(out[(size_t)t * Hq * D + c]) / sc) : 0;
                code_bad += codes[(size_t)t * Hq * D + c] != want;
            }
        }
    // reference
    double e2 = 0, r2 = 0, maxe = 0; int bad = 0;
    for (int s = 0; s < S; s++) for (int i = 0; i < qlen[s]; i++) for (int h = 0; h < Hq; h++) {
        int t = q_start[s] + i, kh = h / G, nk = pre[s] + i + 1;
        std::vector<double> sc(nk); double m = -1e300;
        for (int j = 0; j < nk; j++) {
            int64_t row = (int64_t)pt[(size_t)s * max_pages + j / P] * P + j % P;
            double d = 0;
            for (int c = 0; c < D; c++) d += (double)qfv[((size_t)t * Hq + h) * D + c] * __bfloat162float(kc[row * C + kh * D + c]);
            sc[j] = d * scale; m = max(m, sc[j]);
        }
        double l = 0;
        for (int j = 0; j < nk; j++) { sc[j] = exp(sc[j] - m); l += sc[j]; }
        for (int c = 0; c < D; c++) {
            double o = 0;
            for (int j = 0; j < nk; j++) {
                int64_t row = (int64_t)pt[(size_t)s * max_pages + j / P] * P + j % P;
                o += sc[j] * __bfloat162float(vc[row * C + kh * D + c]);
            }
            o /= l;
            float g = __bfloat162float(out[((size_t)t * Hq + h) * D + c]);
            if (!std::isfinite(g)) { bad++; continue; }
            e2 += (g - o) * (g - o); r2 += o * o; maxe = max(maxe, fabs(g - o));
        }
    }
    double rel = sqrt(e2 / r2);
    int ok = bad == 0 && rel < 1e-2 && code_bad == 0;
    printf("%s D=%d S=%d q0=%d pre0=%d P=%d Hq=%d Hkv=%d nsplit=%d q%s%s: rel L2 %.2e max abs %.2e nonfinite %d%s -> %s\n",
           KV == 5 ? "dec" : KV == 4 ? "ws " : KV == 3 ? "wg2" : KV == 2 ? "wgo" : KV ? "wg " : "fa2", D, S, qlen[0], pre[0], P, Hq, Hkv, nsplit, qf32 ? "f32" : "bf16", kv != KV ? " (ran k_attn_wg: one query head a KV head)" : "", rel, maxe, bad,
           codes_on ? (code_bad ? ", FP8 codes differ" : ", FP8 codes ok") : "", ok ? "ok" : "FAIL");
    return ok;
}

template <int D>
static int run_case(int S, const int *qlen, const int *pre, int P, int Hq, int Hkv, int nsplit, int qf32)
{
    int ok = run_case<D, 0>(S, qlen, pre, P, Hq, Hkv, nsplit, qf32);
    ok &= run_case<D, 1>(S, qlen, pre, P, Hq, Hkv, nsplit, qf32);
    ok &= run_case<D, 3>(S, qlen, pre, P, Hq, Hkv, nsplit, qf32);
    ok &= run_case<D, 4>(S, qlen, pre, P, Hq, Hkv, nsplit, qf32);
    return run_case<D, 2>(S, qlen, pre, P, Hq, Hkv, nsplit, qf32) && ok;
}

int main(int argc, char **argv)
{
    int ok = 1;
    { int q[] = {70}, p[] = {0}; ok &= run_case<128>(1, q, p, 16, 4, 4, 1, 0); }
    { int q[] = {77, 3, 20}, p[] = {13, 50, 87}; ok &= run_case<128>(3, q, p, 1, 8, 2, 1, 0); }
    { int q[] = {45, 17}, p[] = {100, 137}; ok &= run_case<128>(2, q, p, 16, 8, 1, 1, 1); }
    { int q[] = {20}, p[] = {700}; ok &= run_case<128>(1, q, p, 16, 4, 2, 3, 0); }
    { int q[] = {150}, p[] = {300}; ok &= run_case<128>(1, q, p, 16, 8, 2, 1, 0); } // 4 key tiles of 128: the stage ring wraps
    { int q[] = {40, 1}, p[] = {29, 66}; ok &= run_case<256>(2, q, p, 1, 4, 1, 1, 0); }
    { int q[] = {33}, p[] = {0}; ok &= run_case<256>(1, q, p, 16, 2, 2, 1, 0); }
    { int q[] = {19, 100}, p[] = {61, 600}; ok &= run_case<256>(2, q, p, 16, 8, 2, 3, 0); }
    { int q[] = {30, 5}, p[] = {10, 47}; ok &= run_case<64>(2, q, p, 16, 12, 2, 1, 0); }
    // decode: a warp's stage ring wraps (64 keys a block step) at every D, qt 2 at G 8, key splits
    { int q[] = {1, 2, 1}, p[] = {900, 37, 300}; ok &= run_case<256, 5>(3, q, p, 16, 16, 2, 1, 0); }
    { int q[] = {1, 2}, p[] = {700, 130}; ok &= run_case<256, 5>(2, q, p, 16, 16, 2, 3, 0); }
    { int q[] = {1, 3}, p[] = {500, 64}; ok &= run_case<128, 5>(2, q, p, 1, 32, 4, 1, 0); }
    { int q[] = {1}, p[] = {1000}; ok &= run_case<128, 5>(1, q, p, 16, 4, 4, 4, 1); }
    { int q[] = {2, 1}, p[] = {333, 8}; ok &= run_case<64, 5>(2, q, p, 16, 12, 2, 1, 0); }
    printf("%s\n", ok ? "ALL OK" : "SOME FAILED");
    return !ok;
}
