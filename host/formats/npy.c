/* .npy reading and writing (NumPy format version 1.0). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/internal.h"
#include "formats/npy.h"

pb_status pb_write_file_temp(const char *path, const void *data, size_t size, char *tmp, size_t tmp_size) {
    if (snprintf(tmp, tmp_size, "%s.tmp.%ld", path, (long)getpid()) >= (int)tmp_size)
        return pb_fail(PB_ERR_ARG, "path too long: %s", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return pb_fail(PB_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    int saved = 0; /* the first failure's errno */
    if (fwrite(data, 1, size, f) != size)
        saved = errno ? errno : EIO;
    if (fflush(f) != 0 && !saved)
        saved = errno;
    if (fsync(fileno(f)) != 0 && !saved)
        saved = errno;
    if (fclose(f) != 0 && !saved)
        saved = errno;
    if (saved) {
        unlink(tmp);
        return pb_fail(PB_ERR_IO, "writing %s failed: %s", path, strerror(saved));
    }
    return PB_OK;
}

pb_status pb_write_file_atomic(const char *path, const void *data, size_t size) {
    char tmp[4096];
    PB_TRY(pb_write_file_temp(path, data, size, tmp, sizeof tmp));
    if (rename(tmp, path) != 0) {
        int saved = errno;
        unlink(tmp);
        return pb_fail(PB_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(saved));
    }
    return PB_OK;
}

/* The whole .npy file in *out (malloc'd). */
static pb_status npy_encode(const char *path, const void *data, pb_npy_dtype dtype, int n_dims, const int64_t *shape,
                            unsigned char **out, size_t *out_size) {
    if (n_dims < 0 || n_dims > 8)
        return pb_fail(PB_ERR_ARG, "npy %s: %d dims (0..8 supported)", path, n_dims);
    char header[512];
    int n = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     dtype == PB_NPY_F32 ? "<f4" : "<i4");
    uint64_t count = 1;
    for (int i = 0; i < n_dims; i++) {
        n += snprintf(header + n, sizeof header - (size_t)n, "%lld%s", (long long)shape[i],
                      n_dims == 1      ? ","
                      : i + 1 < n_dims ? ", "
                                       : "");
        count *= (uint64_t)shape[i];
    }
    n += snprintf(header + n, sizeof header - (size_t)n, "), }");
    /* Pad so the data starts on a 64-byte boundary; the header ends in '\n'. */
    size_t preamble = 10, total_header = ((preamble + (size_t)n + 1 + 63) / 64) * 64;
    size_t header_len = total_header - preamble;
    size_t bytes = total_header + count * 4;
    unsigned char *buf = malloc(bytes);
    if (!buf)
        return pb_fail(PB_ERR_OOM, "npy %s: out of memory for %zu bytes", path, bytes);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(header_len & 0xFF);
    buf[9] = (unsigned char)(header_len >> 8);
    memcpy(buf + preamble, header, (size_t)n);
    memset(buf + preamble + n, ' ', header_len - (size_t)n - 1);
    buf[total_header - 1] = '\n';
    memcpy(buf + total_header, data, count * 4);
    *out = buf;
    *out_size = bytes;
    return PB_OK;
}

pb_status pb_npy_write(const char *path, const void *data, pb_npy_dtype dtype, int n_dims, const int64_t *shape) {
    unsigned char *buf = NULL;
    size_t bytes = 0;
    PB_TRY(npy_encode(path, data, dtype, n_dims, shape, &buf, &bytes));
    pb_status status = pb_write_file_atomic(path, buf, bytes);
    free(buf);
    return status;
}

pb_status pb_npy_write_temp(const char *path, const void *data, pb_npy_dtype dtype, int n_dims, const int64_t *shape,
                            char *tmp, size_t tmp_size) {
    unsigned char *buf = NULL;
    size_t bytes = 0;
    PB_TRY(npy_encode(path, data, dtype, n_dims, shape, &buf, &bytes));
    pb_status status = pb_write_file_temp(path, buf, bytes, tmp, tmp_size);
    free(buf);
    return status;
}

static pb_status read_all(const char *path, unsigned char **out, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return pb_fail(PB_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        fclose(f);
        return pb_fail(PB_ERR_IO, "cannot read %s", path);
    }
    fclose(f);
    *out = buf;
    *size = (size_t)len;
    return PB_OK;
}

/* What the header says: where the data starts, its element size and kind,
 * and its shape. */
typedef struct npy_layout {
    size_t offset; /* of the data from the file start */
    size_t elem;   /* 4 or 8 */
    int src_float;
    int n_dims;
    uint64_t count; /* elements */
} npy_layout;

/* Magic and version: *preamble and *header_len from the first bytes. */
static pb_status parse_preamble(const char *path, const unsigned char *buf, size_t size, size_t *preamble,
                                size_t *header_len) {
    if (size < 10 || memcmp(buf, "\x93NUMPY", 6) != 0)
        return pb_fail(PB_ERR_FORMAT, "%s: not a .npy file (bad magic)", path);
    if (buf[6] == 1) {
        *header_len = buf[8] | (size_t)buf[9] << 8;
        *preamble = 10;
    } else if (buf[6] == 2 || buf[6] == 3) {
        if (size < 12)
            return pb_fail(PB_ERR_FORMAT, "%s: truncated .npy header", path);
        *header_len = buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        *preamble = 12;
    } else {
        return pb_fail(PB_ERR_FORMAT, "%s: .npy version %d is not supported", path, buf[6]);
    }
    if (*header_len > size - *preamble)
        return pb_fail(PB_ERR_FORMAT, "%s: .npy header length %zu runs past the file", path, *header_len);
    return PB_OK;
}

