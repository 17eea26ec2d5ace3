// Flash attention on tensor cores over the paged KV cache (attention.cu's page layout), one
// arithmetic for prefill and decode rows alike, so that a token's output has the same bits
// whichever computed it, whatever the batch, the prefill chunking or the KV block size.
//
// Rows. A block takes FA_ROWS (token, query head) pairs of one sequence and one kv head h: pair
// p is token p / G, query head h·G + p % G (G = q_heads / kv_heads), so the heads of a GQA/MQA
// group share every key and value load. Warp w owns pairs 16w .. 16w + 15, the rows of its
// m16n8k16 fragments.
//
// Keys. Positions are walked in tiles of FA_KEYS starting at multiples of FA_KEYS, and tiles are
// grouped into splits of FA_SPLIT positions starting at multiples of FA_SPLIT: both fixed by
// absolute position, never by the batch, the chunk or the block size. Within a split a row runs
// the online softmax tile by tile from (m, l, acc) = (-inf, 0, 0); the finished splits of a row
// are folded in split order by fold_split (below). Prefill blocks walk all their splits in turn;
// decode rows (sequences of one token in the step) take one block per split, write the partial
// state when a row has more than one split, and flash_mma_merge folds them with the same
// formula. A masked key (outside a row's causal window) scores -inf and weighs exactly 0, and a
// tile or split with no key for a row leaves that row's state as it was, so a row's bits depend
// only on its own query, its keys and values, and the model's shapes.
//
// Precision. The products run on bf16 tensor cores with f32 accumulation, but Q, K, V and the
// probabilities P are f32 here (and 8-bit pages are dequantized to f32 as attention.cu reads
// them): each operand x is split into hi = bf16(x) and lo = bf16(x - hi), and a product is
// hi·hi + hi·lo + lo·hi (three mma.sync), which keeps about 16 bits of each operand — f32-class
// attention on tensor cores rather than bf16-class. Scores, softmax and sums stay f32.
#include "common.cuh"

#define FA_ROWS 64
#define FA_KEYS 32
#define FA_SPLIT 1024
// The largest head dimension (ops.rs' FA_MAX_D); smaller ones are padded with zeros to 16.
#define FA_MAX_D 128
// Words per staged key row (16-bit pairs along d), padded against bank conflicts.
#define FA_KW (FA_MAX_D / 2 + 4)
// Words per staged value column (16-bit pairs along the keys), padded likewise.
#define FA_VW (FA_KEYS / 2 + 4)

// hi + lo of x, each as bf16 bits.
__device__ __forceinline__ void split_bf16(float x, unsigned short& hi, unsigned short& lo) {
    const __nv_bfloat16 h = __float2bfloat16_rn(x);
    hi = __bfloat16_as_ushort(h);
    lo = __bfloat16_as_ushort(__float2bfloat16_rn(x - __bfloat162float(h)));
}

// Two values (lower k first) as hi and lo words.
__device__ __forceinline__ void split_pair(float a, float b, u32& hi, u32& lo) {
    unsigned short ah, al, bh, bl;
    split_bf16(a, ah, al);
    split_bf16(b, bh, bl);
    hi = (u32)ah | ((u32)bh << 16);
    lo = (u32)al | ((u32)bl << 16);
}

// d += a·b for split operands: hi·hi + hi·lo + lo·hi, in that order.
__device__ __forceinline__ void mma3(float d[4], const u32 ah[4], const u32 al[4], const u32 bh[2], const u32 bl[2]) {
    mma_16816<true>(d, ah, bh);
    mma_16816<true>(d, ah, bl);
    mma_16816<true>(d, al, bh);
}

