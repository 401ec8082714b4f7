# kernels/dev/moe_probe.py FP8_CU [wg]: rewrites kernels/cuda/fp8.cu in place with clock64 probes
# in k_fp8_moe_ws (the grouped FP8 MoE GEMM the default runs at 128-row tiles, launched
# persistent: `wsp`): per consumer warpgroup, summed over its (weight block, 128-group) steps,
# the waits for a step's tiles to land (full), the wgmma issue, the wait for the products,
# the promotion into the accumulator (with the stage's release) and the staging of finished
# weight blocks (the wait for the tile, its writes); per producer (its one thread) the waits for free stages and the boxes' issue. Three
# blocks of the 7th and 8th launches record (block 0, the middle one, the last: the timing's
# first call after its 3 warm-ups, gate_up then down, when a test runs one shape), and
# a one-thread kernel launched after each k_fp8_moe_ws prints the new ones (a printf inside
# would make ptxas serialise the wgmmas, C7510; as attn_probe.py).
# A measuring variant, never committed: build it with variants.sh and put the source back, e.g.
#   cp kernels/cuda/fp8.cu /tmp/fp8.cu && python3 kernels/dev/moe_probe.py kernels/cuda/fp8.cu &&
#   kernels/dev/variants.sh build kernels/cuda/fp8.cu /tmp/v moeprobe=""; cp /tmp/fp8.cu kernels/cuda/fp8.cu
#   SL_CUDA_MOE_FP8_WG=4 /tmp/v/moeprobe/test_backend_ops --perf --filter moe_experts_fp8 --min-tokens 4096 | grep PROBE
# Against the products' own time (a step is 4 k32 wgmmas of m64 × 128 × 32 a warpgroup: 2 · 64 ·
# 128 · 128 FLOP at the SM's share of the fp8 mma rate, ~270 cycles on an H100) the phases say
# where a step's time goes. Each probe goes in beside whole lines of fp8.cu; an assertion names
# a line that moved.
#
# With `wg`, k_fp8_moe_wg instead (the grouped GEMM at 32 / 64-row tiles, what Coder-Next's
# ~1000-token prompts run, one item a block): its thread 0's phases (the prologue up to the
# tile's rows, the waits for a step's copies and the barrier, the copies' issue, the wait for
# the weight box, the products, the promotion, the stores), summed over every block of the
# 7th and 8th launches at Coder-Next's expert shapes (H 2048, I 512, 32-row tiles: gate_up,
# then down; launches at other shapes are not counted), with the blocks' summed and the
# launch's first-start-to-last-end globaltimer nanoseconds: Σ block ns / (span · blocks an SM ·
# SMs) is how full the SMs' slots were; and the blocks past the plan's tiles (the grid's bound)
# with how long after the span the last of them left.
import sys
from functools import partial

import probe_edit

p = sys.argv[1]
lines = open(p).read().split("\n")
find, replace, at = (partial(f, lines) for f in (probe_edit.find, probe_edit.replace, probe_edit.at))
# the globaltimer (ns) both probes stamp their records with
MOE_GT = r"""__device__ __forceinline__ unsigned long long moe_gt() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }"""


