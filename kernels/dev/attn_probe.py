# kernels/dev/attn_probe.py ATTENTION_CU: rewrites kernels/cuda/attention.cu in place with
# clock64 / globaltimer probes in k_attn_ws (the default prefill attention where the K/V
# tiles go by TMA, v74): per consumer warpgroup, summed over its key tiles, the waits for a
# tile to land (full), for its turn, the S product's issue and its wait, the softmax (mask,
# online max / exp / sum, O's rescale, P's packing), and P·V issued and waited; per producer
# the waits for a stage to be released (empty). Lane 0 of the producer's warp 0 and of each
# consumer warpgroup's first warp record theirs for three blocks of a launch (the first 12
# records of each head_dim); a one-thread kernel launched after each attention prints the
# new ones (device printf: a call in k_attn_ws itself would make ptxas serialise its
# wgmmas, C7510).
# A measuring variant, never committed: build it with variants.sh and put the source back, e.g.
#   cp kernels/cuda/attention.cu /tmp/attention.cu && python3 kernels/dev/attn_probe.py kernels/cuda/attention.cu &&
#   kernels/dev/variants.sh build kernels/cuda/attention.cu /tmp/v probe=""; cp /tmp/attention.cu kernels/cuda/attention.cu
#   /tmp/v/probe/test_backend_ops --perf --filter attention | grep PROBE
# Against the products' own time (per tile and warpgroup, m64 × BC keys × D both ways:
# 2 · 64 · BC · D · 2 FLOP at the SM's share of the mma rate) the phases say where a tile's
# time goes. Each probe goes in beside whole lines of attention.cu; an assertion names a
# line that moved.
import sys
from functools import partial

import probe_edit

p = sys.argv[1]
lines = open(p).read().split("\n")
at, replace = partial(probe_edit.at, lines), partial(probe_edit.replace, lines)


# the kernel's first line: everything below is searched from there
k = [i for i, l in enumerate(lines) if "k_attn_ws(const __grid_constant__ cu_attn_args a)" in l]
assert len(k) == 1, k
k = k[0]
lines[k:k] = r"""__device__ int attn_probe_n[3], attn_probe_shown[3]; // a set for each D (64, 128, 256)
__device__ long long attn_probe_rec[3][12][14]; // who, D, block, blocks, tiles, nt, 7 phases, total
__device__ unsigned long long attn_probe_ns[3][12];
__device__ __forceinline__ unsigned long long attn_gt() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
__global__ void k_attn_probe_print(int)
{
    cu_pdl_wait(); // the kernel before has finished (it triggers its dependents at its start)
    for (int d = 0; d < 3; d++)
    for (int n = min(attn_probe_n[d], 12); attn_probe_shown[d] < n; attn_probe_shown[d]++) {
        const long long *r = attn_probe_rec[d][attn_probe_shown[d]];
        const unsigned long long ns = attn_probe_ns[d][attn_probe_shown[d]];
        if (r[0] < 0)
            printf("PROBE ws<%lld> producer blk %lld/%lld tiles %lld: empty waits %lld, total %lld cycles, %llu ns\n", r[1],
                   r[2], r[3], r[5], r[6], r[13], ns);
        else
            printf("PROBE ws<%lld> consumer %lld blk %lld/%lld tiles %lld/%lld: full %lld turn %lld S-issue %lld S-wait %lld "
                   "softmax %lld PV-issue %lld PV-wait %lld, total %lld cycles, %llu ns\n", r[1], r[0], r[2], r[3], r[4],
                   r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], ns);
    }
}
// one record: who (-1 the producer, else the consumer warpgroup), its counts and phases
__device__ __forceinline__ void attn_probe_put(int who, int D, int tiles, int nt, const long long (&ph)[7],
                                               long long total, unsigned long long ns)
{
    const int d = D == 256 ? 2 : D == 128 ? 1 : 0, i = atomicAdd(&attn_probe_n[d], 1);
    if (i >= 12) return;
    long long *r = attn_probe_rec[d][i];
    r[0] = who, r[1] = D, r[2] = blockIdx.x, r[3] = gridDim.x, r[4] = tiles, r[5] = nt;
    for (int j = 0; j < 7; j++) r[6 + j] = ph[j];
    r[13] = total;
    attn_probe_ns[d][i] = ns;
}
template <int D>""".split("\n")
# the template line that was above the kernel now stands twice: drop the original
assert lines[k - 1] == "template <int D>", lines[k - 1]
del lines[k - 1]
k += 2