// Folds a finished split (m, l; its unnormalised output acc) into a row's running state (M, L;
// output O), in split order: the first copies, later ones rescale both to the larger maximum.
// The factors for O are returned in (a, b): O = O·a + acc·b (fold_out). Used by prefill blocks
// and by flash_mma_merge alike: the same operations in the same order.
__device__ __forceinline__ bool fold_split(float& M, float& L, float m, float l, float& a, float& b) {
    if (M == -TURBINE_INF) {
        M = m, L = l, a = 0.f, b = 1.f;
        return true;  // a copy
    }
    const float mn = fmaxf(M, m);
    a = __expf(M - mn), b = __expf(m - mn);
    L = __fadd_rn(__fmul_rn(L, a), __fmul_rn(l, b));
    M = mn;
    return false;
}
__device__ __forceinline__ float fold_out(float o, float acc, float a, float b, bool copy) {
    return copy ? acc : __fadd_rn(__fmul_rn(o, a), __fmul_rn(acc, b));
}

// Where a block's pairs come from and what its rows see.
struct FlashBlock {
    u32 seq;              // the sequence
    u32 start, len, ctx;  // its first row in the step, rows in the step, context after the step
    u32 kh, g_size, p0;   // kv head, heads per kv head, first pair of the block
    u32 jmin, jmax;       // the keys any row of the block may see: [jmin, jmax]
};

// One thread's share of a block's state: rows r = 0 (pair g of its warp) and 1 (pair g + 8).
struct FlashRows {
    bool live[2];
    u32 pos[2], first[2], head[2], token[2];
    float slope[2];
    u32 qh[FA_MAX_D / 16][4], ql[FA_MAX_D / 16][4];  // A fragments of Q, hi and lo
    float m[2], l[2];                                 // this split's maximum and (partial) sum
    float acc[FA_MAX_D / 8][4];                       // this split's output, C fragment layout
};

template <typename T>
__device__ __forceinline__ void flash_rows(const FlashBlock& b, const T* qkv, u32 q_heads, u32 kv_heads, u32 d, u32 window,
                           float alibi, const float* slopes, FlashRows& s) {
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const u32 npairs = b.len * b.g_size, width = (q_heads + 2 * kv_heads) * d;
    for (int r = 0; r < 2; r++) {
        const u32 pair = b.p0 + 16 * warp + g + 8 * r;
        s.live[r] = pair < npairs;
        s.token[r] = s.live[r] ? pair / b.g_size : 0;
        s.head[r] = b.kh * b.g_size + (s.live[r] ? pair % b.g_size : 0);
        s.pos[r] = b.ctx - b.len + s.token[r];
        s.first[r] = window ? (s.pos[r] + 1 > window ? s.pos[r] + 1 - window : 0) : 0;
        s.slope[r] = alibi != 0.f ? alibi * slopes[s.head[r]] : 0.f;
        s.m[r] = -TURBINE_INF;
        s.l[r] = 0.f;
    }
#pragma unroll
    for (u32 kk = 0; kk < FA_MAX_D / 16; kk++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 r = i & 1, c = 16 * kk + 2 * t + 8 * (i >> 1);
            float x0 = 0.f, x1 = 0.f;
            if (s.live[r]) {
                const T* q = qkv + (size_t)(b.start + s.token[r]) * width + (size_t)s.head[r] * d;
                if (c < d) x0 = to_f(q[c]);
                if (c + 1 < d) x1 = to_f(q[c + 1]);
            }
            split_pair(x0, x1, s.qh[kk][i], s.ql[kk][i]);
        }
#pragma unroll
    for (int dn = 0; dn < FA_MAX_D / 8; dn++)
        for (int i = 0; i < 4; i++) s.acc[dn][i] = 0.f;
}

