// Turbine's CUDA emulator: the threads of a block as fibers, launches, device memory with guard
// pages, and the element conversions of emu.h.
#include "runtime.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace emu {

BlockState tl;

// ---------------------------------------------------------------------------------------------
// Fibers. A fiber's context is its saved stack pointer; the callee-saved registers sit on its
// stack (System V x86-64), so a switch is a few pushes and pops, no system call.

extern "C" void emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch,.-emu_switch
)");

enum class State { Run, Block, Warp, Done };

struct Fiber {
    void* sp = nullptr;
    char* stack = nullptr;  // lowest usable byte; a guard page lies below
    uint3 tid{};
    unsigned linear = 0;
    State state = State::Done;
};

constexpr size_t STACK_BYTES = 128 << 10;
constexpr size_t PAGE = 4096;

/// What one OS thread needs to run blocks: fibers (made once, reused), the scheduler's context,
/// the warps' exchange words.
struct Sched {
    std::vector<Fiber> fibers;
    void* sched_sp = nullptr;
    const Kernel* kernel = nullptr;
    void** params = nullptr;
    unsigned threads = 0;
    uint64_t xchg[32][32];
    /// Each lane's MMA operands (a0..a3, b0, b1) for `warp_mma_16816`.
    uint32_t mma_in[32][32][6];
    std::string error;
};

static Sched* tl_sched = nullptr;

static Sched& sched() {
    if (!tl_sched) tl_sched = new Sched();
    // An alternate signal stack on every thread that launches (unless it has one, as Rust's
    // threads do), so that a fault on a fiber's stack can still be reported.
    static thread_local bool alt = false;
    if (!alt) {
        alt = true;
        stack_t old{};
        if (sigaltstack(nullptr, &old) == 0 && (old.ss_flags & SS_DISABLE)) {
            stack_t ss{};
            ss.ss_sp = malloc(1 << 16);
            ss.ss_size = 1 << 16;
            sigaltstack(&ss, nullptr);
        }
    }
    return *tl_sched;
}

[[noreturn]] static void fiber_main() {
    Sched& s = *tl_sched;
    Fiber* f = tl.cur;
    s.kernel->invoke(s.params);
    f = tl.cur;
    f->state = State::Done;
    emu_switch(&f->sp, s.sched_sp);
    __builtin_unreachable();
}

static void fiber_reset(Fiber& f) {
    if (!f.stack) {
        char* base = static_cast<char*>(
            mmap(nullptr, STACK_BYTES + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (base == MAP_FAILED) {
            fprintf(stderr, "turbine emulator: cannot map a fiber stack\n");
            abort();
        }
        mprotect(base, PAGE, PROT_NONE);
        f.stack = base + PAGE;
    }
    // The top: a fake return address (alignment as after a call), fiber_main, six saved registers.
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + STACK_BYTES) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;
    *--sp = reinterpret_cast<void*>(&fiber_main);
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    f.sp = sp;
    f.state = State::Run;
}

static void park(State st) {
    Fiber* f = tl.cur;
    f->state = st;
    emu_switch(&f->sp, tl_sched->sched_sp);
}

void sync_block() { park(State::Block); }

uint64_t warp_exchange(uint64_t v, int src) {
    Sched& s = *tl_sched;
    unsigned lane = tl.cur->linear & 31, warp = tl.cur->linear >> 5;
    s.xchg[warp][lane] = v;
    park(State::Warp);
    uint64_t r = s.xchg[warp][src];
    park(State::Warp);
    return r;
}

unsigned warp_ballot(bool pred) {
    Sched& s = *tl_sched;
    unsigned lane = tl.cur->linear & 31, warp = tl.cur->linear >> 5;
    s.xchg[warp][lane] = pred;
    park(State::Warp);
    unsigned bits = 0;
    unsigned lanes = s.threads - warp * 32 < 32 ? s.threads - warp * 32 : 32;
    for (unsigned l = 0; l < lanes; l++) bits |= (s.xchg[warp][l] ? 1u : 0u) << l;
    park(State::Warp);
    return bits;
}

/// What both mma emulations share: deposits this lane's operands (a0..a3, b0, b1), waits for the
/// warp, computes this lane's four D values from the warp's tile of `kdim` products, each
/// register holding `per_reg` values in k order (`value(word, i)`: the i-th as a float), and
/// waits again before anyone may deposit the next operands. A[row][k] lies in lane
/// 4 (row % 8) + (k % (kdim / 2)) / per_reg, register (row >= 8) + 2 (k >= kdim / 2);
/// B[k][col] in lane 4 col + (k % (kdim / 2)) / per_reg, register 4 + (k >= kdim / 2).
template <typename Value>
static void warp_mma(float d[4], const uint32_t a[4], const uint32_t b[2], unsigned kdim, unsigned per_reg,
                     Value value) {
    Sched& s = *tl_sched;
    unsigned lane = tl.cur->linear & 31, warp = tl.cur->linear >> 5;
    uint32_t* mine = s.mma_in[warp][lane];
    for (int i = 0; i < 4; i++) mine[i] = a[i];
    mine[4] = b[0];
    mine[5] = b[1];
    park(State::Warp);
    const unsigned half = kdim / 2;
    auto a_at = [&](unsigned row, unsigned k) {
        uint32_t w = s.mma_in[warp][4 * (row % 8) + (k % half) / per_reg][(row >= 8 ? 1 : 0) + (k >= half ? 2 : 0)];
        return value(w, k % per_reg);
    };
    auto b_at = [&](unsigned k, unsigned col) {
        return value(s.mma_in[warp][4 * col + (k % half) / per_reg][4 + (k >= half ? 1 : 0)], k % per_reg);
    };
    unsigned g = lane / 4, t = lane % 4;
    float out[4];
    for (int r = 0; r < 4; r++) {
        unsigned row = g + 8 * (r / 2), col = 2 * t + r % 2;
        double sum = d[r];
        for (unsigned k = 0; k < kdim; k++) sum += (double)a_at(row, k) * (double)b_at(k, col);
        out[r] = (float)sum;
    }
    park(State::Warp);
    for (int r = 0; r < 4; r++) d[r] = out[r];
}

void warp_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2], bool bf16) {
    warp_mma(d, a, b, 16, 2, [bf16](uint32_t w, unsigned i) {
        uint16_t h = (uint16_t)(w >> (16 * i));
        return bf16 ? from_word<float>((uint32_t)h << 16) : f16_bits_to_f32(h);
    });
}

