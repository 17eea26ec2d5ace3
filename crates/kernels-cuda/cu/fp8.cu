// FP8 E4M3 quantisation of activations for the W8A8 products (the arithmetic of kernels-ref's
// emulation, `turbine_core::fp8`): x' = e4m3((x - shift) * smooth * (1 / s)) with s = amax(row) / 448
// per token, or one static s for every row. One block per row.
#include "common.cuh"

// Input channel c of a row as it is quantised: shifted, then smoothed (either may be absent).
template <typename T>
__device__ __forceinline__ float prepared(const T* x, const float* shift, const float* smooth, size_t row, u32 c) {
    float v = to_f(x[row + c]) - (shift ? shift[c] : 0.f);
    return smooth ? v * smooth[c] : v;
}

template <typename T>
__device__ void quantize_rows(const T* x, const float* shift, const float* smooth, const float* static_scale, u8* out,
                              float* scales, u32 cols) {
    size_t row = (size_t)blockIdx.x * cols;
    float s;
    if (static_scale) {
        s = *static_scale;
    } else {
        float m = 0.f;
        for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = prepared(x, shift, smooth, row, c);
            m = fmaxf(m, fabsf(v));
        }
        m = block_max(m);
        s = (m > 0.f && m < TURBINE_INF) ? m / 448.f : 1.f;
    }
    float inv = 1.f / s;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = prepared(x, shift, smooth, row, c);
        out[row + c] = f32_to_e4m3(v * inv);
    }
    if (threadIdx.x == 0) scales[blockIdx.x] = s;
}

#define QUANT(N, T)                                                                                           \
    extern "C" __global__ void fp8_quantize_rows_##N(const T* x, const float* shift, const float* smooth,      \
                                                     const float* static_scale, u8* out, float* scales,       \
                                                     u32 cols) {                                              \
        quantize_rows<T>(x, shift, smooth, static_scale, out, scales, cols);                                  \
    }
TURBINE_FOR_TYPES(QUANT)

// Dequantisation of E4M3 or INT8 weights [n, k] with per-row scales into T (for the fallback
// 16-bit products where the GPU has no FP8 tensor cores): out = code * scale[row], or the code
// alone without scales (exact in bf16 for INT8; the product's epilogue applies the scales).
template <typename T>
__device__ void dequant_rows(const u8* codes, const float* scales, T* out, u32 n, u32 k, int int8) {
    size_t total = (size_t)n * k;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float v = int8 ? (float)(signed char)codes[i] : e4m3_to_f32(codes[i]);
        out[i] = from_f<T>(scales ? v * scales[i / k] : v);
    }
}

#define DEQUANT(N, T)                                                                                         \
    extern "C" __global__ void dequant_rows_##N(const u8* codes, const float* scales, T* out, u32 n, u32 k,   \
                                                int int8) {                                                   \
        dequant_rows<T>(codes, scales, out, n, k, int8);                                                      \
    }
TURBINE_FOR_TYPES(DEQUANT)

// Products straight from 8-bit weights: acc[i, j] = sum_c x[i, c] * code(w[j, c]), each weight
// byte decoded in registers (the epilogue applies the scales). One warp per output column j,
// lanes over c in chunks of 16 bytes (k % 16 == 0) or 4 (k % 4 == 0), GEMV_ROWS rows at a time
// (blockIdx.y strides over the row tiles); blockDim.x = 256. A row's sum is the same sequence of
// fused multiply-adds (lane l takes c = 16l .. 16l + 15, 16l + 512, ... or c = 4l, 4l + 128, ...
// in order; the chunk chosen by k alone) and the same warp reduction whatever m is and whichever
// tile it falls in, so the product is batch invariant. XCODES: x is E4M3 codes (W8A8,
// the row scales applied in the epilogue) instead of f32.
// sum[i] += x[r0 + i, 4q .. 4q + 4) . the four 8-bit weights in `word` (E4M3, or INT8 when int8)
// for i < rows: four fused multiply-adds in k order. XCODES: x is E4M3 codes, else f32.
template <bool XCODES>
__device__ __forceinline__ void word_fma(float* sum, u32 rows, const void* xv, size_t r0, u32 k, u32 q,
                                         unsigned int word, int int8) {
    float w[4];
    for (int b = 0; b < 4; b++) {
        u8 c = (u8)(word >> (8 * b));
        w[b] = int8 ? (float)(signed char)c : e4m3_to_f32(c);
    }
    for (u32 i = 0; i < rows; i++) {
        float xs[4];
        if (XCODES) {
            unsigned int xp = ((const unsigned int*)((const u8*)xv + (r0 + i) * k))[q];
            for (int b = 0; b < 4; b++) xs[b] = e4m3_to_f32((u8)(xp >> (8 * b)));
        } else {
            float4 f = ((const float4*)((const float*)xv + (r0 + i) * k))[q];
            xs[0] = f.x, xs[1] = f.y, xs[2] = f.z, xs[3] = f.w;
        }
        for (int b = 0; b < 4; b++) sum[i] = __fmaf_rn(xs[b], w[b], sum[i]);
    }
}