// Stages keys and values [j0, j0 + FA_KEYS) of kv head b.kh, split into hi and lo: keys row by
// row (kh_s/kl_s[key][word]), values transposed (vh_s/vl_s[column][word of two keys]). Keys
// outside [b.jmin, b.jmax] are zero (no page is read for them). Every thread of the block.
template <typename T, int PAGE>
__device__ __forceinline__ void flash_stage(const FlashBlock& b, u32 j0, const typename Page<T, PAGE>::type* k_pages,
                            const typename Page<T, PAGE>::type* v_pages, const float* k_scales, const float* v_scales,
                            const float* k_sink, const u32* table, u32 kv_heads, u32 d, u32 bs,
                            u32 (*kh_s)[FA_KW], u32 (*kl_s)[FA_KW], u32 (*vh_s)[FA_VW], u32 (*vl_s)[FA_VW]) {
    const u32 dp = (d + 15) / 16 * 16;
    // Keys: a thread takes two neighbouring columns of one key.
    for (u32 i = threadIdx.x; i < FA_KEYS * dp / 2; i += blockDim.x) {
        const u32 key = i / (dp / 2), c = 2 * (i % (dp / 2)), j = j0 + key;
        float x0 = 0.f, x1 = 0.f;
        if (j >= b.jmin && j <= b.jmax) {
            const size_t r = ((size_t)table[j / bs] * kv_heads + b.kh) * bs + j % bs;
            if (PAGE && k_sink && j == 0) {
                const float* kr = k_sink + ((size_t)table[0] * kv_heads + b.kh) * d;
                if (c < d) x0 = kr[c];
                if (c + 1 < d) x1 = kr[c + 1];
            } else {
                const float ks = PAGE ? k_scales[r] : 1.f;
                if (c < d) x0 = load_page<T, PAGE>(k_pages, r * d + c, ks);
                if (c + 1 < d) x1 = load_page<T, PAGE>(k_pages, r * d + c + 1, ks);
            }
        }
        split_pair(x0, x1, kh_s[key][c / 2], kl_s[key][c / 2]);
    }
    // Values: a thread takes one column of two neighbouring keys.
    for (u32 i = threadIdx.x; i < FA_KEYS / 2 * dp; i += blockDim.x) {
        const u32 c = i % dp, kp = i / dp;
        float x[2] = {0.f, 0.f};
        for (int e = 0; e < 2; e++) {
            const u32 j = j0 + 2 * kp + e;
            if (c < d && j >= b.jmin && j <= b.jmax) {
                const size_t r = ((size_t)table[j / bs] * kv_heads + b.kh) * bs + j % bs;
                x[e] = load_page<T, PAGE>(v_pages, r * d + c, PAGE ? v_scales[r] : 1.f);
            }
        }
        split_pair(x[0], x[1], vh_s[c][kp], vl_s[c][kp]);
    }
}

