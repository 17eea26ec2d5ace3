// Greedy sampling on the device: the index of each row's largest logit (the lowest index on ties),
// one block per row. NaN logits are never chosen.
#include "common.cuh"

template <typename T>
__device__ void argmax_row(const T* logits, u32 vocab, u32* out) {
    const T* r = logits + (size_t)blockIdx.x * vocab;
    float best = -TURBINE_INF;
    u32 idx = 0xffffffffu;
    for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) {
        float v = to_f(r[c]);
        if (v > best || (v == best && c < idx)) {
            best = v;
            idx = c;
        }
    }
    __shared__ float bv[1024];
    __shared__ u32 bi[1024];
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = idx;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = bv[threadIdx.x + s];
            u32 oi = bi[threadIdx.x + s];
            if (ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x])) {
                bv[threadIdx.x] = ov;
                bi[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = bi[0] == 0xffffffffu ? 0 : bi[0];
}

#define ARGMAX(N, T)                                                                                          \
    extern "C" __global__ void argmax_##N(const T* logits, u32 vocab, u32* out) { argmax_row<T>(logits, vocab, out); }
TURBINE_FOR_TYPES(ARGMAX)

// A row's sums from its largest logit m: *s = sum(exp(v - m)), *st = sum(exp((v - m) * it)).
// Every sampling kernel takes them from here (blockDim 1024), so a row's log-probabilities are
// the same bits whichever kernel sampled it.
// At it = 1 (greedy, temperature 1) the second sum is the first, term by term (d * 1 = d), so it
// is not computed twice: the same bits at half the exponentials.
__device__ void row_sums(const float* r, u32 vocab, float m, float it, float* s_out, float* st_out) {
    float s = 0.f, st = 0.f;
    bool same = it == 1.f;
    for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) {
        float d = r[c] - m;
        float e = expf(d);
        s += e;
        st += same ? e : expf(d * it);
    }
    *s_out = block_sum(s);
    *st_out = same ? *s_out : block_sum(st);
}

// Greedy sampling, one block per row (blockDim 1024): ids[r] = argmax (lowest index on ties),
// stats[3r..3r+3] = (max, sum exp(v - max), sum exp(v - max)) for the log-probabilities.
extern "C" __global__ void argmax_logprob_f32(const float* logits, u32 vocab, u32* ids, float* stats) {
    argmax_row<float>(logits, vocab, ids);
    const float* r = logits + (size_t)blockIdx.x * vocab;
    float m = -TURBINE_INF;
    for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) m = fmaxf(m, r[c]);
    m = block_max(m);
    float s, st;
    row_sums(r, vocab, m, 1.f, &s, &st);
    if (threadIdx.x == 0) {
        stats[blockIdx.x * 3] = m;
        stats[blockIdx.x * 3 + 1] = s;
        stats[blockIdx.x * 3 + 2] = st;
    }
}