template <bool XCODES, bool GATED>
__device__ void gemv_8bit(const void* xv, const u8* codes, float* acc, u32 m, u32 n, u32 k, int int8,
                          const float* col_scale, const float* bias, int accumulate, int gate) {
    const u32 kq = k / 4, lane = threadIdx.x & 31;
    gemv_tiles<GATED>(m, n, acc, col_scale, bias, accumulate, gate, [&](u32 wrow, size_t r0, u32 rows, float* sum) {
        const unsigned int* row = (const unsigned int*)(codes + (size_t)wrow * k);
        for (int i = 0; i < GEMV_ROWS; i++) sum[i] = 0.f;
        if (k % 16 == 0) {
            // Rows of a multiple of 16 codes: 16-byte loads of 16 codes, kept packed until used,
            // so each lane has GEMV_UNROLL x 16 bytes in flight (four times the 4-byte path's).
            // Chosen by k alone: a row's sum is the same operations whatever m.
            const uint4* wide = (const uint4*)row;
            const u32 kc = k / 16;
            for (u32 c0 = lane; c0 < kc; c0 += 32 * GEMV_UNROLL) {
                uint4 raw[GEMV_UNROLL];
                load_chunks(wide, c0, kc, raw);
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL; u++) {
                    u32 c = c0 + 32 * u;
                    if (c >= kc) break;
                    // Four words, each four weights at k offset 4q, as the 4-byte path takes them.
                    word_fma<XCODES>(sum, rows, xv, r0, k, 4 * c, raw[u].x, int8);
                    word_fma<XCODES>(sum, rows, xv, r0, k, 4 * c + 1, raw[u].y, int8);
                    word_fma<XCODES>(sum, rows, xv, r0, k, 4 * c + 2, raw[u].z, int8);
                    word_fma<XCODES>(sum, rows, xv, r0, k, 4 * c + 3, raw[u].w, int8);
                }
            }
            return;
        }
        for (u32 q0 = lane; q0 < kq; q0 += 32 * GEMV_UNROLL) {
            // GEMV_UNROLL 4-byte loads in flight before any is used; q still in increasing order.
            unsigned int packed[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) packed[u] = q0 + 32 * u < kq ? row[q0 + 32 * u] : 0u;
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                u32 q = q0 + 32 * u;
                if (q >= kq) break;
                word_fma<XCODES>(sum, rows, xv, r0, k, q, packed[u], int8);
            }
        }
    });
}

// col_scale, bias, accumulate, gate: see gemv_tiles (off for raw sums). gemv_8bit_f32: plain;
// gemv_8bit_gated_f32: out = act(gate) * up.
extern "C" __global__ void gemv_8bit_f32(const float* x, const u8* codes, float* acc, u32 m, u32 n, u32 k, int int8,
                                         const float* col_scale, const float* bias, int accumulate, int gate) {
    gemv_8bit<false, false>(x, codes, acc, m, n, k, int8, col_scale, bias, accumulate, gate);
}
extern "C" __global__ void gemv_8bit_gated_f32(const float* x, const u8* codes, float* acc, u32 m, u32 n, u32 k, int int8,
                                               const float* col_scale, const float* bias, int accumulate, int gate) {
    gemv_8bit<false, true>(x, codes, acc, m, n, k, int8, col_scale, bias, accumulate, gate);
}

// W8A8: x is the E4M3 codes of the quantised input rows, w E4M3 weights; raw sums (the row
// scales are the epilogue's).
extern "C" __global__ void gemv_w8a8_f32(const u8* x, const u8* codes, float* acc, u32 m, u32 n, u32 k) {
    gemv_8bit<true, false>(x, codes, acc, m, n, k, 0, nullptr, nullptr, 0, -1);
}
