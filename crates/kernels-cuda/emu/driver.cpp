// Turbine's CUDA emulator: the part of the CUDA driver API that cudarc calls, with "device"
// memory in host memory and work run at once on the calling thread. Built as libcuda.so.1.
//
// Modelled on the documented behaviour the backend depends on: one device (sm_90, the
// capabilities of a Hopper part, or TURBINE_EMU_SM; no memory pools), synchronous streams,
// events that only time, stream capture in thread-local mode (allocation, freeing and synchronisation are refused while
// capturing and spoil the capture, as the driver does), graphs replayed in order.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* Handle;

enum : CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
};

namespace {

/// What happened, printed at exit when TURBINE_EMU_STATS=1.
struct Stats {
    std::atomic<unsigned long> launches{0}, uploads{0}, recorded{0}, replays{0}, spoiled{0}, refused{0};
    Stats() {
        const char* v = getenv("TURBINE_EMU_STATS");
        if (v && std::string(v) == "1") atexit([] { stats().print(); });
    }
    static Stats& stats();
    void print() {
        fprintf(stderr,
                "turbine emulator: %lu kernel launches, %lu host-to-device copies, %lu graphs recorded, %lu replays, "
                "%lu captures spoiled, %lu calls refused while capturing\n",
                launches.load(), uploads.load(), recorded.load(), replays.load(), spoiled.load(), refused.load());
    }
};
Stats& Stats::stats() {
    static Stats* s = new Stats();
    return *s;
}
Stats& stats = Stats::stats();

struct Module {
    std::string ptx;
};

struct Graph {
    std::vector<std::function<void()>> ops;
};

/// The capture of this OS thread, if one is in progress.
struct Capture {
    Handle stream;
    std::vector<std::function<void()>> ops;
    bool spoiled = false;
};
thread_local std::unique_ptr<Capture> tl_capture;

/// Refuses an operation that stream capture does not allow, spoiling the capture.
bool refused_while_capturing() {
    if (!tl_capture) return false;
    tl_capture->spoiled = true;
    stats.refused++;
    return true;
}

struct Event {
    std::chrono::steady_clock::time_point at;
};

int dummy_context;


CUresult copy(void* dst, const void* src, size_t n, bool dst_device, bool src_device) {
    if ((dst_device && !emu::mem_valid((uintptr_t)dst, n)) || (src_device && !emu::mem_valid((uintptr_t)src, n))) {
        fprintf(stderr, "turbine emulator: a copy of %zu bytes outside device memory (%p <- %p)\n", n, dst, src);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (dst_device && !src_device) stats.uploads++;
    if (emu::capturing()) {
        emu::record([=] { memcpy(dst, src, n); });
        return CUDA_SUCCESS;
    }
    memcpy(dst, src, n);
    return CUDA_SUCCESS;
}

}  // namespace

namespace emu {

bool capturing() { return tl_capture != nullptr; }

void record(std::function<void()> op) { tl_capture->ops.push_back(std::move(op)); }

}  // namespace emu

#define API extern "C" __attribute__((visibility("default")))

API CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
API CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, (size_t)len, "Turbine CUDA emulator (CPU)");
    return CUDA_SUCCESS;
}
API CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice) {
    switch (attr) {
        case 1: *v = 1024; break;  // max threads per block
        case 2: *v = 1024; break;  // max block x
        case 3: *v = 1024; break;  // max block y
        case 4: *v = 64; break;  // max block z
        case 5: *v = 0x7fffffff; break;  // max grid x
        case 6: *v = 65535; break;  // max grid y
        case 7: *v = 65535; break;  // max grid z
        case 8: *v = 49152; break;  // shared memory per block
        case 10: *v = 32; break;  // warp size
        case 16: *v = 132; break;  // multiprocessors
        case 75: *v = emu::emulated_sm() / 10; break;  // compute capability major
        case 76: *v = emu::emulated_sm() % 10; break;  // compute capability minor
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}
API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = size_t(16) << 30;
    return CUDA_SUCCESS;
}
API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    *total = size_t(16) << 30;
    *free_bytes = *total - emu::mem_used();
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRetain(Handle* ctx, CUdevice) {
    *ctx = &dummy_context;
    return CUDA_SUCCESS;
}
API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
API CUresult cuCtxSetCurrent(Handle) { return CUDA_SUCCESS; }
API CUresult cuCtxGetCurrent(Handle* ctx) {
    *ctx = &dummy_context;
    return CUDA_SUCCESS;
}
API CUresult cuCtxPushCurrent_v2(Handle) { return CUDA_SUCCESS; }
API CUresult cuCtxPopCurrent_v2(Handle* ctx) {
    if (ctx) *ctx = &dummy_context;
    return CUDA_SUCCESS;
}
API CUresult cuCtxSynchronize() { return refused_while_capturing() ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS; }
API CUresult cuCtxGetDevice(CUdevice* d) {
    *d = 0;
    return CUDA_SUCCESS;
}

