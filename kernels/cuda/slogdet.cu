// Batched sign and log|det| of (batch, n, n) matrices by LU factorisation with partial pivoting:
//   log|det A| = sum_k log|U[k][k]|,  sign = (-1)^(row swaps) * prod_k sign(U[k][k]);
// a zero pivot gives (0, -inf), as numpy.linalg.slogdet.
//
// slogdet_small (n <= 32): one warp per matrix, blockDim = (32, matrices per block). The warp loads its
//   matrix into shared memory (row stride n|1, odd, so a column read hits 32 banks) and lane j owns column j.
//   For each pivot column k: lane i proposes |a[i][k]| for i >= k and a shuffle argmax picks the pivot row p;
//   each lane swaps rows k and p in its column; then lane j > k updates its column of the trailing matrix,
//   a[i][j] -= a[i][k] * (1 / a[k][k]) * a[k][j] for i > k (one reciprocal per pivot, as LAPACK's getf2;
//   reciprocal() in common.cu says why it is not a division). Only __syncwarp is needed.
// slogdet_large (any n): one block of 256 threads per matrix, factorising a scratch copy in global memory
//   (right-looking LU). Per column k: block argmax (warp shuffles, then across warps in shared memory) picks
//   the pivot; threads swap rows k and p in parallel over columns; then warp w updates rows k+1+w, +8, ...
//   with its lanes striding over the columns, so that every row update is a coalesced read and write.
#include "common.cu"

// After the elimination the pivots are U's diagonal, still in the matrix: log|det| and the count of negative
// pivots are summed over it in parallel, after the loop. (A log inside the pivot loop is a call to a slow-path
// subroutine for some compiler versions, which costs a stack frame and register spills.)
template <typename T> struct LogDet {  // sum of log|u| and count of negative u over some pivots
    T logabs, negatives;
    __device__ static LogDet of(T u) { return {log_(fabs(u)), T(u < T(0))}; }
    __device__ LogDet operator+(LogDet o) const { return {logabs + o.logabs, negatives + o.negatives}; }
    __device__ LogDet shfl_xor(int offset) const {
        return {__shfl_xor_sync(FULL_MASK, logabs, offset), __shfl_xor_sync(FULL_MASK, negatives, offset)};
    }
    __device__ LogDet warp_sum() const {
        LogDet v = *this;
        for (int offset = 16; offset > 0; offset >>= 1) v = v + v.shfl_xor(offset);
        return v;
    }
};

template <typename T>
__device__ void write_result(LogDet<T> d, bool odd_swaps, bool singular, T* sign, T* logabs, int mat) {
    const bool negative = odd_swaps != (int(d.negatives) % 2 == 1);
    sign[mat] = singular ? T(0) : negative ? T(-1) : T(1);
    logabs[mat] = singular ? neg_inf<T>() : d.logabs;
}

template <typename T> __device__ void slogdet_small(const T* A, T* sign, T* logabs, int batch, int n) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int mat = blockIdx.x * blockDim.y + threadIdx.y;
    if (mat >= batch) return;  // whole warps leave together
    const int lane = threadIdx.x, ld = n | 1;
    T* a = reinterpret_cast<T*>(smem) + threadIdx.y * n * ld;
    const T* src = A + (long long)mat * n * n;
    for (int e = lane; e < n * n; e += 32) a[e / n * ld + e % n] = src[e];
    __syncwarp();
    bool odd_swaps = false, singular = false;
    for (int k = 0; k < n; ++k) {
        T best = lane >= k && lane < n ? fabs(a[lane * ld + k]) : T(-1);
        int p = lane;
        warp_argmax(best, p);
        singular = best == T(0);  // warp-uniform
        if (singular) break;
        if (p != k && lane >= k && lane < n) {
            const T t = a[k * ld + lane]; a[k * ld + lane] = a[p * ld + lane]; a[p * ld + lane] = t;
        }
        odd_swaps ^= p != k;
        __syncwarp();
        const T inv_u = reciprocal(a[k * ld + k]);
        if (lane > k && lane < n)
            for (int i = k + 1; i < n; ++i) a[i * ld + lane] -= a[i * ld + k] * inv_u * a[k * ld + lane];
        __syncwarp();
    }
    const LogDet<T> d = (lane < n ? LogDet<T>::of(a[lane * ld + lane]) : LogDet<T>{T(0), T(0)}).warp_sum();
    if (lane == 0) write_result(d, odd_swaps, singular, sign, logabs, mat);
}

constexpr int LARGE_THREADS = 256, LARGE_WARPS = LARGE_THREADS / 32;

template <typename T> __device__ int block_argmax(T v, int i) {
    __shared__ T best_v[LARGE_WARPS];
    __shared__ int best_i[LARGE_WARPS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    warp_argmax(v, i);
    if (lane == 0) { best_v[warp] = v; best_i[warp] = i; }
    __syncthreads();
    v = lane < LARGE_WARPS ? best_v[lane] : T(-1);
    i = lane < LARGE_WARPS ? best_i[lane] : 0;
    warp_argmax(v, i);
    __syncthreads();  // best_v / best_i are reused by the next call
    return v == T(0) ? -1 : i;
}

template <typename T> __device__ LogDet<T> block_sum(LogDet<T> v) {
    __shared__ LogDet<T> partial[LARGE_WARPS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = v.warp_sum();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < LARGE_WARPS ? partial[lane] : LogDet<T>{T(0), T(0)};
    return v.warp_sum();
}

template <typename T> __device__ void slogdet_large(T* work, T* sign, T* logabs, int n) {
    T* a = work + (long long)blockIdx.x * n * n;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    bool odd_swaps = false, singular = false;
    for (int k = 0; k < n; ++k) {
        T best = T(-1);
        int p = k;
        for (int i = k + threadIdx.x; i < n; i += LARGE_THREADS) {
            const T v = fabs(a[(long long)i * n + k]);
            if (v > best) { best = v; p = i; }
        }
        p = block_argmax(best, p);
        singular = p < 0;  // block-uniform
        if (singular) break;
        if (p != k)
            for (int j = k + threadIdx.x; j < n; j += LARGE_THREADS) {
                const T t = a[(long long)k * n + j];
                a[(long long)k * n + j] = a[(long long)p * n + j];
                a[(long long)p * n + j] = t;
            }
        odd_swaps ^= p != k;
        __syncthreads();
        const T inv_u = reciprocal(a[(long long)k * n + k]);
        for (int i = k + 1 + warp; i < n; i += LARGE_WARPS) {
            const T l = a[(long long)i * n + k] * inv_u;
            for (int j = k + 1 + lane; j < n; j += 32) a[(long long)i * n + j] -= l * a[(long long)k * n + j];
        }
        __syncthreads();
    }
    LogDet<T> d{T(0), T(0)};
    for (int k = threadIdx.x; k < n; k += LARGE_THREADS) d = d + LogDet<T>::of(a[(long long)k * n + k]);
    d = block_sum(d);
    if (threadIdx.x == 0) write_result(d, odd_swaps, singular, sign, logabs, blockIdx.x);
}

#define SLOGDET_ENTRIES(T, SFX)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                   \
        slogdet_small_##SFX(const T* a, T* sign, T* logabs, int batch, int n) {                         \
        slogdet_small<T>(a, sign, logabs, batch, n);                                                     \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(LARGE_THREADS, 1)                                       \
        slogdet_large_##SFX(T* work, T* sign, T* logabs, int n) {                                       \
        slogdet_large<T>(work, sign, logabs, n);                                                         \
    }

SLOGDET_ENTRIES(float, f32)
SLOGDET_ENTRIES(double, f64)
