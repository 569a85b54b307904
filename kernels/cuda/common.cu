// Device helpers shared by the minigen CUDA kernels.
// Compiled by NVRTC (through CuPy at run time, or the compile checks in tests/), so only device code and
// no host headers: infinities come from bit patterns, maths functions from CUDA's built-in overloads.
#pragma once

template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000ULL);
}

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

// 1/u without an IEEE division: ptxas may turn a division (or rcp.rn) into a call to a slow-path subroutine,
// whose calling convention costs a stack frame and register spills inside a hot loop. rcp.approx gives about
// 22 bits in double (a rounding or so in float); each Newton step r += r * (1 - u*r) doubles the bits, so the
// results land within an ulp. Denormal u (below 2^-1022, or 2^-126 in float) is flushed to zero (.ftz).
__device__ __forceinline__ double reciprocal(double u) {
    double r;
    asm("rcp.approx.ftz.f64 %0, %1;" : "=d"(r) : "d"(u));
    r = fma(r, fma(-u, r, 1.0), r);
    return fma(r, fma(-u, r, 1.0), r);
}
__device__ __forceinline__ float reciprocal(float u) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(u));
    return fmaf(r, fmaf(-u, r, 1.0f), r);
}

constexpr unsigned FULL_MASK = 0xffffffffu;

// Warp argmax of (value, index) pairs by xor shuffles; ties go to the smaller index (as LAPACK's i_amax).
// Every lane ends with the winner.
template <typename T> __device__ __forceinline__ void warp_argmax(T& v, int& i) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        T ov = __shfl_xor_sync(FULL_MASK, v, offset);
        int oi = __shfl_xor_sync(FULL_MASK, i, offset);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
}
