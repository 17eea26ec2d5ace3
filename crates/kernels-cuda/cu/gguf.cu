// GGUF block formats read in place by the products: each value decoded exactly as
// turbine_core::quant::dequant_block does it in f32 (products and sums rounded separately, never
// fused), so the device multiplies the same weights as the CPU.
// Formats: 0 Q8_0, 1 Q4_0, 2 Q4_1, 3 Q5_0, 4 Q5_1, 5 Q4_K, 6 Q5_K, 7 Q6_K (gguf_code in ops.rs).
#include "common.cuh"

__device__ __forceinline__ float f16_at(const u8* b) {
    return __half2float(__ushort_as_half((unsigned short)(b[0] | ((unsigned short)b[1] << 8))));
}

__device__ __forceinline__ u32 block_len(int fmt) { return fmt >= 5 ? 256u : 32u; }

__device__ __forceinline__ u32 block_bytes(int fmt) {
    switch (fmt) {
        case 0: return 34;
        case 1: return 18;
        case 2: return 20;
        case 3: return 22;
        case 4: return 24;
        case 5: return 144;
        case 6: return 176;
        default: return 210;
    }
}

// Scale and min of sub-block j of Q4_K/Q5_K (6 bits each in 12 packed bytes).
__device__ __forceinline__ void k_scale_min(const u8* s, u32 j, u32* sc, u32* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Value j of a block.
__device__ float gguf_value(const u8* blk, int fmt, u32 j) {
    switch (fmt) {
        case 0: return __fmul_rn(f16_at(blk), (float)(signed char)blk[2 + j]);
        case 1: {
            u8 q = blk[2 + (j & 15)];
            int v = j < 16 ? (q & 15) : (q >> 4);
            return __fmul_rn(f16_at(blk), (float)(v - 8));
        }
        case 2: {
            u8 q = blk[4 + (j & 15)];
            int v = j < 16 ? (q & 15) : (q >> 4);
            return __fadd_rn(__fmul_rn(f16_at(blk), (float)v), f16_at(blk + 2));
        }
        case 3:
        case 4: {
            bool one = fmt == 4;
            u32 at = one ? 4 : 2;
            u32 qh = (u32)blk[at] | ((u32)blk[at + 1] << 8) | ((u32)blk[at + 2] << 16) | ((u32)blk[at + 3] << 24);
            u8 q = blk[at + 4 + (j & 15)];
            u32 v = (j < 16 ? (q & 15) : (q >> 4)) | (((qh >> j) & 1) << 4);
            float d = f16_at(blk);
            return one ? __fadd_rn(__fmul_rn(d, (float)v), f16_at(blk + 2)) : __fmul_rn(d, (float)((int)v - 16));
        }
        case 5:
        case 6: {
            bool five = fmt == 6;
            u32 sub = j / 32, l = j % 32, pair = sub / 2, half = sub % 2;
            u32 sc, m;
            k_scale_min(blk + 4, sub, &sc, &m);
            float d1 = __fmul_rn(f16_at(blk), (float)sc), m1 = __fmul_rn(f16_at(blk + 2), (float)m);
            const u8* qs = blk + (five ? 48 : 16);
            u32 q = (qs[pair * 32 + l] >> (4 * half)) & 15;
            if (five) q |= ((blk[16 + l] >> sub) & 1) << 4;
            return __fsub_rn(__fmul_rn(d1, (float)q), m1);
        }
        default: {
            u32 half = j / 128, jj = j % 128, run = jj / 32, l = jj % 32;
            const u8* ql = blk + half * 64 + (run % 2) * 32;
            const u8* qh = blk + 128 + half * 32;
            const u8* sc = blk + 192 + half * 8;
            u32 low = (ql[l] >> (4 * (run / 2))) & 15, high = (qh[l] >> (2 * run)) & 3;
            int q = (int)(low | (high << 4)) - 32;
            float scale = __fmul_rn(f16_at(blk + 208), (float)(signed char)sc[(run * 32 + l) / 16]);
            return __fmul_rn(scale, (float)q);
        }
    }
}

// Value c of row r of a block-quantised [n, k] matrix.
__device__ __forceinline__ float gguf_at(const u8* w, int fmt, u32 k, u32 r, u32 c) {
    u32 bl = block_len(fmt);
    const u8* row = w + (size_t)r * (k / bl) * block_bytes(fmt);
    return gguf_value(row + (size_t)(c / bl) * block_bytes(fmt), fmt, c % bl);
}

// Products straight from the blocks: acc[i, j] = sum_c x[i, c] * w[j, c], each block byte read
// once per output column and row tile. One warp per column, lanes over the values (lane l takes
// c = l, l + 32, ... in order), GEMV_ROWS rows at a time (blockIdx.y strides over the row
// tiles); blockDim.x = 256. A row's sum does not depend on m (batch invariance). col_scale,
// bias, accumulate, gate: see gemv_tiles.
template <bool GATED>
__device__ void gemv_gguf(const float* x, const u8* w, float* acc, u32 m, u32 n, u32 k, int fmt,
                          const float* col_scale, const float* bias, int accumulate, int gate) {
    const u32 lane = threadIdx.x & 31;
    gemv_tiles<GATED>(m, n, acc, col_scale, bias, accumulate, gate, [&](u32 wrow, size_t r0, u32 rows, float* sum) {
        for (int i = 0; i < GEMV_ROWS; i++) sum[i] = 0.f;
        for (u32 c0 = lane; c0 < k; c0 += 32 * GEMV_UNROLL) {
            // GEMV_UNROLL values (from as many blocks or block parts) decoded before any is used,
            // so their loads are in flight together; c still in increasing order.
            float v[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                u32 c = c0 + 32 * u;
                v[u] = c < k ? gguf_at(w, fmt, k, wrow, c) : 0.f;
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                u32 c = c0 + 32 * u;
                if (c >= k) break;
                for (u32 i = 0; i < rows; i++) sum[i] = __fmaf_rn(x[(r0 + i) * k + c], v[u], sum[i]);
            }
        }
    });
}

// gemv_gguf_f32: plain; gemv_gguf_gated_f32: out = act(gate) * up.
extern "C" __global__ void gemv_gguf_f32(const float* x, const u8* w, float* acc, u32 m, u32 n, u32 k, int fmt,
                                         const float* col_scale, const float* bias, int accumulate, int gate) {
    gemv_gguf<false>(x, w, acc, m, n, k, fmt, col_scale, bias, accumulate, gate);
}
extern "C" __global__ void gemv_gguf_gated_f32(const float* x, const u8* w, float* acc, u32 m, u32 n, u32 k, int fmt,
                                               const float* col_scale, const float* bias, int accumulate, int gate) {
    gemv_gguf<true>(x, w, acc, m, n, k, fmt, col_scale, bias, accumulate, gate);
}

// The whole matrix as f32 (for products of many rows, which then run on cuBLASLt).
extern "C" __global__ void dequant_gguf_f32(const u8* w, float* out, u32 n, u32 k, int fmt) {
    size_t total = (size_t)n * k;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        out[i] = gguf_at(w, fmt, k, (u32)(i / k), (u32)(i % k));
}

// Embedding lookup from a block-quantised [src_rows, cols] table: out[i] (+)= src[ids[i]] * scale
// (f32 out), the values decoded as the products decode them. One block per output row.
extern "C" __global__ void gather_gguf_f32(const u8* src, const u32* ids, float scale, int accumulate, float* out,
                                           u32 src_rows, u32 cols, int fmt) {
    gather_row(ids, scale, accumulate, out, src_rows, cols, [=](u32 id, u32 c) { return gguf_at(src, fmt, cols, id, c); });
}
