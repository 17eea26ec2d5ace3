// Tensor-core products on mma.sync, batch invariant:
//   part[z][i, j] = Σ_{c in split z} x[i, c] · w[j, c]
// - `mma16_*`: f16 or bf16 weights, the f32 input rounded to the weights' type as it is staged
//   (m16n8k16, sm_80 and later);
// - `mma_w8_*`: weight-only E4M3 or INT8 codes widened to bf16 (exactly) as they are staged, the
//   input rounded to bf16 (m16n8k16; the weights' scales are the epilogue's);
// - `mma_e4m3`: W8A8, the input's E4M3 codes (`fp8_quantize_rows`) against E4M3 weight codes
//   (m16n8k32, sm_89 and later; the scales are the epilogue's);
// with f32 accumulation. A block computes a 64 × 64 tile of the output with 4 warps (each a
// 32 × 32 corner, 2 × 4 instructions per step of k), staging 16 words of each row of both
// operands in shared memory at a time (32 values of 16 bits, or 64 codes). The K range of a
// block (split z = blockIdx.z of `kchunk` values, a multiple of 64) and the order of its steps
// depend only on (n, k), never on m, and each output value depends only on its row of x, its
// row of w and its own accumulator: a row gets the same bits whatever the batch. Splits are
// added in order by `sum_splits`. With `finish`, the kernel that has a value's whole sum (the
// product's when unsplit, else `sum_splits`) applies the plain epilogue as the gemv kernels do
// (`gemv_finish`: column scale, bias; then out = [out +] v), one launch fewer a product.
#include "common.cuh"

#define MMA_BM 64
#define MMA_BN 64
// Words (32 bits) of each row staged per step.
#define MMA_WORDS 16
// Words per shared row: 16, plus 4 of padding so that the fragment reads of a warp (8 rows × 4
// words) fall in 32 different banks.
#define MMA_LD (MMA_WORDS + 4)

__device__ __forceinline__ unsigned short bits16(__half h) { return __half_as_ushort(h); }
__device__ __forceinline__ unsigned short bits16(__nv_bfloat16 h) { return __bfloat16_as_ushort(h); }

// f16/bf16 weights: two values per word, lower k in the lower half.
template <typename T, bool BF16> struct Sixteen {
    static constexpr u32 PER_WORD = 2;
    typedef float In;
    typedef unsigned short W;
    // Word `c / 2` of an f32 input row, rounded to T; zero past `kend`.
    static __device__ __forceinline__ u32 a_word(const float* row, u32 c, u32 kend, bool aligned) {
        float lo = 0.f, hi = 0.f;
        if (aligned && c + 1 < kend) {
            const float2 v = *(const float2*)(row + c);
            lo = v.x, hi = v.y;
        } else if (c < kend) {
            lo = row[c];
            if (c + 1 < kend) hi = row[c + 1];
        }
        return (u32)bits16(from_f<T>(lo)) | ((u32)bits16(from_f<T>(hi)) << 16);
    }
    static __device__ __forceinline__ u32 b_word(const unsigned short* row, u32 c, u32 kend, bool aligned) {
        if (aligned && c + 1 < kend) return *(const u32*)(row + c);
        u32 v = 0;
        if (c < kend) v = row[c];
        if (c + 1 < kend) v |= (u32)row[c + 1] << 16;
        return v;
    }
    static __device__ __forceinline__ void mma(float d[4], const u32 a[4], const u32 b[2]) {
        mma_16816<BF16>(d, a, b);
    }
};

