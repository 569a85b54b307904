// Row softmax and log-softmax, forward and backward, over the last axis of a (rows, n) array.
//
// Launch geometry: blockDim = (threads per row, rows per block). Short rows get one warp each (32, 4);
// long rows get a whole block each (256, 1). The threads of a row stride over its n elements.
//
// Forward, one read of the row for its statistics (online softmax, Milakov & Gimelshein 2018):
//   each thread keeps a running max m and s = sum exp(x - m), rescaling s whenever m grows; the (m, s)
//   pairs are merged across the warp with xor shuffles and, for block rows, across warps through shared
//   memory. A second read writes y = exp(x - m) / s (softmax) or x - m - log s (log-softmax).
//   Rows holding -inf are fine (exp(-inf) = 0); a row of only -inf gives NaN, as in NumPy.
// Backward, the same pattern with a plain sum:
//   softmax:     gx = y * (gy - sum(gy * y))
//   log-softmax: gx = gy - exp(y) * sum(gy)
#include "common.cu"

template <typename T> struct MaxSum {  // running max and sum of exp(x - max)
    T m, s;
    __device__ static MaxSum identity() { return {neg_inf<T>(), T(0)}; }
    __device__ void add(T x) {
        if (x > m) { s = s * exp_(m - x) + T(1); m = x; }
        else if (x != neg_inf<T>()) { s += exp_(x - m); }
    }
    __device__ MaxSum merge(MaxSum o) const {
        T mm = m > o.m ? m : o.m;
        if (mm == neg_inf<T>()) return identity();
        return {mm, s * exp_(m - mm) + o.s * exp_(o.m - mm)};
    }
    __device__ MaxSum shfl_xor(int offset) const {
        return {__shfl_xor_sync(FULL_MASK, m, offset), __shfl_xor_sync(FULL_MASK, s, offset)};
    }
};

template <typename T> struct Sum {
    T s;
    __device__ static Sum identity() { return {T(0)}; }
    __device__ Sum merge(Sum o) const { return {s + o.s}; }
    __device__ Sum shfl_xor(int offset) const { return {__shfl_xor_sync(FULL_MASK, s, offset)}; }
};

// Reduce over the blockDim.x threads of a row; every thread of the row gets the result.
template <typename R> __device__ R row_allreduce(R v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = v.merge(v.shfl_xor(offset));
    if (blockDim.x == 32) return v;
    __shared__ R partial[32];  // block rows only (blockDim.y == 1): one slot per warp
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < blockDim.x / 32 ? partial[lane] : R::identity();
    for (int offset = 16; offset > 0; offset >>= 1) v = v.merge(v.shfl_xor(offset));
    return v;
}

template <typename T, bool LOG> __device__ void softmax_rows(const T* x, T* y, int rows, int n) {
    const long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;  // whole warps leave together: a warp never spans two rows
    const T* xr = x + row * n;
    T* yr = y + row * n;
    MaxSum<T> acc = MaxSum<T>::identity();
    for (int j = threadIdx.x; j < n; j += blockDim.x) acc.add(xr[j]);
    acc = row_allreduce(acc);
    const T log_s = log_(acc.s);
    const T inv_s = T(1) / acc.s;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        yr[j] = LOG ? xr[j] - acc.m - log_s : exp_(xr[j] - acc.m) * inv_s;
}

template <typename T, bool LOG>
__device__ void softmax_backward_rows(const T* y, const T* gy, T* gx, int rows, int n) {
    const long long row = (long long)blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;
    const T* yr = y + row * n;
    const T* gr = gy + row * n;
    T* gxr = gx + row * n;
    Sum<T> acc = Sum<T>::identity();
    for (int j = threadIdx.x; j < n; j += blockDim.x) acc.s += LOG ? gr[j] : gr[j] * yr[j];
    const T s = row_allreduce(acc).s;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        gxr[j] = LOG ? gr[j] - exp_(yr[j]) * s : yr[j] * (gr[j] - s);
}

#define SOFTMAX_ENTRIES(T, SFX)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) softmax_##SFX(const T* x, T* y, int rows, int n) {   \
        softmax_rows<T, false>(x, y, rows, n);                                                           \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(256) log_softmax_##SFX(const T* x, T* y, int rows, int n) { \
        softmax_rows<T, true>(x, y, rows, n);                                                            \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                   \
        softmax_backward_##SFX(const T* y, const T* gy, T* gx, int rows, int n) {                       \
        softmax_backward_rows<T, false>(y, gy, gx, rows, n);                                             \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                                   \
        log_softmax_backward_##SFX(const T* y, const T* gy, T* gx, int rows, int n) {                   \
        softmax_backward_rows<T, true>(y, gy, gx, rows, n);                                              \
    }

SOFTMAX_ENTRIES(float, f32)
SOFTMAX_ENTRIES(double, f64)
