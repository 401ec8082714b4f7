// kernels/dev/emu/emu_shim.hpp: host emulation shim for CUDA kernels cut out of kernels/cuda
// (see emu.py): every CUDA thread is a fiber of one host thread; ldmatrix, mma.sync and
// shuffles are warp collectives, wgmma a warpgroup collective (barrier, exchange), with the
// fragment layouts of the PTX ISA and the shared-memory descriptors of its 128-byte swizzle;
// cp.async lands at its wait (or, with EMU_CP_EAGER, at issue); wmma tf32 is a warp
// collective.
#include <sys/mman.h>
#include <map>
#include <set>
#include <string>
#include <memory>
#include <chrono>
#include <functional>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <type_traits>
#include <vector>
using std::max;
using std::min;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n)
#define __grid_constant__
#define ATTN_WARPS 4
#define SL_ASSERT(x) do { if (!(x)) { fprintf(stderr, "assert %s\n", #x); abort(); } } while (0)
enum { SL_DTYPE_F32 = 0, SL_DTYPE_BF16 = 1, SL_DTYPE_F16 = 2 };
// fp16 is not emulated (no driver uses it): cu_round's F16 case compiles to the identity
static inline float __float2half_rn(float f) { return f; }
static inline float __half2float(float f) { return f; }
static inline float __ushort_as_half(unsigned short) { return NAN; } // fp16 codes: not emulated
struct dim3 { unsigned x, y, z; };
struct int2 { int x, y; };
struct uint4 { uint32_t x, y, z, w; };
struct uint2 { uint32_t x, y; };
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline float2 make_float2(float x, float y) { return {x, y}; }
static inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
static inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }
static inline int2 make_int2(int x, int y) { return {x, y}; }
struct __nv_bfloat16 { uint16_t b; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return {(uint16_t)((u >> 16) | 0x40)};
    u += 0x7fff + ((u >> 16) & 1);
    return {(uint16_t)(u >> 16)};
}
static inline float __uint_as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
// ex2.approx.ftz.f32: 2^x with subnormal results flushed to zero
static inline float emu_ex2_ftz(float x) { float y = exp2f(x); return std::fpclassify(y) == FP_SUBNORMAL ? 0.0f : y; }
static inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float __bfloat162float(__nv_bfloat16 h) { uint32_t u = (uint32_t)h.b << 16; float f; memcpy(&f, &u, 4); return f; }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
static inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {__bfloat162float(h.x), __bfloat162float(h.y)}; }
typedef struct cu_mat { void *p; int dt; int64_t rows, cols, ld; } cu_mat;
static inline float cu_mat_ld(const cu_mat &m, int64_t r, int64_t c) {
    int64_t i = r * m.ld + c;
    return m.dt == SL_DTYPE_BF16 ? __bfloat162float(((__nv_bfloat16 *)m.p)[i]) : ((float *)m.p)[i];
}
static inline void cu_mat_st(const cu_mat &m, int64_t r, int64_t c, float v) {
    int64_t i = r * m.ld + c;
    if (m.dt == SL_DTYPE_BF16) ((__nv_bfloat16 *)m.p)[i] = __float2bfloat16_rn(v); else ((float *)m.p)[i] = v;
}

