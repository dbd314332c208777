/* The module's side of the seam (host/backend/cuda_module.h): its one
 * export, and the library functions the backend calls, forwarded to the
 * library that opened it, so the error a CUDA call records is the one
 * pb_last_error() shows and the storage types have one table. */
#include <stdarg.h>
#include <stdio.h>

extern "C" {
#include "backend/cuda_module.h"
#include "formats/dtype.h"
}

static const pb_cuda_host *pb_host; /* set once by pb_cuda_module_open */

extern "C" __attribute__((visibility("default"))) pb_status pb_cuda_module_open(const pb_cuda_host *host,
                                                                                pb_cuda_entry *entry) {
    if (!host || !entry || host->abi != PB_CUDA_MODULE_ABI || host->entry_bytes != sizeof *entry)
        return PB_ERR_UNSUPPORTED; /* nothing of the host's can be trusted to report it: the loader does */
    if (host->backend_ops_bytes != sizeof(pb_backend_ops))
        return host->fail(PB_ERR_UNSUPPORTED,
                          "%s: built with another pb_backend_ops (%zu bytes here, %zu in the library): rebuild both",
                          PB_CUDA_MODULE_FILE, sizeof(pb_backend_ops), host->backend_ops_bytes);
    pb_host = host;
    entry->abi = PB_CUDA_MODULE_ABI;
    entry->backend_create = pb_backend_cuda_create;
    entry->device_count = pb_cuda_device_count;
    entry->nccl_version = pb_cuda_nccl_version;
    entry->nccl_id_create = pb_nccl_id_create;
    entry->nccl_gather_create = pb_nccl_gather_create;
    entry->nccl_gather_doubles = pb_nccl_gather_doubles;
    entry->nccl_gather_free = pb_nccl_gather_free;
    entry->device_query = pb_cuda_device_query;
    entry->gemm_ceiling = pb_cuda_gemm_ceiling;
    entry->copy_ceiling = pb_cuda_copy_ceiling;
    return PB_OK;
}

/* ---- the library's functions, as the module's code calls them ------------ */

/* The message formatted here, recorded there. */
static pb_status forward(pb_status (*record)(pb_status, const char *, ...), pb_status status, const char *fmt,
                         va_list args) {
    char message[PB_ERROR_CAPACITY];
    vsnprintf(message, sizeof message, fmt, args);
    return record(status, "%s", message);
}

extern "C" pb_status pb_fail(pb_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    status = forward(pb_host->fail, status, fmt, args);
    va_end(args);
    return status;
}

extern "C" pb_status pb_fail_cleanup(pb_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    status = forward(pb_host->fail_cleanup, status, fmt, args);
    va_end(args);
    return status;
}

extern "C" void pb_error_save(pb_error_saved *saved) { pb_host->error_save(saved); }
extern "C" void pb_error_restore(const pb_error_saved *saved) { pb_host->error_restore(saved); }

extern "C" int pb_dtype_is_quantised(pb_dtype dtype) { return pb_host->dtype_is_quantised(dtype); }
extern "C" size_t pb_dtype_bytes(pb_dtype dtype, uint64_t n) { return pb_host->dtype_bytes(dtype, n); }
extern "C" uint32_t pb_dtype_ggml(pb_dtype dtype) { return pb_host->dtype_ggml(dtype); }
