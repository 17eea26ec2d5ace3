// Tensor-core products of f16 or bf16 weights (sm_80 and later), batch invariant:
//   part[z][i, j] = Σ_{c in split z} x[i, c] · w[j, c]
// with the f32 input rounded to the weights' 16-bit type, products on mma.sync (m16n8k16, f32
// accumulation). A block computes a 64 × 64 tile of the output with 4 warps (each a 32 × 32
// corner: 2 × 4 instructions per 16 values of k), staging 32 values of k of both operands in
// shared memory at a time. The K range of a block (split z = blockIdx.z of `kchunk` values, a
// multiple of 32) and the order of its steps depend only on (n, k), never on m, and each output
// value depends only on its row of x, its row of w and its own accumulator: a row gets the same
// bits whatever the batch. Splits are added in order by `sum_splits`.
#include "common.cuh"

#define MMA_BM 64
#define MMA_BN 64
#define MMA_BK 32
// Words (two 16-bit values) per shared row: 16, plus 4 of padding so that the fragment reads of
// a warp (8 rows × 4 words) fall in 32 different banks.
#define MMA_LD (MMA_BK / 2 + 4)

__device__ __forceinline__ unsigned short bits16(__half h) { return __half_as_ushort(h); }
__device__ __forceinline__ unsigned short bits16(__nv_bfloat16 h) { return __bfloat16_as_ushort(h); }

// Two f32 values rounded to T and packed, `lo` in the lower half.
template <typename T> __device__ __forceinline__ u32 pack2(float lo, float hi) {
    return (u32)bits16(from_f<T>(lo)) | ((u32)bits16(from_f<T>(hi)) << 16);
}

// blockDim.x = 128; grid (ceil(n / 64), ceil(m / 64), splits).
template <typename T, bool BF16>
__device__ void mma16(const float* x, const unsigned short* w, float* part, u32 m, u32 n, u32 k, u32 kchunk) {
    __shared__ u32 as[MMA_BM][MMA_LD];
    __shared__ u32 bs[MMA_BN][MMA_LD];
    const u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const u32 g = lane >> 2, t = lane & 3;
    const u32 row0 = blockIdx.y * MMA_BM, col0 = blockIdx.x * MMA_BN;
    const u32 kbeg = blockIdx.z * kchunk, kend = min(k, kbeg + kchunk);
    const u32 wr = (warp >> 1) * 32, wc = (warp & 1) * 32;
    // Warps whose rows all lie past m skip their instructions (the same for all their lanes).
    const bool live = row0 + wr < m;
    const bool even = (k & 1) == 0;
    float acc[2][4][4];
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int r = 0; r < 4; r++) acc[mi][ni][r] = 0.f;
    for (u32 k0 = kbeg; k0 < kend; k0 += MMA_BK) {
        // Both tiles, 64 rows × 16 word pairs each, 8 pairs per thread; zero past m, n or k.
        for (u32 i = tid; i < MMA_BM * (MMA_BK / 2); i += blockDim.x) {
            const u32 r = i / (MMA_BK / 2), p = i % (MMA_BK / 2), c = k0 + 2 * p;
            const u32 row = row0 + r, col = col0 + r;
            float lo = 0.f, hi = 0.f;
            u32 wv = 0;
            if (row < m && c < kend) {
                const float* xr = x + (size_t)row * k + c;
                if (even && c + 1 < kend) {
                    const float2 v = *(const float2*)xr;
                    lo = v.x, hi = v.y;
                } else {
                    lo = xr[0];
                    if (c + 1 < kend) hi = xr[1];
                }
            }
            if (col < n && c < kend) {
                const unsigned short* wrow = w + (size_t)col * k + c;
                if (even && c + 1 < kend) {
                    wv = *(const u32*)wrow;
                } else {
                    wv = wrow[0];
                    if (c + 1 < kend) wv |= (u32)wrow[1] << 16;
                }
            }
            as[r][p] = pack2<T>(lo, hi);
            bs[r][p] = wv;
        }
        __syncthreads();
        if (live) {
            // Two steps of 16 values of k (8 words each), in order.
            for (u32 ks = 0; ks < MMA_BK / 2; ks += 8) {
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
                    for (int ni = 0; ni < 4; ni++) mma_16816<BF16>(acc[mi][ni], a[mi], b[ni]);
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
                if (row < m && col < n) out[(size_t)row * n + col] = acc[mi][ni][r];
            }
}

extern "C" __global__ void mma16_bf16(const float* x, const unsigned short* w, float* part, u32 m, u32 n, u32 k,
                                      u32 kchunk) {
    mma16<__nv_bfloat16, true>(x, w, part, m, n, k, kchunk);
}

extern "C" __global__ void mma16_f16(const float* x, const unsigned short* w, float* part, u32 m, u32 n, u32 k,
                                     u32 kchunk) {
    mma16<__half, false>(x, w, part, m, n, k, kchunk);
}

// acc[i] = part[0][i] + part[1][i] + … + part[splits − 1][i], in that order (count = m · n).
extern "C" __global__ void sum_splits(const float* part, float* acc, size_t count, u32 splits) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        float s = part[i];
        for (u32 z = 1; z < splits; z++) s = __fadd_rn(s, part[(size_t)z * count + i]);
        acc[i] = s;
    }
}
