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

// acc[i, j] = sum_c x[i, c] * w[j, c] for f32, f16 or bf16 weights: one warp per output column;
// with k % 8 == 0 lane l takes c = 8l .. 8l + 7, then 8l + 256 .., else c = 4l .. 4l + 3, then
// 4l + 128 .., each a fused multiply-add in c order, then the warp reduction; GEMV_ROWS rows at a
// time (blockIdx.y strides over the row tiles); blockDim.x = 256, k % 4 == 0. A row's sum does
// not depend on m, nor on the weights' storage type: the batch-invariant product for every row
// count. col_scale, bias, accumulate, gate: see gemv_tiles (n: the output's columns; off for raw
// sums).
template <bool GATED>
__device__ void gemv_float(const float* x, const void* w, float* acc, u32 m, u32 n, u32 k, int wtype,
                           const float* col_scale, const float* bias, int accumulate, int gate) {
    const u32 kq = k / 4, lane = threadIdx.x & 31;
    gemv_tiles<GATED>(m, n, acc, col_scale, bias, accumulate, gate, [&](u32 wrow, size_t r0, u32 rows, float* sum) {
        for (int i = 0; i < GEMV_ROWS; i++) sum[i] = 0.f;
        if (k % 8 == 0) {
            // Rows of a multiple of 8 values: lane l takes the chunks of 8 values c = l, l + 32, ...
            // in order, each 8 fused multiply-adds in k order (chunk_fma). 16-bit weights: one
            // 16-byte load a chunk, kept packed until used, GEMV_UNROLL chunks in flight; f32:
            // two, GEMV_UNROLL / 2 chunks in flight (the same bytes). The same operations for
            // every storage type (a 16-bit table gives the logits of its f32 widening) and, chosen
            // by k alone, whatever m.
            const u32 kc = k / 8;
            if (wtype == 0) {
                const float4* row = (const float4*)((const float*)w + (size_t)wrow * k);
                for (u32 c0 = lane; c0 < kc; c0 += 32 * (GEMV_UNROLL / 2)) {
                    float4 raw[GEMV_UNROLL / 2][2];
#pragma unroll
                    for (int u = 0; u < GEMV_UNROLL / 2; u++) {
                        u32 c = c0 + 32 * u;
                        if (c < kc) {
                            raw[u][0] = row[2 * (size_t)c];
                            raw[u][1] = row[2 * (size_t)c + 1];
                        } else {
                            raw[u][0].x = raw[u][0].y = raw[u][0].z = raw[u][0].w = 0.f;
                            raw[u][1] = raw[u][0];
                        }
                    }
#pragma unroll
                    for (int u = 0; u < GEMV_UNROLL / 2; u++) {
                        u32 c = c0 + 32 * u;
                        if (c >= kc) break;
                        const float v[8] = {raw[u][0].x, raw[u][0].y, raw[u][0].z, raw[u][0].w,
                                            raw[u][1].x, raw[u][1].y, raw[u][1].z, raw[u][1].w};
                        chunk_fma(sum, rows, x, r0, k, c, v);
                    }
                }
                return;
            }
            const uint4* row = (const uint4*)((const unsigned short*)w + (size_t)wrow * k);
            for (u32 c0 = lane; c0 < kc; c0 += 32 * GEMV_UNROLL) {
                uint4 raw[GEMV_UNROLL];
                load_chunks(row, c0, kc, raw);
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL; u++) {
                    u32 c = c0 + 32 * u;
                    if (c >= kc) break;
                    const unsigned int words[4] = {raw[u].x, raw[u].y, raw[u].z, raw[u].w};
                    float v[8];
                    for (int b = 0; b < 8; b++) {
                        unsigned short h = (unsigned short)(words[b >> 1] >> (16 * (b & 1)));
                        v[b] = wtype == 1 ? __half2float(__ushort_as_half(h)) : __uint_as_float((unsigned)h << 16);
                    }
                    chunk_fma(sum, rows, x, r0, k, c, v);
                }
            }
            return;
        }
        for (u32 q0 = lane; q0 < kq; q0 += 32 * GEMV_UNROLL) {
            // GEMV_UNROLL loads of four weights each (one 8-byte (16-bit) or 16-byte (f32) load;
            // rows start aligned: k % 4 == 0, buffers 256-byte aligned) issued before any is used,
            // so a warp keeps several in flight; the sums below still take q in increasing order.
            float v[GEMV_UNROLL][4];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                u32 q = q0 + 32 * u;
                if (q >= kq) break;
                if (wtype == 0) {
                    float4 f = ((const float4*)((const float*)w + (size_t)wrow * k))[q];
                    v[u][0] = f.x, v[u][1] = f.y, v[u][2] = f.z, v[u][3] = f.w;
                } else {
                    uint2 p = ((const uint2*)((const unsigned short*)w + (size_t)wrow * k))[q];
                    unsigned short h[4] = {(unsigned short)(p.x & 0xffff), (unsigned short)(p.x >> 16),
                                           (unsigned short)(p.y & 0xffff), (unsigned short)(p.y >> 16)};
                    for (int b = 0; b < 4; b++)
                        v[u][b] = wtype == 1 ? __half2float(__ushort_as_half(h[b])) : __uint_as_float((unsigned)h[b] << 16);
                }
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                u32 q = q0 + 32 * u;
                if (q >= kq) break;
                for (u32 i = 0; i < rows; i++) {
                    float4 xv = ((const float4*)(x + (r0 + i) * k))[q];
                    sum[i] = __fmaf_rn(xv.x, v[u][0], sum[i]);
                    sum[i] = __fmaf_rn(xv.y, v[u][1], sum[i]);
                    sum[i] = __fmaf_rn(xv.z, v[u][2], sum[i]);
                    sum[i] = __fmaf_rn(xv.w, v[u][3], sum[i]);
                }
            }
        }
    });
}

