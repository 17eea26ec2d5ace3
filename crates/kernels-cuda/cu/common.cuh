// Shared helpers of Turbine's CUDA kernels: element conversions, warp and block reductions.
// Compiled by NVRTC (no standard library headers); every kernel file includes this first.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

typedef unsigned int u32;
typedef unsigned char u8;

#define TURBINE_INF __int_as_float(0x7f800000)

// Activation element types: f32, f16, bf16. Arithmetic is always in f32.
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// FP8 E4M3 (saturating to ±448, round to nearest even) and back.
__device__ __forceinline__ u8 f32_to_e4m3(float x) {
    return (u8)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}
__device__ __forceinline__ float e4m3_to_f32(u8 c) {
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E4M3);
    return __half2float(__half(h));
}
// INT8 with a scale: round half to even, clamp to ±127.
__device__ __forceinline__ signed char f32_to_i8(float x, float scale) {
    float q = rintf(x / scale);
    return (signed char)fmaxf(-127.f, fminf(127.f, q));
}

// KV page storage (attention.cu, flash.cu): PAGE 0 = the activation type T, 1 = E4M3 codes,
// 2 = INT8 codes, the codes with one f32 scale per row. load_page reads element i as f32.
template <typename T, int PAGE> struct Page { typedef T type; };
template <typename T> struct Page<T, 1> { typedef u8 type; };
template <typename T> struct Page<T, 2> { typedef u8 type; };

template <typename T, int PAGE>
__device__ __forceinline__ float load_page(const typename Page<T, PAGE>::type* p, size_t i, float scale) {
    if (PAGE == 0) return to_f(((const T*)p)[i]);
    if (PAGE == 1) return e4m3_to_f32(((const u8*)p)[i]) * scale;
    return (float)(signed char)((const u8*)p)[i] * scale;
}

struct SumOp {
    static __device__ __forceinline__ float apply(float a, float b) { return a + b; }
    static __device__ __forceinline__ float identity() { return 0.f; }
};
struct MaxOp {
    static __device__ __forceinline__ float apply(float a, float b) { return fmaxf(a, b); }
    static __device__ __forceinline__ float identity() { return -TURBINE_INF; }
};

template <typename Op> __device__ __forceinline__ float warp_reduce(float v) {
    for (int o = 16; o > 0; o >>= 1) v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<SumOp>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<MaxOp>(v); }

