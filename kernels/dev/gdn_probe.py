# kernels/dev/gdn_probe.py GDN_CU: rewrites kernels/cuda/gdn.cu in place with clock64 /
# globaltimer probes between the phases of k_gdn_prep (inputs, solve, W, Kd, U) and
# k_gdn_scan (the three record waits and v_new, O, state update summed over the chunks),
# printed by a few blocks of the first launches (device printf). A measuring variant,
# never committed: build it with variants.sh and put the source back, e.g.
#   cp kernels/cuda/gdn.cu /tmp/gdn.cu && python3 kernels/dev/gdn_probe.py kernels/cuda/gdn.cu &&
#   kernels/dev/variants.sh build kernels/cuda/gdn.cu /tmp/v probe=""; cp /tmp/gdn.cu kernels/cuda/gdn.cu
#   /tmp/v/probe/test_backend_ops --perf --filter gdn --min-tokens 8192 --max-tokens 8192 | grep PROBE
# The anchors are lines of gdn.cu; an assertion names the one that moved.
import sys
p = sys.argv[1]
s = open(p).read()
def rep(old, new, count=1):
    global s
    assert s.count(old) == count, (old, s.count(old))
    s = s.replace(old, new)
helpers = r'''
__device__ int gdn_probe_n;
__device__ __forceinline__ unsigned long long gdn_gt() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
'''
rep("// ---- chunked form, split (kernels/dev/NOTES.md v15)", helpers + "// ---- chunked form, split (kernels/dev/NOTES.md v15)")
# prep
rep("""    cu_pdl_wait();
    cu_pdl_trigger();
    // which sequence and chunk""", """    cu_pdl_wait();
    cu_pdl_trigger();
    long long pt[8]; int np = 0; unsigned long long g0 = gdn_gt(); pt[np++] = clock64();
    // which sequence and chunk""")
rep("""    gdn_chunk_inputs<DK, LK>(g, Qs, Ks, Gs, Bs, tb, n, qoff, koff, h, Aexp, bias);
    __syncthreads();
    gdn_chunk_solve<DK, LK, LC>(Qs, Ks, Ls, Ts, Ts, Qs, Gs, Bs, out); // Qg and QKm to the record
    // the rest""", """    gdn_chunk_inputs<DK, LK>(g, Qs, Ks, Gs, Bs, tb, n, qoff, koff, h, Aexp, bias);
    __syncthreads();
    pt[np++] = clock64();
    gdn_chunk_solve<DK, LK, LC>(Qs, Ks, Ls, Ts, Ts, Qs, Gs, Bs, out); // Qg and QKm to the record
    pt[np++] = clock64();
    // the rest""")
rep("""    gdn_tri_mm<DK, LC>(out + RC::W, DK, Ts, Ks, LK);
    float glast""", """    gdn_tri_mm<DK, LC>(out + RC::W, DK, Ts, Ks, LK);
    __syncthreads(); pt[np++] = clock64();
    float glast""")
rep("""    if (tid == 0) out[RC::glast(Dv)] = glast;
""", """    if (tid == 0) out[RC::glast(Dv)] = glast;
    __syncthreads(); pt[np++] = clock64();
""")
rep("""        __syncthreads(); // Vs is refilled by the next tile
    }
}""", """        __syncthreads(); // Vs is refilled by the next tile
    }
    pt[np++] = clock64();
    if (tid == 0 && blockIdx.y == 0 && (blockIdx.x == 0 || blockIdx.x == gridDim.x / 2 || blockIdx.x == gridDim.x - 1) &&
        atomicAdd(&gdn_probe_n, 1) < 9)
        printf("PROBE prep blk %d/%d: inputs %lld solve %lld W %lld KD %lld U %lld total %lld cycles, %llu ns\\n",
               blockIdx.x, gridDim.x, pt[1] - pt[0], pt[2] - pt[1], pt[3] - pt[2], pt[4] - pt[3], pt[5] - pt[4],
               pt[5] - pt[0], gdn_gt() - g0);
}""")
# scan
rep("""    int64_t ooff = (int64_t)h * Dv + vt * BV;
    for (int ci = 0; ci < nc; ci++) {""", """    int64_t ooff = (int64_t)h * Dv + vt * BV;
    long long ph[6] = {0, 0, 0, 0, 0, 0}, t0 = clock64(), t1; unsigned long long g0 = gdn_gt();
    for (int ci = 0; ci < nc; ci++) {""")
rep("""        __pipeline_wait_prior(2); // A (pending: B, C)
        __syncthreads();          // and the previous chunk's readers of Ss are done
        gdn_vnew<DK, BV, LK, LV>(Ws, Ss, Us);
        __pipeline_wait_prior(1); // B (pending: C)
        __syncthreads();
        issue(0, ci + 1);
        gdn_out<DK, BV, LK, LC, LV>(Qs, QKs, Ss, Us, Os);
        __pipeline_wait_prior(1); // C (pending: next A)
        __syncthreads();
        issue(1, ci + 1);
        gdn_advance<DK, BV, LK, LV>(Ks, Us, Os, Ss, glast, n, g.out, q0 + c0, ooff);
        __syncthreads();""", """        t1 = clock64();
        __pipeline_wait_prior(2); // A (pending: B, C)
        __syncthreads();          // and the previous chunk's readers of Ss are done
        ph[0] += clock64() - t1; t1 = clock64();
        gdn_vnew<DK, BV, LK, LV>(Ws, Ss, Us);
        __syncthreads(); ph[1] += clock64() - t1; t1 = clock64();
        __pipeline_wait_prior(1); // B (pending: C)
        __syncthreads();
        issue(0, ci + 1);
        ph[2] += clock64() - t1; t1 = clock64();
        gdn_out<DK, BV, LK, LC, LV>(Qs, QKs, Ss, Us, Os);
        __syncthreads(); ph[3] += clock64() - t1; t1 = clock64();
        __pipeline_wait_prior(1); // C (pending: next A)
        __syncthreads();
        issue(1, ci + 1);
        ph[4] += clock64() - t1; t1 = clock64();
        gdn_advance<DK, BV, LK, LV>(Ks, Us, Os, Ss, glast, n, g.out, q0 + c0, ooff);
        __syncthreads();
        ph[5] += clock64() - t1;""")
rep("""    __pipeline_wait_prior(0); // the empty groups past the last chunk
    gdn_state_out<DK, BV, LV>(Ss, mine, Dv);
}""", """    __pipeline_wait_prior(0); // the empty groups past the last chunk
    gdn_state_out<DK, BV, LV>(Ss, mine, Dv);
    if (threadIdx.x == 0 && (blockIdx.x == 0 || blockIdx.x == gridDim.x / 2) && atomicAdd(&gdn_probe_n, 1) < 30)
        printf("PROBE scan<%d> blk %d/%d chunks %d: waitA %lld vnew %lld waitB %lld out %lld waitC %lld adv %lld total %lld cycles, %llu ns\\n",
               BV, blockIdx.x, gridDim.x, nc, ph[0], ph[1], ph[2], ph[3], ph[4], ph[5], clock64() - t0, gdn_gt() - g0);
}""")
open(p, "w").write(s)
