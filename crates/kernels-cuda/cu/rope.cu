// Rotary embedding in place on the query and key heads of a fused QKV [t, (qh + 2 kvh) * d]:
// rotate-half (NeoX) pairing (i, i + rot/2) over the first `rot` dimensions of every head, with
// precomputed cos/sin tables [max_positions, rot/2] (f32; scaling variants are in the tables).
// Grid: (rows, qh + kvh); threads over the rot/2 pairs.
#include "common.cuh"

template <typename T>
__device__ void rope(T* qkv, const u32* pos, const float* cos_t, const float* sin_t, u32 q_heads, u32 kv_heads,
                     u32 d, u32 rot) {
    u32 row = blockIdx.x, h = blockIdx.y;
    u32 half_rot = rot / 2;
    T* x = qkv + (size_t)row * (q_heads + 2 * kv_heads) * d + (size_t)h * d;
    rope_head(x, cos_t + (size_t)pos[row] * half_rot, sin_t + (size_t)pos[row] * half_rot, half_rot);
}

#define ROPE(N, T)                                                                                            \
    extern "C" __global__ void rope_##N(T* qkv, const u32* pos, const float* cos_t, const float* sin_t,       \
                                        u32 q_heads, u32 kv_heads, u32 d, u32 rot) {                          \
        rope<T>(qkv, pos, cos_t, sin_t, q_heads, kv_heads, d, rot);                                           \
    }
TURBINE_FOR_TYPES(ROPE)
