/* The CPU emulator's runtime (emulator.h): a launch hands blocks to a few
 * host threads; each runs its block's CUDA threads as fibers, switching at
 * barriers.
 *
 * A fiber starts once per launch (makecontext/setcontext) and then loops,
 * running the kernel once per block; switches after the start are
 * _setjmp/_longjmp (no signal-mask system call, ~10x cheaper than
 * swapcontext), annotated for AddressSanitizer's fiber support. */
#undef _FORTIFY_SOURCE /* its longjmp check refuses jumps between stacks */
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "cublas_v2.h"
#include "emulator.h"
#include "nccl.h"

#if defined(__SANITIZE_ADDRESS__)
#define PB_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PB_EMU_ASAN 1
#endif
#endif
#ifdef PB_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

/* C entry point for the tests (pb_cuda_emu.h). */
extern "C" void pb_emu_set_reverse_order(int reverse);

namespace pb_emu {
namespace {

/* Fiber stacks: the kernels' frames are small, sanitizers enlarge them. */
constexpr size_t STACK_BYTES = 256 * 1024;
constexpr int WARP = 32;

std::atomic<bool> g_reverse{false};
thread_local cudaError_t t_last_error = cudaSuccess;

enum fiber_state { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

struct fiber {
    jmp_buf context;
    char *stack;
    bool started;
    fiber_state state;
    /* what a warp barrier is for (a shuffle or __syncwarp): every lane
     * waiting at one must be at the same kind */
    int warp_op;
    uint3 index;
    unsigned linear;
    unsigned parity; /* which half of the warp's exchange slots is next */
    void *fake_stack;
};

struct worker {
    const config *cfg;
    void (*body)(void *);
    void *ctx;
    unsigned n_threads;
    std::vector<fiber> fibers;
    std::vector<uint64_t> slots; /* (warps, 2, 32): shuffle exchange, double-buffered */
    unsigned char *shared;       /* (cfg->shared_bytes) */
    std::vector<std::pair<void *, size_t>> static_shared;
    uint3 block;
    fiber *current;
    jmp_buf scheduler;
    const void *scheduler_stack_bottom;
    size_t scheduler_stack_size;
    void *fake_stack;
};

thread_local worker *t_worker;

worker &self_worker() {
    if (!t_worker || !t_worker->current)
        fatal("a device function was called outside a kernel launch");
    return *t_worker;
}

#ifdef PB_EMU_ASAN
/* The C library's _longjmp, past AddressSanitizer's interceptor, which
 * clears the poison of the stack between the jump and the stack's top for
 * the frames a jump abandons. A switch here abandons none (a fiber and its
 * scheduler each resume where they jumped from), and the interceptor made
 * every switch ~15x dearer: test_cuda_emulated took 130 s under the
 * sanitizers with it, 14 s without (the same heap overflow in a kernel is
 * reported by both). */
/* not declared noreturn: the compiler would call the same unpoisoning
 * (__asan_handle_no_return) before the jump */
typedef void (*longjmp_fn)(jmp_buf, int);
longjmp_fn libc_longjmp() {
    static longjmp_fn fn = [] {
        void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
        void *sym = libc ? dlsym(libc, "_longjmp") : nullptr;
        if (!sym)
            fatal("the C library's _longjmp was not found");
        return reinterpret_cast<longjmp_fn>(sym);
    }();
    return fn;
}
#define PB_EMU_LONGJMP libc_longjmp()
#else
#define PB_EMU_LONGJMP _longjmp
#endif

/* AddressSanitizer must be told before and after every stack switch. */
void switch_begin(void **fake_stack, const void *bottom, size_t size) {
#ifdef PB_EMU_ASAN
    __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
    (void)fake_stack, (void)bottom, (void)size;
#endif
}

void switch_end(void *fake_stack, const void **old_bottom, size_t *old_size) {
#ifdef PB_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, old_bottom, old_size);
#else
    (void)fake_stack, (void)old_bottom, (void)old_size;
#endif
}

/* From a fiber back to its worker's scheduler. */
void yield(worker &w, fiber &f) {
    if (!_setjmp(f.context)) {
        switch_begin(&f.fake_stack, w.scheduler_stack_bottom, w.scheduler_stack_size);
        PB_EMU_LONGJMP(w.scheduler, 1);
    }
    switch_end(f.fake_stack, &w.scheduler_stack_bottom, &w.scheduler_stack_size);
}

void fiber_main() {
    worker &w = *t_worker;
    fiber &f = *w.current;
    switch_end(nullptr, &w.scheduler_stack_bottom, &w.scheduler_stack_size);
    for (;;) { /* once per block; the scheduler resets the state in between */
        w.body(w.ctx);
        f.state = DONE;
        yield(w, f);
    }
}

void resume(worker &w, fiber &f) {
    w.current = &f;
    if (!_setjmp(w.scheduler)) {
        switch_begin(&w.fake_stack, f.stack, STACK_BYTES);
        if (!f.started) {
            f.started = true;
            ucontext_t start;
            if (getcontext(&start) != 0)
                fatal("getcontext failed");
            start.uc_stack.ss_sp = f.stack;
            start.uc_stack.ss_size = STACK_BYTES;
            start.uc_link = nullptr;
            makecontext(&start, fiber_main, 0);
            setcontext(&start);
            fatal("setcontext returned");
        }
        PB_EMU_LONGJMP(f.context, 1);
    }
    switch_end(w.fake_stack, nullptr, nullptr);
    w.current = nullptr;
}

const char *state_name(fiber_state s) {
    switch (s) {
    case RUNNABLE: return "running";
    case AT_BLOCK_BARRIER: return "at __syncthreads";
    case AT_WARP_BARRIER: return "at a warp shuffle/__syncwarp";
    case DONE: return "returned";
    }
    return "?";
}

[[noreturn]] void deadlock(worker &w, const char *why) {
    fprintf(stderr, "cuda_emu: block (%u, %u, %u): %s; thread states:\n", w.block.x, w.block.y, w.block.z, why);
    for (unsigned i = 0; i < w.n_threads; i++)
        fprintf(stderr, "  thread %u (warp %u): %s\n", i, i / WARP, state_name(w.fibers[i].state));
    fatal("barrier misuse (undefined on a GPU)");
}

void run_block(worker &w, size_t block) {
    const config &cfg = *w.cfg;
    w.block = uint3{(unsigned)(block % cfg.grid.x), (unsigned)(block / cfg.grid.x % cfg.grid.y),
                    (unsigned)(block / ((size_t)cfg.grid.x * cfg.grid.y))};
    memset(w.shared, 0xff, cfg.shared_bytes);
    for (unsigned i = 0; i < w.n_threads; i++) {
        fiber &f = w.fibers[i];
        f.state = RUNNABLE;
        f.parity = 0;
        f.linear = i;
        f.index = uint3{i % cfg.block.x, i / cfg.block.x % cfg.block.y, i / (cfg.block.x * cfg.block.y)};
    }
    const unsigned n_warps = (w.n_threads + WARP - 1) / WARP;
    const bool reverse = g_reverse.load(std::memory_order_relaxed);
    for (;;) {
        for (unsigned k = 0; k < w.n_threads; k++) {
            fiber &f = w.fibers[reverse ? w.n_threads - 1 - k : k];
            if (f.state == RUNNABLE)
                resume(w, f);
        }
        /* Every fiber now waits or is done. Open the warp barriers all of
         * whose lanes arrived; a __syncthreads only when nothing else can. */
        unsigned done = 0, at_block = 0;
        bool released = false;
        for (unsigned warp = 0; warp < n_warps; warp++) {
            const unsigned lo = warp * WARP, hi = std::min(lo + WARP, w.n_threads);
            unsigned at_warp = 0;
            for (unsigned i = lo; i < hi; i++) {
                done += w.fibers[i].state == DONE;
                at_block += w.fibers[i].state == AT_BLOCK_BARRIER;
                at_warp += w.fibers[i].state == AT_WARP_BARRIER;
            }
            if (at_warp == 0)
                continue;
            if (at_warp != hi - lo)
                continue; /* others of the warp still to arrive, or stuck elsewhere (caught below) */
            for (unsigned i = lo; i < hi; i++)
                if (w.fibers[i].warp_op != w.fibers[lo].warp_op)
                    deadlock(w, "lanes of one warp wait at different warp operations");
            for (unsigned i = lo; i < hi; i++)
                w.fibers[i].state = RUNNABLE;
            released = true;
        }
        if (released)
            continue;
        if (done == w.n_threads)
            break;
        if (at_block + done == w.n_threads && done == 0) {
            for (unsigned i = 0; i < w.n_threads; i++)
                w.fibers[i].state = RUNNABLE;
            continue;
        }
        deadlock(w, done ? "a barrier waits for threads that have returned"
                         : "threads wait at different barriers (divergent __syncthreads or shuffle)");
    }
    /* no block may see another's static shared values */
    for (auto &region : w.static_shared)
        memset(region.first, 0xff, region.second);
}

void run_worker(const config &cfg, void (*body)(void *), void *ctx, std::atomic<size_t> &next, size_t n_blocks) {
    worker w{};
    w.cfg = &cfg;
    w.body = body;
    w.ctx = ctx;
    w.n_threads = cfg.block.x * cfg.block.y * cfg.block.z;
    w.fibers.resize(w.n_threads);
    w.slots.assign((size_t)(w.n_threads + WARP - 1) / WARP * 2 * WARP, 0);
    w.shared = static_cast<unsigned char *>(malloc(cfg.shared_bytes ? cfg.shared_bytes : 1));
    const size_t stacks_bytes = STACK_BYTES * w.n_threads;
    void *stacks = mmap(nullptr, stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!w.shared || stacks == MAP_FAILED)
        fatal("out of memory for a block of %u threads", w.n_threads);
    for (unsigned i = 0; i < w.n_threads; i++)
        w.fibers[i].stack = static_cast<char *>(stacks) + (size_t)i * STACK_BYTES;

    t_worker = &w;
    for (size_t block = next++; block < n_blocks; block = next++)
        run_block(w, block);
    t_worker = nullptr;

    /* The fibers are abandoned mid-loop: nothing on their stacks needs
     * unwinding (kernels hold no resources). */
#ifdef PB_EMU_ASAN
    __asan_unpoison_memory_region(stacks, stacks_bytes);
#endif
    munmap(stacks, stacks_bytes);
    free(w.shared);
}

bool config_ok(const config &cfg) {
    const uint64_t threads = (uint64_t)cfg.block.x * cfg.block.y * cfg.block.z;
    if (cfg.grid.x == 0 || cfg.grid.y == 0 || cfg.grid.z == 0 || threads == 0)
        return false;
    if (cfg.grid.x > 2147483647u || cfg.grid.y > 65535u || cfg.grid.z > 65535u)
        return false;
    if (threads > 1024 || cfg.block.x > 1024 || cfg.block.y > 1024 || cfg.block.z > 64)
        return false;
    return true;
}

}  // namespace

void fatal(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("cuda_emu: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    abort();
}

static std::mutex g_shared_limits_lock;
static std::map<const void *, size_t> g_shared_limits; /* kernel -> cudaFuncSetAttribute's limit */

cudaError_t set_max_dynamic_shared(const void *kernel, int bytes) {
    if (!kernel || bytes < 0 || bytes > PB_EMU_SHARED_OPTIN_BYTES)
        return cudaErrorInvalidValue;
    std::lock_guard<std::mutex> hold(g_shared_limits_lock);
    g_shared_limits[kernel] = (size_t)bytes;
    return cudaSuccess;
}

void launch(const config &cfg, void (*body)(void *), void *ctx, const void *kernel) {
    if (!config_ok(cfg)) {
        t_last_error = cudaErrorInvalidConfiguration;
        return;
    }
    /* Above 48 KiB a kernel must have opted in (cudaFuncSetAttribute). */
    size_t limit = 48 * 1024;
    {
        std::lock_guard<std::mutex> hold(g_shared_limits_lock);
        auto found = g_shared_limits.find(kernel);
        if (kernel && found != g_shared_limits.end())
            limit = std::max(limit, found->second);
    }
    if (cfg.shared_bytes > limit) {
        t_last_error = cudaErrorInvalidValue;
        return;
    }
    if (t_worker)
        fatal("a kernel launched from inside a kernel");
    const size_t n_blocks = (size_t)cfg.grid.x * cfg.grid.y * cfg.grid.z;
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    const size_t n_workers = std::min<size_t>({n_blocks, cores, 8});
    std::atomic<size_t> next{0};
    std::vector<std::thread> helpers;
    for (size_t i = 1; i < n_workers; i++)
        helpers.emplace_back(run_worker, std::cref(cfg), body, ctx, std::ref(next), n_blocks);
    run_worker(cfg, body, ctx, next, n_blocks);
    for (auto &helper : helpers)
        helper.join();
}

const uint3 &thread_idx() {
    worker &w = self_worker();
    return w.current->index;
}

const uint3 &block_idx() { return self_worker().block; }
const dim3 &block_dim() { return self_worker().cfg->block; }
const dim3 &grid_dim() { return self_worker().cfg->grid; }

void sync_threads() {
    worker &w = self_worker();
    fiber &f = *w.current;
    f.state = AT_BLOCK_BARRIER;
    yield(w, f);
}

static fiber &enter_warp_op(worker &w, unsigned mask, int width, int op) {
    fiber &f = *w.current;
    if (mask != 0xffffffffu)
        fatal("warp operation with mask 0x%08x: only the full mask is emulated", mask);
    if (width != WARP)
        fatal("warp shuffle of width %d: only width 32 is emulated", width);
    if (w.n_threads % WARP != 0)
        fatal("full-mask warp operation in a block of %u threads (a partial warp)", w.n_threads);
    f.state = AT_WARP_BARRIER;
    f.warp_op = op;
    return f;
}

void sync_warp(unsigned mask) {
    worker &w = self_worker();
    fiber &f = enter_warp_op(w, mask, WARP, -1);
    yield(w, f);
}

uint64_t shuffle_bits(unsigned mask, uint64_t bits, shuffle_mode mode, int arg, int width) {
    worker &w = self_worker();
    fiber &f = enter_warp_op(w, mask, width, (int)mode);
    const int lane = (int)(f.linear % WARP);
    /* Two halves: a lane writes half p, waits for the whole warp, reads half
     * p; its next write goes to the other half, so it cannot overwrite a
     * value another lane has yet to read (that lane is at most one barrier
     * behind, still reading half p). */
    uint64_t *slots = &w.slots[((size_t)(f.linear / WARP) * 2 + f.parity) * WARP];
    slots[lane] = bits;
    yield(w, f);
    int source = lane;
    switch (mode) {
    case SHUFFLE_INDEX: source = arg & (WARP - 1); break;
    case SHUFFLE_XOR:
        if (arg < 0 || arg >= WARP)
            fatal("__shfl_xor_sync lane mask %d outside the warp", arg);
        source = lane ^ arg;
        break;
    case SHUFFLE_DOWN: source = lane + arg < WARP ? lane + arg : lane; break;
    case SHUFFLE_UP: source = lane - arg >= 0 ? lane - arg : lane; break;
    }
    f.parity ^= 1u;
    return slots[source];
}

void *dynamic_shared() { return self_worker().shared; }

void note_shared(void *address, size_t bytes) {
    worker &w = self_worker();
    for (auto &region : w.static_shared)
        if (region.first == address)
            return;
    /* first sight in this launch: no thread of the block has written it yet */
    w.static_shared.emplace_back(address, bytes);
    memset(address, 0xff, bytes);
}

}  // namespace pb_emu

extern "C" void pb_emu_set_reverse_order(int reverse) { pb_emu::g_reverse.store(reverse != 0); }

cudaError_t cudaGetLastError(void) {
    cudaError_t error = pb_emu::t_last_error;
    pb_emu::t_last_error = cudaSuccess;
    return error;
}

cudaError_t cudaPeekAtLastError(void) { return pb_emu::t_last_error; }

const char *cudaGetErrorName(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    }
    return "unknown error";
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    if (!value || device != 0 || attr != cudaDevAttrMaxSharedMemoryPerBlockOptin)
        return cudaErrorInvalidValue;
    *value = PB_EMU_SHARED_OPTIN_BYTES;
    return cudaSuccess;
}

static thread_local cudaError_t t_stream_fault = cudaSuccess;

extern "C" void pb_emu_set_stream_fault(int error) { t_stream_fault = (cudaError_t)error; }

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    (void)stream;
    const cudaError_t fault = t_stream_fault;
    t_stream_fault = cudaSuccess;
    return fault;
}

const char *cublasGetStatusString(cublasStatus_t status) { return status == 0 ? "success" : "cuBLAS (emulated)"; }
const char *ncclGetErrorString(ncclResult_t result) { return result == 0 ? "success" : "NCCL (emulated)"; }
