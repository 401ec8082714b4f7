// kernels/dev/emu/moe1_driver.cpp: one token through k_fp8_moe_one, every block of its grid
// at once (its blocks wait on each other's counters), over random e4m3 experts with a scale
// per row (H and I not multiples of 128, row blocks past H), NaN-poisoned outputs and
// garbage shared memory. Checked, each stage against the CPU op's arithmetic from the
// kernel's own input to it: the gate_up outputs h (x quantized per 128-group), the down
// outputs y (silu·up of h quantized per 128-group), the result (Σ_j w_j·y_j in j order, bit
// for bit); the counters are zero afterwards, a second launch gives the same bits, and the
// per-pair path's GEMVs (k_fp8_gemv_cp) compute the same h and y bit for bit.
// Appended to the kernel code by emu.py.
static uint64_t rs = 0x2545f4914f6cdd1dull;
static uint32_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (uint32_t)rs; }
static uint8_t rcode(void) { uint8_t c; do c = (uint8_t)rnd(); while ((c & 0x7f) == 0x7f); return c; }
static float runif(float lo, float hi) { return lo + (hi - lo) * (rnd() >> 8) / 16777216.0f; }

// codes and scale of v[0..K) per 128-group (the CPU op's rule, codes as floats)
static void quant(const float *v, int K, std::vector<float> &q, std::vector<float> &s)
{
    int G = (K + 127) / 128;
    q.assign(K, 0.0f);
    s.assign(G, 0.0f);
    for (int g = 0; g < G; g++) {
        float mx = 0.0f;
        for (int k = g * 128; k < min(K, g * 128 + 128); k++) mx = fmaxf(mx, fabsf(v[k]));
        s[g] = mx / SL_FP8_MAX;
        for (int k = g * 128; k < min(K, g * 128 + 128); k++)
            q[k] = s[g] > 0.0f ? emu_e4m3(cu_f32_to_e4m3(v[k] / s[g])) : 0.0f;
    }
}

// rows n of an expert's weights (codes w, per-row scales ws) times quantized x, in double
static double dot(const uint8_t *w, const float *ws, const std::vector<float> &q, const std::vector<float> &s, int K)
{
    double acc = 0;
    for (int g = 0; g < (K + 127) / 128; g++) {
        double part = 0;
        for (int k = g * 128; k < min(K, g * 128 + 128); k++) part += (double)q[k] * emu_e4m3(w[k]);
        acc += part * s[g] * ws[g];
    }
    return acc;
}

static double rel(const std::vector<float> &got, const std::vector<double> &ref, int &bad)
{
    double e2 = 0, r2 = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        if (!std::isfinite(got[i])) { bad++; continue; }
        e2 += (got[i] - ref[i]) * (got[i] - ref[i]);
        r2 += ref[i] * ref[i];
    }
    return sqrt(e2 / r2);
}

