// Turbine's CUDA emulator: the part of cuBLASLt the backend calls (one plain product,
// D = alpha · op(A) · op(B) + beta · C, column-major, f32 compute), as a straightforward loop.
// Built into the same library as the driver, also under the name libcublasLt.so.13.
//
// It keeps cuBLASLt's documented rules that the backend must respect: f32 compute and scale
// types only; FP8 (E4M3) products only in the "TN" form (A transposed, B not) with leading
// dimensions a multiple of 16, with an FP8 A and B, on sm_89 or newer; otherwise no algorithm
// is found (CUBLAS_STATUS_NOT_SUPPORTED), as on a GPU. Each output is one f32 sum in k order, so the
// product is batch invariant here whatever a GPU's kernels are.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "runtime.h"

typedef int Status;
enum : Status { OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, NOT_SUPPORTED = 15 };
enum DataType { R_32F = 0, R_16F = 2, R_16BF = 14, R_8F_E4M3 = 28 };
enum { COMPUTE_32F = 68 };

namespace {

struct Layout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
};

struct Desc {
    int compute, scale;
    int trans_a = 0, trans_b = 0;
};

struct Pref {
    uint64_t workspace = 0;
};

int handle_token;

float element(const void* base, int type, size_t i) {
    switch (type) {
        case R_32F: return static_cast<const float*>(base)[i];
        case R_16F: return emu::f16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
        case R_16BF: {
            uint32_t w = (uint32_t) static_cast<const uint16_t*>(base)[i] << 16;
            float f;
            memcpy(&f, &w, 4);
            return f;
        }
        default: return emu::e4m3_to_f32(static_cast<const uint8_t*>(base)[i]);
    }
}

bool known_type(int t) { return t == R_32F || t == R_16F || t == R_16BF || t == R_8F_E4M3; }

/// Why this product has no algorithm, or null.
const char* unsupported(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dl) {
    if (d.compute != COMPUTE_32F || d.scale != R_32F) return "compute and scale types other than f32";
    if (!known_type(a.type) || !known_type(b.type)) return "input types";
    if (c.type != R_32F || dl.type != R_32F) return "outputs other than f32";
    bool fp8a = a.type == R_8F_E4M3, fp8b = b.type == R_8F_E4M3;
    if (fp8a != fp8b) return "one FP8 input";
    if (fp8a && emu::emulated_sm() < 89) return "FP8 before sm_89";
    if (fp8a && (!d.trans_a || d.trans_b)) return "FP8 outside the TN form";
    if (fp8a && (a.ld % 16 || b.ld % 16)) return "FP8 with leading dimensions not a multiple of 16";
    if (!fp8a && a.type != b.type) return "mixed input types";
    uint64_t m = d.trans_a ? a.cols : a.rows, ka = d.trans_a ? a.rows : a.cols;
    uint64_t kb = d.trans_b ? b.cols : b.rows, n = d.trans_b ? b.rows : b.cols;
    if (ka != kb || c.rows != m || c.cols != n || dl.rows != m || dl.cols != n) return "shapes that do not chain";
    if ((int64_t)a.rows > a.ld || (int64_t)b.rows > b.ld || (int64_t)c.rows > c.ld || (int64_t)dl.rows > dl.ld)
        return "leading dimensions shorter than a column";
    return nullptr;
}

}  // namespace

#define API extern "C" __attribute__((visibility("default")))

API Status cublasLtCreate(void** h) {
    *h = &handle_token;
    return OK;
}
API Status cublasLtDestroy(void*) { return OK; }
API size_t cublasLtGetVersion() { return 130000; }

API Status cublasLtMatrixLayoutCreate(void** l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    *l = new Layout{type, rows, cols, ld};
    return OK;
}
API Status cublasLtMatrixLayoutDestroy(void* l) {
    delete static_cast<Layout*>(l);
    return OK;
}
API Status cublasLtMatrixLayoutSetAttribute(void*, int, const void*, size_t) { return NOT_SUPPORTED; }

API Status cublasLtMatmulDescCreate(void** d, int compute, int scale) {
    *d = new Desc{compute, scale};
    return OK;
}
API Status cublasLtMatmulDescDestroy(void* d) {
    delete static_cast<Desc*>(d);
    return OK;
}
API Status cublasLtMatmulDescSetAttribute(void* d, int attr, const void* buf, size_t size) {
    Desc* desc = static_cast<Desc*>(d);
    // FAST_ACCUM (an int8_t): FP8 partial sums kept in the tensor cores' precision. Accepted; the
    // stand-in always accumulates in f32.
    if (attr == 25) return size == 1 ? OK : INVALID_VALUE;
    int32_t v = 0;
    if (size != sizeof v) return INVALID_VALUE;
    memcpy(&v, buf, sizeof v);
    switch (attr) {
        case 3: desc->trans_a = v; return OK;  // TRANSA
        case 4: desc->trans_b = v; return OK;  // TRANSB
        default: return NOT_SUPPORTED;  // scales, epilogues…: not used by the backend
    }
}

