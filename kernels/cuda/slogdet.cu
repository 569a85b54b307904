// Batched sign and log|det| of (batch, n, n) matrices by LU factorisation with partial pivoting:
//   log|det A| = sum_k log|U[k][k]|,  sign = (-1)^(row swaps) * prod_k sign(U[k][k]);
// a zero pivot gives (0, -inf), as numpy.linalg.slogdet.
//
// slogdet_small (n <= 32): one warp per matrix, blockDim = (32, matrices per block). The warp loads its
//   matrix into shared memory (row stride n|1, odd, so a column read hits 32 banks) and lane j owns column j.
//   For each pivot column k: lane i proposes |a[i][k]| for i >= k and a shuffle argmax picks the pivot row p;
//   each lane swaps rows k and p in its column; then lane j > k updates its column of the trailing matrix,
//   a[i][j] -= a[i][k] * (1 / a[k][k]) * a[k][j] for i > k (one division per pivot, as LAPACK's
//   getf2; a division per element calls a slow-path subroutine in double). Only __syncwarp is needed.
// slogdet_large (any n): one block of 256 threads per matrix, factorising a scratch copy in global memory
//   (right-looking LU). Per column k: block argmax (warp shuffles, then across warps in shared memory) picks
//   the pivot; threads swap rows k and p in parallel over columns; then warp w updates rows k+1+w, +8, ...
//   with its lanes striding over the columns, so that every row update is a coalesced read and write.
#include "common.cu"

// Running sign and |det| over the pivots seen so far, |det| = mantissa * 2^exponent with mantissa in
// [0.5, 1): no overflow or underflow, and a single log at the end (a log per pivot costs a call per step,
// which spills registers in double).
template <typename T> struct Det {
    T sign = T(1), mantissa = T(1);
    int exponent = 0;
    __device__ void pivot(T u, bool swapped) {
        if (swapped) sign = -sign;
        if (u < T(0)) sign = -sign;
        int e1, e2;
        mantissa = frexp(mantissa * frexp(fabs(u), &e1), &e2);
        exponent += e1 + e2;
    }
    __device__ void singular() { sign = T(0); mantissa = T(0); }
    __device__ T logabs() const {
        return mantissa == T(0) ? neg_inf<T>() : log_(mantissa) + T(exponent) * T(0.69314718055994531);
    }
};

template <typename T> __device__ void slogdet_small(const T* A, T* sign, T* logabs, int batch, int n) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int mat = blockIdx.x * blockDim.y + threadIdx.y;
    if (mat >= batch) return;  // whole warps leave together
    const int lane = threadIdx.x, ld = n | 1;
    T* a = reinterpret_cast<T*>(smem) + threadIdx.y * n * ld;
    const T* src = A + (long long)mat * n * n;
    for (int e = lane; e < n * n; e += 32) a[e / n * ld + e % n] = src[e];
    __syncwarp();
    Det<T> det;
    for (int k = 0; k < n; ++k) {
        T best = lane >= k && lane < n ? fabs(a[lane * ld + k]) : T(-1);
        int p = lane;
        warp_argmax(best, p);
        if (best == T(0)) { det.singular(); break; }  // warp-uniform
        if (p != k && lane >= k && lane < n) {
            const T t = a[k * ld + lane]; a[k * ld + lane] = a[p * ld + lane]; a[p * ld + lane] = t;
        }
        __syncwarp();
        const T u = a[k * ld + k], inv_u = T(1) / u;
        det.pivot(u, p != k);
        if (lane > k && lane < n)
            for (int i = k + 1; i < n; ++i) a[i * ld + lane] -= a[i * ld + k] * inv_u * a[k * ld + lane];
        __syncwarp();
    }
    if (lane == 0) { sign[mat] = det.sign; logabs[mat] = det.logabs(); }
}

constexpr int LARGE_THREADS = 256;

template <typename T> __device__ int block_argmax(T v, int i) {
    __shared__ T best_v[32];
    __shared__ int best_i[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    warp_argmax(v, i);
    if (lane == 0) { best_v[warp] = v; best_i[warp] = i; }
    __syncthreads();
    v = lane < LARGE_THREADS / 32 ? best_v[lane] : T(-1);
    i = lane < LARGE_THREADS / 32 ? best_i[lane] : 0;
    warp_argmax(v, i);
    __syncthreads();  // best_v / best_i are reused by the next call
    return v == T(0) ? -1 : i;
}

template <typename T> __device__ void slogdet_large(T* work, T* sign, T* logabs, int n) {
    T* a = work + (long long)blockIdx.x * n * n;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    Det<T> det;
    for (int k = 0; k < n; ++k) {
        T best = T(-1);
        int p = k;
        for (int i = k + threadIdx.x; i < n; i += LARGE_THREADS) {
            const T v = fabs(a[(long long)i * n + k]);
            if (v > best) { best = v; p = i; }
        }
        p = block_argmax(best, p);
        if (p < 0) { det.singular(); break; }  // block-uniform
        if (p != k)
            for (int j = k + threadIdx.x; j < n; j += LARGE_THREADS) {
                const T t = a[(long long)k * n + j];
                a[(long long)k * n + j] = a[(long long)p * n + j];
                a[(long long)p * n + j] = t;
            }
        __syncthreads();
        const T u = a[(long long)k * n + k], inv_u = T(1) / u;
        det.pivot(u, p != k);
        for (int i = k + 1 + warp; i < n; i += LARGE_THREADS / 32) {
            const T l = a[(long long)i * n + k] * inv_u;
            for (int j = k + 1 + lane; j < n; j += 32) a[(long long)i * n + j] -= l * a[(long long)k * n + j];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) { sign[blockIdx.x] = det.sign; logabs[blockIdx.x] = det.logabs(); }
}

#define SLOGDET_ENTRIES(T, SFX)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                   \
        slogdet_small_##SFX(const T* a, T* sign, T* logabs, int batch, int n) {                         \
        slogdet_small<T>(a, sign, logabs, batch, n);                                                     \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(LARGE_THREADS)                                         \
        slogdet_large_##SFX(T* work, T* sign, T* logabs, int n) {                                       \
        slogdet_large<T>(work, sign, logabs, n);                                                         \
    }

SLOGDET_ENTRIES(float, f32)
SLOGDET_ENTRIES(double, f64)
