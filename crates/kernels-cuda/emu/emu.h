// Turbine's CUDA emulator, device side: what the kernels in cu/ use from CUDA C (qualifiers,
// thread indices, barriers, warp shuffles and votes, atomics, fp16/bf16/fp8 conversions, the
// intrinsics) as plain C++, so that the very same kernel sources run on the CPU.
//
// Every CUDA thread of a block is a fiber; blocks run one after another on the calling thread,
// and one launch at a time in the process. `__syncthreads()` and the warp operations switch
// fibers; everything between them runs natively. `__shared__` variables are statics (blocks
// never overlap).
//
// This checks the kernels' logic (indexing, reductions, barriers, launch geometry, argument
// order) and the host code that drives them; it says nothing about speed, and its floating-point
// results differ from a GPU's where CUDA's fast intrinsics (`__expf`, `rsqrtf`) are approximate.
#pragma once
// Kernels that use a PTX instruction (inline `asm`) call the emulator's version under this.
#define TURBINE_EMU 1
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__ inline
#define __host__
#define __forceinline__
#define __restrict__ __restrict
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};
typedef uint3 dim3;
// The vector types' alignment is CUDA's, so that UBSan reports a vector load from an address a
// GPU would fault on.
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

namespace emu {

/// One CUDA thread: its index and where it stands.
struct Fiber;

/// The block being run on this OS thread.
struct BlockState {
    uint3 block_idx, block_dim, grid_dim;
    Fiber* cur;
    /// The running thread's index (kept beside `cur` so that reading it is one load).
    uint3 tid;
};
extern BlockState tl;

inline uint3 thread_idx() { return tl.tid; }
/// Waits until every live thread of the block has called it.
void sync_block();
/// Puts `v` (this lane's word) in the warp's exchange, waits for the warp, returns lane `src`'s.
uint64_t warp_exchange(uint64_t v, int src);
/// The predicate of every lane of this warp as a bit mask.
unsigned warp_ballot(bool pred);
/// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16|f16}.{bf16|f16}.f32` with D = C in place: the
/// warp's 16×16 A, 16×8 B and 16×8 C tiles held in the lanes' registers as the PTX ISA lays
/// them out (lane l, group g = l / 4, t = l % 4: a0..a3 = A[g][2t..], A[g+8][2t..], A[g][2t+8..],
/// A[g+8][2t+8..]; b0, b1 = B[2t..][g], B[2t+8..][g]; c0..c3 = C[g][2t], C[g][2t+1], C[g+8][2t],
/// C[g+8][2t+1]; the lower half of a register is the lower k). Each D value is its 16 products
/// (exact) and C summed in double and rounded once to f32: a GPU's tensor cores use their own
/// order and internal precision, which the emulator cannot know.
void warp_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2], bool bf16);
/// `mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32` in the same way: four E4M3 codes to a
/// register (lower k in the lower byte); a0..a3 = A[g][4t..], A[g+8][4t..], A[g][4t+16..],
/// A[g+8][4t+16..]; b0, b1 = B[4t..][g], B[4t+16..][g]; 32 exact products and C summed in
/// double, rounded once.
void warp_mma_e4m3_16832(float d[4], const uint32_t a[4], const uint32_t b[2]);

template <typename T>
inline uint64_t to_word(T v) {
    static_assert(sizeof(T) <= 8, "a shuffled value is at most 8 bytes");
    uint64_t w = 0;
    std::memcpy(&w, &v, sizeof(T));
    return w;
}
template <typename T>
inline T from_word(uint64_t w) {
    T v;
    std::memcpy(&v, &w, sizeof(T));
    return v;
}

// Element conversions (round to nearest even, as the CUDA intrinsics named `_rn`).
uint16_t f32_to_f16_bits(float f);
float f16_bits_to_f32(uint16_t h);
uint16_t f32_to_bf16_bits(float f);
uint8_t f32_to_e4m3_satfinite(float f);
float e4m3_to_f32(uint8_t c);

}  // namespace emu

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::tl.block_idx)
#define blockDim (emu::tl.block_dim)
#define gridDim (emu::tl.grid_dim)