void warp_mma_e4m3_16832(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    warp_mma(d, a, b, 32, 4, [](uint32_t w, unsigned i) { return e4m3_to_f32((uint8_t)(w >> (8 * i))); });
}

static bool reverse_order() {
    static const bool rev = [] {
        const char* v = getenv("TURBINE_EMU_ORDER");
        return v && std::string(v) == "reverse";
    }();
    return rev;
}

/// Runs one block to completion. False (with `s.error`) when its threads cannot all finish: a
/// barrier or warp operation some threads never reach, or a warp operation after lanes returned.
///
/// Warp by warp: a warp's lanes run until each waits at `__syncthreads` or has returned, their
/// warp operations released as soon as all 32 lanes have arrived; once every warp is there, the
/// block barrier is released.
static bool run_block(Sched& s) {
    const unsigned n = s.threads;
    const bool rev = reverse_order();
    for (unsigned i = 0; i < n; i++) fiber_reset(s.fibers[i]);
    const unsigned warps = (n + 31) / 32;
    for (;;) {
        for (unsigned jw = 0; jw < warps; jw++) {
            const unsigned w = rev ? warps - 1 - jw : jw;
            const unsigned lo = w * 32, hi = (w + 1) * 32 < n ? (w + 1) * 32 : n;
            for (;;) {
                for (unsigned j = lo; j < hi; j++) {
                    Fiber& f = s.fibers[rev ? hi - 1 - (j - lo) : j];
                    if (f.state != State::Run) continue;
                    tl.cur = &f;
                    tl.tid = f.tid;
                    emu_switch(&s.sched_sp, f.sp);
                }
                unsigned waiting = 0, done = 0;
                for (unsigned i = lo; i < hi; i++) {
                    waiting += s.fibers[i].state == State::Warp;
                    done += s.fibers[i].state == State::Done;
                }
                if (!waiting) break;  // at the block barrier or finished
                tl.cur = nullptr;
                if (waiting + done != hi - lo) {
                    s.error = "deadlock: some lanes of warp " + std::to_string(w) +
                              " wait in a warp operation while others wait at __syncthreads";
                    return false;
                }
                if (done || hi - lo != 32) {
                    s.error = "a full-warp shuffle or vote in warp " + std::to_string(w) + " with " +
                              std::to_string(32 - waiting) + " of its 32 lanes absent (returned early or no such thread)";
                    return false;
                }
                for (unsigned i = lo; i < hi; i++) s.fibers[i].state = State::Run;
            }
        }
        tl.cur = nullptr;
        // Every thread now waits at the block barrier or has returned.
        bool any = false;
        for (unsigned i = 0; i < n; i++) {
            if (s.fibers[i].state == State::Block) {
                s.fibers[i].state = State::Run;
                any = true;
            }
        }
        if (!any) return true;
    }
}