API Status cublasLtMatmulPreferenceCreate(void** p) {
    *p = new Pref{};
    return OK;
}
API Status cublasLtMatmulPreferenceDestroy(void* p) {
    delete static_cast<Pref*>(p);
    return OK;
}
API Status cublasLtMatmulPreferenceSetAttribute(void* p, int attr, const void* buf, size_t size) {
    if (attr != 1 || size != 8) return NOT_SUPPORTED;  // only MAX_WORKSPACE_BYTES
    memcpy(&static_cast<Pref*>(p)->workspace, buf, 8);
    return OK;
}

struct HeuristicResult {
    uint64_t algo[8];
    size_t workspace;
    Status state;
    float waves;
    int reserved[4];
};

API Status cublasLtMatmulAlgoGetHeuristic(void*, void* d, void* a, void* b, void* c, void* dl, void*, int requested,
                                          HeuristicResult* out, int* returned) {
    if (requested < 1) return INVALID_VALUE;
    const char* why = unsupported(*static_cast<Desc*>(d), *static_cast<Layout*>(a), *static_cast<Layout*>(b),
                                  *static_cast<Layout*>(c), *static_cast<Layout*>(dl));
    *returned = why ? 0 : 1;
    if (why) return NOT_SUPPORTED;
    memset(out, 0, sizeof *out);
    out->state = OK;
    out->waves = 1.f;
    return OK;
}

API Status cublasLtMatmul(void*, void* dp, const void* alpha, const void* A, void* al, const void* B, void* bl,
                          const void* beta, const void* C, void* cl, void* D, void* dl, const void*, void*, size_t,
                          void*) {
    const Desc d = *static_cast<Desc*>(dp);
    const Layout la = *static_cast<Layout*>(al), lb = *static_cast<Layout*>(bl), lc = *static_cast<Layout*>(cl),
                 ld = *static_cast<Layout*>(dl);
    if (const char* why = unsupported(d, la, lb, lc, ld)) {
        fprintf(stderr, "turbine emulator: cublasLtMatmul of %s is not supported\n", why);
        return NOT_SUPPORTED;
    }
    const float al_v = *static_cast<const float*>(alpha), be_v = *static_cast<const float*>(beta);
    const uint64_t m = ld.rows, n = ld.cols, k = d.trans_a ? la.rows : la.cols;
    auto bytes = [](const Layout& l, int type) {
        size_t e = type == R_32F ? 4 : type == R_8F_E4M3 ? 1 : 2;
        return ((l.cols - 1) * (uint64_t)l.ld + l.rows) * e;
    };
    if (!emu::mem_valid((uintptr_t)A, bytes(la, la.type)) || !emu::mem_valid((uintptr_t)B, bytes(lb, lb.type)) ||
        !emu::mem_valid((uintptr_t)D, bytes(ld, R_32F)) || (be_v != 0.f && !emu::mem_valid((uintptr_t)C, bytes(lc, R_32F)))) {
        fprintf(stderr, "turbine emulator: cublasLtMatmul operands outside device memory\n");
        return INVALID_VALUE;
    }
    auto run = [=] {
        // op(A) as m rows of k, op(B) as n rows of k, widened to f32 once.
        std::vector<float> a(m * k), b(n * k);
        for (uint64_t i = 0; i < m; i++)
            for (uint64_t t = 0; t < k; t++) a[i * k + t] = element(A, la.type, d.trans_a ? i * la.ld + t : t * la.ld + i);
        for (uint64_t j = 0; j < n; j++)
            for (uint64_t t = 0; t < k; t++) b[j * k + t] = element(B, lb.type, d.trans_b ? t * lb.ld + j : j * lb.ld + t);
        for (uint64_t j = 0; j < n; j++) {
            for (uint64_t i = 0; i < m; i++) {
                float s = 0.f;
                for (uint64_t t = 0; t < k; t++) s += a[i * k + t] * b[j * k + t];
                float out = al_v * s;
                if (be_v != 0.f) out += be_v * static_cast<const float*>(C)[j * lc.ld + i];
                static_cast<float*>(D)[j * ld.ld + i] = out;
            }
        }
    };
    if (emu::capturing()) emu::record(run);
    else run();
    return OK;
}
