/* NumPy .npy files (format 1.0): float32 and int32, C order. Writes go to a
 * temporary file that is renamed into place, so a killed run never leaves
 * half a file under the final name. */
#ifndef PB_NPY_H
#define PB_NPY_H

#include <stdint.h>

#include "patchbay.h"

/* pb_npy_dtype, pb_npy_write and pb_npy_read are public: include/patchbay.h. */

/* Writes `size` bytes to path via path.tmp.<pid> + fsync + rename. */
pb_status pb_write_file_atomic(const char *path, const void *data, size_t size);

#endif
