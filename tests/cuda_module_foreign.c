/* A module that answers to the seam's symbol but was built apart: it
 * reports another ABI. tests/test_cuda_module.c checks the library refuses
 * it by name instead of calling through its table. */
#include "backend/cuda_module.h"

__attribute__((visibility("default"))) pb_status pb_cuda_module_open(const pb_cuda_host *host, pb_cuda_entry *entry) {
    (void)host;
    entry->abi = PB_CUDA_MODULE_ABI + 1;
    return PB_OK;
}