// One staged tile [j0, j0 + FA_KEYS) for the warp's rows: scores S = Q·Kᵀ, the online softmax
// update, acc += P·V. The whole warp calls it.
__device__ __forceinline__ void flash_tile(FlashRows& s, u32 j0, u32 d, float scale, const u32 (*kh_s)[FA_KW],
                           const u32 (*kl_s)[FA_KW], const u32 (*vh_s)[FA_VW], const u32 (*vl_s)[FA_VW]) {
    const u32 lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u32 dsteps = (d + 15) / 16, dtiles = (d + 7) / 8;
    float sc[FA_KEYS / 8][4];
#pragma unroll
    for (int nt = 0; nt < FA_KEYS / 8; nt++) {
        for (int i = 0; i < 4; i++) sc[nt][i] = 0.f;
#pragma unroll
        for (u32 kk = 0; kk < FA_MAX_D / 16; kk++) {
            if (kk >= dsteps) break;
            const u32 key = 8 * nt + g;
            const u32 bh[2] = {kh_s[key][8 * kk + t], kh_s[key][8 * kk + t + 4]};
            const u32 bl[2] = {kl_s[key][8 * kk + t], kl_s[key][8 * kk + t + 4]};
            mma3(sc[nt], s.qh[kk], s.ql[kk], bh, bl);
        }
    }
    // Scale, ALiBi, mask; each row's maximum over the tile (its 8 values here, then the quad's).
    float p[FA_KEYS / 8][4], corr[2];
    for (int r = 0; r < 2; r++) {
        float mx = -TURBINE_INF;
#pragma unroll
        for (int nt = 0; nt < FA_KEYS / 8; nt++)
            for (int e = 0; e < 2; e++) {
                const u32 j = j0 + 8 * nt + 2 * t + e;
                float x = sc[nt][2 * r + e] * scale;
                if (s.slope[r] != 0.f) x += s.slope[r] * ((float)j - (float)s.pos[r]);
                if (!s.live[r] || j < s.first[r] || j > s.pos[r]) x = -TURBINE_INF;
                p[nt][2 * r + e] = x;
                mx = fmaxf(mx, x);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(s.m[r], mx);
        // A row that has seen no key yet keeps (-inf, 0, 0): exp(-inf) weighs 0.
        const float mu = m_new == -TURBINE_INF ? 0.f : m_new;
        corr[r] = __expf(s.m[r] - mu);
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < FA_KEYS / 8; nt++)
            for (int e = 0; e < 2; e++) {
                const float e_ = __expf(p[nt][2 * r + e] - mu);
                p[nt][2 * r + e] = e_;
                sum += e_;
            }
        s.l[r] = s.l[r] * corr[r] + sum;
        s.m[r] = m_new;
    }
#pragma unroll
    for (int dn = 0; dn < FA_MAX_D / 8; dn++)
        for (int i = 0; i < 4; i++) s.acc[dn][i] *= corr[i >> 1];
    // acc += P·V, 16 keys per step: P's C fragments of key tiles 2ks and 2ks + 1 are the A
    // fragment of the step.
#pragma unroll
    for (int ks = 0; ks < FA_KEYS / 16; ks++) {
        u32 ph[4], pl[4];
        split_pair(p[2 * ks][0], p[2 * ks][1], ph[0], pl[0]);
        split_pair(p[2 * ks][2], p[2 * ks][3], ph[1], pl[1]);
        split_pair(p[2 * ks + 1][0], p[2 * ks + 1][1], ph[2], pl[2]);
        split_pair(p[2 * ks + 1][2], p[2 * ks + 1][3], ph[3], pl[3]);
#pragma unroll
        for (u32 dn = 0; dn < FA_MAX_D / 8; dn++) {
            if (dn >= dtiles) break;
            const u32 col = 8 * dn + g;
            const u32 bh[2] = {vh_s[col][8 * ks + t], vh_s[col][8 * ks + t + 4]};
            const u32 bl[2] = {vl_s[col][8 * ks + t], vl_s[col][8 * ks + t + 4]};
            mma3(s.acc[dn], ph, pl, bh, bl);
        }
    }
}

// A row's finished split: its sum over the quad (lanes 4g .. 4g + 3, in a fixed order).
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

// Output element (r, dn, e) of a thread: row r's column 8 dn + 2t + e, at acc[dn][2r + e].
template <typename T>
__device__ __forceinline__ T* out_row(T* out, const FlashBlock& b, const FlashRows& s, int r, u32 q_heads, u32 d) {
    return out + ((size_t)(b.start + s.token[r]) * q_heads + s.head[r]) * d;
}

// Finds the block's sequence and pairs: prefill blocks are numbered over the multi-token
// sequences' tiles, decode blocks over (sequence, pair tile). False: no work.
__device__ __forceinline__ bool flash_block(const u32* seqs, u32 n_seqs, u32 q_heads, u32 kv_heads, u32 window, bool prefill,
                            FlashBlock& b) {
    b.kh = prefill ? blockIdx.y : blockIdx.z;
    b.g_size = q_heads / kv_heads;
    const u32 ptiles = (b.g_size + FA_ROWS - 1) / FA_ROWS;
    u32 s = 0, tile = 0;
    if (prefill) {
        u32 tiles = 0;
        for (; s < n_seqs; s++) {
            const u32 len = seqs[s * 3 + 1];
            const u32 n = len > 1 ? (len * b.g_size + FA_ROWS - 1) / FA_ROWS : 0;
            if (blockIdx.x < tiles + n) break;
            tiles += n;
        }
        if (s == n_seqs) return false;
        tile = blockIdx.x - tiles;
    } else {
        s = blockIdx.x / ptiles, tile = blockIdx.x % ptiles;
        if (s >= n_seqs || seqs[s * 3 + 1] != 1) return false;
    }
    b.seq = s;
    b.start = seqs[s * 3], b.len = seqs[s * 3 + 1], b.ctx = seqs[s * 3 + 2];
    b.p0 = tile * FA_ROWS;
    const u32 npairs = b.len * b.g_size;
    const u32 last = min(b.p0 + FA_ROWS, npairs) - 1;
    const u32 pos0 = b.ctx - b.len + b.p0 / b.g_size;
    b.jmin = window ? (pos0 + 1 > window ? pos0 + 1 - window : 0) : 0;
    b.jmax = b.ctx - b.len + last / b.g_size;
    return true;
}