// Weight-only 8-bit weights (E4M3 or INT8 codes; their per-row scales stay in the epilogue)
// widened to bf16 as they are staged, which holds both exactly; the f32 input rounded to bf16.
template <bool INT8> struct Widened8 {
    static constexpr u32 PER_WORD = 2;
    typedef float In;
    typedef u8 W;
    static __device__ __forceinline__ u32 a_word(const float* row, u32 c, u32 kend, bool aligned) {
        return Sixteen<__nv_bfloat16, true>::a_word(row, c, kend, aligned);
    }
    static __device__ __forceinline__ unsigned short widen(u8 code) {
        const float v = INT8 ? (float)(signed char)code : e4m3_to_f32(code);
        return bits16(__float2bfloat16_rn(v));
    }
    static __device__ __forceinline__ u32 b_word(const u8* row, u32 c, u32 kend, bool) {
        u32 v = 0;
        if (c < kend) v = widen(row[c]);
        if (c + 1 < kend) v |= (u32)widen(row[c + 1]) << 16;
        return v;
    }
    static __device__ __forceinline__ void mma(float d[4], const u32 a[4], const u32 b[2]) {
        mma_16816<true>(d, a, b);
    }
};

// E4M3 codes on both sides: four per word, lower k in the lower byte.
struct E4m3 {
    static constexpr u32 PER_WORD = 4;
    typedef u8 In;
    typedef u8 W;
    static __device__ __forceinline__ u32 word(const u8* row, u32 c, u32 kend, bool aligned) {
        if (aligned && c + 3 < kend) return *(const u32*)(row + c);
        u32 v = 0;
        for (u32 b = 0; b < 4; b++)
            if (c + b < kend) v |= (u32)row[c + b] << (8 * b);
        return v;
    }
    static __device__ __forceinline__ u32 a_word(const u8* row, u32 c, u32 kend, bool aligned) {
        return word(row, c, kend, aligned);
    }
    static __device__ __forceinline__ u32 b_word(const u8* row, u32 c, u32 kend, bool aligned) {
        return word(row, c, kend, aligned);
    }
    static __device__ __forceinline__ void mma(float d[4], const u32 a[4], const u32 b[2]) { mma_e4m3_16832(d, a, b); }
};

// blockDim.x = 128; grid (ceil(n / 64), ceil(m / 64), splits).
template <typename Op>
__device__ void mma_tiles(const typename Op::In* x, const typename Op::W* w, float* part, u32 m, u32 n, u32 k,
                          u32 kchunk, const float* col_scale, const float* bias, int accumulate, int finish) {
    __shared__ u32 as[MMA_BM][MMA_LD];
    __shared__ u32 bs[MMA_BN][MMA_LD];
    const u32 step = MMA_WORDS * Op::PER_WORD;
    const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const u32 g = lane >> 2, t = lane & 3;
    const u32 row0 = blockIdx.y * MMA_BM, col0 = blockIdx.x * MMA_BN;
    const u32 kbeg = blockIdx.z * kchunk, kend = min(k, kbeg + kchunk);
    const u32 wr = (warp >> 1) * 32, wc = (warp & 1) * 32;
    // Warps whose rows all lie past m skip their instructions (the same for all their lanes).
    const bool live = row0 + wr < m;
    // Whole-word loads where every row starts on a word.
    const bool aligned = k % Op::PER_WORD == 0;
    float acc[2][4][4];
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int r = 0; r < 4; r++) acc[mi][ni][r] = 0.f;
    for (u32 k0 = kbeg; k0 < kend; k0 += step) {
        // Both tiles, 64 rows × 16 words each, 8 words per thread; zero past m, n or k.
        for (u32 i = tid; i < MMA_BM * MMA_WORDS; i += blockDim.x) {
            const u32 r = i / MMA_WORDS, p = i % MMA_WORDS, c = k0 + Op::PER_WORD * p;
            const u32 row = row0 + r, col = col0 + r;
            as[r][p] = row < m ? Op::a_word(x + (size_t)row * k, c, kend, aligned) : 0u;
            bs[r][p] = col < n ? Op::b_word(w + (size_t)col * k, c, kend, aligned) : 0u;
        }
        __syncthreads();
        if (live) {
            // Two instruction steps of 8 words each, in order.
            for (u32 ks = 0; ks < MMA_WORDS; ks += 8) {
                u32 a[2][4], b[4][2];
                for (int mi = 0; mi < 2; mi++) {
                    const u32 r = wr + 16 * mi + g;
                    a[mi][0] = as[r][ks + t];
                    a[mi][1] = as[r + 8][ks + t];
                    a[mi][2] = as[r][ks + t + 4];
                    a[mi][3] = as[r + 8][ks + t + 4];
                }
                for (int ni = 0; ni < 4; ni++) {
                    const u32 c = wc + 8 * ni + g;
                    b[ni][0] = bs[c][ks + t];
                    b[ni][1] = bs[c][ks + t + 4];
                }
                for (int mi = 0; mi < 2; mi++)
                    for (int ni = 0; ni < 4; ni++) Op::mma(acc[mi][ni], a[mi], b[ni]);
            }
        }
        __syncthreads();
    }
    if (!live) return;
    float* out = part + (size_t)blockIdx.z * m * n;
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int r = 0; r < 4; r++) {
                const u32 row = row0 + wr + 16 * mi + g + 8 * (r >> 1);
                const u32 col = col0 + wc + 8 * ni + 2 * t + (r & 1);
                if (row >= m || col >= n) continue;
                const size_t at = (size_t)row * n + col;
                float v = acc[mi][ni][r];
                if (finish) {
                    v = gemv_finish(v, col, col_scale, bias);
                    if (accumulate) v = __fadd_rn(out[at], v);
                }
                out[at] = v;
            }
}