// ---- fibers ----------------------------------------------------------------------------
// Every CUDA thread is a fiber of the one host thread, switched only where a thread must
// wait for others (a barrier, a warp collective, an mbarrier, registers) or yields
// (__nanosleep, after an mbarrier arrival). Host threads, one a CUDA thread, spent most of
// their time in the kernel's futex wake-ups (a barrier of 384 of them on 2 cores), and
// ucontext's swapcontext in a signal-mask system call a switch: emu_switch saves the
// callee-saved registers on the stack it leaves and takes the other's. The running
// fiber's CUDA state is emu_cur's.
#if !defined(__x86_64__)
#error "kernels/dev/emu: emu_switch is written for x86-64"
#endif
extern "C" void emu_switch(void **save_sp, void *load_sp);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
struct emu_copy {
    char *dst;
    const void *src;
    size_t n, zfill;
};
struct emu_wg_op {
    float *d;
    int n, esz, acc; // acc 0: d = A·B (wgmma's scale-d false)
    uint64_t da, db;
    uint32_t a[4];
    bool ra, nmaj;
};
struct emu_block;
struct emu_thread_state {
    dim3 threadIdx, blockIdx, blockDim, gridDim;
    emu_block *b;
    std::vector<emu_copy> cp_open; // cp.async copies issued, not committed
    std::vector<std::vector<emu_copy>> cp_groups; // committed groups, oldest first
    std::vector<emu_wg_op> wg_open; // wgmma products likewise
    std::vector<std::vector<emu_wg_op>> wg_groups;
};
struct emu_fiber {
    void *sp; // its stack pointer while switched out
    char *stack;
    std::function<void()> fn;
    emu_thread_state st;
    bool done;
};
#define EMU_STACK (256 << 10)
static void *emu_sched_sp;
static emu_fiber *emu_cur; // the running fiber
#define threadIdx (emu_cur->st.threadIdx)
#define blockIdx (emu_cur->st.blockIdx)
#define blockDim (emu_cur->st.blockDim)
#define gridDim (emu_cur->st.gridDim)
#define emu_b (emu_cur->st.b)
static long emu_live;   // fibers not yet returned
static long emu_streak; // waits found unmet in a row since a fiber last ran code
static long emu_round;  // passes of the scheduler over a launch's fibers
static std::vector<char *> emu_stacks; // free stacks, kept between launches
static inline void emu_yield(void) { emu_switch(&emu_cur->sp, emu_sched_sp); }
static void emu_fiber_main(void) { // never resumed once done
    emu_cur->fn();
    emu_cur->done = true;
    emu_yield();
}
// Runs the fibers round robin until every one has returned.
static void emu_run(std::vector<emu_fiber> &fs) {
    for (emu_fiber &f : fs) {
        if (emu_stacks.empty()) {
            // a guard page below each stack: an overflow faults instead of writing a neighbour
            char *m = (char *)mmap(nullptr, EMU_STACK + 4096, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            SL_ASSERT(m != MAP_FAILED && mprotect(m, 4096, PROT_NONE) == 0);
            emu_stacks.push_back(m + 4096);
        }
        f.stack = emu_stacks.back();
        emu_stacks.pop_back();
        // the frame emu_switch pops: six registers, then its return into emu_fiber_main, which
        // starts with the stack as a call leaves it (8 bytes past a 16-byte boundary)
        void **sp = (void **)(f.stack + EMU_STACK);
        *--sp = nullptr;
        *--sp = (void *)emu_fiber_main;
        for (int i = 0; i < 6; i++) *--sp = nullptr;
        f.sp = sp;
        f.done = false;
    }
    emu_live = (long)fs.size();
    emu_streak = 0;
    for (emu_round = 0; emu_live; emu_round++)
        for (emu_fiber &f : fs) {
            if (f.done) continue;
            emu_cur = &f;
            emu_switch(&emu_sched_sp, f.sp);
            if (f.done) {
                emu_live--;
                emu_streak = 0;
                emu_stacks.push_back(f.stack);
            }
        }
}
// Yields until met(). A whole round of the live fibers each finding its wait unmet, none
// having run code in between, can never end (the GPU would hang or trap): then, over one
// more round, the first waiter of each kind says() what it waits for, and the run aborts.
static bool emu_dead;
static std::set<std::string> emu_dead_said; // kinds of wait named
template <class P, class D> static inline void emu_wait(const char *kind, P met, D say) {
    if (met()) return;
    emu_streak = 0;
    for (;;) {
        emu_yield();
        if (met()) { emu_streak = 0; return; }
        if (emu_dead && emu_dead_said.insert(kind).second) say();
        if (++emu_streak > 2 * emu_live) {
            if (emu_dead) abort();
            fprintf(stderr, "deadlock: no thread can go on. Waits:\n");
            emu_dead = true;
            emu_streak = 0;
        }
    }
}
// A yield that is progress itself: time passes (a spin loop, a delay).
static inline void emu_pass(void) { emu_yield(); emu_streak = 0; }
// A barrier of n threads (generations, so it can be reused at once)
struct emu_bar {
    int n, arrived = 0;
    unsigned gen = 0;
    explicit emu_bar(int count) : n(count) {}
    unsigned arrive(void) {
        unsigned g = gen;
        if (++arrived == n) { arrived = 0; gen++; }
        return g;
    }
    void arrive_and_wait(void) {
        unsigned g = arrive();
        emu_wait("barrier", [&] { return gen != g; }, [&] {
            fprintf(stderr, "barrier of %d threads: %d arrived (thread %u of block %u)\n", n, arrived, threadIdx.x, blockIdx.x);
        });
    }
};

// emu_stagger (a driver of a kernel whose blocks wait on each other sets it): blocks leave
// the PDL wait at different times, block b after (b·7) % 5 · 64 scheduler rounds (a work
// item takes 20-40 here), so that a block reaching its later work early finds the others'
// not done
static bool emu_stagger = false;
static inline void cu_pdl_wait(void) {
    if (!emu_stagger) return;
    long until = emu_round + (blockIdx.x * 7) % 5 * 64;
    while (emu_round < until) emu_pass();
}
static inline void cu_pdl_trigger(void) {}
static inline float cu_round(int dt, float v) { return dt == SL_DTYPE_BF16 ? __bfloat162float(__float2bfloat16_rn(v)) : v; }
static inline float cu_ldf(const void *p, int dt, int64_t i) {
    return dt == SL_DTYPE_BF16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
}
static inline void cu_stf(void *p, int dt, int64_t i, float v) {
    if (dt == SL_DTYPE_BF16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v); else ((float *)p)[i] = v;
}

struct emu_warp {
    emu_bar bar{32};
    uint32_t addr[32];
    uint32_t a[32][4], b[32][2];
    long long ll[32]; // a lane's shuffle slot (emu_shfl)
    float m[3][256]; // wmma operands of the warp's lanes (A, B, C)
};
// an mbarrier: arrivals still due in this phase, phases completed; bytes announced and not
// yet landed (tx), and the TMA copies that carry them (due, not landed); the thread that
// initialised it and whether that thread has fenced since for the async proxy (wg_fence_smem)
struct emu_mbar {
    int count = 0, pending = 0;
    unsigned phase = 0;
    long tx = 0;
    std::vector<emu_copy> due;
    unsigned init_thread = 0;
    bool async_seen = false;
};
struct emu_block {
    explicit emu_block(int threads) : bar(threads) {}
    emu_bar bar;
    emu_bar wgbar[4] = {emu_bar(128), emu_bar(128), emu_bar(128), emu_bar(128)}; // a warpgroup's
    std::map<int, std::unique_ptr<emu_bar>> nbar; // named barriers by id
    long regs_pool = 0; // setmaxnreg's registers given back
    std::map<uint32_t, std::unique_ptr<emu_mbar>> mbars; // by shared address
    std::vector<char> smem;
    emu_warp w[16]; // up to 512 threads
    uint64_t da[512], db[512];
    uint32_t a[512][4];
    int ints[256]; // a kernel's static __shared__ int array
    float floats[8 * 16 * 17]; // and float array
};
static inline char *emu_smem(void) { return emu_b->smem.data(); }
static inline int *emu_static_ints(void) { return emu_b->ints; }
static inline float *emu_static_floats(void) { return emu_b->floats; }
static inline void __syncthreads(void) { emu_b->bar.arrive_and_wait(); }
static inline emu_warp &W(void) { return emu_b->w[threadIdx.x >> 5]; }
static inline void __syncwarp(unsigned = 0xffffffffu) { W().bar.arrive_and_wait(); }
// Lane l gets v of lane src(l) (every lane of the warp calls it): float, int
// or long long, through the lane's 8-byte slot.
template <class T> static inline T emu_shfl(T v, int src) {
    static_assert(sizeof(T) <= sizeof(long long), "a lane's slot");
    emu_warp &w = W(); int l = threadIdx.x & 31;
    memcpy(&w.ll[l], &v, sizeof v); w.bar.arrive_and_wait();
    T r; memcpy(&r, &w.ll[src & 31], sizeof r); w.bar.arrive_and_wait();
    return r;
}
template <class T> static inline T __shfl_xor_sync(unsigned, T v, int x) { return emu_shfl(v, (threadIdx.x & 31) ^ x); }
template <class T> static inline T __shfl_sync(unsigned, T v, int src) { return emu_shfl(v, src); }
template <class T> static inline T __shfl_up_sync(unsigned, T v, unsigned d) { // lanes below d keep theirs
    int l = threadIdx.x & 31;
    return emu_shfl(v, l >= (int)d ? l - (int)d : l);
}
// wmma (tf32 m16n16k8 and bf16 m16n16k16, fp32 accumulators): a fragment's elements are lane l's E = R·C / 32
// consecutive ones of the R × C matrix in row order. The hardware's layout is opaque to the
// kernels too (they touch x[] element by element, alike in every fragment of a shape), so
// any fixed layout serves; mma_sync is a warp collective.
namespace nvcuda { namespace wmma {
struct row_major {}; struct col_major {}; struct matrix_a {}; struct matrix_b {}; struct accumulator {};
namespace precision { struct tf32 {}; }
enum layout_t { mem_row_major, mem_col_major };
template <int R, int C, class L> struct emu_frag {
    static constexpr int rows = R, cols = C, num_elements = R * C / 32;
    static constexpr bool colmaj = std::is_same<L, col_major>::value;
    float x[num_elements];
};
template <class Use, int M, int N, int K, class T, class L = void> struct fragment;
template <int M, int N, int K, class L> struct fragment<matrix_a, M, N, K, precision::tf32, L> : emu_frag<M, K, L> {};
template <int M, int N, int K, class L> struct fragment<matrix_b, M, N, K, precision::tf32, L> : emu_frag<K, N, L> {};
template <int M, int N, int K> struct fragment<accumulator, M, N, K, float, void> : emu_frag<M, N, void> {};
// bf16 operands (m16n16k16, the decode attention's): kept as the floats they are
template <int M, int N, int K, class L> struct fragment<matrix_a, M, N, K, __nv_bfloat16, L> : emu_frag<M, K, L> {};
template <int M, int N, int K, class L> struct fragment<matrix_b, M, N, K, __nv_bfloat16, L> : emu_frag<K, N, L> {};
// Where this lane's element i of fragment F lies in a matrix of leading dimension ld.
template <class F> static inline unsigned emu_frag_at(int i, unsigned ld, bool colmaj) {
    int e = (threadIdx.x & 31) * F::num_elements + i, r = e / F::cols, c = e % F::cols;
    return colmaj ? c * ld + r : r * ld + c;
}
template <class F> static inline void emu_frag_io(F &f, float *p, unsigned ld, bool colmaj, bool load) {
    for (int i = 0; i < F::num_elements; i++) {
        float &m = p[emu_frag_at<F>(i, ld, colmaj)];
        if (load) f.x[i] = m; else m = f.x[i];
    }
}
template <class F> static inline void load_matrix_sync(F &f, const float *p, unsigned ld) {
    emu_frag_io(f, (float *)p, ld, F::colmaj, true);
}
template <class F> static inline void load_matrix_sync(F &f, const __nv_bfloat16 *p, unsigned ld) {
    for (int i = 0; i < F::num_elements; i++) f.x[i] = __bfloat162float(p[emu_frag_at<F>(i, ld, F::colmaj)]);
}
template <class F> static inline void load_matrix_sync(F &f, const float *p, unsigned ld, layout_t l) {
    emu_frag_io(f, (float *)p, ld, l == mem_col_major, true);
}
template <class F> static inline void store_matrix_sync(float *p, const F &f, unsigned ld, layout_t l) {
    emu_frag_io(const_cast<F &>(f), p, ld, l == mem_col_major, false);
}
template <class F> static inline void fill_fragment(F &f, float v) { for (auto &x : f.x) x = v; }
static inline float __float_to_tf32(float v) { // cvt.rna.tf32.f32: 10 mantissa bits, ties away
    uint32_t u; memcpy(&u, &v, 4);
    if ((u & 0x7f800000) != 0x7f800000) u = (u + 0x1000) & 0xffffe000;
    memcpy(&v, &u, 4); return v;
}
template <class D, class A, class B> static inline void mma_sync(D &d, const A &a, const B &b, const D &c) {
    emu_warp &w = emu_b->w[threadIdx.x >> 5]; int l = threadIdx.x & 31;
    constexpr int M = A::rows, K = A::cols, N = B::cols;
    for (int i = 0; i < A::num_elements; i++) w.m[0][l * A::num_elements + i] = a.x[i];
    for (int i = 0; i < B::num_elements; i++) w.m[1][l * B::num_elements + i] = b.x[i];
    for (int i = 0; i < D::num_elements; i++) w.m[2][l * D::num_elements + i] = c.x[i];
    w.bar.arrive_and_wait();
    for (int i = 0; i < D::num_elements; i++) {
        int e = l * D::num_elements + i, r = e / N, col = e % N;
        float acc = 0;
        for (int k = 0; k < K; k++) acc += w.m[0][r * K + k] * w.m[1][k * N + col];
        d.x[i] = w.m[2][e] + acc;
    }
    static_assert(M * N <= 256, "scratch");
    w.bar.arrive_and_wait();
}
} }
using namespace nvcuda;
static inline uint32_t __cvta_generic_to_shared(const void *p) {
    ptrdiff_t d = (const char *)p - emu_smem();
    SL_ASSERT(d >= 0 && (size_t)d < emu_b->smem.size());
    return (uint32_t)d;
}
static inline uint16_t emu_h(uint32_t addr) {
    SL_ASSERT(addr % 2 == 0 && addr + 2 <= emu_b->smem.size());
    uint16_t h; memcpy(&h, emu_smem() + addr, 2); return h;
}
static inline void emu_ldsm(uint32_t (&r)[4], uint32_t addr, bool trans) {
    emu_warp &w = W(); int l = threadIdx.x & 31;
    SL_ASSERT(addr % 16 == 0);
    w.addr[l] = addr; w.bar.arrive_and_wait();
    int g = l >> 2, q = l & 3;
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        if (!trans) { lo = emu_h(w.addr[8 * i + g] + 4 * q); hi = emu_h(w.addr[8 * i + g] + 4 * q + 2); }
        else { lo = emu_h(w.addr[8 * i + 2 * q] + 2 * g); hi = emu_h(w.addr[8 * i + 2 * q + 1] + 2 * g); }
        r[i] = lo | (uint32_t)hi << 16;
    }
    w.bar.arrive_and_wait();
}
static inline void mma_ldsm4(uint32_t (&r)[4], uint32_t addr) { emu_ldsm(r, addr, false); }
static inline void mma_ldsm4_t(uint32_t (&r)[4], uint32_t addr) { emu_ldsm(r, addr, true); }
static inline float emu_bf(uint32_t reg, int half) { __nv_bfloat16 h = {(uint16_t)(half ? reg >> 16 : reg & 0xffff)}; return __bfloat162float(h); }
static inline float emu_e4m3(uint32_t v) {
    v &= 0xff;
    int e = (v >> 3) & 15, m = v & 7;
    SL_ASSERT((v & 0x7f) != 0x7f); // NaN codes never occur
    float f = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf(m / 8.0f, -6);
    return v & 0x80 ? -f : f;
}
// mma.sync m16n8k8 tf32, m16n8k16 bf16 and m16n8k32 e4m3 (row.col; esz: bytes an element, e = 4 / esz to a
// register, K = 8e): a0 row g, k e·q .. e·q + e - 1, a1 row g + 8, a2 and a3 the same at
// k + K/2; b0 k e·q .. of column g, b1 at k + K/2; c0, c1 row g, columns 2q, 2q + 1; c2, c3
// row g + 8.
static inline float emu_el(uint32_t reg, int i, int esz) {
    float f;
    if (esz == 4) memcpy(&f, &reg, 4);
    return esz == 4 ? f : esz == 2 ? emu_bf(reg, i) : emu_e4m3(reg >> (8 * i));
}
static inline void emu_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1, int esz) {
    emu_warp &w = W(); int l = threadIdx.x & 31, e = 4 / esz, K = 8 * e;
    for (int i = 0; i < 4; i++) w.a[l][i] = a[i];
    w.b[l][0] = b0; w.b[l][1] = b1;
    w.bar.arrive_and_wait();
    int g = l >> 2, q = l & 3;
    for (int o = 0; o < 4; o++) {
        int row = g + 8 * (o >> 1), col = 2 * q + (o & 1);
        float acc = 0;
        for (int k = 0; k < K; k++) {
            int kh = k % (K / 2);
            float A = emu_el(w.a[(row % 8) * 4 + kh / e][(row >= 8) + 2 * (k >= K / 2)], kh % e, esz);
            float B = emu_el(w.b[col * 4 + kh / e][k >= K / 2], kh % e, esz);
            acc += A * B;
        }
        c[o] += acc;
    }
    w.bar.arrive_and_wait();
}
static inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { emu_mma(c, a, b0, b1, 2); }
// gdn.cu's tf32 pair: a register holds the float cvt.rna made
static inline uint32_t gdn_tf32(float v) {
    v = nvcuda::wmma::__float_to_tf32(v);
    uint32_t u; memcpy(&u, &v, 4); return u;
}
static inline uint32_t gdn_tf32(uint32_t u) { return u; } // already rounded (the prep's operands)
static inline float gdn_rounded(float v) { return nvcuda::wmma::__float_to_tf32(v); }
static inline void gdn_mma8(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    uint32_t a[4] = {a0, a1, a2, a3};
    emu_mma(c, a, b0, b1, 4);
}
static inline void mma_e4m3(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    uint32_t a[4] = {a0, a1, a2, a3};
    emu_mma(c, a, b0, b1, 1);
}
// cp.async is asynchronous as on the GPU: a copy lands only when a wait retires its commit
// group (the source read then; these kernels' sources do not change), so reading a stage
// before its wait, or a wait count one too loose, reads what was there before.
#define emu_cp_open (emu_cur->st.cp_open)
#define emu_cp_groups (emu_cur->st.cp_groups)
// With EMU_CP_EAGER set (emu.py's second run of every target) a copy lands when issued
// instead, as early as the GPU may land it: refilling a buffer that is still being read
// (a write-after-read race the late landing hides) then reads the new data.
static const bool emu_cp_eager = getenv("EMU_CP_EAGER") != nullptr;
static inline void emu_cp_land(const emu_copy &c) {
    memcpy(c.dst, c.src, c.n - c.zfill);
    memset(c.dst + (c.n - c.zfill), 0, c.zfill);
}
static inline void __pipeline_memcpy_async(void *dst, const void *src, size_t n, size_t zfill = 0) {
    emu_copy c{(char *)dst, src, n, zfill};
    if (emu_cp_eager) emu_cp_land(c);
    else emu_cp_open.push_back(c);
}
static inline void __pipeline_commit(void) { emu_cp_groups.push_back(emu_cp_open); emu_cp_open.clear(); }
static inline void __pipeline_wait_prior(int n) {
    while (emu_cp_groups.size() > (size_t)n) {
        for (const emu_copy &c : emu_cp_groups.front()) emu_cp_land(c);
        emu_cp_groups.erase(emu_cp_groups.begin());
    }
}
static inline void cp_async16(uint32_t dst, const void *src, int bytes) {
    SL_ASSERT(dst % 16 == 0 && dst + 16 <= emu_b->smem.size());
    __pipeline_memcpy_async(emu_smem() + dst, src, 16, 16 - bytes);
}
static inline void cp_async4(uint32_t dst, const void *src, int bytes) {
    SL_ASSERT(dst % 4 == 0 && dst + 4 <= emu_b->smem.size());
    __pipeline_memcpy_async(emu_smem() + dst, src, 4, 4 - bytes);
}
static inline void emu_cp_commit(void) { __pipeline_commit(); }
static inline void emu_cp_wait(int n) { __pipeline_wait_prior(n); }