static int run_case(int H, int I, int E, int k, unsigned grid)
{
    int G1 = (H + 127) / 128, G2 = (I + 127) / 128;
    std::vector<uint8_t> wgu((size_t)E * 2 * I * H), wdn((size_t)E * H * I);
    std::vector<float> sgu((size_t)E * 2 * I * G1), sdn((size_t)E * H * G2), wt(k), h((size_t)k * 2 * I, NAN),
        y((size_t)k * H, NAN), out(H, NAN), xf(H);
    std::vector<__nv_bfloat16> xb(H);
    std::vector<int32_t> ids(k);
    std::vector<unsigned> sync(MOE1_MAXK + MOE1_MAXRB + 1, 0);
    for (auto &c : wgu) c = rcode();
    for (auto &c : wdn) c = rcode();
    for (auto &v : sgu) v = runif(0.5e-3f, 1.5e-3f);
    for (auto &v : sdn) v = runif(0.5e-2f, 1.5e-2f);
    for (int i = 0; i < H; i++) {
        xb[i] = __float2bfloat16_rn(runif(-2, 2));
        xf[i] = __bfloat162float(xb[i]);
    }
    for (int j = 0; j < k; j++) {
        bool dup;
        do {
            ids[j] = (int32_t)(rnd() % (unsigned)E);
            dup = false;
            for (int i = 0; i < j; i++) dup |= ids[i] == ids[j];
        } while (dup);
        wt[j] = runif(0.05f, 0.35f);
    }
    moe1_args m;
    memset(&m, 0, sizeof m);
    fp8_args &gu = m.gu, &dn = m.dn;
    gu.w = wgu.data(); gu.ws = sgu.data(); gu.ldw = H; gu.ldws = G1; gu.N = 2 * I; gu.K = H; gu.G = G1;
    gu.vec = 1; gu.out = {h.data(), SL_DTYPE_F32, k, 2 * I, 2 * I};
    gu.ids = ids.data(); gu.ids_ld = k; gu.topk = k; gu.x_div = k; gu.ew = (int64_t)2 * I * H; gu.ews = (int64_t)2 * I * G1;
    dn.w = wdn.data(); dn.ws = sdn.data(); dn.ldw = I; dn.ldws = G2; dn.N = H; dn.K = I; dn.G = G2;
    dn.vec = 1; dn.out = {y.data(), SL_DTYPE_F32, k, H, H};
    dn.ids = ids.data(); dn.ids_ld = k; dn.topk = k; dn.x_div = 1; dn.ew = (int64_t)H * I; dn.ews = (int64_t)H * G2;
    m.x = {xb.data(), SL_DTYPE_BF16, 1, H, H};
    m.wt = wt.data();
    m.out = {out.data(), SL_DTYPE_F32, 1, H, H};
    m.sync = sync.data();
    size_t smem = moe1_smem(G1, G2);
    std::vector<float> first;
    int ok = 1;
    emu_stagger = true;
    for (int launch = 0; launch < 2; launch++) {
        std::fill(h.begin(), h.end(), NAN); // what a phase-2 item reads too early
        std::fill(y.begin(), y.end(), NAN);
        emu_grid({grid, 1, 1}, 256, smem, [&] { k_fp8_moe_one(m); }, true);
        if (launch == 0) first = out;
    }
    // h from the token's codes; y from the kernel's h; the sum from the kernel's y, in j order
    std::vector<float> xq, sx, aq, sa, act(I);
    quant(xf.data(), H, xq, sx);
    std::vector<double> href((size_t)k * 2 * I), yref((size_t)k * H);
    for (int j = 0; j < k; j++) {
        int64_t e = ids[j];
        for (int n = 0; n < 2 * I; n++)
            href[(size_t)j * 2 * I + n] = dot(&wgu[(e * 2 * I + n) * H], &sgu[(e * 2 * I + n) * G1], xq, sx, H);
        for (int i = 0; i < I; i++) {
            float g = h[(size_t)j * 2 * I + i], u = h[(size_t)j * 2 * I + I + i];
            act[i] = g / (1.0f + expf(-g)) * u;
        }
        quant(act.data(), I, aq, sa);
        for (int n = 0; n < H; n++) yref[(size_t)j * H + n] = dot(&wdn[(e * H + n) * I], &sdn[(e * H + n) * G2], aq, sa, I);
    }
    int bad = 0, mism = 0;
    double rh = rel(h, href, bad), ry = rel(y, yref, bad);
    for (int n = 0; n < H; n++) {
        float acc = 0.0f;
        for (int j = 0; j < k; j++) acc += wt[j] * y[(size_t)j * H + n];
        mism += memcmp(&acc, &out[n], 4) != 0 || memcmp(&first[n], &out[n], 4) != 0;
    }
    unsigned left = 0;
    for (unsigned v : sync) left += v;
    // the per-pair path's GEMVs (k_fp8_gemv_cp: x, then silu·up of its own h, quantized in the
    // blocks) give the same h and y bit for bit
    std::vector<float> h2(h.size(), NAN), y2(y.size(), NAN);
    fp8_args pg = gu, pd = dn;
    pg.out.p = h2.data();
    pg.xin = m.x;
    pd.out.p = y2.data();
    pd.xin = pg.out;
    pd.xsilu = 1;
    for (int phase = 0; phase < 2; phase++) {
        const fp8_args &f = phase ? pd : pg;
        emu_grid({(unsigned)k, fp8_gemv_row_blocks(f), 1}, 256, fp8_cp_smem(f.G, 1), [&] { k_fp8_gemv_cp<1>(f); });
    }
    int pair_diff = memcmp(h2.data(), h.data(), h.size() * 4) != 0 || memcmp(y2.data(), y.data(), y.size() * 4) != 0;
    ok = bad == 0 && rh < 1e-5 && ry < 1e-5 && mism == 0 && left == 0 && !pair_diff;
    printf("one H=%d I=%d E=%d k=%d grid=%u: h rel L2 %.2e, y %.2e, nonfinite %d, sum != j-order sum or rerun %d, "
           "counters left %u, h/y != the per-pair GEMVs' %d -> %s\n", H, I, E, k, grid, rh, ry, bad, mism, left,
           pair_diff, ok ? "ok" : "FAIL");
    return ok;
}

int main(void)
{
    int ok = 1;
    ok &= run_case(256, 128, 8, 3, 5);   // one group of I: 64-row down blocks, more blocks than a pair's items
    ok &= run_case(336, 192, 6, 4, 7);   // partial groups of H and I, a partial last row block of down
    ok &= run_case(384, 320, 16, 5, 3);  // few blocks: each takes many items of both phases, stages reused
    ok &= run_case(272, 96, 5, 2, 40);   // more blocks than items: some take none
    printf("%s\n", ok ? "ALL OK" : "SOME FAILED");
    return !ok;
}