// ---------------------------------------------------------------------------------------------
// Launches.

static volatile sig_atomic_t in_fault = 0;
static struct sigaction old_segv, old_bus;

static void on_fault(int sig, siginfo_t* info, void* uctx) {
    if (tl.cur && tl_sched && tl_sched->kernel && !in_fault) {
        in_fault = 1;
        char msg[512];
        int len = snprintf(msg, sizeof msg,
                           "turbine emulator: kernel %s touched memory it does not own at %p "
                           "(block %u,%u,%u of %u,%u,%u; thread %u,%u,%u of %u): out of bounds or freed\n",
                           tl_sched->kernel->name, info->si_addr, tl.block_idx.x, tl.block_idx.y, tl.block_idx.z,
                           tl.grid_dim.x, tl.grid_dim.y, tl.grid_dim.z, tl.cur->tid.x, tl.cur->tid.y, tl.cur->tid.z,
                           tl_sched->threads);
        if (len > 0) {
            ssize_t w = write(2, msg, (size_t)len);
            (void)w;
        }
        _exit(134);
    }
    // Not ours: hand the fault to whoever handled it before (e.g. Rust's stack overflow report).
    sigaction(sig, sig == SIGSEGV ? &old_segv : &old_bus, nullptr);
    (void)uctx;
}

static void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &old_segv);
        sigaction(SIGBUS, &sa, &old_bus);
    });
}

bool launch(const Kernel* k, uint3 grid, uint3 block, void** params, std::string* err) {
    unsigned long threads = (unsigned long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
        *err = "invalid launch geometry: grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
               std::to_string(grid.z) + "), block (" + std::to_string(block.x) + "," + std::to_string(block.y) +
               "," + std::to_string(block.z) + ")";
        return false;
    }
    install_fault_handler();
    // One launch at a time: the fibers, the block state and `__shared__` variables are global.
    static std::mutex launch_mu;
    std::lock_guard<std::mutex> guard(launch_mu);
    Sched& s = sched();
    if (s.fibers.size() < threads) s.fibers.resize(threads);
    s.kernel = k;
    s.params = params;
    s.threads = (unsigned)threads;
    for (unsigned i = 0; i < threads; i++) {
        Fiber& f = s.fibers[i];
        f.linear = i;
        f.tid = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
    }
    tl.grid_dim = grid;
    tl.block_dim = block;
    const bool rev = reverse_order();
    const unsigned long blocks = (unsigned long)grid.x * grid.y * grid.z;
    for (unsigned long j = 0; j < blocks; j++) {
        unsigned long b = rev ? blocks - 1 - j : j;
        tl.block_idx = uint3{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y), (unsigned)(b / grid.x / grid.y)};
        if (!run_block(s)) {
            *err = std::string(k->name) + ", block (" + std::to_string(tl.block_idx.x) + "," +
                   std::to_string(tl.block_idx.y) + "," + std::to_string(tl.block_idx.z) + "): " + s.error;
            s.kernel = nullptr;
            return false;
        }
    }
    s.kernel = nullptr;
    return true;
}

/// The compute capability reported: 90 (Hopper), or TURBINE_EMU_SM (e.g. 80, an Ampere part
/// without FP8 products).
int emulated_sm() {
    static const int sm = [] {
        const char* v = getenv("TURBINE_EMU_SM");
        int n = v ? atoi(v) : 90;
        return n >= 50 && n < 200 ? n : 90;
    }();
    return sm;
}

// ---------------------------------------------------------------------------------------------
// Kernels by name.

static std::map<std::string, const Kernel*>& kernels() {
    static auto* m = new std::map<std::string, const Kernel*>();
    return *m;
}

Register::Register(const Kernel* ks, size_t n) {
    for (size_t i = 0; i < n; i++) kernels()[ks[i].name] = &ks[i];
}

const Kernel* find_kernel(const std::string& name) {
    auto it = kernels().find(name);
    return it == kernels().end() ? nullptr : it->second;
}

// ---------------------------------------------------------------------------------------------
// Device memory: each allocation ends at an inaccessible page, so that reading or writing past
// its end stops the process with the kernel's name; freed memory is unmapped.

struct Mapping {
    char* base;
    size_t total;
    size_t bytes;
};

static std::mutex mem_mu;
static std::map<uintptr_t, Mapping>& mappings() {
    static auto* m = new std::map<uintptr_t, Mapping>();
    return *m;
}
static size_t mem_in_use = 0;