extern "C" __global__ void mma16_bf16(const float* x, const unsigned short* w, float* part, u32 m, u32 n, u32 k, u32 kchunk,
                                   const float* col_scale, const float* bias, int accumulate, int finish) {
    mma_tiles<Sixteen<__nv_bfloat16, true>>(x, w, part, m, n, k, kchunk, col_scale, bias, accumulate, finish);
}

extern "C" __global__ void mma16_f16(const float* x, const unsigned short* w, float* part, u32 m, u32 n, u32 k, u32 kchunk,
                                   const float* col_scale, const float* bias, int accumulate, int finish) {
    mma_tiles<Sixteen<__half, false>>(x, w, part, m, n, k, kchunk, col_scale, bias, accumulate, finish);
}

extern "C" __global__ void mma_w8_e4m3(const float* x, const u8* w, float* part, u32 m, u32 n, u32 k, u32 kchunk,
                                   const float* col_scale, const float* bias, int accumulate, int finish) {
    mma_tiles<Widened8<false>>(x, w, part, m, n, k, kchunk, col_scale, bias, accumulate, finish);
}

extern "C" __global__ void mma_w8_i8(const float* x, const u8* w, float* part, u32 m, u32 n, u32 k, u32 kchunk,
                                   const float* col_scale, const float* bias, int accumulate, int finish) {
    mma_tiles<Widened8<true>>(x, w, part, m, n, k, kchunk, col_scale, bias, accumulate, finish);
}

extern "C" __global__ void mma_e4m3(const u8* x, const u8* w, float* part, u32 m, u32 n, u32 k, u32 kchunk,
                                   const float* col_scale, const float* bias, int accumulate, int finish) {
    mma_tiles<E4m3>(x, w, part, m, n, k, kchunk, col_scale, bias, accumulate, finish);
}

// acc[i] = part[0][i] + part[1][i] + … + part[splits − 1][i], in that order (count = m · n),
// finished with the plain epilogue of column i % n as mma_tiles does when `finish`.
extern "C" __global__ void sum_splits(const float* part, float* acc, size_t count, u32 splits, u32 n,
                                      const float* col_scale, const float* bias, int accumulate, int finish) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        float s = part[i];
        for (u32 z = 1; z < splits; z++) s = __fadd_rn(s, part[(size_t)z * count + i]);
        if (finish) {
            s = gemv_finish(s, (u32)(i % n), col_scale, bias);
            if (accumulate) s = __fadd_rn(acc[i], s);
        }
        acc[i] = s;
    }
}
