// What surrounds the cuBLASLt products: input conversion to the weights' 16-bit type, and the
// epilogue of turbine_core::Epilogue on the f32 product:
//   out[i, j] (+)= act(acc[i, j] * (row_scale[i] * col_scale[j]) + Σ_t x[i, idx[t]] · wx[j, t] + bias[j])
// (row_scale: the per-token FP8 input scales; col_scale: the weights' scales; idx/wx: input
// channels multiplied exactly from the unquantised input x; each optional). The arithmetic is the
// CPU backend's, operation for operation (no FMA contraction).
#include "common.cuh"

template <typename T>
__device__ void convert_from_f32(const float* x, T* y, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = from_f<T>(x[i]);
}

#define CONVERT(N, T)                                                                                         \
    extern "C" __global__ void convert_from_f32_##N(const float* x, T* y, size_t n) { convert_from_f32<T>(x, y, n); }
TURBINE_FOR_TYPES(CONVERT)

extern "C" __global__ void epilogue_f32(const float* acc, const float* row_scale, const float* col_scale,
                                        const float* bias, const float* x, const u32* idx, const float* wx, u32 s,
                                        u32 k, int act, int accumulate, float* out, u32 m, u32 n) {
    size_t total = (size_t)m * n;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / n, c = i % n;
        float v = acc[i];
        if (row_scale && col_scale) v = __fmul_rn(v, __fmul_rn(row_scale[r], col_scale[c]));
        else if (row_scale) v = __fmul_rn(v, row_scale[r]);
        else if (col_scale) v = __fmul_rn(v, col_scale[c]);
        if (s) {
            const float* xr = x + r * k;
            const float* wr = wx + c * s;
            float e = 0.f;
            for (u32 t = 0; t < s; ++t) e = __fadd_rn(e, __fmul_rn(xr[idx[t]], wr[t]));
            v = __fadd_rn(v, e);
        }
        if (bias) v = __fadd_rn(v, bias[c]);
        if (act >= 0) v = activate(v, act);
        out[i] = accumulate ? out[i] + v : v;
    }
}

// Row-wise softmax in place, one block per row.
extern "C" __global__ void softmax_f32(float* x, u32 cols) {
    float* r = x + (size_t)blockIdx.x * cols;
    float m = -TURBINE_INF;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, r[c]);
    m = block_max(m);
    float s = 0.f;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        float e = __expf(r[c] - m);
        r[c] = e;
        s += e;
    }
    s = block_sum(s);
    float inv = 1.f / s;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) r[c] *= inv;
}
