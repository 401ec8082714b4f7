// kernels/dev/emu/gdn_driver.cpp: a decode batch (one new token a sequence; fresh and
// continuing states, a track snapshot, sequences in scattered state slots) through the
// fused decode k_gdn (conv1d, the recurrence and rmsnorm_gated with FP8 codes in one
// kernel) and through k_conv1d, k_gdn and k_norm_warp in turn, on random bf16 inputs:
// every output, both state pools (snapshot slots too) and the codes must agree bit for
// bit. And prompts through the chunked forms (the single kernel k_gdn_chunk, the split
// k_gdn_prep + k_gdn_scan; shorter sequences recurrent, as cu_gdn
// dispatches): both stay within tolerance of every sequence run through the recurrent k_gdn
// (outputs 1e-2, final states and snapshots 5e-3: the GPU op test's; the split form's records
// are bf16, NOTES v83), and the split form's distance to the single kernel is printed. Appended to the kernel code by emu.py.
static uint64_t rs = 0x853c49e6748fea9bull;
static uint32_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (uint32_t)rs; }
static float runif(float lo, float hi) { return lo + (hi - lo) * (rnd() >> 8) / 16777216.0f; }

typedef std::vector<__nv_bfloat16> bvec;
static bvec brand(size_t n, float lo, float hi)
{
    bvec v(n);
    for (auto &x : v) x = __float2bfloat16_rn(runif(lo, hi));
    return v;
}