// wgmma: descriptors decoded as the PTX ISA's canonical 128-byte-swizzled layouts (CUTLASS's
// GmmaDescriptor reading): K-major element (mn, k) at start + (mn % 8)·128 + (mn / 8)·SBO + k·esz,
// N-major element (n, k) at start + 2(n % 64) + (n / 64)·LBO + (k % 8)·128 + (k / 8)·SBO; then
// address bits 4-6 ^= bits 7-9. The products are asynchronous as on the GPU: an issued wgmma
// (its A registers read at issue) only runs when a wg_wait retires its commit group, so a
// kernel that reads an accumulator before its wait, or refills a stage a product still
// reads, gets wrong sums here too. Every group must be retired before the kernel returns
// (emu_wg_idle).
static inline void wg_fence(void) {}
template <int F> static inline void wg_hold(float (&)[F][4]) {}
template <int F> static inline void wg_hold(uint32_t (&)[F][4]) {}
static inline void wg_fence_smem(void); // (after the mbarriers: it makes their init visible to TMA)
static inline uint32_t emu_desc_addr(uint64_t desc, bool nmaj, int mn, int k, int esz) {
    SL_ASSERT((desc >> 62) == 1 && ((desc >> 49) & 7) == 0);
    uint32_t start = (uint32_t)(desc & 0x3fff) << 4, lbo = (uint32_t)((desc >> 16) & 0x3fff) << 4,
             sbo = (uint32_t)((desc >> 32) & 0x3fff) << 4;
    SL_ASSERT(!nmaj || esz == 2);
    uint32_t a = nmaj ? start + 2 * (mn % 64) + (mn / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo
                      : start + (mn % 8) * 128 + (mn / 8) * sbo + esz * k;
    return a ^ (((a >> 7) & 7) << 4);
}
static inline float emu_sh(uint32_t addr) { __nv_bfloat16 h = {emu_h(addr)}; return __bfloat162float(h); }
#define emu_wg_open (emu_cur->st.wg_open)
#define emu_wg_groups (emu_cur->st.wg_groups)
// d (64 × n) += A · B over k 0..KS-1 (16 bf16 or 32 e4m3: esz 2 or 1); A from descriptor da
// (K-major) or, with ra, from the warpgroup's A fragments; B from db, K-major or N-major.
// The warpgroup is threads 128·(t / 128) ..; its 128 threads reach every call together.
static inline void emu_wg_exec(const emu_wg_op &op) {
    emu_block &b = *emu_b; int t = threadIdx.x, t0 = t & ~127;
    emu_bar &bar = b.wgbar[t >> 7];
    b.da[t] = op.da; b.db[t] = op.db;
    if (op.ra) for (int i = 0; i < 4; i++) b.a[t][i] = op.a[i];
    bar.arrive_and_wait();
    SL_ASSERT(b.db[t] == b.db[t0] && b.da[t] == b.da[t0]); // warpgroup-uniform operands
    int w = (t >> 5) & 3, g = (t & 31) >> 2, q = t & 3, KS = 32 / op.esz;
    for (int f = 0; f < op.n / 8; f++) for (int e = 0; e < 4; e++) {
        int row = 16 * w + g + 8 * (e >> 1), col = 8 * f + 2 * q + (e & 1);
        float acc = 0;
        for (int k = 0; k < KS; k++) {
            float A, B;
            if (op.ra) {
                int r16 = row % 16, src = t0 + 32 * w + 4 * (r16 % 8) + (k % 8) / 2;
                A = emu_bf(b.a[src][(r16 >= 8) + 2 * (k >= 8)], k % 2);
            } else if (op.esz == 2) {
                A = emu_sh(emu_desc_addr(op.da, false, row, k, 2));
            } else {
                A = emu_e4m3((uint8_t)emu_smem()[emu_desc_addr(op.da, false, row, k, 1)]);
            }
            if (op.esz == 2) B = emu_sh(emu_desc_addr(op.db, op.nmaj, col, k, 2));
            else B = emu_e4m3((uint8_t)emu_smem()[emu_desc_addr(op.db, false, col, k, 1)]);
            acc += A * B;
        }
        op.d[4 * f + e] = (op.acc ? op.d[4 * f + e] : 0.0f) + acc;
    }
    bar.arrive_and_wait();
}
static inline void emu_wg_issue(float *d, int n, uint64_t da, const uint32_t *ra, uint64_t db, bool nmaj, int esz,
                                int acc = 1) {
    emu_wg_op op{d, n, esz, acc, da, db, {0, 0, 0, 0}, ra != nullptr, nmaj};
    if (ra) for (int i = 0; i < 4; i++) op.a[i] = ra[i];
    emu_wg_open.push_back(op);
}
static inline void wg_commit(void) { emu_wg_groups.push_back(emu_wg_open); emu_wg_open.clear(); }
template <int N> static inline void wg_wait(void) {
    while (emu_wg_groups.size() > (size_t)N) {
        for (const emu_wg_op &op : emu_wg_groups.front()) emu_wg_exec(op);
        emu_wg_groups.erase(emu_wg_groups.begin());
    }
}
// nothing in flight: every product and copy retired (a kernel's end)
static inline bool emu_wg_idle(void) {
    __pipeline_wait_prior(0); // a kernel may end with copies in flight (empty or unread groups)
    return emu_wg_open.empty() && emu_wg_groups.empty() && emu_cp_open.empty();
}
template <int N> static inline void wg_ss(float (&d)[N / 8][4], uint64_t da, uint64_t db, int acc = 1) { emu_wg_issue(&d[0][0], N, da, nullptr, db, false, 2, acc); }
template <int N> static inline void wg_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t db) { emu_wg_issue(&d[0][0], N, 0, a, db, true, 2); }
template <int N> static inline void wg_ss8(float (&d)[N / 8][4], uint64_t da, uint64_t db, int acc = 1) { emu_wg_issue(&d[0][0], N, da, nullptr, db, false, 1, acc); }