API CUresult cuStreamCreate(Handle* s, unsigned) {
    *s = new int(0);
    return CUDA_SUCCESS;
}
API CUresult cuStreamCreateWithPriority(Handle* s, unsigned, int) {
    *s = new int(0);
    return CUDA_SUCCESS;
}
API CUresult cuStreamDestroy_v2(Handle s) {
    delete static_cast<int*>(s);
    return CUDA_SUCCESS;
}
API CUresult cuStreamSynchronize(Handle) {
    return refused_while_capturing() ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}
API CUresult cuStreamQuery(Handle) { return CUDA_SUCCESS; }
API CUresult cuStreamWaitEvent(Handle, Handle, unsigned) { return CUDA_SUCCESS; }

API CUresult cuEventCreate(Handle* e, unsigned) {
    *e = new Event{std::chrono::steady_clock::now()};
    return CUDA_SUCCESS;
}
API CUresult cuEventDestroy_v2(Handle e) {
    delete static_cast<Event*>(e);
    return CUDA_SUCCESS;
}
API CUresult cuEventRecord(Handle e, Handle) {
    static_cast<Event*>(e)->at = std::chrono::steady_clock::now();
    return CUDA_SUCCESS;
}
API CUresult cuEventSynchronize(Handle) {
    return refused_while_capturing() ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}
API CUresult cuEventQuery(Handle) { return CUDA_SUCCESS; }
API CUresult cuEventElapsedTime(float* ms, Handle a, Handle b) {
    auto d = static_cast<Event*>(b)->at - static_cast<Event*>(a)->at;
    *ms = std::chrono::duration<float, std::milli>(d).count();
    return CUDA_SUCCESS;
}
API CUresult cuEventElapsedTime_v2(float* ms, Handle a, Handle b) { return cuEventElapsedTime(ms, a, b); }

API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (refused_while_capturing()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    void* m = emu::mem_alloc(bytes);
    if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
    *p = (CUdeviceptr)m;
    return CUDA_SUCCESS;
}
API CUresult cuMemFree_v2(CUdeviceptr p) {
    if (refused_while_capturing()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return emu::mem_free((void*)p) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, Handle) { return cuMemAlloc_v2(p, bytes); }
API CUresult cuMemFreeAsync(CUdeviceptr p, Handle) { return cuMemFree_v2(p); }

API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    if (refused_while_capturing()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return copy((void*)dst, src, n, true, false);
}
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, Handle) {
    return copy((void*)dst, src, n, true, false);
}
API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    if (refused_while_capturing()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return copy(dst, (const void*)src, n, false, true);
}
API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, Handle) {
    return copy(dst, (const void*)src, n, false, true);
}
API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (refused_while_capturing()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return copy((void*)dst, (const void*)src, n, true, true);
}
API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, Handle) {
    return copy((void*)dst, (const void*)src, n, true, true);
}
static CUresult set8(CUdeviceptr p, unsigned char v, size_t n) {
    if (!emu::mem_valid((uintptr_t)p, n)) return CUDA_ERROR_INVALID_VALUE;
    if (emu::capturing()) {
        emu::record([=] { memset((void*)p, v, n); });
        return CUDA_SUCCESS;
    }
    memset((void*)p, v, n);
    return CUDA_SUCCESS;
}
API CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
    if (refused_while_capturing()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return set8(p, v, n);
}
API CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, Handle) { return set8(p, v, n); }

API CUresult cuModuleLoadData(Handle* m, const void* image) {
    const char* text = static_cast<const char*>(image);
    if (!text || !strstr(text, ".entry")) return CUDA_ERROR_INVALID_IMAGE;
    *m = new Module{text};
    return CUDA_SUCCESS;
}
API CUresult cuModuleUnload(Handle m) {
    delete static_cast<Module*>(m);
    return CUDA_SUCCESS;
}
/// Registers per thread of each kernel, from `registers.txt` beside the PTX (written by `cargo
/// xtask kernels` from ptxas' report), if there is one.
static const std::map<std::string, unsigned>& registers() {
    static const std::map<std::string, unsigned> regs = [] {
        std::map<std::string, unsigned> m;
        const char* dir = getenv("TURBINE_CUDA_PTX");
        if (!dir) return m;
        FILE* f = fopen((std::string(dir) + "/registers.txt").c_str(), "r");
        if (!f) return m;
        char name[256];
        unsigned n;
        while (fscanf(f, "%255s %u", name, &n) == 2) m[name] = n;
        fclose(f);
        return m;
    }();
    return regs;
}

/// The most threads a block of `k` may have: 1024, or fewer when its registers (allocated in
/// units of 8 per thread) would exceed the 65,536 of a multiprocessor, as a GPU refuses.
static unsigned max_threads(const emu::Kernel* k) {
    auto it = registers().find(k->name);
    if (it == registers().end() || it->second == 0) return 1024;
    unsigned per_thread = (it->second + 7) / 8 * 8;
    unsigned limit = 65536 / per_thread / 32 * 32;
    return limit < 1024 ? limit : 1024;
}

