// Embedding lookup and row selection: out[i] (+)= src[ids[i]] * scale.
// One block per output row; src is the table's type T (an f16/bf16 embedding table stays as the
// checkpoint stores it), out the f32 activations.
#include "common.cuh"

template <typename T>
__device__ void gather_rows(const T* src, const u32* ids, float scale, int accumulate, float* out, u32 src_rows,
                            u32 cols) {
    u32 i = blockIdx.x;
    u32 id = ids[i];
    float* o = out + (size_t)i * cols;
    if (id >= src_rows) return;  // validated on the host; never read out of bounds
    const T* s = src + (size_t)id * cols;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f(s[c]) * scale;
        o[c] = accumulate ? o[c] + v : v;
    }
}

#define GATHER(N, T)                                                                                          \
    extern "C" __global__ void gather_rows_##N(const T* src, const u32* ids, float scale, int accumulate,     \
                                               float* out, u32 src_rows, u32 cols) {                          \
        gather_rows<T>(src, ids, scale, accumulate, out, src_rows, cols);                                     \
    }
TURBINE_FOR_TYPES(GATHER)