template <int DK, int HB>
static int run_case(int Hk, int Dv, int n_seqs)
{
    const int Hv = Hk * HB, K = 4, C = 2 * Hk * DK + Hv * Dv, VD = Hv * Dv, slots = 2 * n_seqs + 2, G = VD / 128;
    bvec mixed = brand((size_t)n_seqs * C, -2, 2), zb = brand((size_t)n_seqs * VD, -2, 2);
    bvec ab = brand((size_t)n_seqs * Hv, -2, 2), bb = brand((size_t)n_seqs * Hv, -2, 2), gw = brand(Dv, 0.5f, 1.5f);
    bvec cw = brand((size_t)C * K, -0.5f, 0.5f);
    std::vector<float> A_log(Hv), dt_bias(Hv), cst0((size_t)slots * C * (K - 1)), ssm0((size_t)slots * Hv * DK * Dv);
    for (auto &v : A_log) v = runif(-1, 1);
    for (auto &v : dt_bias) v = runif(-1, 1);
    for (auto &v : cst0) v = runif(-1, 1);
    for (auto &v : ssm0) v = runif(-0.1f, 0.1f);
    std::vector<int32_t> q_start(n_seqs + 1), slot(n_seqs), fresh(n_seqs), tslot(n_seqs), tlen(n_seqs);
    for (int s = 0; s <= n_seqs; s++) q_start[s] = s;
    for (int s = 0; s < n_seqs; s++) {
        slot[s] = (s * 5 + 1) % slots; // scattered
        fresh[s] = s % 3 == 1;
        tslot[s] = s % 2 == 0 ? n_seqs + 1 + s / 2 : -1; // a snapshot after the token
        tlen[s] = 1;
    }
    struct outs {
        bvec conv, core, normed;
        std::vector<uint8_t> codes;
        std::vector<float> scales, cst, ssm;
    } o[2];
    for (int f = 0; f < 2; f++) {
        outs &r = o[f];
        r.conv.assign((size_t)n_seqs * C, __float2bfloat16_rn(NAN));
        r.core.assign((size_t)n_seqs * VD, __float2bfloat16_rn(NAN));
        r.normed.assign((size_t)n_seqs * VD, __float2bfloat16_rn(NAN));
        r.codes.assign((size_t)n_seqs * VD, 0xff);
        r.scales.assign((size_t)n_seqs * G, NAN);
        r.cst = cst0;
        r.ssm = ssm0;
        cu_mat Mx = {mixed.data(), SL_DTYPE_BF16, n_seqs, C, C}, Cv = {r.conv.data(), SL_DTYPE_BF16, n_seqs, C, C};
        cu_mat Cw = {cw.data(), SL_DTYPE_BF16, C, K, K};
        cu_gdn_args g = {{r.core.data(), SL_DTYPE_BF16, n_seqs, VD, VD},
                         Cv,
                         {ab.data(), SL_DTYPE_BF16, n_seqs, Hv, Hv},
                         {bb.data(), SL_DTYPE_BF16, n_seqs, Hv, Hv},
                         A_log.data(), dt_bias.data(), SL_DTYPE_F32, SL_DTYPE_F32, r.ssm.data(), Hk, Hv, Dv,
                         q_start.data(), slot.data(), fresh.data(), tslot.data(), tlen.data()};
        cu_gdn_fuse fu;
        memset(&fu, 0, sizeof fu);
        fu.mixed = Mx; fu.conv_w = Cw; fu.conv_state = r.cst.data(); fu.K = K;
        cu_norm_args &na = fu.norm;
        na.out = {r.normed.data(), SL_DTYPE_BF16, n_seqs, VD, VD};
        na.x = g.out;
        na.z = {zb.data(), SL_DTYPE_BF16, n_seqs, VD, VD};
        na.w = {gw.data(), SL_DTYPE_BF16, 1, Dv, Dv};
        na.eps = 1e-6f;
        na.groups_per_row = Hv;
        na.q = {r.codes.data(), r.scales.data(), G};
        if (f == 0) { // the three kernels
            cu_gdn_fuse none;
            memset(&none, 0, sizeof none);
            emu_grid({(unsigned)(C + 127) / 128, (unsigned)n_seqs, 1}, 128, 0, [&] {
                k_conv1d(Cv, Mx, Cw, r.cst.data(), K, q_start.data(), slot.data(), fresh.data(), tslot.data(), tlen.data());
            });
            emu_grid({(unsigned)(n_seqs * Hv), 1, 1}, 2 * Dv, 0, [&] { k_gdn<DK, 1, false, false>(g, INT_MAX, none); });
            emu_grid({(unsigned)(n_seqs * Hv + 7) / 8, 1, 1}, 256, 0,
                     [&] { k_norm_warp<true, true>(na, (int64_t)n_seqs * Hv); });
        } else {
            emu_grid({(unsigned)(n_seqs * (Hv / HB)), 1, 1}, HB * 2 * Dv, 0, [&] { k_gdn<DK, HB, true, true>(g, INT_MAX, fu); });
        }
    }
    auto same = [](const void *a, const void *b, size_t n) { return memcmp(a, b, n) == 0; };
    int d_conv = !same(o[0].conv.data(), o[1].conv.data(), o[0].conv.size() * 2);
    int d_core = !same(o[0].core.data(), o[1].core.data(), o[0].core.size() * 2);
    int d_norm = !same(o[0].normed.data(), o[1].normed.data(), o[0].normed.size() * 2);
    int d_codes = !same(o[0].codes.data(), o[1].codes.data(), o[0].codes.size()) ||
                  !same(o[0].scales.data(), o[1].scales.data(), o[0].scales.size() * 4);
    int d_cst = !same(o[0].cst.data(), o[1].cst.data(), o[0].cst.size() * 4);
    int d_ssm = !same(o[0].ssm.data(), o[1].ssm.data(), o[0].ssm.size() * 4);
    int unwritten = 0;
    for (auto v : o[1].normed) unwritten += std::isnan(__bfloat162float(v));
    for (auto v : o[1].scales) unwritten += std::isnan(v);
    int ok = !(d_conv | d_core | d_norm | d_codes | d_cst | d_ssm) && unwritten == 0 && o[0].cst != cst0 && o[0].ssm != ssm0;
    printf("gdn DK=%d HB=%d Hk=%d Dv=%d seqs=%d: differs conv %d core %d normed %d codes %d conv state %d ssm %d, "
           "unwritten %d -> %s\n", DK, HB, Hk, Dv, n_seqs, d_conv, d_core, d_norm, d_codes, d_cst, d_ssm, unwritten,
           ok ? "ok" : "FAIL");
    return ok;
}

// Relative L2 distance of a from b (both read as floats by get).
template <class V, class F> static double rel_l2(const V &a, const V &b, F get)
{
    double d = 0, n = 0;
    for (size_t i = 0; i < a.size(); i++) {
        double x = get(a[i]), y = get(b[i]);
        d += (x - y) * (x - y);
        n += y * y;
    }
    return sqrt(d / (n > 0 ? n : 1));
}

