// GGUF block formats read in place by the products: each value decoded exactly as
// turbine_core::quant::dequant_block does it in f32 (products and sums rounded separately, never
// fused), so the device multiplies the same weights as the CPU.
// Formats: 0 Q8_0, 1 Q4_0, 2 Q4_1, 3 Q5_0, 4 Q5_1, 5 Q4_K, 6 Q5_K, 7 Q6_K (gguf_code in ops.rs).
#include "common.cuh"

__device__ __forceinline__ float f16_at(const u8* b) {
    return __half2float(__ushort_as_half((unsigned short)(b[0] | ((unsigned short)b[1] << 8))));
}

// Runs of 8 values a lane of gemv_gguf decodes before using them.
#define GGUF_RUNS 2

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

// What values j0 .. j0 + 7 of a block (j0 % 8 == 0) share: every format's 8 consecutive values
// have the same scale(s) (Q4_K/Q5_K: one 32-value sub-block; Q6_K: one 16-value group) and, for
// Q5_0/Q5_1, the same 32 high bits. Decoding a run of 8 reads them once.
struct GgufShared {
    float d, m;
    u32 qh;
};

__device__ __forceinline__ GgufShared gguf_shared(const u8* blk, int fmt, u32 j0) {
    GgufShared s = {f16_at(blk), 0.f, 0u};
    switch (fmt) {
        case 2: s.m = f16_at(blk + 2); break;
        case 3:
        case 4: {
            u32 at = fmt == 4 ? 4 : 2;
            s.qh = (u32)blk[at] | ((u32)blk[at + 1] << 8) | ((u32)blk[at + 2] << 16) | ((u32)blk[at + 3] << 24);
            if (fmt == 4) s.m = f16_at(blk + 2);
            break;
        }
        case 5:
        case 6: {
            u32 sc, m;
            k_scale_min(blk + 4, j0 / 32, &sc, &m);
            s.d = __fmul_rn(s.d, (float)sc);
            s.m = __fmul_rn(f16_at(blk + 2), (float)m);
            break;
        }
        case 7: {
            u32 half = j0 / 128, jj = j0 % 128;
            s.d = __fmul_rn(f16_at(blk + 208), (float)(signed char)blk[192 + half * 8 + jj / 16]);
            break;
        }
        default: break;
    }
    return s;
}

// Value j of a block, given what its run of 8 shares.
__device__ __forceinline__ float gguf_scaled(const u8* blk, int fmt, u32 j, GgufShared s) {
    switch (fmt) {
        case 0: return __fmul_rn(s.d, (float)(signed char)blk[2 + j]);
        case 1: {
            u8 q = blk[2 + (j & 15)];
            int v = j < 16 ? (q & 15) : (q >> 4);
            return __fmul_rn(s.d, (float)(v - 8));
        }
        case 2: {
            u8 q = blk[4 + (j & 15)];
            int v = j < 16 ? (q & 15) : (q >> 4);
            return __fadd_rn(__fmul_rn(s.d, (float)v), s.m);
        }
        case 3:
        case 4: {
            u8 q = blk[(fmt == 4 ? 8 : 6) + (j & 15)];
            u32 v = (j < 16 ? (q & 15) : (q >> 4)) | (((s.qh >> j) & 1) << 4);
            return fmt == 4 ? __fadd_rn(__fmul_rn(s.d, (float)v), s.m) : __fmul_rn(s.d, (float)((int)v - 16));
        }
        case 5:
        case 6: {
            bool five = fmt == 6;
            u32 sub = j / 32, l = j % 32, pair = sub / 2, half = sub % 2;
            const u8* qs = blk + (five ? 48 : 16);
            u32 q = (qs[pair * 32 + l] >> (4 * half)) & 15;
            if (five) q |= ((blk[16 + l] >> sub) & 1) << 4;
            return __fsub_rn(__fmul_rn(s.d, (float)q), s.m);
        }
        default: {
            u32 half = j / 128, jj = j % 128, run = jj / 32, l = jj % 32;
            const u8* ql = blk + half * 64 + (run % 2) * 32;
            const u8* qh = blk + 128 + half * 32;
            u32 low = (ql[l] >> (4 * (run / 2))) & 15, high = (qh[l] >> (2 * run)) & 3;
            return __fmul_rn(s.d, (float)((int)(low | (high << 4)) - 32));
        }
    }
}

// Value j of a block.
__device__ float gguf_value(const u8* blk, int fmt, u32 j) { return gguf_scaled(blk, fmt, j, gguf_shared(blk, fmt, j & ~7u)); }

// Value c of row r of a block-quantised [n, k] matrix.
__device__ __forceinline__ float gguf_at(const u8* w, int fmt, u32 k, u32 r, u32 c) {
    u32 bl = block_len(fmt);
    const u8* row = w + (size_t)r * (k / bl) * block_bytes(fmt);
    return gguf_value(row + (size_t)(c / bl) * block_bytes(fmt), fmt, c % bl);
}

// Products straight from the blocks: acc[i, j] = sum_c x[i, c] * w[j, c], each block byte read
// once per output column and row tile. One warp per column; lane l takes the runs of 8 values
// c = 8l .. 8l + 7, then 8l + 256 .. (every block length is a multiple of 8, so a run lies in one
// block and shares its scales), each a fused multiply-add in c order: the order of the float
// products, so a block-quantised matrix gives the bits of its exact f32 dequantisation.
// GEMV_ROWS rows at a time (blockIdx.y strides over the row tiles); blockDim.x = 256. A row's sum
// does not depend on m (batch invariance). col_scale, bias, accumulate, gate: see gemv_tiles.
template <bool GATED>
__device__ void gemv_gguf(const float* x, const u8* w, float* acc, u32 m, u32 n, u32 k, int fmt,
                          const float* col_scale, const float* bias, int accumulate, int gate) {
    const u32 lane = threadIdx.x & 31, kc = k / 8, bl = block_len(fmt), bb = block_bytes(fmt);
    gemv_tiles<GATED>(m, n, acc, col_scale, bias, accumulate, gate, [&](u32 wrow, size_t r0, u32 rows, float* sum) {
        const u8* row = w + (size_t)wrow * (k / bl) * bb;
        for (int i = 0; i < GEMV_ROWS; i++) sum[i] = 0.f;
        for (u32 c0 = lane; c0 < kc; c0 += 32 * GGUF_RUNS) {
            // GGUF_RUNS runs decoded before any is used, so their loads are in flight together;
            // c still in increasing order.
            float v[GGUF_RUNS][8];
#pragma unroll
            for (int u = 0; u < GGUF_RUNS; u++) {
                u32 c = c0 + 32 * u;
                if (c >= kc) break;
                u32 j0 = (8 * c) % bl;
                const u8* blk = row + (size_t)(8 * c / bl) * bb;
                GgufShared s = gguf_shared(blk, fmt, j0);
#pragma unroll
                for (int b = 0; b < 8; b++) v[u][b] = gguf_scaled(blk, fmt, j0 + b, s);
            }
#pragma unroll
            for (int u = 0; u < GGUF_RUNS; u++) {
                u32 c = c0 + 32 * u;
                if (c >= kc) break;
                chunk_fma(sum, rows, x, r0, k, c, v[u]);
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
