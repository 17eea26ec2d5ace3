// Gated activations: out[t, j] = act(gate_up[t, j]) * gate_up[t, f + j], and plain activations.
// act: as `activate` in common.cuh.
#include "common.cuh"

template <typename T>
__device__ void gated_act(const T* gate_up, T* out, u32 rows, u32 f, int act) {
    size_t n = (size_t)rows * f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / f, j = i % f;
        const T* r = gate_up + t * 2 * f;
        out[i] = from_f<T>(activate(to_f(r[j]), act) * to_f(r[f + j]));
    }
}

#define GATED(N, T)                                                                                           \
    extern "C" __global__ void gated_act_##N(const T* gate_up, T* out, u32 rows, u32 f, int act) {            \
        gated_act<T>(gate_up, out, rows, f, act);                                                             \
    }
TURBINE_FOR_TYPES(GATED)