// Sequences of lens[s] new tokens (snapshot after tlen[s] when > 0) with Hk key heads of
// DK, HB value heads a key head of Dv, BV value columns a block; qkv's rows pad elements
// apart past their width (pad 1: rows not 16-byte aligned, the kernels' general loads).
template <int DK, int BV>
static int run_chunked(int Hk, int HB, int Dv, std::vector<int> lens, std::vector<int> tl, int pad = 0)
{
    const int n_seqs = (int)lens.size(), Hv = Hk * HB, C = 2 * Hk * DK + Hv * Dv, VD = Hv * Dv;
    const int slots = 2 * n_seqs;
    std::vector<int32_t> q_start(n_seqs + 1, 0), slot(n_seqs), fresh(n_seqs), tslot(n_seqs), tlen(n_seqs);
    for (int s = 0; s < n_seqs; s++) {
        q_start[s + 1] = q_start[s] + lens[s];
        slot[s] = n_seqs - 1 - s; // scattered, snapshots after them
        fresh[s] = s % 2;
        tslot[s] = tl[s] > 0 ? n_seqs + s : -1;
        tlen[s] = tl[s];
    }
    const int T = q_start[n_seqs];
    bvec qkv = brand((size_t)T * (C + pad), -1, 1), ab = brand((size_t)T * Hv, -3, 1), bb = brand((size_t)T * Hv, -2, 2);
    std::vector<float> A_log(Hv), dt_bias(Hv), ssm0((size_t)slots * Hv * DK * Dv);
    for (auto &v : A_log) v = runif(-1, 0.5f);
    for (auto &v : dt_bias) v = runif(-1, 1);
    for (auto &v : ssm0) v = runif(-0.2f, 0.2f);
    struct outs {
        bvec out;
        std::vector<float> ssm;
    } o[3]; // recurrent, single, split
    int64_t n_chunks = 0;
    for (int s = 0; s < n_seqs; s++) n_chunks += gdn_nchunks(lens[s], tl[s] > 0 ? tl[s] : -1, GDN_CHUNK_MIN);
    for (int f = 0; f < 3; f++) {
        outs &r = o[f];
        r.out.assign((size_t)T * VD, __float2bfloat16_rn(NAN));
        r.ssm = ssm0;
        cu_gdn_args g = {{r.out.data(), SL_DTYPE_BF16, T, VD, VD},
                         {qkv.data(), SL_DTYPE_BF16, T, C, C + pad},
                         {ab.data(), SL_DTYPE_BF16, T, Hv, Hv},
                         {bb.data(), SL_DTYPE_BF16, T, Hv, Hv},
                         A_log.data(), dt_bias.data(), SL_DTYPE_F32, SL_DTYPE_F32, r.ssm.data(), Hk, Hv, Dv,
                         q_start.data(), slot.data(), fresh.data(), tslot.data(), tlen.data()};
        cu_gdn_fuse none;
        memset(&none, 0, sizeof none);
        unsigned tiles = (unsigned)(n_seqs * Hv * (Dv / BV));
        emu_grid({(unsigned)(n_seqs * Hv), 1, 1}, 2 * Dv, 0,
                 [&] { k_gdn<DK, 1, false, false>(g, f ? GDN_CHUNK_MIN - 1 : INT_MAX, none); });
        if (f == 1) {
            emu_grid({tiles, 1, 1}, 256, gdn_smem<DK, BV>::BYTES, [&] { k_gdn_chunk<DK, BV>(g, GDN_CHUNK_MIN); });
        } else if (f == 2) {
            std::vector<gdn_rt> rec((size_t)(n_chunks * Hv * gdn_rec<DK>::size(Dv)), __float2bfloat16_rn(NAN));
            emu_grid({(unsigned)n_chunks, (unsigned)Hv, 1}, 256, gdn_prep_smem<DK>::BYTES,
                     [&] { k_gdn_prep<DK>(g, GDN_CHUNK_MIN, n_seqs, rec.data()); });
            // the split scan at the case's BV (cu_gdn takes 32 or 64 columns a block)
            emu_grid({tiles, 1, 1}, 256, gdn_scan_smem<DK, BV>::BYTES, [&] {
                k_gdn_scan<DK, BV>(g, GDN_CHUNK_MIN, rec.data());
                SL_ASSERT(emu_wg_idle());
            });
        }
    }
    auto bf = [](__nv_bfloat16 v) { return (double)__bfloat162float(v); };
    auto fl = [](float v) { return (double)v; };
    double d_out = rel_l2(o[2].out, o[1].out, bf), d_ssm = rel_l2(o[2].ssm, o[1].ssm, fl);
    double e_out = std::max(rel_l2(o[1].out, o[0].out, bf), rel_l2(o[2].out, o[0].out, bf));
    double e_ssm = std::max(rel_l2(o[1].ssm, o[0].ssm, fl), rel_l2(o[2].ssm, o[0].ssm, fl));
    int unwritten = 0;
    for (int f = 0; f < 3; f++)
        for (auto v : o[f].out) unwritten += std::isnan(__bfloat162float(v));
    int ok = e_out < 1e-2 && e_ssm < 5e-3 && unwritten == 0 && o[2].ssm != ssm0;
    printf("gdn chunked DK=%d BV=%d Hk=%d HB=%d Dv=%d pad=%d lens", DK, BV, Hk, HB, Dv, pad);
    for (int s = 0; s < n_seqs; s++) printf(" %d/%d", lens[s], tl[s]);
    printf(": split vs single out %.1e ssm %.1e, vs recurrent out %.1e ssm %.1e, unwritten %d -> %s\n", d_out, d_ssm, e_out,
           e_ssm, unwritten, ok ? "ok" : "FAIL");
    return ok;
}

