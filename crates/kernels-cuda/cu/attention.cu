// The paged KV cache: stores and causal attention, with the layout and arithmetic of kernels-ref.
// Pages are [num_blocks, kv_heads, block_size, d]: in the activation type T, or 8-bit codes (E4M3
// or INT8) with one f32 scale per row (token x kv head) and keys stored minus a per-channel shift;
// position 0's key (the attention sink) is also kept unrounded in k_sink [num_blocks, kv_heads, d].
// PAGE: 0 = T, 1 = E4M3, 2 = INT8.
#include "common.cuh"

#define MAX_BLOCK 256
#define MAX_D 512

// Writes the key and value heads of row `row`, kv head h, to slot slots[row]. Every thread of the
// block calls it (block reductions); blockDim.x >= d, a multiple of 32.
template <typename T, int PAGE>
__device__ void kv_store_head(const T* qkv, u32 row, u32 h, const u32* slots, const u32* positions,
                              typename Page<T, PAGE>::type* k_pages, typename Page<T, PAGE>::type* v_pages,
                              float* k_scales, float* v_scales, const float* k_shift, float* k_sink, u32 q_heads,
                              u32 kv_heads, u32 d, u32 bs) {
    u32 c = threadIdx.x;
    u32 width = (q_heads + 2 * kv_heads) * d;
    u32 slot = slots[row];
    size_t r = ((size_t)(slot / bs) * kv_heads + h) * bs + slot % bs;
    const T* src = qkv + (size_t)row * width;
    for (int part = 0; part < 2; part++) {
        const T* x = src + (size_t)(part == 0 ? q_heads + h : q_heads + kv_heads + h) * d;
        typename Page<T, PAGE>::type* dst = (part == 0 ? k_pages : v_pages) + r * d;
        float v = c < d ? to_f(x[c]) : 0.f;
        if (PAGE == 0) {
            if (c < d) dst[c] = ((const typename Page<T, PAGE>::type*)x)[c];
            continue;
        }
        if (part == 0 && k_shift && c < d) v -= k_shift[h * d + c];
        if (part == 0 && k_sink && positions[row] == 0 && c < d) k_sink[((size_t)(slot / bs) * kv_heads + h) * d + c] = v;
        float m = block_max(fabsf(v));
        float maxv = PAGE == 1 ? 448.f : 127.f;
        float s = (m > 0.f && m < TURBINE_INF) ? m / maxv : 1.f;
        if (c < d) dst[c] = PAGE == 1 ? f32_to_e4m3(v * (1.f / s)) : (u8)f32_to_i8(v, s);
        if (c == 0) (part == 0 ? k_scales : v_scales)[r] = s;
    }
}

// Rotary embedding and KV store in one launch (grid (rows, q_heads + kv_heads), blockDim.x >= d):
// block (row, h) rotates head h of the row in place (a query head, or key head h - q_heads, which
// it then stores with value head h - q_heads), with rope_head and kv_store_head: the results of
// rope then kv_store. half_rot 0: no rotation.
template <typename T, int PAGE>
__device__ void rope_kv_store(T* qkv, const u32* slots, const u32* positions, const float* cos_t,
                              const float* sin_t, u32 half_rot, typename Page<T, PAGE>::type* k_pages,
                              typename Page<T, PAGE>::type* v_pages, float* k_scales, float* v_scales,
                              const float* k_shift, float* k_sink, u32 q_heads, u32 kv_heads, u32 d, u32 bs) {
    u32 row = blockIdx.x, h = blockIdx.y;
    T* x = qkv + (size_t)row * (q_heads + 2 * kv_heads) * d + (size_t)h * d;
    const size_t at = (size_t)positions[row] * half_rot;
    rope_head(x, cos_t + at, sin_t + at, half_rot);
    if (h < q_heads) return;  // the whole block: h is the block's
    __syncthreads();          // the rotated key, written by other threads, is read below
    kv_store_head<T, PAGE>(qkv, row, h - q_heads, slots, positions, k_pages, v_pages, k_scales, v_scales, k_shift,
                           k_sink, q_heads, kv_heads, d, bs);
}

