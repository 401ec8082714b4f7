/* sl_rng: counter-based random numbers. The value at (seed, index) does not
 * depend on the order of calls, so the CPU and CUDA backends and every TP rank
 * produce identical dummy weights and sampling noise. */
#ifndef SL_RNG_H
#define SL_RNG_H

#include <stdint.h>

#ifdef __CUDACC__
#define SL_RNG_FN __host__ __device__ static inline
#else
#define SL_RNG_FN static inline
#endif

SL_RNG_FN uint64_t sl_rng_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Uniform in [0, 1) with 24 bits, exact in float. */
SL_RNG_FN float sl_rng_uniform(uint64_t seed, uint64_t index)
{
    return (float)(sl_rng_mix(seed ^ sl_rng_mix(index)) >> 40) * (1.0f / 16777216.0f);
}

#endif
