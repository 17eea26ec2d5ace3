// Row normalisation fused with the residual stream, one block per row.
//   resid_mode 0: out = norm(x)
//   resid_mode 1: r += x, out = norm(r)          (pre-norm blocks)
//   resid_mode 2: out = norm(x), r += out        (post-norm branches, Gemma)
// RMSNorm: x / sqrt(mean(x^2) + eps) * (w + offset). LayerNorm: (x - mean) / sqrt(var + eps) * w + b.
// Statistics are accumulated in f32.
#include "common.cuh"

// x, resid and out are distinct buffers (the Ops trait borrows them so), and within a loop no thread
// reads back what it wrote (a stored value is used as its rounding, to_f(from_f(v))): __restrict__
// lets the compiler issue a thread's loads of several columns before its stores, instead of one
// memory round trip per column. The arithmetic and its order are unchanged.
template <typename T>
__device__ void norm_row(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                         T* __restrict__ resid, int resid_mode, T* __restrict__ out, u32 cols, float eps,
                         float offset, int layer) {
    size_t row = (size_t)blockIdx.x * cols;
    const T* __restrict__ xr = x + row;
    T* __restrict__ rr = resid ? resid + row : nullptr;
    T* __restrict__ orow = out + row;
    // The input of the norm: x, or the residual after adding x (rounded to T as it is stored).
    float sum = 0.f, sq = 0.f;
#pragma unroll 4
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f(xr[c]);
        if (resid_mode == 1) {
            T stored = from_f<T>(v + to_f(rr[c]));
            rr[c] = stored;
            v = to_f(stored);
        }
        sum += v;
        sq += v * v;
    }
    float mean = layer ? block_sum(sum) / cols : 0.f;
    float inv;
    if (layer) {
        // Second pass for the variance: numerically safer than E[x^2] - mean^2.
        float var = 0.f;
        for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = resid_mode == 1 ? to_f(rr[c]) : to_f(xr[c]);
            var += (v - mean) * (v - mean);
        }
        inv = rsqrtf(block_sum(var) / cols + eps);
    } else {
        inv = rsqrtf(block_sum(sq) / cols + eps);
    }
#pragma unroll 4
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = resid_mode == 1 ? to_f(rr[c]) : to_f(xr[c]);
        float y = layer ? (v - mean) * inv * to_f(w[c]) + (b ? to_f(b[c]) : 0.f) : v * inv * (to_f(w[c]) + offset);
        T stored = from_f<T>(y);
        orow[c] = stored;
        if (resid_mode == 2) rr[c] = from_f<T>(to_f(rr[c]) + to_f(stored));
    }
}

#define NORM(N, T)                                                                                            \
    extern "C" __global__ void norm_##N(const T* x, const T* w, const T* b, T* resid, int resid_mode, T* out, \
                                        u32 cols, float eps, float offset, int layer) {                       \
        norm_row<T>(x, w, b, resid, resid_mode, out, cols, eps, offset, layer);                               \
    }
TURBINE_FOR_TYPES(NORM)

// Per-head RMS norm of the query and key heads of a fused QKV [t, (qh + 2 kvh) * d], in place.
// One block per (row, head) for the first qh + kvh heads; blockDim.x >= 32.
template <typename T>
__device__ void head_norm(T* qkv, const T* wq, const T* wk, u32 q_heads, u32 kv_heads, u32 d, float eps,
                          float offset) {
    u32 heads = q_heads + kv_heads;
    u32 row = blockIdx.x / heads, h = blockIdx.x % heads;
    u32 width = (q_heads + 2 * kv_heads) * d;
    T* x = qkv + (size_t)row * width + (size_t)h * d;
    const T* w = h < q_heads ? wq : wk;
    float sq = 0.f;
    for (u32 c = threadIdx.x; c < d; c += blockDim.x) {
        float v = to_f(x[c]);
        sq += v * v;
    }
    float inv = rsqrtf(block_sum(sq) / d + eps);
    for (u32 c = threadIdx.x; c < d; c += blockDim.x) x[c] = from_f<T>(to_f(x[c]) * inv * (to_f(w[c]) + offset));
}

#define HEAD_NORM(N, T)                                                                                       \
    extern "C" __global__ void head_norm_##N(T* qkv, const T* wq, const T* wk, u32 q_heads, u32 kv_heads,     \
                                             u32 d, float eps, float offset) {                                \
        head_norm<T>(qkv, wq, wk, q_heads, kv_heads, d, eps, offset);                                         \
    }
TURBINE_FOR_TYPES(HEAD_NORM)