API CUresult cuModuleGetFunction(Handle* f, Handle m, const char* name) {
    const std::string& ptx = static_cast<Module*>(m)->ptx;
    const std::string entry = std::string(".entry ") + name + "(";
    size_t at = ptx.find(entry);
    const emu::Kernel* k = emu::find_kernel(name);
    if (at == std::string::npos || !k) return CUDA_ERROR_NOT_FOUND;
    // The PTX's parameter list must be the C++ function's (same source, so a mismatch means the
    // PTX is stale).
    size_t end = ptx.find(')', at);
    unsigned params = 0;
    for (size_t p = ptx.find(".param", at); p != std::string::npos && p < end; p = ptx.find(".param", p + 1)) params++;
    if (params != k->n_params) {
        fprintf(stderr, "turbine emulator: %s has %u parameters in its PTX but %u in the sources (stale PTX?)\n",
                name, params, k->n_params);
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *f = const_cast<emu::Kernel*>(k);
    return CUDA_SUCCESS;
}
API CUresult cuFuncGetAttribute(int* v, int attr, Handle f) {
    const emu::Kernel* k = static_cast<const emu::Kernel*>(f);
    auto it = registers().find(k->name);
    switch (attr) {
        case 0: *v = (int)max_threads(k); break;  // MAX_THREADS_PER_BLOCK
        case 4: *v = it == registers().end() ? 0 : (int)it->second; break;  // NUM_REGS
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}
API CUresult cuFuncSetAttribute(Handle, int, int) { return CUDA_SUCCESS; }
API CUresult cuFuncSetCacheConfig(Handle, int) { return CUDA_SUCCESS; }

API CUresult cuLaunchKernel(Handle f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                            unsigned shared, Handle, void** params, void** extra) {
    const emu::Kernel* k = static_cast<const emu::Kernel*>(f);
    if (!k || extra || !params) return CUDA_ERROR_INVALID_VALUE;
    if (shared) {
        fprintf(stderr, "turbine emulator: %s launched with %u bytes of dynamic shared memory (not emulated)\n",
                k->name, shared);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if ((unsigned long)bx * by * bz > max_threads(k)) {
        fprintf(stderr, "turbine emulator: %s launched with %u threads a block, but its registers allow %u\n",
                k->name, bx * by * bz, max_threads(k));
        return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    }
    uint3 grid{gx, gy, gz}, block{bx, by, bz};
    auto run = [k, grid, block](void** p) -> CUresult {
        std::string err;
        stats.launches++;
        if (emu::launch(k, grid, block, p, &err)) return CUDA_SUCCESS;
        fprintf(stderr, "turbine emulator: launching %s failed: %s\n", k->name, err.c_str());
        return CUDA_ERROR_LAUNCH_FAILED;
    };
    if (!emu::capturing()) return run(params);
    // Recorded: the argument values are copied now, as the driver does.
    std::vector<std::vector<char>> values;
    for (unsigned i = 0; i < k->n_params; i++) {
        const char* v = static_cast<const char*>(params[i]);
        values.emplace_back(v, v + k->param_sizes[i]);
    }
    emu::record([run, values]() mutable {
        std::vector<void*> p;
        for (auto& v : values) p.push_back(v.data());
        if (run(p.data()) != CUDA_SUCCESS) abort();
    });
    return CUDA_SUCCESS;
}
API CUresult cuLaunchHostFunc(Handle, void (*fn)(void*), void* data) {
    if (emu::capturing()) emu::record([fn, data] { fn(data); });
    else fn(data);
    return CUDA_SUCCESS;
}

API CUresult cuStreamBeginCapture_v2(Handle s, int) {
    if (tl_capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    tl_capture.reset(new Capture{s, {}, false});
    return CUDA_SUCCESS;
}
API CUresult cuStreamEndCapture(Handle s, Handle* graph) {
    if (!tl_capture || tl_capture->stream != s) return CUDA_ERROR_INVALID_VALUE;
    std::unique_ptr<Capture> c = std::move(tl_capture);
    if (c->spoiled) {
        stats.spoiled++;
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    stats.recorded++;
    *graph = new Graph{std::move(c->ops)};
    return CUDA_SUCCESS;
}
API CUresult cuStreamIsCapturing(Handle, int* status) {
    *status = !tl_capture ? 0 : tl_capture->spoiled ? 2 : 1;
    return CUDA_SUCCESS;
}
API CUresult cuGraphInstantiateWithFlags(Handle* exec, Handle graph, unsigned long long) {
    *exec = new Graph(*static_cast<Graph*>(graph));
    return CUDA_SUCCESS;
}
API CUresult cuGraphUpload(Handle, Handle) { return CUDA_SUCCESS; }
API CUresult cuGraphLaunch(Handle exec, Handle) {
    if (emu::capturing()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    stats.replays++;
    for (auto& op : static_cast<Graph*>(exec)->ops) op();
    return CUDA_SUCCESS;
}
API CUresult cuGraphDestroy(Handle g) {
    delete static_cast<Graph*>(g);
    return CUDA_SUCCESS;
}
API CUresult cuGraphExecDestroy(Handle g) {
    delete static_cast<Graph*>(g);
    return CUDA_SUCCESS;
}

API CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
        case CUDA_ERROR_INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: *s = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN";
    }
    return CUDA_SUCCESS;
}
API CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }
