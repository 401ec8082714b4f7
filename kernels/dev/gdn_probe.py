# kernels/dev/gdn_probe.py GDN_CU: rewrites kernels/cuda/gdn.cu in place with clock64 /
# globaltimer probes between the phases of k_gdn_prep (inputs, solve, W, Kd, U; the solve's own
# five phases in block 0) and k_gdn_scan (summed over the chunks: S0's store, the wait for a
# chunk's record, v_new, the state update with O),
# printed by a few blocks of the first launches (device printf). A measuring variant,
# never committed: build it with variants.sh and put the source back, e.g.
#   cp kernels/cuda/gdn.cu /tmp/gdn.cu && python3 kernels/dev/gdn_probe.py kernels/cuda/gdn.cu &&
#   kernels/dev/variants.sh build kernels/cuda/gdn.cu /tmp/v probe=""; cp /tmp/gdn.cu kernels/cuda/gdn.cu
#   /tmp/v/probe/test_backend_ops --perf --filter gdn --min-tokens 8192 --max-tokens 8192 | grep PROBE
# Each probe goes in beside one whole line of gdn.cu; an assertion names a line that moved.
import sys
from functools import partial

import probe_edit

p = sys.argv[1]
lines = open(p).read().split("\n")
at = partial(probe_edit.at, lines)


at("// ---- chunked form, split (kernels/dev/NOTES.md v15) ------------------------------", r"""__device__ int gdn_probe_n;
__device__ __forceinline__ unsigned long long gdn_gt() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
""", after=False)
# the solve's phases (block (0, 0) of k_gdn_prep, the latest launch): K Kᵀ / Q Kᵀ, the masked and
# decayed tiles with Qg (to the record), the diagonal blocks' forward substitution, the blocks
# below them (gdn_t_offdiag), T's scaling; stamps by thread 0, printed with the prep's line
at("// A chunk's local algebra once its inputs are in (after a barrier): the", r"""__device__ long long gdn_solve_t[6];
#define GDN_SOLVE_T(k) if (rec && threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) gdn_solve_t[k] = clock64()""",
   after=False)
sv = probe_edit.find(lines, "__device__ __forceinline__ void gdn_chunk_solve(TQ *Qs, const TQ *Ks, float *Ls, float *Ts, float *QKs, float *Us,")
probe_edit.replace(lines, """    int tid = threadIdx.x;
    gdn_kk_qk<DK, LK, LC>(Qs, Ks, Ls, QKs);
    __syncthreads();""", """    int tid = threadIdx.x;
    GDN_SOLVE_T(0);
    gdn_kk_qk<DK, LK, LC>(Qs, Ks, Ls, QKs);
    __syncthreads();
    GDN_SOLVE_T(1);""", start=sv)
at("    gdn_t_diag<LC>(Ls, Ts);", "    GDN_SOLVE_T(2);", after=False, start=sv)
probe_edit.replace(lines, """    gdn_t_offdiag<LC>(Ls, Ts, Us);
    __syncthreads();""", """    GDN_SOLVE_T(3);
    gdn_t_offdiag<LC>(Ls, Ts, Us);
    __syncthreads();
    GDN_SOLVE_T(4);""", start=sv)
probe_edit.replace(lines, """                Qs[i * LK + d] *= Es[i];
            }
    __syncthreads();
}""", """                Qs[i * LK + d] *= Es[i];
            }
    __syncthreads();
    GDN_SOLVE_T(5);
}""", start=sv)
# prep: inputs, solve, W, Kd, U
at("    int64_t q = blockIdx.x;",
   "    long long pt[8]; int np = 0; unsigned long long g0 = gdn_gt(); pt[np++] = clock64();", after=False)
# the inputs phase split: the chunk's lookups (gdn_chunk_seq, the gate constants), q and k
# loaded and stored, the barrier after them, the V tile's loads issued
at("    float Aexp, bias;",
   "    long long pi[4]; pi[0] = clock64();", after=False,
   start=probe_edit.find(lines, "__global__ void __launch_bounds__(256, GDN_PREP_MINB) k_gdn_prep(cu_gdn_args g, int min_len, int n_seqs, gdn_rt *rec)"))
IN = "    gdn_chunk_inputs<DK, LK>(g, Qs, Ks, Gs, Es, Bs, tb, n, qoff, koff, h, Aexp, bias);"
at(IN, "    pi[1] = clock64();")
at("    // U's first V tile in flight through the solve: loaded after its products", "    pi[2] = clock64();", after=False)
S = "    gdn_chunk_solve<DK, LK, LC>(Qs, Ks, Ls, Ts, Ts, (float *)Qs, Gs, Es, Bs, out, TLs, TGs, LT);"
at(S, "    pt[np++] = clock64(); pi[3] = pt[1];", after=False)
at(S, "    pt[np++] = clock64();")
at("    gdn_tri_mm_bf<DK>(out + RC::W, DK, TGs, LT, Ks, LK);",
   "    __syncthreads(); pt[np++] = clock64();")
at("    if (tid == 0) *(float *)(out + RC::glast(Dv)) = glast;", "    __syncthreads(); pt[np++] = clock64();")
at("        gdn_tri_mm_bf<64>(out + RC::U + v0, Dv, TLs, LT, Vs, LV);", r"""        if (v0 + 64 >= Dv) {
            __syncthreads();
            pt[np++] = clock64();
            // head 0's blocks start in the first wave, all loading their inputs at once; head
            // gridDim.y / 2's in a later one (its inputs phase is the steady state's)
            if (tid == 0 && (blockIdx.y == 0 || blockIdx.y == gridDim.y / 2) &&
                (blockIdx.x == 0 || blockIdx.x == gridDim.x / 2 || blockIdx.x == gridDim.x - 1) &&
                atomicAdd(&gdn_probe_n, 1) < 12)
                printf("PROBE prep blk %d/%d head %d: inputs %lld (seq %lld qk %lld bar %lld v %lld) solve %lld W %lld KD %lld U %lld total %lld cycles, %llu ns\n",
                       blockIdx.x, gridDim.x, blockIdx.y, pt[1] - pt[0], pi[0] - pt[0], pi[1] - pi[0], pi[2] - pi[1],
                       pi[3] - pi[2], pt[2] - pt[1], pt[3] - pt[2], pt[4] - pt[3], pt[5] - pt[4],
                       pt[5] - pt[0], gdn_gt() - g0);
            if (tid == 0 && blockIdx.y == 0 && blockIdx.x == 0 && atomicAdd(&gdn_probe_n, 1) < 9)
                printf("PROBE solve blk 0: KK/QK %lld mask+Qg %lld forward %lld rows %lld scale %lld cycles\n",
                       gdn_solve_t[1] - gdn_solve_t[0], gdn_solve_t[2] - gdn_solve_t[1], gdn_solve_t[3] - gdn_solve_t[2],
                       gdn_solve_t[4] - gdn_solve_t[3], gdn_solve_t[5] - gdn_solve_t[4]);
        }""")
# scan: S0's store, the wait for a chunk's record, v_new (with the next chunk's copies and the
# barrier after it), the state update and O (issue: their products land by the next chunk's
# store), summed over the chunks
at("    for (int ci = 0; ci < nc; ci++) {",
   "    long long ph[4] = {0, 0, 0, 0}, t0 = clock64(), t1; unsigned long long g0 = gdn_gt();", after=False)
S0 = "        gdn_part_st_t<DK, BV>(S, St, LS); // its last readers (chunk ci − 2's O) are past the last barrier"
at(S0, "        t1 = clock64();", after=False)
at(S0, "        ph[0] += clock64() - t1; t1 = clock64();")
at("        __syncthreads(); // the record and S0 in; the previous chunk's readers of the other stage and Vs done",
   "        ph[1] += clock64() - t1; t1 = clock64();")
at("        gdn_scan_advance<DK, BV, LW, LT>(S, stage(ci, SM::K), Vt, glast);",
   "        ph[2] += clock64() - t1; t1 = clock64();", after=False)
at("                                         (int64_t)h * Dv + vt * BV);", "        ph[3] += clock64() - t1;")
at("    __pipeline_wait_prior(0); // the empty group past the last chunk", r"""    if (threadIdx.x == 0 && (blockIdx.x == 0 || blockIdx.x == gridDim.x / 2) && atomicAdd(&gdn_probe_n, 1) < 30)
        printf("PROBE scan<%d> blk %d/%d chunks %d: store %lld wait %lld vnew %lld update+O %lld total %lld cycles, %llu ns\n",
               BV, blockIdx.x, gridDim.x, nc, ph[0], ph[1], ph[2], ph[3], clock64() - t0, gdn_gt() - g0);""",
   after=False)
open(p, "w").write("\n".join(lines))