/* The shape tuple after 'shape': into shape (at most 8 dims). */
static pb_status parse_shape(const char *path, const char *shp, npy_layout *layout, int64_t shape[8]) {
    const char *p = strchr(shp, '(');
    layout->n_dims = 0;
    layout->count = 1;
    while (p && *++p && *p != ')') {
        if (*p == ' ' || *p == ',')
            continue;
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p || v < 0 || layout->n_dims == 8)
            return pb_fail(PB_ERR_FORMAT, "%s: bad shape in .npy header: %s", path, shp);
        /* A product that wraps would pass the size check below with a
         * shape no caller can index. */
        if (v > 0 && layout->count > UINT64_MAX / (uint64_t)v)
            return pb_fail(PB_ERR_FORMAT, "%s: .npy shape has more elements than fit in 64 bits: %s", path, shp);
        shape[layout->n_dims++] = v;
        layout->count *= (uint64_t)v;
        p = end - 1;
    }
    return PB_OK;
}

/* The header dictionary: dtype (checked against the wanted one), order and
 * shape. */
static pb_status parse_header(const char *path, const unsigned char *buf, size_t size, pb_npy_dtype dtype,
                              npy_layout *layout, int64_t shape[8]) {
    size_t preamble = 0, header_len = 0;
    PB_TRY(parse_preamble(path, buf, size, &preamble, &header_len));
    char header[4096];
    size_t copy = header_len < sizeof header - 1 ? header_len : sizeof header - 1;
    memcpy(header, buf + preamble, copy);
    header[copy] = 0;
    const char *descr = strstr(header, "'descr':");
    const char *order = strstr(header, "'fortran_order':");
    const char *shp = strstr(header, "'shape':");
    if (!descr || !order || !shp)
        return pb_fail(PB_ERR_FORMAT, "%s: .npy header lacks descr, fortran_order or shape: %s", path, header);
    if (strncmp(order + 16, " False", 6) != 0)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: Fortran-ordered arrays are not supported", path);
    char type[8] = {0};
    if (sscanf(descr + 8, " '%7[^']'", type) != 1)
        return pb_fail(PB_ERR_FORMAT, "%s: cannot read descr in .npy header", path);
    layout->elem = strcmp(type, "<f4") == 0 || strcmp(type, "<i4") == 0   ? 4
                   : strcmp(type, "<f8") == 0 || strcmp(type, "<i8") == 0 ? 8
                                                                          : 0;
    layout->src_float = type[1] == 'f';
    if (!layout->elem)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: dtype '%s' is not supported (float32/64, int32/64 are)", path, type);
    if (layout->src_float != (dtype == PB_NPY_F32))
        return pb_fail(PB_ERR_FORMAT, "%s: holds %s values where %s were expected", path, type,
                       dtype == PB_NPY_F32 ? "floats" : "integers");
    PB_TRY(parse_shape(path, shp, layout, shape));
    layout->offset = preamble + header_len;
    if (layout->count > (size - layout->offset) / layout->elem)
        return pb_fail(PB_ERR_FORMAT, "%s: .npy data holds %zu bytes, shape needs %llu", path, size - layout->offset,
                       (unsigned long long)(layout->count * layout->elem));
    return PB_OK;
}

/* out (count 4-byte elements) = the data, narrowed from 8 bytes where the
 * file holds float64 / int64. */
static pb_status convert_data(const char *path, const unsigned char *src, const npy_layout *layout, void *out) {
    for (uint64_t i = 0; i < layout->count; i++) {
        if (layout->elem == 4) {
            memcpy((char *)out + i * 4, src + i * 4, 4);
        } else if (layout->src_float) {
            double v;
            memcpy(&v, src + i * 8, 8);
            ((float *)out)[i] = (float)v;
        } else {
            int64_t v;
            memcpy(&v, src + i * 8, 8);
            if (v < INT32_MIN || v > INT32_MAX) /* would wrap silently into another id */
                return pb_fail(PB_ERR_FORMAT, "%s: int64 value %lld at flat index %llu does not fit in int32", path,
                               (long long)v, (unsigned long long)i);
            ((int32_t *)out)[i] = (int32_t)v;
        }
    }
    return PB_OK;
}

pb_status pb_npy_read(const char *path, void **data, pb_npy_dtype dtype, int *n_dims, int64_t shape[8]) {
    *data = NULL;
    unsigned char *buf = NULL;
    size_t size = 0;
    PB_TRY(read_all(path, &buf, &size));
    npy_layout layout;
    pb_status status = parse_header(path, buf, size, dtype, &layout, shape);
    if (status == PB_OK) {
        *n_dims = layout.n_dims;
        void *out = malloc(layout.count * 4 + 4);
        if (!out)
            status = pb_fail(PB_ERR_OOM, "%s: out of memory", path);
        else if ((status = convert_data(path, buf + layout.offset, &layout, out)) != PB_OK)
            free(out);
        else
            *data = out;
    }
    free(buf);
    return status;
}
