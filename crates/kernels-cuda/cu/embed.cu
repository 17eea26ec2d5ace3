// Embedding lookup and row selection: out[i] (+)= src[ids[i]] * scale.
// One block per output row; src is the table's type T (an f16/bf16 embedding table stays as the
// checkpoint stores it), out the f32 activations.
#include "common.cuh"

template <typename T>
__device__ void gather_rows(const T* src, const u32* ids, float scale, int accumulate, float* out, u32 src_rows,
                            u32 cols) {
    gather_row(ids, scale, accumulate, out, src_rows, cols,
               [=](u32 id, u32 c) { return to_f(src[(size_t)id * cols + c]); });
}

#define GATHER(N, T)                                                                                          \
    extern "C" __global__ void gather_rows_##N(const T* src, const u32* ids, float scale, int accumulate,     \
                                               float* out, u32 src_rows, u32 cols) {                          \
        gather_rows<T>(src, ids, scale, accumulate, out, src_rows, cols);                                     \
    }
TURBINE_FOR_TYPES(GATHER)