// Prefill: grid (tiles of the multi-token sequences + n_seqs, kv_heads), blockDim.x = 128. A
// row's finished splits are folded into `merged` (f32 [rows, q_heads · d]; may be `out` itself
// when T is float) and its last split writes out = O / L.
template <typename T, int PAGE>
__device__ void flash_mma_prefill(const T* qkv, const typename Page<T, PAGE>::type* k_pages,
                                  const typename Page<T, PAGE>::type* v_pages, const float* k_scales,
                                  const float* v_scales, const float* k_sink, const u32* seqs, u32 n_seqs,
                                  const u32* tables, u32 max_blocks, u32 q_heads, u32 kv_heads, u32 d, u32 bs,
                                  float scale, u32 window, float alibi, const float* slopes, float* merged, T* out) {
    __shared__ u32 kh_s[FA_KEYS][FA_KW], kl_s[FA_KEYS][FA_KW];
    __shared__ u32 vh_s[FA_MAX_D][FA_VW], vl_s[FA_MAX_D][FA_VW];
    FlashBlock b;
    if (!flash_block(seqs, n_seqs, q_heads, kv_heads, window, true, b)) return;
    const u32* table = tables + (size_t)b.seq * max_blocks;
    FlashRows s;
    flash_rows(b, qkv, q_heads, kv_heads, d, window, alibi, slopes, s);
    const u32 warp = threadIdx.x >> 5, t = threadIdx.x & 3;
    const bool warp_live = b.p0 + 16 * warp < b.len * b.g_size;
    const u32 dtiles = (d + 7) / 8;
    float M[2] = {-TURBINE_INF, -TURBINE_INF}, L[2] = {0.f, 0.f};
    for (u32 j0 = b.jmin / FA_KEYS * FA_KEYS; j0 <= b.jmax; j0 += FA_KEYS) {
        __syncthreads();  // the previous tile's fragments are read
        flash_stage<T, PAGE>(b, j0, k_pages, v_pages, k_scales, v_scales, k_sink, table, kv_heads, d, bs, kh_s,
                             kl_s, vh_s, vl_s);
        __syncthreads();
        if (warp_live) flash_tile(s, j0, d, scale, kh_s, kl_s, vh_s, vl_s);
        const u32 next = j0 + FA_KEYS;
        if (next % FA_SPLIT != 0 && next <= b.jmax) continue;
        // The end of split (next - 1) / FA_SPLIT: fold it into each row's state.
        const u32 split = j0 / FA_SPLIT;
        if (warp_live) {
            for (int r = 0; r < 2; r++) {
                const float l = quad_sum(s.l[r]);
                if (!s.live[r] || s.m[r] == -TURBINE_INF) continue;
                float a, f;
                const bool copy = fold_split(M[r], L[r], s.m[r], l, a, f);
                const bool last = split == s.pos[r] / FA_SPLIT;
                float* o = out_row(merged, b, s, r, q_heads, d);
                T* y = out_row(out, b, s, r, q_heads, d);
                for (u32 dn = 0; dn < dtiles; dn++)
                    for (int e = 0; e < 2; e++) {
                        const u32 c = 8 * dn + 2 * t + e;
                        if (c >= d) continue;
                        const float v = fold_out(copy ? 0.f : o[c], s.acc[dn][2 * r + e], a, f, copy);
                        if (last) y[c] = from_f<T>(__fdiv_rn(v, L[r]));
                        else o[c] = v;
                    }
            }
            for (int r = 0; r < 2; r++) s.m[r] = -TURBINE_INF, s.l[r] = 0.f;
            for (u32 dn = 0; dn < FA_MAX_D / 8; dn++)
                for (int i = 0; i < 4; i++) s.acc[dn][i] = 0.f;
        }
    }
}