def wg_probe():
    k = find("    k_fp8_moe_wg(const __grid_constant__ fp8_args a, cu_moe_plan p)") - 2
    lines[k:k] = (r"""__device__ int moe_wgp_launch;
// 7 phases, block ns, blocks, empty blocks (past the plan's tiles); first start, last end, last empty exit
__device__ unsigned long long moe_wgp_sum[10], moe_wgp_first = ~0ull, moe_wgp_last, moe_wgp_exit;
""" + MOE_GT + r"""
__host__ __device__ __forceinline__ bool moe_wgp_shape(int bt, int N, int K) { return bt == 32 && ((N == 1024 && K == 2048) || (N == 2048 && K == 512)); }
__global__ void k_moe_wgp_print(int match)
{
    cu_pdl_wait(); // the kernel before has finished
    if (!match) return;
    if (moe_wgp_launch >= 6 && moe_wgp_launch < 8) {
        const unsigned long long *s = moe_wgp_sum, n = s[8] ? s[8] : 1;
        printf("PROBE moe_wg launch %d: %llu blocks, a block's mean cycles: prologue %llu wait+bar %llu issue %llu "
               "box %llu mma %llu promote %llu store %llu; Σ block ns %llu, span %llu ns; %llu empty blocks, the last "
               "out %lld ns after the span\n", moe_wgp_launch, s[8], s[0] / n, s[1] / n, s[2] / n, s[3] / n, s[4] / n,
               s[5] / n, s[6] / n, s[7], moe_wgp_last - moe_wgp_first, s[9],
               moe_wgp_exit ? (long long)(moe_wgp_exit - moe_wgp_last) : 0ll);
    }
    for (int i = 0; i < 10; i++) moe_wgp_sum[i] = 0;
    moe_wgp_first = ~0ull, moe_wgp_last = moe_wgp_exit = 0;
    moe_wgp_launch++;
}""").split("\n")
    k = find("    k_fp8_moe_wg(const __grid_constant__ fp8_args a, cu_moe_plan p)")
    replace("""    int r0, rows;
    if (!moe_tile_of<BT>(a, p, xr, e, r0, rows)) return;""", """    int r0, rows;
    const long long pt0 = clock64();
    const unsigned long long pg0 = moe_gt();
    long long ph[7] = {0, 0, 0, 0, 0, 0, 0}, pt = pt0;
    auto lap = [&](int i) { const long long t = clock64(); ph[i] += t - pt; pt = t; };
    const bool probe_on = threadIdx.x == 0 && moe_wgp_shape(BT, a.N, a.K) && moe_wgp_launch >= 6 && moe_wgp_launch < 8;
    if (!moe_tile_of<BT>(a, p, xr, e, r0, rows)) {
        if (probe_on) atomicAdd(&moe_wgp_sum[9], 1ull), atomicMax(&moe_wgp_exit, moe_gt());
        return;
    }
    lap(0);""", k)
    # the step loop's phases: a lap after each line (the copies' wait + barrier, the issue, the
    # weight box, the products, the promotion; the stores between steps), then one record a block
    at("            tc_wait<S - 2>(); // groups 0..g landed (g + S - 1 committed)", "            lap(6);", False, k)
    for line, ph in (("            land();", 1), ("            load(); // step g + S - 1, into step g - 1's stage", 2),
                     ("            if (a.tma) wg_mbar_wait(bar + 8 * (g % S), (g / S) & 1); // and its weight tile", 3),
                     ("            wg_wait<0>();", 4), ("            promote(g, p0);", 5)):
        at(line, f"            lap({ph});", True, k)
    i = find("        finish(g - 1);", k) + 2  # the kernel's closing brace, past the loop's
    assert lines[i] == "}", lines[i]
    lines[i:i] = """    lap(6);
    if (probe_on) {
        const unsigned long long g1 = moe_gt();
        for (int i = 0; i < 7; i++) atomicAdd(&moe_wgp_sum[i], (unsigned long long)ph[i]);
        atomicAdd(&moe_wgp_sum[7], g1 - pg0);
        atomicAdd(&moe_wgp_sum[8], 1ull);
        atomicMin(&moe_wgp_first, pg0);
        atomicMax(&moe_wgp_last, g1);
    }""".split("\n")
    at("    for (int g = 0; g < S - 1; g++) load();", "    lap(2); // the first stages' copies", True, k)
    at("        cu_launch(b, k_fp8_moe_wg<BM>, grid, dim3(TC_THREADS), wg8_cfg<BM>::SMEM, a, p);",
       "        cu_launch(b, k_moe_wgp_print, dim3(1), dim3(1), 0, (int)moe_wgp_shape(BM, a.N, a.K));", True, k)


if len(sys.argv) > 2 and sys.argv[2] == "wg":
    wg_probe()
    open(p, "w").write("\n".join(lines))
    sys.exit(0)


# the records and their printer, above the kernel
k = find("__global__ void __launch_bounds__(WS8_THREADS, 1) k_fp8_moe_ws(const __grid_constant__ fp8_args a, cu_moe_plan p)")
lines[k:k] = (r"""__device__ int moe_probe_n, moe_probe_shown, moe_probe_launch;
__device__ long long moe_probe_rec[24][12]; // who, block, blocks, steps, items, 5 phases, total, -
""" + MOE_GT + r"""
__device__ unsigned long long moe_probe_ns[24];
__global__ void k_moe_probe_print(int)
{
    cu_pdl_wait(); // the kernel before has finished (it triggers its dependents at its start)
    for (int n = min(moe_probe_n, 24); moe_probe_shown < n; moe_probe_shown++) {
        const long long *r = moe_probe_rec[moe_probe_shown];
        const unsigned long long ns = moe_probe_ns[moe_probe_shown];
        if (r[0] < 0)
            printf("PROBE moe_ws producer blk %lld/%lld steps %lld items %lld: waiting for stages %lld issuing %lld, "
                   "total %lld cycles, %llu ns\n", r[1], r[2], r[3], r[4], r[5], r[6], r[10], ns);
        else
            printf("PROBE moe_ws consumer %lld blk %lld/%lld steps %lld items %lld: full %lld issue %lld wait %lld "
                   "promote %lld store %lld, total %lld cycles, %llu ns\n", r[0], r[1], r[2], r[3], r[4], r[5], r[6],
                   r[7], r[8], r[9], r[10], ns);
    }
    moe_probe_launch++;
}
// one record: who (-1 the producer, else the consumer warpgroup), its counts and phases
__device__ __forceinline__ void moe_probe_put(int who, int steps, int items, const long long (&ph)[5], long long total,
                                              unsigned long long ns)
{
    if (moe_probe_launch < 6 || moe_probe_launch >= 8) return; // the 4th call's gate_up and down (3 warm-ups)
    const int i = atomicAdd(&moe_probe_n, 1);
    if (i >= 24) return;
    long long *r = moe_probe_rec[i];
    r[0] = who, r[1] = blockIdx.x, r[2] = gridDim.x, r[3] = steps, r[4] = items;
    for (int j = 0; j < 5; j++) r[5 + j] = ph[j];
    r[10] = total;
    moe_probe_ns[i] = ns;
}""").split("\n")
k = find("__global__ void __launch_bounds__(WS8_THREADS, 1) k_fp8_moe_ws(const __grid_constant__ fp8_args a, cu_moe_plan p)")