// Reduction over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. Every thread of the block must call it.
template <typename Op> __device__ float block_reduce(float v) {
    __shared__ float part[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce<Op>(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? part[lane] : Op::identity();
        s = warp_reduce<Op>(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}
__device__ float block_sum(float v) { return block_reduce<SumOp>(v); }
__device__ float block_max(float v) { return block_reduce<MaxOp>(v); }

// Activations: 0 SiLU, 1 GELU (tanh approximation), 2 GELU (erf), 3 ReLU.
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

// The products' kernels (gemv_* in fp8.cu, gemm.cu, gguf.cu): one warp per output column,
// GEMV_ROWS rows per tile (ops.rs' GEMV_ROWS).
#define GEMV_ROWS 8
// Weight loads each lane of a product kernel issues before using them (memory-level parallelism:
// a decode product is bound by how many bytes are in flight, not by arithmetic). A lane still
// takes its chunks in increasing order, so any even value gives the same sums; `xtask kernels`
// builds a variant with 8 for the GPU check to time.
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 4
#endif

// The 16-byte chunks c0, c0 + 32, ..., c0 + 32 (GEMV_UNROLL - 1) of a row of kc chunks, loaded
// together so that they are in flight at once; chunks past the row read as zero.
__device__ __forceinline__ void load_chunks(const uint4* row, u32 c0, u32 kc, uint4 (&raw)[GEMV_UNROLL]) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
        u32 c = c0 + 32 * u;
        if (c < kc) raw[u] = row[c];
        else raw[u].x = raw[u].y = raw[u].z = raw[u].w = 0u;
    }
}

// sum[i] += x[r0 + i, 8c .. 8c + 8) . v for i < rows: eight fused multiply-adds in k order.
__device__ __forceinline__ void chunk_fma(float* sum, u32 rows, const float* x, size_t r0, u32 k, u32 c,
                                          const float* v) {
    for (u32 i = 0; i < rows; i++) {
        const float4* xr = (const float4*)(x + (r0 + i) * k) + 2 * (size_t)c;
        float4 lo = xr[0], hi = xr[1];
        sum[i] = __fmaf_rn(lo.x, v[0], sum[i]);
        sum[i] = __fmaf_rn(lo.y, v[1], sum[i]);
        sum[i] = __fmaf_rn(lo.z, v[2], sum[i]);
        sum[i] = __fmaf_rn(lo.w, v[3], sum[i]);
        sum[i] = __fmaf_rn(hi.x, v[4], sum[i]);
        sum[i] = __fmaf_rn(hi.y, v[5], sum[i]);
        sum[i] = __fmaf_rn(hi.z, v[6], sum[i]);
        sum[i] = __fmaf_rn(hi.w, v[7], sum[i]);
    }
}

// The plain epilogue of a product's column c, with epilogue_f32's operations in its order:
// v [* col_scale[c]] [+ bias[c]].
__device__ __forceinline__ float gemv_finish(float v, u32 c, const float* col_scale, const float* bias) {
    if (col_scale) v = __fmul_rn(v, col_scale[c]);
    if (bias) v = __fadd_rn(v, bias[c]);
    return v;
}

// Stores the warp's sums of the tile's rows r0 .. r0 + rows for column col of out [m, n]; every
// lane of the warp must call it. With null col_scale and bias and accumulate 0 the raw sums are
// stored (epilogue_f32 then finishes them); otherwise the plain epilogue is applied here:
// out = [out +] gemv_finish(sum) — one launch fewer a product.
__device__ __forceinline__ void gemv_store(const float* sum, u32 rows, size_t r0, u32 n, u32 col, float* out,
                                           const float* col_scale, const float* bias, int accumulate) {
    for (u32 i = 0; i < rows; i++) {
        float v = warp_sum(sum[i]);
        if ((threadIdx.x & 31) == 0) {
            size_t at = (r0 + i) * n + col;
            v = gemv_finish(v, col, col_scale, bias);
            out[at] = accumulate ? __fadd_rn(out[at], v) : v;
        }
    }
}

// The row tiles of a product kernel for its warp's output column of out [m, n] (blockIdx.y
// strides over the tiles). `sums(wrow, r0, rows, sum)` leaves in sum[0 .. rows) the lane's partial
// sums of weight row wrow with input rows r0 .. r0 + rows, starting from zero.
// Plain: out[r, col] = gemv_store of weight row col. GATED (gate: an activation code): the
// weights stack gate rows [0, n) over up rows [n, 2n) and col_scale, bias are [2n];
// out[r, col] = activate(gemv_finish(gate sum), gate) * gemv_finish(up sum), what gated_act
// makes of the finished [m, 2n] product (accumulate is ignored). A template parameter, so that
// the plain kernels keep their registers (and occupancy). The lanes of a warp return together.
template <bool GATED, typename Sums>
__device__ __forceinline__ void gemv_tiles(u32 m, u32 n, float* out, const float* col_scale, const float* bias,
                                           int accumulate, int gate, Sums sums) {
    u32 col = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (col >= n) return;
    for (size_t r0 = (size_t)blockIdx.y * GEMV_ROWS; r0 < m; r0 += (size_t)gridDim.y * GEMV_ROWS) {
        u32 rows = (u32)min((size_t)GEMV_ROWS, (size_t)m - r0);
        float sum[GEMV_ROWS];
        sums(col, r0, rows, sum);
        if (!GATED) {
            gemv_store(sum, rows, r0, n, col, out, col_scale, bias, accumulate);
            continue;
        }
        float up[GEMV_ROWS];
        sums(n + col, r0, rows, up);
        for (u32 i = 0; i < rows; i++) {
            float g = warp_sum(sum[i]), u = warp_sum(up[i]);
            if ((threadIdx.x & 31) == 0)
                out[(r0 + i) * n + col] =
                    activate(gemv_finish(g, col, col_scale, bias), gate) * gemv_finish(u, n + col, col_scale, bias);
        }
    }
}

// Rotary embedding of one head x in place: rotate-half (NeoX) pairs (i, i + half_rot), c and s
// the cos/sin rows [half_rot] of its position; threads over the pairs (rope.cu and the fused
// rope_kv_store in attention.cu share it, so both rotate alike).
template <typename T>
__device__ __forceinline__ void rope_head(T* x, const float* c, const float* s, u32 half_rot) {
    for (u32 i = threadIdx.x; i < half_rot; i += blockDim.x) {
        float a = to_f(x[i]), b = to_f(x[i + half_rot]);
        x[i] = from_f<T>(a * c[i] - b * s[i]);
        x[i + half_rot] = from_f<T>(b * c[i] + a * s[i]);
    }
}

// Row i of an embedding lookup (one block per output row): out[i] (+)= src[ids[i]] * scale, f32
// out, `value(id, c)` decoding column c of table row id. Rows past src_rows are left as they are
// (ids are validated on the host; the table is never read out of bounds).
template <typename Value>
__device__ __forceinline__ void gather_row(const u32* ids, float scale, int accumulate, float* out, u32 src_rows,
                                           u32 cols, Value value) {
    u32 i = blockIdx.x, id = ids[i];
    float* o = out + (size_t)i * cols;
    if (id >= src_rows) return;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = value(id, c) * scale;
        o[c] = accumulate ? o[c] + v : v;
    }
}

