/* The CPU emulator of CUDA kernels (README.md in this folder): the device
 * built-ins the kernels in cuda/ use, and the launch that runs a grid block
 * by block, each block's threads as cooperative fibers on one host thread
 * (emulator.cpp). Host C++17 only; no CUDA toolkit involved.
 *
 * Threads of a block run one at a time, each until its next barrier
 * (__syncthreads, a warp shuffle, __syncwarp) or its end; a barrier opens
 * when every thread it waits for has arrived. So shared memory, barriers and
 * shuffles behave as on the GPU for race-free code, and the order in which
 * threads run between barriers (forward or reverse, pb_emu_set_reverse_order)
 * is a knob the tests turn to expose races. Misuse the GPU leaves undefined
 * (a barrier some threads never reach, a full-mask shuffle in a warp whose
 * lanes have returned) aborts with a message. */
#ifndef PB_EMU_EMULATOR_H
#define PB_EMU_EMULATOR_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

/* The launchers compiled here get names of their own, so that a build with
 * the real CUDA backend can link both (kernels.cuh includes this header, via
 * cuda_runtime.h, before it declares them). A launcher added to kernels.cuh
 * without a line here collides at link time in such builds: loud. */
#define pb_cuda_launch_embed pb_emu_cuda_launch_embed
#define pb_cuda_launch_embed16 pb_emu_cuda_launch_embed16
#define pb_cuda_launch_round16 pb_emu_cuda_launch_round16
#define pb_cuda_launch_rmsnorm pb_emu_cuda_launch_rmsnorm
#define pb_cuda_launch_layernorm pb_emu_cuda_launch_layernorm
#define pb_cuda_launch_add_bias pb_emu_cuda_launch_add_bias
#define pb_cuda_launch_rope pb_emu_cuda_launch_rope
#define pb_cuda_attention_shared_bytes pb_emu_cuda_attention_shared_bytes
#define pb_cuda_launch_attention pb_emu_cuda_launch_attention
#define pb_cuda_launch_attention_jobs pb_emu_cuda_launch_attention_jobs
#define pb_cuda_attention_tiled_ok pb_emu_cuda_attention_tiled_ok
#define pb_cuda_attention_tile_queries pb_emu_cuda_attention_tile_queries
#define pb_cuda_attention_tiled_shared_bytes pb_emu_cuda_attention_tiled_shared_bytes
#define pb_cuda_launch_attention_tiled pb_emu_cuda_launch_attention_tiled
#define pb_cuda_attention_tiled_key_tiles pb_emu_cuda_attention_tiled_key_tiles
#define pb_cuda_launch_glu pb_emu_cuda_launch_glu
#define pb_cuda_launch_activate pb_emu_cuda_launch_activate
#define pb_cuda_launch_softcap pb_emu_cuda_launch_softcap
#define pb_cuda_launch_add pb_emu_cuda_launch_add
#define pb_cuda_launch_dequant_rows pb_emu_cuda_launch_dequant_rows
#define pb_cuda_launch_copy_regions pb_emu_cuda_launch_copy_regions
#define pb_cuda_metric_rows pb_emu_cuda_metric_rows
#define pb_cuda_launch_norm_backward pb_emu_cuda_launch_norm_backward
#define pb_cuda_launch_glu_backward pb_emu_cuda_launch_glu_backward
#define pb_cuda_attention_backward_scratch pb_emu_cuda_attention_backward_scratch
#define pb_cuda_launch_attention_backward pb_emu_cuda_launch_attention_backward

#define __global__
#define __device__
#define __grid_constant__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

typedef struct pb_emu_stream *cudaStream_t;
/* backend_cuda_impl.cuh names it (staging events); nothing here uses one. */
typedef struct pb_emu_event *cudaEvent_t;

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorIllegalAddress = 700,
};

cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t error);
const char *cudaGetErrorName(cudaError_t error);
cudaError_t cudaSetDevice(int device);
/* Launches run at once, so there is nothing to wait for: returns the fault
 * set by pb_emu_set_stream_fault (once), else cudaSuccess. */
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
extern "C" void pb_emu_set_stream_fault(int error);

/* Dynamic shared memory past 48 KiB, as on the GPU: a kernel opts in with
 * cudaFuncSetAttribute up to the device's limit (Hopper's 227 KiB here), and
 * a launch above its kernel's limit fails. */
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
#define PB_EMU_SHARED_OPTIN_BYTES (227 * 1024)
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);