void* mem_alloc(size_t bytes) {
    size_t b16 = (bytes + 15) & ~size_t(15);
    if (b16 == 0) b16 = 16;
    size_t body = (b16 + PAGE - 1) & ~(PAGE - 1);
    char* base = static_cast<char*>(mmap(nullptr, body + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base == MAP_FAILED) return nullptr;
    mprotect(base + body, PAGE, PROT_NONE);
    char* p = base + (body - b16);
    // Fresh device memory is garbage on a GPU: NaN bytes here, so that reading it shows.
    memset(p, 0xff, b16);
    std::lock_guard<std::mutex> g(mem_mu);
    mappings()[reinterpret_cast<uintptr_t>(p)] = Mapping{base, body + PAGE, bytes};
    mem_in_use += bytes;
    return p;
}

bool mem_free(void* p) {
    std::lock_guard<std::mutex> g(mem_mu);
    auto it = mappings().find(reinterpret_cast<uintptr_t>(p));
    if (it == mappings().end()) return false;
    munmap(it->second.base, it->second.total);
    mem_in_use -= it->second.bytes;
    mappings().erase(it);
    return true;
}

bool mem_valid(uintptr_t p, size_t bytes) {
    if (bytes == 0) return true;
    std::lock_guard<std::mutex> g(mem_mu);
    auto it = mappings().upper_bound(p);
    if (it == mappings().begin()) return false;
    --it;
    return p >= it->first && p + bytes <= it->first + it->second.bytes;
}

size_t mem_used() {
    std::lock_guard<std::mutex> g(mem_mu);
    return mem_in_use;
}

// ---------------------------------------------------------------------------------------------
// Conversions.

uint16_t f32_to_f16_bits(float f) {
    uint32_t x = (uint32_t)to_word(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00;  // NaN
    if (ax >= 0x477ff000u) return sign | 0x7c00;  // rounds to infinity (65520 and up)
    if (ax < 0x38800000u) {
        // Below the smallest normal half (2^-14): multiples of 2^-24, rounded to nearest even.
        float v = from_word<float>(ax) * 16777216.0f;
        return sign | (uint16_t)nearbyintf(v);
    }
    uint32_t e = (ax >> 23) - 127 + 15, man = ax & 0x7fffffu;
    uint32_t h = (e << 10) | (man >> 13), rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return sign | (uint16_t)h;
}

float f16_bits_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, man = h & 0x3ff;
    float v;
    if (e == 0) v = (float)man * (1.0f / 16777216.0f);
    else if (e == 31) v = man ? NAN : INFINITY;
    else v = from_word<float>(((e - 15 + 127) << 23) | (man << 13));
    return from_word<float>((uint32_t)to_word(v) | sign);
}

uint16_t f32_to_bf16_bits(float f) {
    uint32_t x = (uint32_t)to_word(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

float e4m3_to_f32(uint8_t c) {
    float sign = (c & 0x80) ? -1.f : 1.f;
    unsigned e = (c >> 3) & 15, m = c & 7;
    if (e == 15 && m == 7) return NAN;
    if (e == 0) return sign * ldexpf((float)m, -9);
    return sign * ldexpf((float)(8 + m), (int)e - 10);
}

uint8_t f32_to_e4m3_satfinite(float f) {
    if (std::isnan(f)) return 0x7f;
    uint8_t sign = std::signbit(f) ? 0x80 : 0;
    double a = fabs((double)f);
    if (a >= 448.0) return sign | 0x7e;
    // The codes 0..0x7e are increasing in value: find the two that bracket a.
    unsigned lo = 0, hi = 0x7e;
    while (hi - lo > 1) {
        unsigned mid = (lo + hi) / 2;
        if ((double)e4m3_to_f32((uint8_t)mid) <= a) lo = mid;
        else hi = mid;
    }
    double dl = a - (double)e4m3_to_f32((uint8_t)lo), dh = (double)e4m3_to_f32((uint8_t)hi) - a;
    unsigned code = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
    return sign | (uint8_t)code;
}

}  // namespace emu

__nv_fp8_storage_t emu_cvt_float_to_fp8(float x, __nv_saturation_t sat, __nv_fp8_interpretation_t fmt) {
    if (sat != __NV_SATFINITE || fmt != __NV_E4M3) {
        fprintf(stderr, "turbine emulator: only saturating E4M3 conversions are emulated\n");
        abort();
    }
    return emu::f32_to_e4m3_satfinite(x);
}

__half_raw emu_cvt_fp8_to_halfraw(__nv_fp8_storage_t c, __nv_fp8_interpretation_t fmt) {
    if (fmt != __NV_E4M3) {
        fprintf(stderr, "turbine emulator: only E4M3 conversions are emulated\n");
        abort();
    }
    return __half_raw{emu::f32_to_f16_bits(emu::e4m3_to_f32(c))};
}
