// kernels/dev/emu/fp8_driver.cpp: routing plans (experts of uneven sizes, some empty, tiles of
// BT rows, x rows through a permutation) over random e4m3 weights with 128×128 block scales or
// a scale per row (N and K not multiples of 128), NaN-poisoned output and garbage shared memory, through
// k_fp8_moe_gemm_tc, k_fp8_moe_wg (weight tiles by TMA and by cp.async) and k_fp8_moe_ws (a block an item, and persistent;
// 128-row tiles; x's codes in pair order, its scales and the weight scales group-major, as
// moe_fp8_ws_prepare makes them), compared with a float64 reference of the CPU op's
// arithmetic (Σ_g (Σ_k x_q·w_q) · s_x·s_w); appended to the kernel code by emu.py.
static uint64_t rs = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (uint32_t)rs; }
static uint8_t rcode(void) { uint8_t c; do c = (uint8_t)rnd(); while ((c & 0x7f) == 0x7f); return c; }

// kernel: 0 the mma.sync tiles, 1 wgmma (weight tiles by TMA), 2 the same by cp.async, 3
// wgmma warp-specialized (a block an item), 4 the same persistent (two blocks walking every item: rings across items)
template <int BT, int KV>
static int run_case(int N, int K, const std::vector<int> &count, int shift, int npb)
{
    if (KV >= 3 && BT != 128) return 1; // (k_fp8_moe_ws's tiles)
    int E = (int)count.size(), G = (K + 127) / 128, NB = (N + 127) / 128, NS = ((N - 1) >> shift) + 1, P = 0;
    std::vector<int> offset(E + 1, 0);
    for (int e = 0; e < E; e++) offset[e + 1] = offset[e] + count[e];
    P = offset[E];
    std::vector<int2> tiles;
    for (int e = 0; e < E; e++) for (int f = 0; f < count[e]; f += BT) tiles.push_back({e, f});
    std::vector<int> perm(P);
    for (int i = 0; i < P; i++) perm[i] = i;
    for (int i = P - 1; i > 0; i--) std::swap(perm[i], perm[rnd() % (i + 1)]);
    int n_tiles = (int)tiles.size();
    std::vector<uint8_t> xq((size_t)P * G * 128, 0), w((size_t)E * N * K);
    std::vector<float> sx((size_t)P * G), ws((size_t)E * NS * G), out((size_t)P * N, NAN);
    for (int m = 0; m < P; m++) for (int k = 0; k < K; k++) xq[(size_t)m * G * 128 + k] = rcode(); // pad stays 0
    for (auto &c : w) c = rcode();
    for (auto &v : sx) v = 0.5f + (rnd() >> 8) / 16777216.0f;
    for (auto &v : ws) v = 0.001f * (1 + (rnd() >> 8) / 16777216.0f);
    cu_moe_plan p;
    memset(&p, 0, sizeof p);
    p.offset = offset.data(); p.perm = perm.data(); p.n_tiles = &n_tiles; p.tiles = tiles.data(); p.max_tiles = n_tiles;
    fp8_args a;
    memset(&a, 0, sizeof a);
    a.w = w.data(); a.xq = xq.data(); a.ws = ws.data(); a.sx = sx.data();
    a.ldw = K; a.ldws = G; a.ldx = (int64_t)G * 128;
    a.M = P; a.N = N; a.K = K; a.G = G; a.srow_shift = shift; a.vec = 1;
    a.out = {out.data(), SL_DTYPE_F32, P, N, N};
    a.ew = (int64_t)N * K; a.ews = (int64_t)NS * G; a.x_perm = 1; a.x_div = 1; a.npb = npb;
    if (KV == 1 || KV >= 3) { // as fp8_moe_tma_map: the weight tiles by TMA
        a.tma = 1;
        a.tw = {(const char *)w.data(), 1, {K, N, E}, {K, (int64_t)N * K}, {128, 128}};
    }
    // k_fp8_moe_ws's token rows: the codes in pair order (row q: x row perm[q]), the scales
    // group-major with rows of Pp floats
    int Pp = (P + 3) & ~3;
    std::vector<uint8_t> xp((size_t)P * G * 128);
    std::vector<float> sp((size_t)G * Pp, NAN);
    for (int q = 0; q < P; q++) {
        memcpy(&xp[(size_t)q * G * 128], &xq[(size_t)perm[q] * G * 128], (size_t)G * 128);
        for (int g = 0; g < G; g++) sp[(size_t)g * Pp + q] = sx[(size_t)perm[q] * G + g];
    }
    // and the weight scales group-major: expert e's group g a row of ldst floats
    int ldst = (N + 3) & ~3;
    std::vector<float> st((size_t)E * G * ldst, NAN);
    for (int e = 0; e < E; e++) for (int g = 0; g < G; g++) for (int n = 0; n < N; n++)
        st[((size_t)e * G + g) * ldst + n] = ws[((size_t)e * NS + (n >> shift)) * G + g];
    if (KV >= 3) {
        a.tsw = {(const char *)st.data(), 4, {N, (int64_t)E * G, 1}, {(int64_t)ldst * 4, 0}, {128, 1}, 0};
        a.xq = xp.data();
        a.sx = sp.data();
        a.tx = {(const char *)xp.data(), 1, {(int64_t)G * 128, P, 1}, {(int64_t)G * 128, 0}, {128, 128}};
        a.tsx = {(const char *)sp.data(), 4, {P, G, 1}, {(int64_t)Pp * 4, 0}, {WS8_XSC, 1}, 0};
    }
    unsigned GX = KV ? (unsigned)((NB + npb - 1) / npb) : (unsigned)NB; // the wgmma kernel walks npb weight blocks
    dim3 grid = {GX, (unsigned)n_tiles, 1};
    if (KV >= 3) { // items in x (the launcher's grids: one a block, or fewer blocks walking them)
        if (KV == 4) a.npb = 1;
        unsigned items = (unsigned)(ws8_nwbx(a) * n_tiles);
        grid = {KV == 4 ? std::min(items, 2u) : items, 1, 1};
    }
    size_t smem = KV >= 3 ? WS8_SMEM : KV ? wg8_cfg<BT>::SMEM : tc_cfg<BT>::SMEM;
    emu_grid(grid, KV >= 3 ? 384 : 256, smem, [&] {
        if (KV >= 3) k_fp8_moe_ws(a, p);
        else if (KV) k_fp8_moe_wg<BT>(a, p);
        else k_fp8_moe_gemm_tc<BT>(a, p);
        SL_ASSERT(emu_wg_idle());
    });
    double e2 = 0, r2 = 0; int bad = 0;
    for (int e = 0; e < E; e++) for (int q = offset[e]; q < offset[e + 1]; q++) for (int n = 0; n < N; n++) {
        int m = perm[q];
        double ref = 0;
        for (int g = 0; g < G; g++) {
            double part = 0;
            for (int k = g * 128; k < min(K, g * 128 + 128); k++)
                part += (double)emu_e4m3(xq[(size_t)m * G * 128 + k]) * emu_e4m3(w[((size_t)e * N + n) * K + k]);
            ref += part * sx[(size_t)m * G + g] * ws[((size_t)e * NS + (n >> shift)) * G + g];
        }
        float got = out[(size_t)q * N + n];
        if (!std::isfinite(got)) { bad++; continue; }
        e2 += (got - ref) * (got - ref); r2 += ref * ref;
    }
    double rel = sqrt(e2 / r2);
    printf("%s BT=%d N=%d K=%d E=%d P=%d tiles=%d scales/%d rows npb=%d: rel L2 %.2e nonfinite %d -> %s\n",
           KV == 4 ? "wsp" : KV == 3 ? "ws" : KV == 2 ? "wgc" : KV ? "wg" : "tc", BT, N, K, E, P, n_tiles, 1 << shift,
           KV ? a.npb : 1, rel, bad, bad == 0 && rel < 1e-5 ? "ok" : "FAIL");
    return bad == 0 && rel < 1e-5;
}