// gemv_float_f32: plain; gemv_float_gated_f32: out = act(gate) * up (see gemv_tiles).
extern "C" __global__ void gemv_float_f32(const float* x, const void* w, float* acc, u32 m, u32 n, u32 k, int wtype,
                                          const float* col_scale, const float* bias, int accumulate, int gate) {
    gemv_float<false>(x, w, acc, m, n, k, wtype, col_scale, bias, accumulate, gate);
}
extern "C" __global__ void gemv_float_gated_f32(const float* x, const void* w, float* acc, u32 m, u32 n, u32 k, int wtype,
                                                const float* col_scale, const float* bias, int accumulate, int gate) {
    gemv_float<true>(x, w, acc, m, n, k, wtype, col_scale, bias, accumulate, gate);
}

// Exact channels held in registers per thread (more are read from memory).
#define EXACT_REGS 32
// Output rows per block: a thread keeps its column's scale, bias and exact weights across them.
#define EPILOGUE_ROWS 16

// One thread per output column of chunks of EPILOGUE_ROWS rows: grid (ceil(n / blockDim.x), up to
// ceil(m / EPILOGUE_ROWS), the chunks strided over grid.y). A row's arithmetic does not depend on
// m or on its chunk (batch invariance).
extern "C" __global__ void epilogue_f32(const float* acc, const float* row_scale, const float* col_scale,
                                        const float* bias, const float* x, const u32* idx, const float* wx, u32 s,
                                        u32 k, int act, int accumulate, float* out, u32 m, u32 n) {
    u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n) return;
    const bool in_regs = s <= EXACT_REGS;
    float w[EXACT_REGS];
#pragma unroll
    for (u32 t = 0; t < EXACT_REGS; ++t) w[t] = (in_regs && t < s) ? wx[(size_t)c * s + t] : 0.f;
    const float cs = col_scale ? col_scale[c] : 1.f;
    const float b = bias ? bias[c] : 0.f;
    for (size_t r0 = (size_t)blockIdx.y * EPILOGUE_ROWS; r0 < m; r0 += (size_t)gridDim.y * EPILOGUE_ROWS) {
      for (u32 r = (u32)r0; r < min((size_t)m, r0 + EPILOGUE_ROWS); ++r) {
        size_t i = (size_t)r * n + c;
        float v = acc[i];
        if (row_scale && col_scale) v = __fmul_rn(v, __fmul_rn(row_scale[r], cs));
        else if (row_scale) v = __fmul_rn(v, row_scale[r]);
        else if (col_scale) v = __fmul_rn(v, cs);
        if (s) {
            const float* xr = x + (size_t)r * k;
            float e = 0.f;
            if (in_regs) {
#pragma unroll
                for (u32 t = 0; t < EXACT_REGS; ++t)
                    if (t < s) e = __fadd_rn(e, __fmul_rn(xr[idx[t]], w[t]));
            } else {
                for (u32 t = 0; t < s; ++t) e = __fadd_rn(e, __fmul_rn(xr[idx[t]], wx[(size_t)c * s + t]));
            }
            v = __fadd_rn(v, e);
        }
        if (bias) v = __fadd_rn(v, b);
        if (act >= 0) v = activate(v, act);
        out[i] = accumulate ? __fadd_rn(out[i], v) : v;
      }
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