namespace pb_emu {

struct config {
    dim3 grid, block;
    size_t shared_bytes;
    cudaStream_t stream;
};

inline config make_config(dim3 grid, dim3 block, size_t shared_bytes = 0, cudaStream_t stream = nullptr) {
    return config{grid, block, shared_bytes, stream};
}

/* Runs body(ctx) as every thread of every block of cfg; on a configuration
 * CUDA would refuse, records the error for cudaGetLastError and runs
 * nothing. */
void launch(const config &cfg, void (*body)(void *), void *ctx, const void *kernel = nullptr);
/* cudaFuncSetAttribute's record: the dynamic shared memory `kernel` may
 * launch with (48 KiB until raised). */
cudaError_t set_max_dynamic_shared(const void *kernel, int bytes);

/* The calling emulated thread's coordinates. Functions, not variables, so
 * that no value survives a switch to another thread. */
const uint3 &thread_idx();
const uint3 &block_idx();
const dim3 &block_dim();
const dim3 &grid_dim();

void sync_threads();
void sync_warp(unsigned mask);
enum shuffle_mode { SHUFFLE_INDEX, SHUFFLE_XOR, SHUFFLE_DOWN, SHUFFLE_UP };
/* The warp exchange behind the shuffles: every lane of the warp offers
 * `bits`, and gets those of the lane `mode`/`arg` name. */
uint64_t shuffle_bits(unsigned mask, uint64_t bits, shuffle_mode mode, int arg, int width);

/* The block's dynamic shared memory (the launch's shared_bytes, poisoned
 * with 0xff bytes at each block's start; heap memory, so a sanitizer sees
 * overruns). */
void *dynamic_shared();
/* Registers a static __shared__ variable (PB_EMU_SHARED): poisoned when
 * first seen and after every block, so no block reads another's values. */
void note_shared(void *address, size_t bytes);

[[noreturn]] void fatal(const char *format, ...) __attribute__((format(printf, 1, 2)));

template <typename T> T shuffle(unsigned mask, T value, shuffle_mode mode, int arg, int width) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= sizeof(uint64_t), "shuffle of this type");
    uint64_t bits = 0;
    memcpy(&bits, &value, sizeof value);
    bits = shuffle_bits(mask, bits, mode, arg, width);
    memcpy(&value, &bits, sizeof value);
    return value;
}

}  // namespace pb_emu

/* kernel<<<...>>>(args) as rewritten by generate.py: the arguments are
 * converted to the kernel's parameter types once, as a CUDA launch does,
 * and every thread calls the kernel on its own copy of them. */
template <typename... Params, typename... Args>
void pb_emu_launch(void (*kernel)(Params...), const pb_emu::config &cfg, Args &&...args) {
    static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
    struct context {
        void (*kernel)(Params...);
        std::tuple<typename std::decay<Params>::type...> params;
    } ctx{kernel, std::tuple<typename std::decay<Params>::type...>(std::forward<Args>(args)...)};
    pb_emu::launch(
        cfg,
        [](void *raw) {
            context *c = static_cast<context *>(raw);
            std::tuple<typename std::decay<Params>::type...> own = c->params;
            std::apply(c->kernel, own);
        },
        &ctx, reinterpret_cast<const void *>(kernel));
}

template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
        return cudaErrorInvalidValue;
    return pb_emu::set_max_dynamic_shared(reinterpret_cast<const void *>(kernel), value);
}

/* Static __shared__ storage, one instance per host thread running blocks
 * (a block's fibers all run on one host thread, one block at a time). */
#define PB_EMU_SHARED(type, name, dims) \
    static thread_local type name dims; \
    ::pb_emu::note_shared(&name, sizeof name)

#define threadIdx (::pb_emu::thread_idx())
#define blockIdx (::pb_emu::block_idx())
#define blockDim (::pb_emu::block_dim())
#define gridDim (::pb_emu::grid_dim())
#define warpSize 32

inline void __syncthreads() { pb_emu::sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { pb_emu::sync_warp(mask); }

template <typename T> T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
    return pb_emu::shuffle(mask, value, pb_emu::SHUFFLE_INDEX, src_lane, width);
}
template <typename T> T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
    return pb_emu::shuffle(mask, value, pb_emu::SHUFFLE_XOR, lane_mask, width);
}
template <typename T> T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
    return pb_emu::shuffle(mask, value, pb_emu::SHUFFLE_DOWN, (int)delta, width);
}
template <typename T> T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
    return pb_emu::shuffle(mask, value, pb_emu::SHUFFLE_UP, (int)delta, width);
}

/* Blocks of one launch may run on several host threads at once: atomics on
 * global memory must be real ones. */
inline unsigned atomicOr(unsigned *address, unsigned value) {
    return __atomic_fetch_or(address, value, __ATOMIC_RELAXED);
}
inline int atomicAdd(int *address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned *address, unsigned value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}

template <typename T> inline T __ldg(const T *address) { return *address; }

inline float __uint_as_float(unsigned bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}
inline unsigned __float_as_uint(float value) {
    unsigned bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}
inline float __int_as_float(int bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}
inline int __float_as_int(float value) {
    int bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
/* CUDA's device overloads of min and max */
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

#endif