// Warp-specialized kernels' barriers (wgmma.cuh): mbarriers by shared address (a wait that
// can never end aborts: a lost arrival), named barriers, setmaxnreg's register pool.
static inline emu_mbar &emu_mbar_at(uint32_t bar) {
    auto it = emu_b->mbars.find(bar);
    SL_ASSERT(it != emu_b->mbars.end()); // initialised before use
    return *it->second;
}
static inline void wg_mbar_init(uint32_t bar, unsigned count) {
    SL_ASSERT(bar % 8 == 0 && bar + 8 <= emu_b->smem.size());
    auto m = std::make_unique<emu_mbar>();
    m->count = m->pending = (int)count;
    m->init_thread = threadIdx.x;
    emu_b->mbars[bar] = std::move(m);
}
// fence.proxy.async: the thread's earlier shared-memory writes (mbarrier inits among them)
// become visible to the async proxy. A TMA box completing on a barrier whose init was never
// fenced so is what the PTX ISA leaves undefined (the emulator aborts, see wg_tma_load3).
static inline void wg_fence_smem(void) {
    for (auto &kv : emu_b->mbars)
        if (kv.second->init_thread == threadIdx.x) kv.second->async_seen = true;
}
// a phase completes once its arrivals are in and its announced bytes have landed
static inline void emu_mbar_settle(emu_mbar &m) {
    if (m.pending == 0 && m.tx == 0) {
        m.phase++;
        m.pending = m.count;
    }
}
// The arriving thread then yields, so every waiter runs ahead of it: a hand-over made
// before its data landed is read before the arriver's next wait lands it. The yield is
// progress (the arriver ran code): counted as a waiter's, a thread issuing several TMA boxes
// while the others wait at a barrier (k_fp8_moe_wg's first stages, five with v107) looked
// like a deadlock.
static inline void wg_mbar_arrive(uint32_t bar) {
    emu_mbar &m = emu_mbar_at(bar);
    m.pending--;
    emu_mbar_settle(m);
    emu_pass();
}
static inline void wg_mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    emu_mbar &m = emu_mbar_at(bar);
    m.tx += bytes;
    wg_mbar_arrive(bar);
}
// TMA (wgmma.cuh's wg_tma_load2 / 3): a map is the emulator's own record, filled by the
// driver: esz-byte elements, dims innermost first, the byte strides of dims 1 and 2, a box
// of box[0] elements (a multiple of 16 bytes) × box[1] rows (× 1), swz: whether it lands
// 128-byte-swizzled (rows of 128 bytes; row r, 16-byte chunk c at dst + 128r + 16c, then
// address bits 4-6 ^= bits 7-9) or row after row; zeros past the tensor. It lands when a
// waiter first finds the barrier's phase open (as late as the GPU may land it: a tile read
// before its wait reads what was there), or with EMU_CP_EAGER at issue (a stage refilled
// while still read then shows the new data).
struct CUtensorMap { const char *base; int esz; int64_t dim[3], stride[2]; int box[2]; int swz = 1; };
static inline void emu_mbar_land(emu_mbar &m) {
    for (const emu_copy &c : m.due) {
        emu_cp_land(c);
        m.tx -= (long)c.n;
    }
    m.due.clear();
    emu_mbar_settle(m);
}
static inline void wg_tma_load3(uint32_t dst, const void *map, int c0, int c1, int c2, uint32_t bar) {
    const CUtensorMap &t = *(const CUtensorMap *)map;
    emu_mbar &m = emu_mbar_at(bar);
    if (!m.async_seen) {
        fprintf(stderr, "TMA on mbarrier %u (thread %u) before its init was fenced for the async proxy "
                        "(wg_fence_smem after wg_mbar_init)\n", bar, threadIdx.x);
        abort();
    }
    const int per = 16 / t.esz, row = t.box[0] * t.esz; // elements a 16-byte chunk, a box row's bytes
    // (the hardware's: boxes of at most 256 a dimension starting 16-byte aligned in the inner
    // one (else "an illegal instruction": v77's token scales), shared destinations 128-byte
    // aligned, a 128-byte-swizzled one on the 1024-byte period of its pattern with rows of 128 bytes)
    SL_ASSERT(row % 16 == 0 && c0 % per == 0 && t.box[0] <= 256 && t.box[1] <= 256 && c2 < t.dim[2] &&
              (t.swz ? dst % 1024 == 0 && row == 128 : dst % 128 == 0));
    for (int r = 0; r < t.box[1]; r++)
        for (int c = 0; c < row / 16; c++) {
            uint32_t a = dst + row * r + 16 * c;
            if (t.swz) a ^= ((a >> 7) & 7) << 4;
            SL_ASSERT(a + 16 <= emu_b->smem.size());
            bool in = c1 + r < t.dim[1] && c0 + per * c < t.dim[0]; // (dims in whole chunks here)
            const char *src = in ? t.base + c2 * t.stride[1] + (c1 + r) * t.stride[0] + (int64_t)(c0 + per * c) * t.esz
                                 : t.base;
            m.due.push_back({emu_smem() + a, src, 16, in ? 0u : 16u});
        }
    if (emu_cp_eager) emu_mbar_land(m);
}
static inline void wg_tma_load2(uint32_t dst, const void *map, int c0, int c1, uint32_t bar) {
    wg_tma_load3(dst, map, c0, c1, 0, bar);
}
// the phase of this parity completed: the current (incomplete) phase has the other parity
static inline void wg_mbar_wait(uint32_t bar, unsigned parity) {
    emu_mbar &m = emu_mbar_at(bar);
    emu_wait("mbarrier", [&] {
        if ((m.phase & 1) == parity && !m.due.empty()) emu_mbar_land(m);
        return (m.phase & 1) != parity;
    }, [&] {
        fprintf(stderr, "mbarrier %u: parity %u never completed (thread %u)\n", bar, parity, threadIdx.x);
    });
}
static inline emu_bar &emu_nbar(int id, int n) {
    SL_ASSERT(id >= 1 && id < 16 && n % 32 == 0);
    auto &b = emu_b->nbar[id];
    if (!b) b = std::make_unique<emu_bar>(n);
    SL_ASSERT(b->n == n); // one thread count an id, as the kernels use them
    return *b;
}
static inline void wg_bar_sync(int id, int n) { emu_nbar(id, n).arrive_and_wait(); }
static inline void wg_bar_arrive(int id, int n) { emu_nbar(id, n).arrive(); }
// setmaxnreg (wgmma.cuh): a block's registers only move between its own warps. .dec gives
// (launch − R) a thread to the block's pool, .inc takes (R − launch) a thread, waiting for
// the .dec; asking for more than was given back never returns (aborts), as on the GPU. The
// launch count is wgmma.cuh's, which redefines it identically.
#define WG_WS_LAUNCH_REGS 168
static inline void emu_regs_move(int give) {
    emu_block &b = *emu_b;
    if (give < 0)
        emu_wait("setmaxnreg", [&] { return b.regs_pool >= -give; }, [&] {
            fprintf(stderr, "setmaxnreg.inc: thread %u never got its %d registers (the block has %ld left)\n",
                    threadIdx.x, -give, b.regs_pool);
        });
    b.regs_pool += give;
}
template <int R> static inline void wg_regs_dec(void) { emu_regs_move(WG_WS_LAUNCH_REGS - R); }
template <int R> static inline void wg_regs_inc(void) { emu_regs_move(WG_WS_LAUNCH_REGS - R); }