// Causal attention of query row blockIdx.x, head blockIdx.y over the cache. seqs is [n_seqs, 3]
// (first row, rows, context after the step), tables [n_seqs, max_blocks]. Keys are visited block
// by block in position order with an online softmax, as kernels-ref does. blockDim.x = 128.
//
// The context is taken ATTN_CHUNK positions (whole KV blocks) at a time, in two phases: first
// every score of the chunk (they do not depend on one another: each warp takes ATTN_KEYS keys at
// once, so a lane has ATTN_KEYS x d / 32 loads in flight instead of d / 32), then the online
// softmax walks the chunk's KV blocks in order, as before. A score is the same operations in the
// same order as before (lanes over the head dimension, in order, then warp_sum), and so is the
// walk: the output's bits do not change, and flash_prefill still gives the same bits for a row.
#define ATTN_CHUNK 1024
#ifndef ATTN_KEYS  // a tuning knob: any value gives the same bits (`xtask kernels` builds 16 too)
#define ATTN_KEYS 8
#endif
template <typename T, int PAGE>
__device__ void paged_attention(const T* qkv, const typename Page<T, PAGE>::type* k_pages,
                                const typename Page<T, PAGE>::type* v_pages, const float* k_scales,
                                const float* v_scales, const float* k_sink, const u32* seqs, u32 n_seqs,
                                const u32* tables,
                                u32 max_blocks, u32 q_heads, u32 kv_heads, u32 d, u32 bs, float scale, u32 window,
                                float alibi, const float* slopes, T* out, u32 flash) {
    __shared__ float q[MAX_D];
    __shared__ float p[ATTN_CHUNK];
    u32 tok = blockIdx.x, h = blockIdx.y;
    u32 kh = h / (q_heads / kv_heads);
    u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    // The sequence owning this row: the last one starting at or before it.
    u32 lo = 0, hi = n_seqs;
    while (hi - lo > 1) {
        u32 mid = (lo + hi) / 2;
        if (seqs[mid * 3] <= tok) lo = mid; else hi = mid;
    }
    u32 start = seqs[lo * 3], len = seqs[lo * 3 + 1], ctx = seqs[lo * 3 + 2];
    // Rows of multi-token sequences are the tiled kernel's when it runs too.
    if (flash && len > 1) return;
    u32 pos = ctx - len + (tok - start);
    u32 first = window ? (pos + 1 > window ? pos + 1 - window : 0) : 0;
    const u32* table = tables + (size_t)lo * max_blocks;
    u32 width = (q_heads + 2 * kv_heads) * d;
    for (u32 c = threadIdx.x; c < d; c += blockDim.x) q[c] = to_f(qkv[(size_t)tok * width + (size_t)h * d + c]);
    __syncthreads();
    float acc[MAX_D / 128];
    for (int i = 0; i < MAX_D / 128; i++) acc[i] = 0.f;
    float m = -TURBINE_INF, denom = 0.f;
    float slope = alibi != 0.f ? alibi * slopes[h] : 0.f;
    const u32 chunk_blocks = ATTN_CHUNK / bs;  // bs <= MAX_BLOCK (the caller checks): at least 4
    for (u32 blk0 = first / bs; blk0 <= pos / bs; blk0 += chunk_blocks) {
        u32 blk1 = min(blk0 + chunk_blocks - 1, pos / bs);
        u32 cs = max(blk0 * bs, first), ce = min((blk1 + 1) * bs, pos + 1);  // positions [cs, ce)
        // Scores: warp w takes keys cs + ATTN_KEYS w .. (+ ATTN_KEYS - 1), then 4 x ATTN_KEYS on.
        for (u32 j0 = cs + warp * ATTN_KEYS; j0 < ce; j0 += warps * ATTN_KEYS) {
            float s[ATTN_KEYS];
#pragma unroll
            for (int g = 0; g < ATTN_KEYS; g++) {
                u32 j = j0 + g;
                s[g] = 0.f;
                if (j >= ce) continue;
                size_t r = ((size_t)table[j / bs] * kv_heads + kh) * bs + j % bs;
                if (PAGE && k_sink && j == 0) {
                    const float* kr = k_sink + ((size_t)table[0] * kv_heads + kh) * d;
                    for (u32 c = lane; c < d; c += 32) s[g] += q[c] * kr[c];
                } else {
                    float ks = PAGE ? k_scales[r] : 1.f;
#pragma unroll
                    for (u32 i = 0; i < MAX_D / 32; i++) {
                        u32 c = lane + 32 * i;
                        if (c < d) s[g] += q[c] * load_page<T, PAGE>(k_pages, r * d + c, ks);
                    }
                }
            }
#pragma unroll
            for (int g = 0; g < ATTN_KEYS; g++) {
                u32 j = j0 + g;
                if (j >= ce) break;  // j0 is the warp's: every lane leaves together
                float sc = warp_sum(s[g]) * scale;
                if (slope != 0.f) sc += slope * ((float)j - (float)pos);
                if (lane == 0) p[j - cs] = sc;
            }
        }
        __syncthreads();
        for (u32 blk = blk0; blk <= blk1; blk++) {
            u32 a = blk * bs > first ? blk * bs : first;
            u32 b = (blk + 1) * bs < pos + 1 ? (blk + 1) * bs : pos + 1;
            size_t base = ((size_t)table[blk] * kv_heads + kh) * bs;
            const float* pb = p + (a - cs);
            float bmax = -TURBINE_INF;
            for (u32 j = 0; j < b - a; j++) bmax = fmaxf(bmax, pb[j]);
            float m_new = fmaxf(m, bmax);
            float corr = __expf(m - m_new);
            denom *= corr;
            for (int i = 0; i < MAX_D / 128; i++) acc[i] *= corr;
#pragma unroll 8
            for (u32 j = 0; j < b - a; j++) {
                float e = __expf(pb[j] - m_new);
                denom += e;
                size_t r = base + (a + j - blk * bs);
                float vs = PAGE ? v_scales[r] : 1.f;
                // (Indexed by compile-time constants: acc stays in registers.)
#pragma unroll
                for (u32 i = 0; i < MAX_D / 128; i++) {
                    u32 c = threadIdx.x + blockDim.x * i;
                    if (c < d) acc[i] += e * load_page<T, PAGE>(v_pages, r * d + c, vs);
                }
            }
            m = m_new;
        }
        __syncthreads();  // the next chunk's scores overwrite p
    }
    T* o = out + ((size_t)tok * q_heads + h) * d;
#pragma unroll
    for (u32 i = 0; i < MAX_D / 128; i++) {
        u32 c = threadIdx.x + blockDim.x * i;
        if (c < d) o[c] = from_f<T>(acc[i] / denom);
    }
}