// Decode: grid (n_seqs · pair tiles, splits, kv_heads), blockDim.x = 128; block (·, k, ·) takes
// split k of the one-token sequences' rows. A row with one split writes out = acc / l; a row
// with several writes its partial state (part_o [n_seqs, q_heads, splits, d]: acc; part_ml
// [n_seqs, q_heads, splits, 2]: m, l) for flash_mma_merge.
template <typename T, int PAGE>
__device__ void flash_mma_decode(const T* qkv, const typename Page<T, PAGE>::type* k_pages,
                                 const typename Page<T, PAGE>::type* v_pages, const float* k_scales,
                                 const float* v_scales, const float* k_sink, const u32* seqs, u32 n_seqs,
                                 const u32* tables, u32 max_blocks, u32 q_heads, u32 kv_heads, u32 d, u32 bs,
                                 float scale, u32 window, float alibi, const float* slopes, float* part_o,
                                 float* part_ml, u32 splits, T* out) {
    __shared__ u32 kh_s[FA_KEYS][FA_KW], kl_s[FA_KEYS][FA_KW];
    __shared__ u32 vh_s[FA_MAX_D][FA_VW], vl_s[FA_MAX_D][FA_VW];
    FlashBlock b;
    if (!flash_block(seqs, n_seqs, q_heads, kv_heads, window, false, b)) return;
    const u32 seq = b.seq, split = blockIdx.y;
    const u32 pos = b.ctx - 1;
    // This split's keys; every row of a decode block has the same position and window.
    if (split < b.jmin / FA_SPLIT || split > pos / FA_SPLIT) return;
    const u32* table = tables + (size_t)seq * max_blocks;
    const bool several = b.jmin / FA_SPLIT != pos / FA_SPLIT;
    FlashRows s;
    flash_rows(b, qkv, q_heads, kv_heads, d, window, alibi, slopes, s);
    const u32 warp = threadIdx.x >> 5, t = threadIdx.x & 3;
    const bool warp_live = b.p0 + 16 * warp < b.g_size;
    const u32 dtiles = (d + 7) / 8;
    const u32 lo = max(split * FA_SPLIT, b.jmin / FA_KEYS * FA_KEYS), hi = min((split + 1) * FA_SPLIT - 1, pos);
    for (u32 j0 = lo; j0 <= hi; j0 += FA_KEYS) {
        __syncthreads();
        flash_stage<T, PAGE>(b, j0, k_pages, v_pages, k_scales, v_scales, k_sink, table, kv_heads, d, bs, kh_s,
                             kl_s, vh_s, vl_s);
        __syncthreads();
        if (warp_live) flash_tile(s, j0, d, scale, kh_s, kl_s, vh_s, vl_s);
    }
    if (!warp_live) return;
    for (int r = 0; r < 2; r++) {
        const float l = quad_sum(s.l[r]);
        if (!s.live[r]) continue;
        const size_t at = ((size_t)seq * q_heads + s.head[r]) * splits + split;
        T* y = out_row(out, b, s, r, q_heads, d);
        for (u32 dn = 0; dn < dtiles; dn++)
            for (int e = 0; e < 2; e++) {
                const u32 c = 8 * dn + 2 * t + e;
                if (c >= d) continue;
                if (several) part_o[at * d + c] = s.acc[dn][2 * r + e];
                else y[c] = from_f<T>(__fdiv_rn(s.acc[dn][2 * r + e], l));
            }
        if (several && t == 0) part_ml[2 * at] = s.m[r], part_ml[2 * at + 1] = l;
    }
}