// Instantiates `NAME_f32`, `NAME_f16` and `NAME_bf16` from a template kernel body macro.
#define TURBINE_FOR_TYPES(M) M(f32, float) M(f16, __half) M(bf16, __nv_bfloat16)

// One warp's tensor-core product D = A·B + D on a 16×8×16 tile, f32 accumulation, 16-bit
// operands (BF16: bfloat16, else half) packed two to a register, lower k in the lower half:
// PTX `mma.sync.aligned.m16n8k16.row.col` (sm_80 and later). Lane l, g = l / 4, t = l % 4:
//   a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, +9]   a[3] = A[g+8][2t+8, +9]
//   b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, +9][g]
//   d[0], d[1] = D[g][2t, 2t+1]   d[2], d[3] = D[g+8][2t, 2t+1]
// Each D value depends only on its row of A, its column of B and its own accumulator.
template <bool BF16>
__device__ __forceinline__ void mma_16816(float d[4], const u32 a[4], const u32 b[2]) {
#ifdef TURBINE_EMU
    emu::warp_mma_16816(d, a, b, BF16);
#else
    if (BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#endif
}

// The same for FP8 E4M3 operands on a 16×8×32 tile, four codes to a register, lower k in the
// lower byte: PTX `mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32` (sm_89 and later; the
// products never launch it below). Lane l, g = l / 4, t = l % 4:
//   a[0] = A[g][4t .. 4t+3]   a[1] = A[g+8][4t ..]   a[2] = A[g][4t+16 ..]   a[3] = A[g+8][4t+16 ..]
//   b[0] = B[4t .. 4t+3][g]   b[1] = B[4t+16 ..][g]            d as in mma_16816.
__device__ __forceinline__ void mma_e4m3_16832(float d[4], const u32 a[4], const u32 b[2]) {
#if defined(TURBINE_EMU)
    emu::warp_mma_e4m3_16832(d, a, b);
#elif __CUDA_ARCH__ >= 890
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}