// Tiled ("flash") attention for the rows of multi-token sequences (prefill): block (tile, head)
// takes FLASH_TQ consecutive query rows of one sequence, stages each KV page block once in shared
// memory for all of them, and runs every row's online softmax over it. Each row sees the same
// blocks, scores (lanes over the head dimension, warp sum), maxima and accumulation order as in
// paged_attention, so a token's output does not depend on which kernel computed it.
// blockDim.x = 128; d <= FLASH_MAX_D, bs <= FLASH_MAX_BS (the caller checks).
#define FLASH_TQ 8
#define FLASH_MAX_D 256
#define FLASH_MAX_BS 16
template <typename T, int PAGE>
__device__ void flash_prefill(const T* qkv, const typename Page<T, PAGE>::type* k_pages,
                              const typename Page<T, PAGE>::type* v_pages, const float* k_scales,
                              const float* v_scales, const float* k_sink, const u32* seqs, u32 n_seqs,
                              const u32* tables, u32 max_blocks, u32 q_heads, u32 kv_heads, u32 d, u32 bs,
                              float scale, u32 window, float alibi, const float* slopes, T* out) {
    __shared__ float qs[FLASH_TQ][FLASH_MAX_D];
    __shared__ float ks[FLASH_MAX_BS][FLASH_MAX_D];
    __shared__ float vs[FLASH_MAX_BS][FLASH_MAX_D];
    __shared__ float ps[FLASH_TQ][FLASH_MAX_BS];
    u32 h = blockIdx.y, kh = h / (q_heads / kv_heads);
    u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // This block's tile: tiles are numbered sequence by sequence (multi-token ones only).
    u32 s = 0, tiles = 0;
    for (; s < n_seqs; s++) {
        u32 len = seqs[s * 3 + 1];
        u32 n = len > 1 ? (len + FLASH_TQ - 1) / FLASH_TQ : 0;
        if (blockIdx.x < tiles + n) break;
        tiles += n;
    }
    if (s == n_seqs) return;
    u32 start = seqs[s * 3], len = seqs[s * 3 + 1], ctx = seqs[s * 3 + 2];
    u32 r0 = (blockIdx.x - tiles) * FLASH_TQ;  // first row of the tile within the sequence
    u32 rows = min((u32)FLASH_TQ, len - r0);
    u32 pos0 = ctx - len + r0;  // position of the tile's first row
    const u32* table = tables + (size_t)s * max_blocks;
    u32 width = (q_heads + 2 * kv_heads) * d;
    for (u32 i = threadIdx.x; i < rows * d; i += blockDim.x) {
        u32 r = i / d, c = i % d;
        qs[r][c] = to_f(qkv[(size_t)(start + r0 + r) * width + (size_t)h * d + c]);
    }
    // Thread (tr, sub): row tr of the tile, head dimensions sub + 16 i.
    u32 tr = threadIdx.x / 16, sub = threadIdx.x % 16;
    bool live = tr < rows;
    u32 my_pos = pos0 + tr;
    u32 my_first = window ? (my_pos + 1 > window ? my_pos + 1 - window : 0) : 0;
    float acc[FLASH_MAX_D / 16];
    for (int i = 0; i < FLASH_MAX_D / 16; i++) acc[i] = 0.f;
    float m = -TURBINE_INF, denom = 0.f;
    float slope = alibi != 0.f ? alibi * slopes[h] : 0.f;
    u32 last = pos0 + rows - 1;
    u32 first = window ? (pos0 + 1 > window ? pos0 + 1 - window : 0) : 0;
    for (u32 blk = first / bs; blk <= last / bs; blk++) {
        size_t base = ((size_t)table[blk] * kv_heads + kh) * bs;
        u32 lo_j = blk * bs, hi_j = min((blk + 1) * bs, last + 1);
        __syncthreads();
        for (u32 i = threadIdx.x; i < (hi_j - lo_j) * d; i += blockDim.x) {
            u32 j = i / d, c = i % d;
            size_t r = base + j;
            bool sink = PAGE && k_sink && lo_j + j == 0;
            ks[j][c] = sink ? k_sink[((size_t)table[0] * kv_heads + kh) * d + c]
                            : load_page<T, PAGE>(k_pages, r * d + c, PAGE ? k_scales[r] : 1.f);
            vs[j][c] = load_page<T, PAGE>(v_pages, r * d + c, PAGE ? v_scales[r] : 1.f);
        }
        __syncthreads();
        // Scores: warp w takes rows w, w + 4 of the tile.
        for (u32 r = warp; r < rows; r += 4) {
            u32 pos = pos0 + r;
            u32 f = window ? (pos + 1 > window ? pos + 1 - window : 0) : 0;
            u32 a = lo_j > f ? lo_j : f, b = min((blk + 1) * bs, pos + 1);
            for (u32 j = a; j < b; j++) {
                float sc = 0.f;
                for (u32 c = lane; c < d; c += 32) sc += qs[r][c] * ks[j - lo_j][c];
                sc = warp_sum(sc) * scale;
                if (slope != 0.f) sc += slope * ((float)j - (float)pos);
                if (lane == 0) ps[r][j - a] = sc;
            }
        }
        __syncthreads();
        if (live && blk >= my_first / bs && blk <= my_pos / bs) {
            u32 a = lo_j > my_first ? lo_j : my_first, b = min((blk + 1) * bs, my_pos + 1);
            float bmax = -TURBINE_INF;
            for (u32 j = 0; j < b - a; j++) bmax = fmaxf(bmax, ps[tr][j]);
            float m_new = fmaxf(m, bmax);
            float corr = __expf(m - m_new);
            denom *= corr;
            for (int i = 0; i < FLASH_MAX_D / 16; i++) acc[i] *= corr;
            for (u32 j = 0; j < b - a; j++) {
                float e = __expf(ps[tr][j] - m_new);
                denom += e;
                for (u32 c = sub, i = 0; c < d; c += 16, i++) acc[i] += e * vs[a + j - lo_j][c];
            }
            m = m_new;
        }
    }
    if (live) {
        T* o = out + ((size_t)(start + r0 + tr) * q_heads + h) * d;
        for (u32 c = sub, i = 0; c < d; c += 16, i++) o[c] = from_f<T>(acc[i] / denom);
    }
}