# the block's start, whether it records, its item count
replace("""    int n = 0; // this block's steps: those of each of its items, in a row
    for (int w = blockIdx.x; w < n_items; w += gridDim.x) n += ws8_steps(a, w);""",
        """    int n = 0, probe_items = 0; // this block's steps: those of each of its items, in a row
    for (int w = blockIdx.x; w < n_items; w += gridDim.x) n += ws8_steps(a, w), probe_items++;
    const bool probe_blk = blockIdx.x == 0 || blockIdx.x == gridDim.x / 2 || blockIdx.x == gridDim.x - 1;
    const long long probe_t0 = clock64();
    const unsigned long long probe_g0 = moe_gt();
    long long ph[5] = {0, 0, 0, 0, 0}, t1;""", k)

# producer: the waits for free stages and the boxes' issue
replace("""            if (u >= S) wg_mbar_wait(empty + 8 * st, (u / S - 1) & 1);""",
        """            t1 = clock64();
            if (u >= S) wg_mbar_wait(empty + 8 * st, (u / S - 1) & 1);
            ph[0] += clock64() - t1;
            t1 = clock64();""", k)
replace("""            wg_tma_load2(sc + TC_BN * 4, &a.tsx, it.r0 & ~3, g, bar);
        }
        return;""", """            wg_tma_load2(sc + TC_BN * 4, &a.tsx, it.r0 & ~3, g, bar);
            ph[1] += clock64() - t1;
        }
        if (probe_blk) moe_probe_put(-1, n, probe_items, ph, clock64() - probe_t0, moe_gt() - probe_g0);
        return;""", k)

# consumers (v81: a step's issue and promotion are lambdas, the products' waits in the loop):
# a step's wait for its tiles, the issue, the products' wait, the promotion, the stores
replace("""        wg_mbar_wait(full + 8 * st, (u / S) & 1);
        const uint32_t t = s0 + st * WS8_STAGE;""", """        long long t3 = clock64();
        wg_mbar_wait(full + 8 * st, (u / S) & 1);
        ph[0] += clock64() - t3;
        t3 = clock64();
        const uint32_t t = s0 + st * WS8_STAGE;""", k)
replace("""        wg_commit();
    };""", """        wg_commit();
        ph[1] += clock64() - t3;
    };""", k)
replace("""        const int st = u % S;
        wg_hold(part);""", """        const int st = u % S;
        long long t3 = clock64();
        wg_hold(part);""", k)
replace("""        if (lane == 0) wg_mbar_arrive(empty + 8 * st);
        if (++kg == a.G) { // a weight block done (the storers done with the tile before)""",
        """        if (lane == 0) wg_mbar_arrive(empty + 8 * st);
        ph[3] += clock64() - t3;
        t3 = clock64();
        if (++kg == a.G) { // a weight block done (the storers done with the tile before)""", k)
replace("""            wg_mbar_arrive(ofull);
            nst++;
        }""", """            wg_mbar_arrive(ofull);
            nst++;
            ph[4] += clock64() - t3;
        }""", k)
# the products' waits: each wait_group (in `ahead` and the loop's tail); then, at the kernel's end,
# one record a consumer
i = find("    auto ahead = [&](float(&cur)[F][4], float(&nxt)[F][4], int u) {", k)
e = next(x for x in range(i, len(lines)) if lines[x] == "}")
for j in range(i, e):
    if "wg_wait<" in lines[j]:
        ind = lines[j][:len(lines[j]) - len(lines[j].lstrip())]
        lines[j] = ind + "{ const long long t2 = clock64(); " + lines[j].strip() + " ph[2] += clock64() - t2; }"
lines[e:e] = ["    if ((threadIdx.x == 128 || threadIdx.x == 256) && probe_blk)",
              "        moe_probe_put(wg, n, probe_items, ph, clock64() - probe_t0, moe_gt() - probe_g0);"]

# the print kernel after each launch of the kernel (host side: its records are complete by then)
i = find("        cu_launch(b, k_fp8_moe_ws, grid, dim3(WS8_THREADS), WS8_SMEM, a, p);", k)
lines[i + 1:i + 1] = ["        cu_launch(b, k_moe_probe_print, dim3(1), dim3(1), 0, 0);"]
open(p, "w").write("\n".join(lines))