// Sequences of lens[s] new tokens through the parallel conv1d (k_conv1d_par, tiles of
// CONV_TT tokens that span sequences) and the sequential one (k_conv1d): y bit for bit,
// for a kernel of K taps; fresh and continuing states, sequences shorter than K − 1.
template <int KM>
static int run_conv(int K, std::vector<int> lens)
{
    const int n_seqs = (int)lens.size(), C = 160, H = K - 1, slots = n_seqs + 1;
    std::vector<int32_t> q_start(n_seqs + 1, 0), slot(n_seqs), fresh(n_seqs), none(n_seqs, -1), zero(n_seqs, 0);
    for (int s = 0; s < n_seqs; s++) {
        q_start[s + 1] = q_start[s] + lens[s];
        slot[s] = n_seqs - s;
        fresh[s] = s % 3 == 2;
    }
    const int T = q_start[n_seqs];
    std::vector<int32_t> seq_of(T);
    for (int s = 0; s < n_seqs; s++)
        for (int t = q_start[s]; t < q_start[s + 1]; t++) seq_of[t] = s;
    bvec x = brand((size_t)T * C, -2, 2), w = brand((size_t)C * K, -0.5f, 0.5f);
    std::vector<float> st0((size_t)slots * C * (H > 0 ? H : 1));
    for (auto &v : st0) v = runif(-1, 1);
    bvec y[2];
    std::vector<float> st = st0;
    for (int f = 0; f < 2; f++) y[f].assign((size_t)T * C, __float2bfloat16_rn(NAN));
    cu_mat X = {x.data(), SL_DTYPE_BF16, T, C, C}, W = {w.data(), SL_DTYPE_BF16, C, K, K};
    cu_mat Y0 = {y[0].data(), SL_DTYPE_BF16, T, C, C}, Y1 = {y[1].data(), SL_DTYPE_BF16, T, C, C};
    emu_grid({(unsigned)(C + 127) / 128, (unsigned)(T + CONV_TT - 1) / CONV_TT, 1}, 128, 0, [&] {
        k_conv1d_par<KM>(Y1, X, W, st0.data(), K, q_start.data(), seq_of.data(), slot.data(), fresh.data());
    });
    emu_grid({(unsigned)(C + 127) / 128, (unsigned)n_seqs, 1}, 128, 0, [&] {
        k_conv1d(Y0, X, W, st.data(), K, q_start.data(), slot.data(), fresh.data(), none.data(), zero.data());
    });
    int differ = memcmp(y[0].data(), y[1].data(), y[0].size() * 2) != 0, unwritten = 0;
    for (auto v : y[1]) unwritten += std::isnan(__bfloat162float(v));
    int ok = !differ && unwritten == 0;
    printf("conv1d parallel KM=%d K=%d lens", KM, K);
    for (int l : lens) printf(" %d", l);
    printf(": differs %d, unwritten %d -> %s\n", differ, unwritten, ok ? "ok" : "FAIL");
    return ok;
}

int main(void)
{
    int ok = 1;
    ok &= run_conv<4>(4, {1, 2, 9, 3, 17, 6});
    ok &= run_conv<4>(2, {5, 1, 11});
    ok &= run_conv<CONV_MAXK>(6, {3, 14, 1, 8});
    ok &= run_case<128, 2>(2, 128, 3); // Qwen3-Next's shape: two value heads a key head
    ok &= run_case<128, 1>(2, 128, 2); // one a key head
    ok &= run_case<64, 2>(1, 128, 4);  // k_dim 64
    // chunk ends at a snapshot (70), a full chunk, a short prompt, one left recurrent
    ok &= run_chunked<128, 32>(1, 2, 128, {150, 64, 20, 5}, {70, 0, 17, 3});
    ok &= run_chunked<128, 64>(1, 2, 128, {130, 33}, {0, 33});
    ok &= run_chunked<64, 32>(2, 1, 64, {97, 16}, {64, 0});
    ok &= run_chunked<128, 32>(1, 2, 128, {150, 20}, {70, 0}, 1); // unaligned rows: the general loads
    { // 70 sequences, the long ones past the walks' first 32 (and one at 31)
        std::vector<int> lens(70, 1), tl(70, 0);
        for (int s = 0; s < 70; s++) lens[s] = 1 + s % 3;
        lens[31] = 40, lens[33] = 70, tl[33] = 20, lens[64] = 17, lens[69] = 65, tl[69] = 64;
        ok &= run_chunked<64, 32>(1, 1, 64, lens, tl);
    }
    printf("%s\n", ok ? "ALL OK" : "SOME FAILED");
    return !ok;
}