# whether this block prints: three blocks of the first launches (the grid is longest first)
at("    const int nt = (tl.kend - tl.kbeg + BC - 1) / BC;", r"""    const bool probe_blk = blockIdx.x == 0 || blockIdx.x == gridDim.x / 2 || blockIdx.x == gridDim.x - 1;
    const long long probe_t0 = clock64();
    const unsigned long long probe_g0 = attn_gt();""", start=k)

# producer (TMA): the empty waits and the rest of its loop
at("        for (int t = 0; t < nt; t++) {", "        long long pe = 0, pt1;", after=False, start=k)
replace("""            if (t >= S) wg_mbar_wait(empty + 8 * (t % S), (t / S - 1) & 1);""",
        """            pt1 = clock64();
            if (t >= S) wg_mbar_wait(empty + 8 * (t % S), (t / S - 1) & 1);
            pe += clock64() - pt1;""", k)
replace("""                if (lane < nb) fa_tma_box<D, BC>(a, tl, s0, lane, row, bar, vbar);
            }
        }
        return;""", r"""                if (lane < nb) fa_tma_box<D, BC>(a, tl, s0, lane, row, bar, vbar);
            }
        }
        if (threadIdx.x == 0 && probe_blk)
            attn_probe_put(-1, D, nt, nt, {pe, 0, 0, 0, 0, 0, 0}, clock64() - probe_t0, attn_gt() - probe_g0);
        return;""", k)

# consumers: the phases of each tile
replace("""    for (int t = 0; t < nt; t++) {
        wg_mbar_wait(full + 8 * (t % S), (t / S) & 1);""", """    long long ph[7] = {0, 0, 0, 0, 0, 0, 0}, t1;
    int probe_tiles = 0;
    for (int t = 0; t < nt; t++) {
        t1 = clock64();
        wg_mbar_wait(full + 8 * (t % S), (t / S) & 1);
        ph[0] += clock64() - t1;""", k)
replace("""        } else { // the products in one branch: ptxas serialises wgmma split over several (C7518)
            turn(t);
            fa_wg_s<BC, D, 128>(s, dq, wg_desc(st, 16, 1024));
            pass(t);
            fa_wg_tile<D, BC>(s, o, j0 + BC > warp_lo, j0, q, limr, m, l, sl2,
                              wg_desc(st + (uint32_t)C::KV, BC * 128, 1024),
                              [&] { wg_mbar_wait(fullv + 8 * (t % S), (t / S) & 1); });
        }""", """        } else { // the products in one branch: ptxas serialises wgmma split over several (C7518)
            probe_tiles++;
            t1 = clock64();
            turn(t);
            ph[1] += clock64() - t1;
            t1 = clock64();
            fa_wg_s<BC, D, 128>(s, dq, wg_desc(st, 16, 1024));
            pass(t);
            ph[2] += clock64() - t1;
            t1 = clock64();
            float c[2];
            uint32_t pa[BC / 16][4];
            wg_wait<0>();
            wg_hold(s);
            ph[3] += clock64() - t1;
            t1 = clock64();
            if (j0 + BC > warp_lo) fa_mask(s, j0, q, limr);
            fa_softmax_p(s, m, l, c, sl2);
            fa_rescale(o, c);
#pragma unroll
            for (int kk = 0; kk < BC / 16; kk++) fa_p_frag(pa[kk], s, kk);
            ph[4] += clock64() - t1;
            t1 = clock64();
            wg_mbar_wait(fullv + 8 * (t % S), (t / S) & 1); // V, where it lands apart (counted as full)
            ph[0] += clock64() - t1;
            t1 = clock64();
            fa_wg_pv<D, BC>(o, pa, wg_desc(st + (uint32_t)C::KV, BC * 128, 1024));
            ph[5] += clock64() - t1;
            t1 = clock64();
            wg_wait<0>();
            wg_hold(o);
            ph[6] += clock64() - t1;
        }""", k)
at("    fa_store<D>(a, tl, R0, g, q, o, m, l);", r"""    if ((threadIdx.x == 128 || threadIdx.x == 256) && probe_blk)
        attn_probe_put(wgi, D, probe_tiles, nt, ph, clock64() - probe_t0, attn_gt() - probe_g0);""",
   after=False, start=k)
# the print kernel after each attention (host side: its records are complete by then)
at("                            : attn_run_d<256>(b, a, cm, level, Hkv, kind);",
   "    cu_launch(b, k_attn_probe_print, dim3(1), dim3(1), 0, 0);", start=k)
open(p, "w").write("\n".join(lines))