// Folds the splits of the one-token rows that have several (grid (n_seqs, q_heads), threads
// over the head dimension), in split order with fold_split, and writes out = O / L.
template <typename T>
__device__ void flash_mma_merge(const u32* seqs, u32 n_seqs, u32 q_heads, u32 d, u32 window, const float* part_o,
                                const float* part_ml, u32 splits, T* out) {
    const u32 seq = blockIdx.x, head = blockIdx.y;
    if (seq >= n_seqs || seqs[seq * 3 + 1] != 1) return;
    const u32 pos = seqs[seq * 3 + 2] - 1;
    const u32 first = window ? (pos + 1 > window ? pos + 1 - window : 0) : 0;
    const u32 k0 = first / FA_SPLIT, k1 = pos / FA_SPLIT;
    if (k0 == k1) return;
    const size_t base = ((size_t)seq * q_heads + head) * splits;
    T* y = out + ((size_t)seqs[seq * 3] * q_heads + head) * d;
    for (u32 c = threadIdx.x; c < d; c += blockDim.x) {
        float M = -TURBINE_INF, L = 0.f, o = 0.f;
        for (u32 k = k0; k <= k1; k++) {
            float a, f;
            const bool copy = fold_split(M, L, part_ml[2 * (base + k)], part_ml[2 * (base + k) + 1], a, f);
            o = fold_out(o, part_o[(base + k) * d + c], a, f, copy);
        }
        y[c] = from_f<T>(__fdiv_rn(o, L));
    }
}

#define FLASH(N, T, PN, PAGE)                                                                                   \
    extern "C" __global__ void flash_mma_prefill_##N##_##PN(                                                    \
        const T* qkv, const Page<T, PAGE>::type* k_pages, const Page<T, PAGE>::type* v_pages,                   \
        const float* k_scales, const float* v_scales, const float* k_sink, const u32* seqs, u32 n_seqs,         \
        const u32* tables, u32 max_blocks, u32 q_heads, u32 kv_heads, u32 d, u32 bs, float scale, u32 window,   \
        float alibi, const float* slopes, float* merged, T* out) {                                              \
        flash_mma_prefill<T, PAGE>(qkv, k_pages, v_pages, k_scales, v_scales, k_sink, seqs, n_seqs, tables,     \
                                   max_blocks, q_heads, kv_heads, d, bs, scale, window, alibi, slopes, merged,   \
                                   out);                                                                        \
    }                                                                                                           \
    extern "C" __global__ void flash_mma_decode_##N##_##PN(                                                     \
        const T* qkv, const Page<T, PAGE>::type* k_pages, const Page<T, PAGE>::type* v_pages,                   \
        const float* k_scales, const float* v_scales, const float* k_sink, const u32* seqs, u32 n_seqs,         \
        const u32* tables, u32 max_blocks, u32 q_heads, u32 kv_heads, u32 d, u32 bs, float scale, u32 window,   \
        float alibi, const float* slopes, float* part_o, float* part_ml, u32 splits, T* out) {                  \
        flash_mma_decode<T, PAGE>(qkv, k_pages, v_pages, k_scales, v_scales, k_sink, seqs, n_seqs, tables,      \
                                  max_blocks, q_heads, kv_heads, d, bs, scale, window, alibi, slopes, part_o,    \
                                  part_ml, splits, out);                                                        \
    }
#define FLASH_ALL(N, T)                                                                                         \
    FLASH(N, T, same, 0) FLASH(N, T, e4m3, 1) FLASH(N, T, i8, 2)                                                \
    extern "C" __global__ void flash_mma_merge_##N(const u32* seqs, u32 n_seqs, u32 q_heads, u32 d, u32 window, \
                                                   const float* part_o, const float* part_ml, u32 splits,       \
                                                   T* out) {                                                    \
        flash_mma_merge<T>(seqs, n_seqs, q_heads, d, window, part_o, part_ml, splits, out);                     \
    }
TURBINE_FOR_TYPES(FLASH_ALL)
