/* NumPy .npy files (format 1.0): float32 and int32, C order. Writes go to a
 * temporary file that is renamed into place, so a killed run never leaves
 * half a file under the final name. */
#ifndef PB_NPY_H
#define PB_NPY_H

#include <stdint.h>

#include "patchbay.h"

typedef enum pb_npy_dtype { PB_NPY_F32 = 0, PB_NPY_I32 } pb_npy_dtype;

pb_status pb_npy_write(const char *path, const void *data, pb_npy_dtype dtype, int n_dims, const int64_t *shape);
/* Reads a whole file; *data is malloc'd (free with free()). shape has room
 * for 8 dims. float64 and int64 files are converted on read. */
pb_status pb_npy_read(const char *path, void **data, pb_npy_dtype dtype, int *n_dims, int64_t shape[8]);

/* Writes `size` bytes to path via path.tmp.<pid> + fsync + rename. */
pb_status pb_write_file_atomic(const char *path, const void *data, size_t size);

#endif