template <int BT>
static int run_case(int N, int K, const std::vector<int> &count, int shift, int npb)
{
    int ok = run_case<BT, 0>(N, K, count, shift, npb);
    ok &= run_case<BT, 1>(N, K, count, shift, npb);
    ok &= run_case<BT, 2>(N, K, count, shift, npb);
    ok &= run_case<BT, 3>(N, K, count, shift, npb);
    return run_case<BT, 4>(N, K, count, shift, npb) && ok;
}

int main(void)
{
    int ok = 1;
    ok &= run_case<32>(200, 384, {5, 40, 0, 33}, 7, 1); // partial weight block, experts of 1-2 tiles, one empty
    ok &= run_case<64>(256, 272, {70, 3}, 0, 1);        // K with a partial group, a scale per row
    ok &= run_case<128>(136, 256, {130, 0, 9}, 7, 2);   // 128-row tiles, partial last; both weight blocks in one
    ok &= run_case<32>(130, 1152, {31, 2}, 7, 1);       // 9 groups: the stages reused
    ok &= run_case<32>(600, 512, {7, 0, 50}, 0, 2);     // 5 weight blocks 2 a block (the last one alone), 4 groups
    ok &= run_case<64>(520, 384, {20, 64}, 7, 3);       // 3 groups a block of 3 weight blocks: u crosses them
    ok &= run_case<128>(136, 1024, {140, 9}, 7, 2);     // 16 steps: k_fp8_moe_ws's ring of 4 stages wraps
    ok &= run_case<128>(384, 640, {5, 300, 0, 129}, 7, 3); // 5 groups, 3 weight blocks an item, partial tiles
    ok &= run_case<128>(202, 384, {129, 2}, 0, 1);         // a scale per row, N % 4 != 0 (the scales' rows padded)
    ok &= run_case<128>(136, 128, {7}, 7, 1);              // one group: ws's items of one step (v81's tail alone)
    printf("%s\n", ok ? "ALL OK" : "SOME FAILED");
    return !ok;
}