// Warp max, global atomics and fences for the kernels that count finished work across
// blocks (k_fp8_moe_one): a driver running such a kernel runs all its blocks at once.
static inline float cu_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline void __threadfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __nanosleep(unsigned) { emu_pass(); }
static inline float __ldcg(const float *p) { float v; __atomic_load(p, &v, __ATOMIC_RELAXED); return v; }
static inline unsigned moe1_ld_acquire(const unsigned *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline long long clock64(void) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
static inline void __trap(void) { fprintf(stderr, "trap\n"); abort(); }
#define WG_SPIN_LIMIT (4LL << 30) // wgmma.cuh's (clock64 counts ns here: ~4 s)
#define SL_FP8_MAX 448.0f
// e4m3fn of v: the nearest finite code, ties to the even code, beyond 448 saturated (as
// __nv_cvt_float_to_fp8 with __NV_SATFINITE); by search over the codes, for tests only
static inline uint8_t cu_f32_to_e4m3(float v) {
    uint8_t sign = std::signbit(v) ? 0x80 : 0, best = 0;
    float a = fabsf(v), bd = INFINITY;
    for (int c = 0; c < 0x7f; c++) {
        float d = fabsf(emu_e4m3((uint32_t)c) - a);
        if (d < bd || (d == bd && !(c & 1))) { bd = d; best = (uint8_t)c; }
    }
    return sign | best;
}

// Every block of a grid (gx × gy × gz), each `threads` fibers with the block's indices set and
// smem bytes of garbage shared memory, running kernel(): one block after another, or with
// together all at once (a kernel whose blocks wait on one another: k_fp8_moe_one).
template <class F> static void emu_grid(dim3 grid, unsigned threads, size_t smem, F kernel, bool together = false) {
    std::vector<std::unique_ptr<emu_block>> blk;
    std::vector<emu_fiber> fs;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blk.push_back(std::make_unique<emu_block>((int)threads));
                blk.back()->smem.assign(smem, (char)0xff); // NaN-ish garbage
                for (unsigned t = 0; t < threads; t++) {
                    fs.emplace_back();
                    fs.back().fn = kernel;
                    fs.back().st = {{t, 0, 0}, {x, y, z}, {threads, 1, 1}, grid, blk.back().get(), {}, {}, {}, {}};
                }
                if (together && fs.size() < (size_t)grid.x * grid.y * grid.z * threads) continue;
                emu_run(fs);
                fs.clear();
                blk.clear();
            }
}