inline void __syncthreads() { emu::sync_block(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    (void)mask;
    return emu::from_word<T>(emu::warp_exchange(emu::to_word(v), (int)(emu::thread_idx().x & 31) ^ lane_mask));
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src) {
    (void)mask;
    return emu::from_word<T>(emu::warp_exchange(emu::to_word(v), src & 31));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    (void)mask;
    return emu::warp_ballot(pred != 0);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }

// Atomics: blocks run one at a time per OS thread, but device memory may be shared between
// threads of the host, so these are real atomics.
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline float atomicAdd(float* p, float v) {
    float old = *p, next = old + v;
    while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) next = old + v;
    return old;
}
inline unsigned atomicMin(unsigned* p, unsigned v) {
    unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline int atomicMin(int* p, int v) {
    int old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}

// Arithmetic intrinsics. The library is compiled with -ffp-contract=off, so `a * b + c` is two
// roundings, as `__fmul_rn`/`__fadd_rn` are on the GPU.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline float __int_as_float(int i) { return emu::from_word<float>((uint32_t)i); }
inline float __uint_as_float(unsigned u) { return emu::from_word<float>(u); }
inline unsigned __float_as_uint(float f) { return (unsigned)emu::to_word(f); }
inline int __float_as_int(float f) { return (int)(unsigned)emu::to_word(f); }

template <typename T>
inline T min(T a, T b) {
    return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
    return a < b ? b : a;
}

// cuda_fp16.h
struct __half_raw {
    unsigned short x;
};
struct __half {
    unsigned short x;
    __half() = default;
    __half(__half_raw r) : x(r.x) {}
    // As CUDA's: from any arithmetic value (rounded to nearest even), and back to float.
    template <typename N, typename = typename std::enable_if<std::is_arithmetic<N>::value>::type>
    __half(N v) : x(emu::f32_to_f16_bits((float)v)) {}
    operator float() const { return emu::f16_bits_to_f32(x); }
};
inline float __half2float(__half h) { return emu::f16_bits_to_f32(h.x); }
inline __half __float2half_rn(float f) { return __half(__half_raw{emu::f32_to_f16_bits(f)}); }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
inline unsigned short __half_as_ushort(__half h) { return h.x; }

// cuda_bf16.h
struct __nv_bfloat16 {
    unsigned short x;
    __nv_bfloat16() = default;
    explicit __nv_bfloat16(unsigned short bits, int) : x(bits) {}
    template <typename N, typename = typename std::enable_if<std::is_arithmetic<N>::value>::type>
    __nv_bfloat16(N v) : x(emu::f32_to_bf16_bits((float)v)) {}
    operator float() const { return emu::from_word<float>((uint32_t)x << 16); }
};
inline float __bfloat162float(__nv_bfloat16 b) { return emu::from_word<float>((uint32_t)b.x << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(emu::f32_to_bf16_bits(f), 0); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }

// cuda_fp8.h (E4M3 only: the one FP8 format the kernels use)
typedef unsigned char __nv_fp8_storage_t;
enum __nv_saturation_t { __NV_NOSAT, __NV_SATFINITE };
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };
__nv_fp8_storage_t emu_cvt_float_to_fp8(float x, __nv_saturation_t sat, __nv_fp8_interpretation_t fmt);
__half_raw emu_cvt_fp8_to_halfraw(__nv_fp8_storage_t c, __nv_fp8_interpretation_t fmt);
inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t sat, __nv_fp8_interpretation_t fmt) {
    return emu_cvt_float_to_fp8(x, sat, fmt);
}
inline __half_raw __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t c, __nv_fp8_interpretation_t fmt) {
    return emu_cvt_fp8_to_halfraw(c, fmt);
}

namespace emu {

/// One kernel as the driver sees it: its exported name, its parameters' sizes and how to call it
/// with the `void** kernelParams` of `cuLaunchKernel`.
struct Kernel {
    const char* name;
    void (*invoke)(void** params);
    unsigned n_params;
    const size_t* param_sizes;
};

template <typename F>
struct Params;
template <typename... A>
struct Params<void (*)(A...)> {
    static constexpr unsigned count = sizeof...(A);
    static constexpr size_t sizes[sizeof...(A)] = {sizeof(A)...};
    template <size_t... I>
    static void call(void (*f)(A...), void** p, std::index_sequence<I...>) {
        f(*static_cast<A*>(p[I])...);
    }
};

template <auto F>
void invoke(void** p) {
    using P = Params<decltype(F)>;
    P::call(F, p, std::make_index_sequence<P::count>{});
}

template <auto F>
Kernel kernel(const char* name) {
    using P = Params<decltype(F)>;
    return Kernel{name, &invoke<F>, P::count, P::sizes};
}

/// Adds a source file's kernels to the driver's table (at library load).
struct Register {
    Register(const Kernel* kernels, size_t n);
};

}  // namespace emu
