// Gated activations: out[t, j] = act(gate_up[t, j]) * gate_up[t, f + j], and plain activations.
// act: 0 SiLU, 1 GELU (tanh approximation), 2 GELU (erf), 3 ReLU.
#include "common.cuh"

__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
        case 0: return x / (1.f + __expf(-x));
        case 1: {
            const float k = 0.7978845608028654f;  // sqrt(2 / pi)
            return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
        }
        case 2: return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
        default: return fmaxf(x, 0.f);
    }
}

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
