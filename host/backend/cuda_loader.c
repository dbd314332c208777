/* The library's side of the seam (backend/cuda_module.h): the CUDA entry
 * points of backend.h and backend_cuda.h, each loading libpatchbay_cuda.so
 * on first use and forwarding to it. Builds without CUDA refuse them here. */
#define _GNU_SOURCE /* dladdr1 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/cuda_module.h"
#include "formats/dtype.h"

/* The outcome of the one load, kept for every later call. */
static pthread_once_t pb_cuda_once = PTHREAD_ONCE_INIT;
static pb_cuda_entry pb_cuda;
static pb_status pb_cuda_load_status;
static char pb_cuda_load_error[PB_ERROR_CAPACITY];

#ifdef PB_HAVE_CUDA
static const pb_cuda_host pb_cuda_host_table = {
    .abi = PB_CUDA_MODULE_ABI,
    .backend_ops_bytes = sizeof(pb_backend_ops),
    .entry_bytes = sizeof(pb_cuda_entry),
    .fail = pb_fail,
    .fail_cleanup = pb_fail_cleanup,
    .error_save = pb_error_save,
    .error_restore = pb_error_restore,
    .dtype_is_quantised = pb_dtype_is_quantised,
    .dtype_bytes = pb_dtype_bytes,
    .dtype_ggml = pb_dtype_ggml,
};

/* The folder of the object this code was linked into: libpatchbay.so, or
 * the executable that holds the static library. "" when it cannot be told. */
static void own_folder(char *out, size_t cap) {
    Dl_info info;
    struct link_map *map = NULL;
    out[0] = 0;
    if (!dladdr1((void *)own_folder, &info, (void **)&map, RTLD_DL_LINKMAP) || !map)
        return;
    if (map->l_name && map->l_name[0]) {
        snprintf(out, cap, "%s", map->l_name);
    } else { /* the main program: its link map has no name */
        ssize_t n = readlink("/proc/self/exe", out, cap - 1);
        out[n > 0 ? n : 0] = 0;
    }
    char *slash = strrchr(out, '/');
    if (slash)
        slash[1] = 0;
    else
        out[0] = 0;
}

/* $PB_CUDA_MODULE, else the module beside the library (the build folder,
 * the Python package), else beside an installed lib/ one folder up, else
 * the name alone for the loader's search path. */
static void *module_open(char *tried, size_t cap) {
    const char *given = getenv("PB_CUDA_MODULE");
    if (given && *given) {
        snprintf(tried, cap, "%s", given);
        return dlopen(given, RTLD_NOW | RTLD_LOCAL);
    }
    char folder[4096];
    own_folder(folder, sizeof folder);
    const char *const formats[] = {"%s" PB_CUDA_MODULE_FILE, "%s../lib/" PB_CUDA_MODULE_FILE};
    for (size_t i = 0; folder[0] && i < sizeof formats / sizeof *formats; i++) {
        snprintf(tried, cap, formats[i], folder);
        if (access(tried, F_OK) == 0)
            return dlopen(tried, RTLD_NOW | RTLD_LOCAL);
    }
    snprintf(tried, cap, "%s (searched beside %s and on the library path)", PB_CUDA_MODULE_FILE,
             folder[0] ? folder : "this program");
    return dlopen(PB_CUDA_MODULE_FILE, RTLD_NOW | RTLD_LOCAL);
}

