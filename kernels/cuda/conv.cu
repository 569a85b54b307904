// 2-D convolution, its transpose and its weight gradient as implicit GEMMs (NCHW, PyTorch semantics).
//
// Each op is, for each group g, a matrix product C[m][q] = sum_k A[m][k] * B[k][q] whose operands are
// never materialised: an Op struct computes the address of any A or B element (im2col on the fly, zero
// outside the image) and where C[m][q] goes. With cg = C/groups input and og = O/groups output channels:
//
//   conv2d            C = y (og x N*Ho*Wo)   A = w (og x cg*kh*kw)    B = im2col(x) (cg*kh*kw x N*Ho*Wo)
//   conv_transpose2d  C = y (og x N*Ho*Wo)   A = w^T                  B = gather of x: output (oh, ow) takes
//                     input (ih, iw) with ih*sh = oh + ph - i*dh (the scatter-free adjoint of conv2d)
//   conv2d_weight     C = dw (og x cg*kh*kw) A = gy (og x N*Ho*Wo)    B = im2col(x)^T
//
// conv2d_weight has a long K (= N*Ho*Wo) and a small C, so K is split over blockIdx.z: split s writes its
// partial product to a workspace slice out[s], summed afterwards by the host (deterministic, no atomics).
//
// Two GEMM drivers share the Op structs:
//   gemm_tiled  block of 256 threads computes a 64x64 tile of C, each thread a 4x4 micro-tile (rows ty+16i,
//               columns tx+16j). K advances 16 at a time: the block stages a 64x16 slice of A and a
//               16x64 slice of B in shared memory, then each thread does 16 rank-1 updates of its 4x4
//               accumulators from shared memory.
//   gemm_naive  the baseline: one thread per element of C, 16x16 threads per block, no data reuse.
#include "common.cu"

struct ConvGeom {
    int n, c, h, w;    // input x: (n, c, h, w)
    int o, ho, wo;     // output y: (n, o, ho, wo)
    int kh, kw, sh, sw, ph, pw, dh, dw, groups;
    __device__ int cg() const { return c / groups; }
    __device__ int og() const { return o / groups; }
    __device__ int taps() const { return kh * kw; }
    __device__ int pixels() const { return n * ho * wo; }
};

// Position p of the output (n, oh, ow) and tap k of the filter (channel, i, j), unpacked from flat indices.
struct Pixel {
    int n, oh, ow;
    __device__ Pixel(const ConvGeom& g, int p) : n(p / (g.ho * g.wo)), oh(p / g.wo % g.ho), ow(p % g.wo) {}
};
struct Tap {
    int c, i, j;
    __device__ Tap(const ConvGeom& g, int k) : c(k / g.taps()), i(k / g.kw % g.kh), j(k % g.kw) {}
};

// x[n, group*cg + tap.c, oh*sh - ph + i*dh, ow*sw - pw + j*dw], or 0 in the padding.
template <typename T> __device__ T im2col(const T* x, const ConvGeom& g, int group, int k, int p) {
    const Tap t(g, k);
    const Pixel px(g, p);
    const int ih = px.oh * g.sh - g.ph + t.i * g.dh, iw = px.ow * g.sw - g.pw + t.j * g.dw;
    if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) return T(0);
    return x[(((long long)px.n * g.c + group * g.cg() + t.c) * g.h + ih) * g.w + iw];
}

// y[n, group*og + m, oh, ow] = v + bias[channel]
template <typename T>
__device__ void store_nchw(T* y, const T* bias, const ConvGeom& g, int group, int m, int p, T v) {
    const Pixel px(g, p);
    const int ch = group * g.og() + m;
    y[(((long long)px.n * g.o + ch) * g.ho + px.oh) * g.wo + px.ow] = v + bias[ch];
}

template <typename T> struct Conv2dOp {  // x (n,c,h,w), w (o,cg,kh,kw) -> y (n,o,ho,wo)
    const T *x, *w, *bias;
    T* y;
    ConvGeom g;
    __device__ int M() const { return g.og(); }
    __device__ int N() const { return g.pixels(); }
    __device__ int K() const { return g.cg() * g.taps(); }
    __device__ T a(int group, int m, int k) const { return w[(long long)(group * g.og() + m) * K() + k]; }
    __device__ T b(int group, int k, int p) const { return im2col(x, g, group, k, p); }
    __device__ void store(int group, int, int m, int p, T v) const { store_nchw(y, bias, g, group, m, p, v); }
};

template <typename T> struct ConvTranspose2dOp {  // x (n,c,h,w), w (c,og,kh,kw) -> y (n,o,ho,wo)
    const T *x, *w, *bias;
    T* y;
    ConvGeom g;
    __device__ int M() const { return g.og(); }
    __device__ int N() const { return g.pixels(); }
    __device__ int K() const { return g.cg() * g.taps(); }
    __device__ T a(int group, int m, int k) const {
        const int ch = group * g.cg() + k / g.taps();
        return w[((long long)ch * g.og() + m) * g.taps() + k % g.taps()];
    }
    __device__ T b(int group, int k, int p) const {  // x at the input pixel that tap k carries to p, if any
        const Tap t(g, k);
        const Pixel px(g, p);
        const int th = px.oh + g.ph - t.i * g.dh, tw = px.ow + g.pw - t.j * g.dw;
        if (th < 0 || tw < 0 || th % g.sh || tw % g.sw) return T(0);
        const int ih = th / g.sh, iw = tw / g.sw;
        if (ih >= g.h || iw >= g.w) return T(0);
        return x[(((long long)px.n * g.c + group * g.cg() + t.c) * g.h + ih) * g.w + iw];
    }
    __device__ void store(int group, int, int m, int p, T v) const { store_nchw(y, bias, g, group, m, p, v); }
};