// Order-preserving unsigned keys of f32 values (larger value, larger key); NaN is the smallest.
__device__ __forceinline__ u32 order_key(float v) {
    if (v != v) return 0u;
    u32 u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#define TOPK_MAX 1024

// The k largest logits of each row (one block of 1024 threads per row, k <= TOPK_MAX <= vocab),
// largest first with ties in token order, as kernels-ref's host sampler orders them, and the
// row's sums: stats[3r..3r+3] = (max, sum exp(v - max), sum exp((v - max) * inv_t[r])).
// The k-th largest key is found by radix selection (four 8-bit digits, most significant first);
// keys above it are gathered in any order, keys equal to it in token order, then all k sorted.
extern "C" __global__ void topk_f32(const float* logits, u32 vocab, u32 k, const float* inv_t, u32* ids,
                                    float* vals, float* stats) {
    const float* r = logits + (size_t)blockIdx.x * vocab;
    __shared__ u32 hist[256];
    __shared__ u32 prefix, mask, remaining, greater, taken;
    __shared__ u32 warp_count[32], warp_base[32];
    __shared__ u32 ck[TOPK_MAX], ci[TOPK_MAX];
    u32 tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (tid == 0) {
        prefix = 0;
        mask = 0;
        remaining = k;
        greater = 0;
        taken = 0;
    }
    __syncthreads();
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (u32 i = tid; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (u32 c = tid; c < vocab; c += blockDim.x) {
            u32 key = order_key(r[c]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            u32 acc = 0;
            for (int d = 255; d >= 0; d--) {
                if (acc + hist[d] >= remaining) {
                    prefix |= (u32)d << shift;
                    mask |= 255u << shift;
                    remaining -= acc;
                    break;
                }
                acc += hist[d];
            }
        }
        __syncthreads();
    }
    u32 kth = prefix, ties = remaining;
    // Keys above the k-th: any order (sorted below).
    for (u32 c = tid; c < vocab; c += blockDim.x) {
        u32 key = order_key(r[c]);
        if (key > kth) {
            u32 at = atomicAdd(&greater, 1u);
            ck[at] = key;
            ci[at] = c;
        }
    }
    __syncthreads();
    u32 above = greater;
    // Keys equal to the k-th: the first `ties` of them in token order.
    for (u32 base = 0; base < vocab && taken < ties; base += blockDim.x) {
        u32 c = base + tid;
        bool hit = c < vocab && order_key(r[c]) == kth;
        u32 ballot = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) warp_count[warp] = __popc(ballot);
        __syncthreads();
        if (tid == 0) {
            u32 acc = 0;
            for (u32 w = 0; w < (blockDim.x >> 5); w++) {
                warp_base[w] = acc;
                acc += warp_count[w];
            }
            warp_count[0] = acc;
        }
        __syncthreads();
        u32 rank = taken + warp_base[warp] + __popc(ballot & ((1u << lane) - 1u));
        if (hit && rank < ties) {
            ck[above + rank] = kth;
            ci[above + rank] = c;
        }
        __syncthreads();
        if (tid == 0) taken += warp_count[0];
        __syncthreads();
    }
    // Bitonic sort of the k candidates (padded to a power of two): key descending, token ascending.
    u32 n = 1;
    while (n < k) n <<= 1;
    for (u32 i = k + tid; i < n; i += blockDim.x) {
        ck[i] = 0;
        ci[i] = 0xffffffffu;
    }
    __syncthreads();
    for (u32 size = 2; size <= n; size <<= 1) {
        for (u32 stride = size >> 1; stride > 0; stride >>= 1) {
            for (u32 i = tid; i < n; i += blockDim.x) {
                u32 j = i ^ stride;
                if (j > i) {
                    // "before(a, b)": a belongs ahead of b in the final order.
                    bool i_first = ck[i] > ck[j] || (ck[i] == ck[j] && ci[i] < ci[j]);
                    bool ascending_block = (i & size) == 0;
                    if (ascending_block != i_first) {
                        u32 tk = ck[i], ti = ci[i];
                        ck[i] = ck[j];
                        ci[i] = ci[j];
                        ck[j] = tk;
                        ci[j] = ti;
                    }
                }
            }
            __syncthreads();
        }
    }
    u32* oi = ids + (size_t)blockIdx.x * k;
    float* ov = vals + (size_t)blockIdx.x * k;
    for (u32 i = tid; i < k; i += blockDim.x) {
        oi[i] = ci[i];
        ov[i] = r[ci[i]];
    }
    // The row's sums.
    float m = r[ci[0]];
    float s, st;
    row_sums(r, vocab, m, inv_t[blockIdx.x], &s, &st);
    if (tid == 0) {
        stats[blockIdx.x * 3] = m;
        stats[blockIdx.x * 3 + 1] = s;
        stats[blockIdx.x * 3 + 2] = st;
    }
}

// Temperature sampling over the whole row in token order, as the host sampler walks it: weights
// w_c = exp((v_c - max) * inv_t) (0 below min_p), the first token whose cumulative weight exceeds
// u * sum(w). One block of 1024 threads per row; each thread owns a contiguous run of tokens.
extern "C" __global__ void sample_cdf_f32(const float* logits, u32 vocab, const float* inv_t, const float* min_p,
                                          const float* uniform, const float* stats, u32* ids) {
    const float* r = logits + (size_t)blockIdx.x * vocab;
    __shared__ float run_sum[1024];
    __shared__ float total;
    __shared__ u32 chosen;
    float m = stats[blockIdx.x * 3], it = inv_t[blockIdx.x], mp = min_p[blockIdx.x];
    u32 tid = threadIdx.x, per = (vocab + blockDim.x - 1) / blockDim.x;
    u32 lo = min(tid * per, vocab), hi = min(lo + per, vocab);
    float s = 0.f;
    for (u32 c = lo; c < hi; c++) {
        float w = expf((r[c] - m) * it);
        s += w < mp ? 0.f : w;
    }
    run_sum[tid] = s;
    if (tid == 0) chosen = 0xffffffffu;
    __syncthreads();
    if (tid == 0) {
        // Exclusive prefix over the runs, in token order; then the target.
        float acc = 0.f;
        for (u32 t = 0; t < blockDim.x; t++) {
            float v = run_sum[t];
            run_sum[t] = acc;
            acc += v;
        }
        total = acc;
    }
    __syncthreads();
    float target = (float)uniform[blockIdx.x] * total;
    float start = run_sum[tid];
    if (hi > lo && target >= start && target < start + s) {
        float u = target - start;
        u32 pick = hi - 1;
        for (u32 c = lo; c < hi; c++) {
            float w = expf((r[c] - m) * it);
            w = w < mp ? 0.f : w;
            if (u < w) {
                pick = c;
                break;
            }
            u -= w;
        }
        atomicMin(&chosen, pick);
    }
    __syncthreads();
    if (tid == 0) {
        u32 c = chosen;
        if (c == 0xffffffffu) {
            // Rounding put the target past the end: the last token with weight.
            for (c = vocab; c > 0; c--) {
                float w = expf((r[c - 1] - m) * it);
                if (!(w < mp) && w > 0.f) break;
            }
            c = c > 0 ? c - 1 : 0;
        }
        ids[blockIdx.x] = c;
    }
}
