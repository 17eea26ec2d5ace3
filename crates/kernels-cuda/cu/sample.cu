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

// Greedy sampling with the chosen token's log-probability, one block per row (blockDim 1024):
// ids[r] = argmax (lowest index on ties), logprob[r] = max - log(sum(exp(row))).
extern "C" __global__ void argmax_logprob_f32(const float* logits, u32 vocab, u32* ids, float* logprob) {
    argmax_row<float>(logits, vocab, ids);
    const float* r = logits + (size_t)blockIdx.x * vocab;
    float m = -TURBINE_INF;
    for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) m = fmaxf(m, r[c]);
    m = block_max(m);
    float s = 0.f;
    for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) s += expf(r[c] - m);
    s = block_sum(s);
    if (threadIdx.x == 0) logprob[blockIdx.x] = -logf(s);
}
