// Warp-level bf16 tensor-core helpers (mma.sync m16n8k16, ldmatrix) shared by
// the prefill attention's FA2-form kernels and the GDN scan.
#pragma once
#include <stdint.h>

// ldmatrix x4: lanes 8i..8i+7 give the row addresses of 8×8 matrix i, which
// lands in r[i] (lane 4g + q: row g, columns 2q, 2q + 1; with .trans row 2q
// and 2q + 1 of column g).
__device__ __forceinline__ void mma_ldsm4(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void mma_ldsm4_t(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c += a·b: a 16×16 row-major (a[0] rows 0-7 k 0-7, a[1] rows 8-15 k 0-7,
// a[2] rows 0-7 k 8-15, a[3] rows 8-15 k 8-15), b 16×8 column-major (b0 k
// 0-7, b1 k 8-15), c 16×8 (c[0..1] row g, c[2..3] row g + 8).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
