// kernels/dev/emu/gdn_driver.cpp: a decode batch (one new token a sequence; fresh and
// continuing states, a track snapshot, sequences in scattered state slots) through the
// fused decode k_gdn (conv1d, the recurrence and rmsnorm_gated with FP8 codes in one
// kernel) and through k_conv1d, k_gdn and k_norm_warp in turn, on random bf16 inputs:
// every output, both state pools (snapshot slots too) and the codes must agree bit for
// bit. Appended to the kernel code by emu.py.
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

int main(void)
{
    int ok = 1;
    ok &= run_case<128, 2>(2, 128, 3); // Qwen3-Next's shape: two value heads a key head
    ok &= run_case<128, 1>(2, 128, 2); // one a key head
    ok &= run_case<64, 2>(1, 128, 4);  // k_dim 64
    printf("%s\n", ok ? "ALL OK" : "SOME FAILED");
    return !ok;
}