static pb_status module_load(void) {
    char tried[4200];
    void *module = module_open(tried, sizeof tried);
    if (!module)
        return pb_fail(PB_ERR_UNSUPPORTED, "the CUDA backend could not be loaded from %s: %s", tried, dlerror());
    pb_cuda_module_open_fn open = (pb_cuda_module_open_fn)dlsym(module, PB_CUDA_MODULE_OPEN);
    if (!open) {
        dlclose(module);
        return pb_fail(PB_ERR_UNSUPPORTED, "%s is not patchbay's CUDA backend: no %s", tried, PB_CUDA_MODULE_OPEN);
    }
    pb_error_clear();
    pb_status status = open(&pb_cuda_host_table, &pb_cuda);
    if (status == PB_OK && pb_cuda.abi != PB_CUDA_MODULE_ABI)
        status = PB_ERR_UNSUPPORTED;
    if (status != PB_OK && !pb_last_error()[0])
        pb_fail(status, "%s was built apart from this library (the seam's ABI %d, or its tables, differ): rebuild both",
                tried, PB_CUDA_MODULE_ABI);
    if (status != PB_OK) { /* refused: nothing of it is called, and it is let go */
        memset(&pb_cuda, 0, sizeof pb_cuda);
        dlclose(module);
    }
    return status; /* a module taken stays loaded for the process's life */
}
#else
static pb_status module_load(void) {
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with -DPB_CUDA=ON)");
}
#endif

static void load_once(void) {
    pb_error_saved saved;
    pb_error_save(&saved);
    pb_cuda_load_status = module_load();
    snprintf(pb_cuda_load_error, sizeof pb_cuda_load_error, "%s", pb_last_error());
    pb_error_restore(&saved);
}

pb_status pb_cuda_module_load(void) {
    pthread_once(&pb_cuda_once, load_once);
    if (pb_cuda_load_status != PB_OK)
        return pb_fail(pb_cuda_load_status, "%s", pb_cuda_load_error);
    return PB_OK;
}

/* ---- the entry points, forwarded ------------------------------------------ */

pb_status pb_backend_cuda_create(pb_backend **out, int device) {
    if (out)
        *out = NULL;
    PB_TRY(pb_cuda_module_load());
    return pb_cuda.backend_create(out, device);
}

pb_status pb_cuda_device_count(int *count) {
    if (count)
        *count = 0;
    PB_TRY(pb_cuda_module_load());
    return pb_cuda.device_count(count);
}

pb_status pb_cuda_nccl_version(int *out) {
    if (out)
        *out = 0;
    PB_TRY(pb_cuda_module_load());
    return pb_cuda.nccl_version(out);
}

pb_status pb_nccl_id_create(unsigned char id[PB_NCCL_ID_BYTES]) {
    PB_TRY(pb_cuda_module_load());
    return pb_cuda.nccl_id_create(id);
}

pb_status pb_nccl_gather_create(pb_nccl_gather **out, const unsigned char id[PB_NCCL_ID_BYTES], int rank, int size,
                                double timeout_s) {
    if (out)
        *out = NULL;
    PB_TRY(pb_cuda_module_load());
    return pb_cuda.nccl_gather_create(out, id, rank, size, timeout_s);
}

pb_status pb_nccl_gather_doubles(pb_nccl_gather *g, const double *send, double *recv, size_t count) {
    PB_TRY(pb_cuda_module_load());
    return pb_cuda.nccl_gather_doubles(g, send, recv, count);
}

void pb_nccl_gather_free(pb_nccl_gather *g) {
    if (g) /* one came from the module, so it is loaded */
        pb_cuda.nccl_gather_free(g);
}

pb_status pb_cuda_device_query(int device, pb_cuda_device_info *out) {
    if (out)
        memset(out, 0, sizeof *out);
    PB_TRY(pb_cuda_module_load());
    return pb_cuda.device_query(device, out);
}

pb_status pb_cuda_gemm_ceiling(int device, pb_dtype dtype, const int *n, const int *k, const int *count, int n_shapes,
                               int m_rows, int repeats, double *seconds_per_pass) {
    if (seconds_per_pass)
        *seconds_per_pass = 0.0;
    PB_TRY(pb_cuda_module_load());
    return pb_cuda.gemm_ceiling(device, dtype, n, k, count, n_shapes, m_rows, repeats, seconds_per_pass);
}

pb_status pb_cuda_copy_ceiling(int device, size_t bytes, int repeats, double *bytes_per_s) {
    if (bytes_per_s)
        *bytes_per_s = 0.0;
    PB_TRY(pb_cuda_module_load());
    return pb_cuda.copy_ceiling(device, bytes, repeats, bytes_per_s);
}