template <typename T> struct Conv2dWeightOp {  // x (n,c,h,w), gy (n,o,ho,wo) -> dw partials (splits,o,cg,kh,kw)
    const T *x, *gy, *unused;
    T* dw;
    ConvGeom g;
    __device__ int M() const { return g.og(); }
    __device__ int N() const { return g.cg() * g.taps(); }
    __device__ int K() const { return g.pixels(); }
    __device__ T a(int group, int m, int p) const {
        const Pixel px(g, p);
        return gy[(((long long)px.n * g.o + group * g.og() + m) * g.ho + px.oh) * g.wo + px.ow];
    }
    __device__ T b(int group, int p, int k) const { return im2col(x, g, group, k, p); }
    __device__ void store(int group, int split, int m, int k, T v) const {
        dw[((long long)split * g.o + group * g.og() + m) * N() + k] = v;
    }
};

constexpr int TILE_M = 64, TILE_N = 64, TILE_K = 16, THREADS = 256, MICRO = 4;

template <typename T, typename Op> __device__ void gemm_tiled(const Op& op, int kchunk) {
    __shared__ T As[TILE_K][TILE_M + 1];  // +1: the column-wise stores below hit 32 different banks
    __shared__ T Bs[TILE_K][TILE_N];
    const int group = blockIdx.z % op.g.groups, split = blockIdx.z / op.g.groups;
    const int M = op.M(), N = op.N();
    const int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    const int k_begin = split * kchunk, k_end = min(op.K(), k_begin + kchunk);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    T acc[MICRO][MICRO] = {};
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
#pragma unroll
        for (int r = 0; r < TILE_M * TILE_K / THREADS; ++r) {
            const int e = threadIdx.x + r * THREADS;
            const int am = e / TILE_K, ak = e % TILE_K;     // consecutive threads: consecutive k of A
            const int bk = e / TILE_N, bn = e % TILE_N;     // consecutive threads: consecutive columns of B
            As[ak][am] = m0 + am < M && k0 + ak < k_end ? op.a(group, m0 + am, k0 + ak) : T(0);
            Bs[bk][bn] = n0 + bn < N && k0 + bk < k_end ? op.b(group, k0 + bk, n0 + bn) : T(0);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            T a[MICRO], b[MICRO];
#pragma unroll
            for (int i = 0; i < MICRO; ++i) { a[i] = As[kk][ty + 16 * i]; b[i] = Bs[kk][tx + 16 * i]; }
#pragma unroll
            for (int i = 0; i < MICRO; ++i)
#pragma unroll
                for (int j = 0; j < MICRO; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < MICRO; ++i)
#pragma unroll
        for (int j = 0; j < MICRO; ++j) {
            const int m = m0 + ty + 16 * i, q = n0 + tx + 16 * j;
            if (m < M && q < N) op.store(group, split, m, q, acc[i][j]);
        }
}

template <typename T, typename Op> __device__ void gemm_naive(const Op& op, int kchunk) {
    const int group = blockIdx.z % op.g.groups, split = blockIdx.z / op.g.groups;
    const int m = blockIdx.y * blockDim.y + threadIdx.y, q = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= op.M() || q >= op.N()) return;
    const int k_begin = split * kchunk, k_end = min(op.K(), k_begin + kchunk);
    T acc = T(0);
    for (int k = k_begin; k < k_end; ++k) acc += op.a(group, m, k) * op.b(group, k, q);
    op.store(group, split, m, q, acc);
}

// Every entry point takes (p, q, bias, out, geometry..., kchunk): p and q are (x, w) for the convolutions and
// (x, gy) for the weight gradient, which ignores bias.
#define CONV_PARAMS                                                                                      \
    int n, int c, int h, int w, int o, int ho, int wo, int kh, int kw, int sh, int sw, int ph, int pw, int dh, \
        int dw, int groups, int kchunk
#define CONV_GEOM ConvGeom{n, c, h, w, o, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups}
#define GEMM_ENTRIES(NAME, OP, T, SFX)                                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS)                                               \
        NAME##_gemm_##SFX(const T* p, const T* q, const T* bias, T* out, CONV_PARAMS) {                 \
        gemm_tiled<T>(OP<T>{p, q, bias, out, CONV_GEOM}, kchunk);                                        \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS)                                               \
        NAME##_naive_##SFX(const T* p, const T* q, const T* bias, T* out, CONV_PARAMS) {                \
        gemm_naive<T>(OP<T>{p, q, bias, out, CONV_GEOM}, kchunk);                                        \
    }
#define CONV_ENTRIES(T, SFX)                                  \
    GEMM_ENTRIES(conv2d, Conv2dOp, T, SFX)                    \
    GEMM_ENTRIES(conv_transpose2d, ConvTranspose2dOp, T, SFX) \
    GEMM_ENTRIES(conv2d_weight, Conv2dWeightOp, T, SFX)

CONV_ENTRIES(float, f32)
CONV_ENTRIES(double, f64)
