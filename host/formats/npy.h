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
/* The first half of pb_write_file_atomic, for writers of a set of files that
 * replace old ones only once every new one is safe: writes and fsyncs
 * path.tmp.<pid> (its name in tmp, tmp_size bytes) and stops; the caller
 * renames it into place or unlinks it. On failure nothing is left. */
pb_status pb_write_file_temp(const char *path, const void *data, size_t size, char *tmp, size_t tmp_size);
/* pb_npy_write's file, by pb_write_file_temp. */
pb_status pb_npy_write_temp(const char *path, const void *data, pb_npy_dtype dtype, int n_dims, const int64_t *shape,
                            char *tmp, size_t tmp_size);

#endif