#define ATTN(N, T, PN, PAGE)                                                                                  \
    extern "C" __global__ void kv_store_##N##_##PN(                                                           \
        const T* qkv, const u32* slots, const u32* positions, Page<T, PAGE>::type* k_pages,                   \
        Page<T, PAGE>::type* v_pages, float* k_scales, float* v_scales, const float* k_shift, float* k_sink,  \
        u32 q_heads, u32 kv_heads, u32 d, u32 bs) {                                                           \
        kv_store_head<T, PAGE>(qkv, blockIdx.x, blockIdx.y, slots, positions, k_pages, v_pages, k_scales,       \
                               v_scales, k_shift, k_sink, q_heads, kv_heads, d, bs);                          \
    }                                                                                                         \
    extern "C" __global__ void rope_kv_store_##N##_##PN(                                                      \
        T* qkv, const u32* slots, const u32* positions, const float* cos_t, const float* sin_t, u32 half_rot,  \
        Page<T, PAGE>::type* k_pages, Page<T, PAGE>::type* v_pages, float* k_scales, float* v_scales,         \
        const float* k_shift, float* k_sink, u32 q_heads, u32 kv_heads, u32 d, u32 bs) {                      \
        rope_kv_store<T, PAGE>(qkv, slots, positions, cos_t, sin_t, half_rot, k_pages, v_pages, k_scales,     \
                               v_scales, k_shift, k_sink, q_heads, kv_heads, d, bs);                          \
    }                                                                                                         \
    extern "C" __global__ void paged_attention_##N##_##PN(                                                    \
        const T* qkv, const Page<T, PAGE>::type* k_pages, const Page<T, PAGE>::type* v_pages,                 \
        const float* k_scales, const float* v_scales, const float* k_sink, const u32* seqs, u32 n_seqs,       \
        const u32* tables, u32 max_blocks, u32 q_heads, u32 kv_heads, u32 d, u32 bs, float scale, u32 window, \
        float alibi, const float* slopes, T* out, u32 flash) {                                                \
        paged_attention<T, PAGE>(qkv, k_pages, v_pages, k_scales, v_scales, k_sink, seqs, n_seqs, tables,     \
                                 max_blocks, q_heads, kv_heads, d, bs, scale, window, alibi, slopes, out, flash); \
    }                                                                                                         \
    extern "C" __global__ void flash_prefill_##N##_##PN(                                                      \
        const T* qkv, const Page<T, PAGE>::type* k_pages, const Page<T, PAGE>::type* v_pages,                 \
        const float* k_scales, const float* v_scales, const float* k_sink, const u32* seqs, u32 n_seqs,       \
        const u32* tables, u32 max_blocks, u32 q_heads, u32 kv_heads, u32 d, u32 bs, float scale, u32 window, \
        float alibi, const float* slopes, T* out) {                                                           \
        flash_prefill<T, PAGE>(qkv, k_pages, v_pages, k_scales, v_scales, k_sink, seqs, n_seqs, tables,       \
                               max_blocks, q_heads, kv_heads, d, bs, scale, window, alibi, slopes, out);      \
    }
#define ATTN_ALL(N, T) ATTN(N, T, same, 0) ATTN(N, T, e4m3, 1) ATTN(N, T, i8, 2)
TURBINE_FOR_TYPES(ATTN_ALL)
