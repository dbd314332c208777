/* safetensors reader: maps each file read-only, validates its header
 * completely before handing out any tensor, and for sharded checkpoints
 * cross-checks every shard against model.safetensors.index.json.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}, then the data section; offsets are relative to the
 * data section, which the tensors must cover exactly (this is the same rule
 * the reference Rust implementation enforces). */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/array.h"
#include "util/internal.h"
#include "util/outdir.h"
#include "util/json.h"
#include "formats/dtype.h"
#include "formats/safetensors.h"

/* Same cap as the reference implementation: a larger header is a corrupt
 * length field, not a real checkpoint. */
#define PB_ST_HEADER_CAP 100000000ull
#define PB_ST_MAX_DIMS 4

typedef struct pb_st_file {
    char *path;  /* as opened, for messages */
    char *shard; /* file name as written in the index; NULL when unsharded */
    void *base;  /* mapping of the whole file */
    size_t size;
} pb_st_file;

struct pb_safetensors {
    pb_st_file *files;
    int n_files;
    pb_st_tensor *tensors; /* (n_tensors) */
    int *tensor_file;      /* (n_tensors) index into files, for messages */
    int64_t n_tensors;
    size_t capacity;              /* of tensors and tensor_file alike */
    const pb_st_tensor **by_name; /* (n_tensors) sorted by strcmp(name) */
};

/* One header entry while its file is being validated. */
typedef struct pb_st_entry {
    const char *name; /* borrowed from the parsed JSON */
    pb_dtype dtype;
    int n_dims;
    int64_t shape[PB_ST_MAX_DIMS];
    uint64_t n_elements;
    uint64_t n_bytes;
    uint64_t begin;
    uint64_t end;
} pb_st_entry;

const char *pb_safetensors_dtype_name(pb_dtype dtype) {
    switch (dtype) {
    case PB_DTYPE_F32: return "F32";
    case PB_DTYPE_F16: return "F16";
    case PB_DTYPE_BF16: return "BF16";
    default: return "?"; /* safetensors holds no other */
    }
}

static uint64_t dtype_size(pb_dtype dtype) { return dtype == PB_DTYPE_F32 ? 4 : 2; }

static char *copy_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *copy = malloc(n);
    if (copy)
        memcpy(copy, s, n);
    return copy;
}

static void format_shape(char *buf, size_t size, int n_dims, const int64_t *shape) {
    size_t used = 0;
    int n = snprintf(buf, size, "[");
    used = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < n_dims && used < size; i++) {
        n = snprintf(buf + used, size - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
        used += n > 0 ? (size_t)n : 0;
    }
    if (used < size)
        snprintf(buf + used, size - used, "]");
}

/* ---- mapping -------------------------------------------------------- */

static pb_status map_file(pb_st_file *file, const char *path, const char *shard, const char *index_path) {
    memset(file, 0, sizeof *file);
    file->path = copy_string(path);
    if (!file->path || (shard && !(file->shard = copy_string(shard))))
        return pb_fail(PB_ERR_OOM, "safetensors %s: out of memory", path);

    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block the open */
    if (fd < 0) {
        if (index_path)
            return pb_fail(PB_ERR_IO, "safetensors index %s names shard '%s', which cannot be opened (%s): %s",
                           index_path, shard, path, strerror(errno));
        return pb_fail(PB_ERR_IO, "safetensors %s: cannot open: %s", path, strerror(errno));
    }
    struct stat info;
    if (fstat(fd, &info) != 0) {
        int err = errno;
        close(fd);
        return pb_fail(PB_ERR_IO, "safetensors %s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(info.st_mode)) {
        close(fd);
        return pb_fail(PB_ERR_IO, "safetensors %s: not a regular file", path);
    }
    /* Checked before mmap because mapping an empty file fails with a
     * confusing EINVAL. */
    if (info.st_size < 8) {
        close(fd);
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: file is %lld bytes, shorter than the 8-byte header length field",
                       path, (long long)info.st_size);
    }
    if ((uint64_t)info.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return pb_fail(PB_ERR_UNSUPPORTED, "safetensors %s: %lld bytes do not fit in this address space", path,
                       (long long)info.st_size);
    }
    void *base = mmap(NULL, (size_t)info.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd); /* the mapping keeps the file alive */
    if (base == MAP_FAILED)
        return pb_fail(PB_ERR_IO, "safetensors %s: cannot mmap %lld bytes: %s", path, (long long)info.st_size,
                       strerror(err));
    file->base = base;
    file->size = (size_t)info.st_size;
    return PB_OK;
}

/* ---- one file's header ---------------------------------------------- */

static pb_status parse_dtype(const char *path, const char *name, const json_t *value, pb_dtype *out) {
    if (!json_is_string(value))
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: tensor '%s': 'dtype' is %s, not a string", path, name,
                       pb_json_type_name(value));
    const char *s = json_string_value(value);
    if (strcmp(s, "F32") == 0)
        *out = PB_DTYPE_F32;
    else if (strcmp(s, "F16") == 0)
        *out = PB_DTYPE_F16;
    else if (strcmp(s, "BF16") == 0)
        *out = PB_DTYPE_BF16;
    else
        /* Real checkpoints do carry I64/F64/BOOL buffers (position ids,
         * masks); the engine has no use for them, so they are refused
         * rather than silently skipped. */
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "safetensors %s: tensor '%s': dtype '%s' is not supported (patchbay reads only F32, F16 "
                       "and BF16 tensors)",
                       path, name, s);
    return PB_OK;
}

static pb_status parse_u64(const char *path, const char *name, const char *what, int i, const json_t *value,
                           uint64_t *out) {
    if (!json_is_integer(value))
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: tensor '%s': %s[%d] is %s, not an integer", path, name, what, i,
                       pb_json_type_name(value));
    json_int_t v = json_integer_value(value);
    if (v < 0)
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: tensor '%s': %s[%d] is negative (%lld)", path, name, what, i,
                       (long long)v);
    *out = (uint64_t)v;
    return PB_OK;
}

static pb_status parse_entry(const char *path, const char *name, const json_t *value, uint64_t data_size,
                             pb_st_entry *entry) {
    if (!json_is_object(value))
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: tensor '%s': entry is %s, not an object", path, name,
                       pb_json_type_name(value));
    static const char *const required[] = {"dtype", "shape", "data_offsets"};
    for (int i = 0; i < 3; i++)
        if (!json_object_get(value, required[i]))
            return pb_fail(PB_ERR_FORMAT, "safetensors %s: tensor '%s': missing '%s'", path, name, required[i]);
    const char *key;
    json_t *member;
    json_object_foreach((json_t *)value, key, member) {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 && strcmp(key, "data_offsets") != 0)
            return pb_fail(PB_ERR_FORMAT, "safetensors %s: tensor '%s': unexpected key '%s'", path, name, key);
    }

    memset(entry, 0, sizeof *entry);
    entry->name = name;
    PB_TRY(parse_dtype(path, name, json_object_get(value, "dtype"), &entry->dtype));

    const json_t *shape = json_object_get(value, "shape");
    if (!json_is_array(shape))
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: tensor '%s': 'shape' is %s, not an array", path, name,
                       pb_json_type_name(shape));
    size_t n_dims = json_array_size(shape);
    if (n_dims > PB_ST_MAX_DIMS)
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: tensor '%s': shape has %zu dimensions; at most %d are supported",
                       path, name, n_dims, PB_ST_MAX_DIMS);
    entry->n_dims = (int)n_dims;
    uint64_t n_elements = 1;
    int overflow = 0;
    for (int i = 0; i < entry->n_dims; i++) {
        uint64_t dim = 0;
        PB_TRY(parse_u64(path, name, "shape", i, json_array_get(shape, (size_t)i), &dim));
        entry->shape[i] = (int64_t)dim; /* json_int_t is signed, so dim <= INT64_MAX */
        if (!pb_mul_u64(n_elements, dim, &n_elements))
            overflow = 1;
    }
    char shape_text[128];
    format_shape(shape_text, sizeof shape_text, entry->n_dims, entry->shape);
    /* A zero dimension makes the product 0 whatever overflowed before it. */
    for (int i = 0; i < entry->n_dims; i++) {
        if (entry->shape[i] == 0) {
            overflow = 0;
            n_elements = 0;
        }
    }
    if (overflow || !pb_mul_u64(n_elements, dtype_size(entry->dtype), &entry->n_bytes))
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: tensor '%s': shape %s of %s overflows 64-bit byte size", path,
                       name, shape_text, pb_safetensors_dtype_name(entry->dtype));
    entry->n_elements = n_elements;

    const json_t *offsets = json_object_get(value, "data_offsets");
    if (!json_is_array(offsets) || json_array_size(offsets) != 2)
        return pb_fail(PB_ERR_FORMAT,
                       "safetensors %s: tensor '%s': 'data_offsets' must be an array [begin, end], not %s%s", path,
                       name, pb_json_type_name(offsets), json_is_array(offsets) ? " of another length" : "");
    PB_TRY(parse_u64(path, name, "data_offsets", 0, json_array_get(offsets, 0), &entry->begin));
    PB_TRY(parse_u64(path, name, "data_offsets", 1, json_array_get(offsets, 1), &entry->end));
    if (entry->end < entry->begin)
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: tensor '%s': data_offsets [%llu, %llu] end before they begin",
                       path, name, (unsigned long long)entry->begin, (unsigned long long)entry->end);
    if (entry->end - entry->begin != entry->n_bytes)
        return pb_fail(PB_ERR_FORMAT,
                       "safetensors %s: tensor '%s': shape %s of %s needs %llu bytes but data_offsets [%llu, %llu] "
                       "span %llu",
                       path, name, shape_text, pb_safetensors_dtype_name(entry->dtype),
                       (unsigned long long)entry->n_bytes, (unsigned long long)entry->begin,
                       (unsigned long long)entry->end, (unsigned long long)(entry->end - entry->begin));
    if (entry->end > data_size)
        return pb_fail(PB_ERR_FORMAT,
                       "safetensors %s: tensor '%s': data_offsets [%llu, %llu] run past the data section (%llu bytes)",
                       path, name, (unsigned long long)entry->begin, (unsigned long long)entry->end,
                       (unsigned long long)data_size);
    return PB_OK;
}

static int compare_entries_by_offset(const void *a, const void *b) {
    const pb_st_entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    /* Empty tensors sort before a non-empty one starting at the same byte,
     * so they sit at the cursor instead of looking like an overlap. */
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static pb_status check_metadata(const char *path, const json_t *metadata) {
    if (!json_is_object(metadata))
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: '__metadata__' is %s, not an object of strings", path,
                       pb_json_type_name(metadata));
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)metadata, key, value) {
        if (!json_is_string(value))
            return pb_fail(PB_ERR_FORMAT, "safetensors %s: '__metadata__' key '%s' is %s, not a string", path, key,
                           pb_json_type_name(value));
    }
    return PB_OK;
}

static pb_status append_tensor(pb_safetensors *st, const pb_st_entry *entry, const uint8_t *data_section,
                               int file_index) {
    /* the two arrays grow alike from the same capacity, so one count serves both */
    size_t need = (size_t)st->n_tensors + 1, tensors_cap = st->capacity, owners_cap = st->capacity;
    PB_TRY(pb_array_reserve(&st->tensors, &tensors_cap, need, sizeof *st->tensors, "safetensors tensors"));
    PB_TRY(pb_array_reserve(&st->tensor_file, &owners_cap, need, sizeof *st->tensor_file, "safetensors tensors"));
    st->capacity = owners_cap;
    char *name = copy_string(entry->name);
    if (!name)
        return pb_fail(PB_ERR_OOM, "safetensors: out of memory for tensor name '%s'", entry->name);
    pb_st_tensor *t = &st->tensors[st->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = name;
    t->dtype = entry->dtype;
    t->n_dims = entry->n_dims;
    memcpy(t->shape, entry->shape, sizeof t->shape);
    t->n_elements = entry->n_elements;
    t->n_bytes = entry->n_bytes;
    t->data = data_section + entry->begin;
    st->tensor_file[st->n_tensors] = file_index;
    st->n_tensors++;
    return PB_OK;
}

/* Validates files[file_index] completely, then appends its tensors in
 * data-offset order. Nothing is appended when validation fails. */
static pb_status parse_file(pb_safetensors *st, int file_index) {
    const pb_st_file *file = &st->files[file_index];
    const char *path = file->path;
    const uint8_t *bytes = file->base;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = header_len << 8 | bytes[i];
    uint64_t after_length = (uint64_t)file->size - 8;
    if (header_len > PB_ST_HEADER_CAP)
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: header length %llu exceeds the %llu-byte cap", path,
                       (unsigned long long)header_len, PB_ST_HEADER_CAP);
    if (header_len > after_length)
        return pb_fail(PB_ERR_FORMAT,
                       "safetensors %s: header length %llu runs past the end of the file (%llu bytes follow the "
                       "length field)",
                       path, (unsigned long long)header_len, (unsigned long long)after_length);

    json_error_t error;
    json_t *root = json_loadb((const char *)bytes + 8, (size_t)header_len, JSON_REJECT_DUPLICATES, &error);
    if (!root)
        return pb_fail(PB_ERR_FORMAT, "safetensors %s: header is not valid JSON: %s (line %d, column %d)", path,
                       error.text, error.line, error.column);
    pb_status status = PB_OK;
    pb_st_entry *entries = NULL;
    if (!json_is_object(root)) {
        status = pb_fail(PB_ERR_FORMAT, "safetensors %s: header is %s, not a JSON object", path,
                         pb_json_type_name(root));
        goto done;
    }

    const uint8_t *data_section = bytes + 8 + header_len;
    uint64_t data_size = after_length - header_len;
    size_t n_entries = 0;
    entries = malloc((json_object_size(root) + 1) * sizeof *entries);
    if (!entries) {
        status = pb_fail(PB_ERR_OOM, "safetensors %s: out of memory for %zu header entries", path,
                         json_object_size(root));
        goto done;
    }
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "__metadata__") == 0) {
            status = check_metadata(path, value);
        } else {
            status = parse_entry(path, key, value, data_size, &entries[n_entries]);
            n_entries++;
        }
        if (status != PB_OK)
            goto done;
    }

    qsort(entries, n_entries, sizeof *entries, compare_entries_by_offset);
    uint64_t cursor = 0;
    for (size_t i = 0; i < n_entries; i++) {
        const pb_st_entry *e = &entries[i];
        if (e->begin < cursor) {
            status = pb_fail(PB_ERR_FORMAT,
                             "safetensors %s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s', which "
                             "ends at %llu",
                             path, e->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                             entries[i - 1].name, (unsigned long long)cursor);
            goto done;
        }
        if (e->begin > cursor) {
            status = pb_fail(PB_ERR_FORMAT,
                             "safetensors %s: gap in the data section: bytes [%llu, %llu) before tensor '%s' "
                             "belong to no tensor",
                             path, (unsigned long long)cursor, (unsigned long long)e->begin, e->name);
            goto done;
        }
        cursor = e->end;
    }
    if (cursor != data_size) {
        status = pb_fail(PB_ERR_FORMAT,
                         "safetensors %s: %llu trailing bytes: the data section is %llu bytes but the tensors end "
                         "at %llu",
                         path, (unsigned long long)(data_size - cursor), (unsigned long long)data_size,
                         (unsigned long long)cursor);
        goto done;
    }
    for (size_t i = 0; i < n_entries && status == PB_OK; i++)
        status = append_tensor(st, &entries[i], data_section, file_index);

done:
    free(entries);
    json_decref(root);
    return status;
}

/* ---- name index ----------------------------------------------------- */

static int compare_by_name(const void *a, const void *b) {
    const pb_st_tensor *x = *(const pb_st_tensor *const *)a, *y = *(const pb_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* Called once all tensors are appended (the pointers go stale on realloc). */
static pb_status build_name_index(pb_safetensors *st) {
    st->by_name = malloc((size_t)(st->n_tensors ? st->n_tensors : 1) * sizeof *st->by_name);
    if (!st->by_name)
        return pb_fail(PB_ERR_OOM, "safetensors: out of memory for the name index");
    for (int64_t i = 0; i < st->n_tensors; i++)
        st->by_name[i] = &st->tensors[i];
    qsort(st->by_name, (size_t)st->n_tensors, sizeof *st->by_name, compare_by_name);
    for (int64_t i = 1; i < st->n_tensors; i++) {
        const pb_st_tensor *a = st->by_name[i - 1], *b = st->by_name[i];
        if (strcmp(a->name, b->name) == 0)
            return pb_fail(PB_ERR_FORMAT, "safetensors: tensor '%s' appears twice: in %s and in %s", a->name,
                           st->files[st->tensor_file[a - st->tensors]].path,
                           st->files[st->tensor_file[b - st->tensors]].path);
    }
    return PB_OK;
}

static int64_t find_index(const pb_safetensors *st, const char *name) {
    int64_t lo = 0, hi = st->n_tensors;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->by_name[mid]->name, name);
        if (c == 0)
            return st->by_name[mid] - st->tensors;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* ---- opening -------------------------------------------------------- */

static pb_status add_file(pb_safetensors *st, const char *path, const char *shard, const char *index_path) {
    pb_st_file *files = realloc(st->files, (size_t)(st->n_files + 1) * sizeof *files);
    if (!files)
        return pb_fail(PB_ERR_OOM, "safetensors %s: out of memory", path);
    st->files = files;
    pb_status status = map_file(&st->files[st->n_files], path, shard, index_path);
    st->n_files++; /* counted even on failure so close() frees what map_file allocated */
    PB_TRY(status);
    return parse_file(st, st->n_files - 1);
}

static char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *path = malloc(a + b + 2);
    if (!path)
        return NULL;
    memcpy(path, dir, a);
    path[a] = '/';
    memcpy(path + a + 1, name, b + 1);
    return path;
}

static pb_status open_sharded(pb_safetensors *st, const char *index_path, const char *dir) {
    json_error_t error;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &error);
    if (!root)
        return pb_fail(PB_ERR_FORMAT, "safetensors index %s: not valid JSON: %s (line %d, column %d)", index_path,
                       error.text, error.line, error.column);
    pb_status status = PB_OK;
    const json_t *weight_map = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !weight_map) {
        status = pb_fail(PB_ERR_FORMAT, "safetensors index %s: missing 'weight_map'", index_path);
        goto done;
    }
    if (!json_is_object(weight_map) || json_object_size(weight_map) == 0) {
        status = pb_fail(PB_ERR_FORMAT, "safetensors index %s: 'weight_map' is %s, not an object naming tensors",
                         index_path, json_is_object(weight_map) ? "empty" : pb_json_type_name(weight_map));
        goto done;
    }
    const char *name;
    json_t *value;
    json_object_foreach((json_t *)weight_map, name, value) {
        if (!json_is_string(value)) {
            status = pb_fail(PB_ERR_FORMAT, "safetensors index %s: weight_map entry '%s' is %s, not a file name",
                             index_path, name, pb_json_type_name(value));
            goto done;
        }
        const char *shard = json_string_value(value);
        /* Shards live beside the index; a path would let an index reach
         * anywhere on disk. */
        if (shard[0] == '\0' || strchr(shard, '/') || strcmp(shard, ".") == 0 || strcmp(shard, "..") == 0) {
            status = pb_fail(PB_ERR_FORMAT,
                             "safetensors index %s: weight_map entry '%s' names shard '%s', which is not a plain "
                             "file name",
                             index_path, name, shard);
            goto done;
        }
        int seen = 0;
        for (int i = 0; i < st->n_files && !seen; i++)
            seen = strcmp(st->files[i].shard, shard) == 0;
        if (seen)
            continue;
        char *shard_path = join_path(dir, shard);
        if (!shard_path) {
            status = pb_fail(PB_ERR_OOM, "safetensors index %s: out of memory", index_path);
            goto done;
        }
        status = add_file(st, shard_path, shard, index_path);
        free(shard_path);
        if (status != PB_OK)
            goto done;
    }

    status = build_name_index(st);
    if (status != PB_OK)
        goto done;
    for (int64_t i = 0; i < st->n_tensors; i++) {
        const pb_st_file *file = &st->files[st->tensor_file[i]];
        const json_t *listed = json_object_get(weight_map, st->tensors[i].name);
        if (!listed) {
            status = pb_fail(PB_ERR_FORMAT,
                             "safetensors index %s: shard %s holds tensor '%s', which the index does "
                             "not list",
                             index_path, file->shard, st->tensors[i].name);
            goto done;
        }
        if (strcmp(json_string_value(listed), file->shard) != 0) {
            status = pb_fail(PB_ERR_FORMAT, "safetensors index %s: places tensor '%s' in %s, but it is in %s",
                             index_path, st->tensors[i].name, json_string_value(listed), file->shard);
            goto done;
        }
    }
    json_object_foreach((json_t *)weight_map, name, value) {
        if (find_index(st, name) < 0) {
            status = pb_fail(PB_ERR_FORMAT,
                             "safetensors index %s: names tensor '%s' in shard %s, which does not "
                             "hold it",
                             index_path, name, json_string_value(value));
            goto done;
        }
    }
done:
    json_decref(root);
    return status;
}

static int is_regular_file(const char *path) {
    struct stat info;
    return stat(path, &info) == 0 && S_ISREG(info.st_mode);
}

pb_status pb_safetensors_open(pb_safetensors **out, const char *path) {
    if (!out || !path)
        return pb_fail(PB_ERR_ARG, "pb_safetensors_open: NULL %s", out ? "path" : "out");
    *out = NULL;
    struct stat info;
    if (stat(path, &info) != 0)
        return pb_fail(PB_ERR_IO, "safetensors %s: %s", path, strerror(errno));

    pb_safetensors *st = calloc(1, sizeof *st);
    if (!st)
        return pb_fail(PB_ERR_OOM, "safetensors %s: out of memory", path);
    pb_status status = PB_OK;
    char *single = NULL, *index = NULL, *dir = NULL;
    if (S_ISDIR(info.st_mode)) {
        single = join_path(path, "model.safetensors");
        index = join_path(path, "model.safetensors.index.json");
        if (!single || !index) {
            status = pb_fail(PB_ERR_OOM, "safetensors %s: out of memory", path);
        } else if (is_regular_file(single)) {
            status = add_file(st, single, NULL, NULL);
            if (status == PB_OK)
                status = build_name_index(st);
        } else if (is_regular_file(index)) {
            status = open_sharded(st, index, path);
        } else {
            status = pb_fail(PB_ERR_IO,
                             "safetensors %s: folder holds neither model.safetensors nor "
                             "model.safetensors.index.json",
                             path);
        }
    } else if (pb_path_has_suffix(path, ".index.json")) {
        size_t size = strlen(path) + 2; /* room for "." */
        dir = malloc(size);
        if (!dir) {
            status = pb_fail(PB_ERR_OOM, "safetensors %s: out of memory", path);
        } else {
            pb_path_folder(path, dir, size);
            status = open_sharded(st, path, dir);
        }
    } else {
        status = add_file(st, path, NULL, NULL);
        if (status == PB_OK)
            status = build_name_index(st);
    }
    free(single);
    free(index);
    free(dir);
    if (status != PB_OK) {
        pb_safetensors_close(st);
        return status;
    }
    *out = st;
    return PB_OK;
}

void pb_safetensors_close(pb_safetensors *st) {
    if (!st)
        return;
    for (int64_t i = 0; i < st->n_tensors; i++)
        free((char *)st->tensors[i].name);
    for (int i = 0; i < st->n_files; i++) {
        if (st->files[i].base)
            munmap(st->files[i].base, st->files[i].size);
        free(st->files[i].path);
        free(st->files[i].shard);
    }
    free(st->files);
    free(st->tensors);
    free(st->tensor_file);
    free((void *)st->by_name);
    free(st);
}

int64_t pb_safetensors_count(const pb_safetensors *st) { return st ? st->n_tensors : 0; }

const pb_st_tensor *pb_safetensors_at(const pb_safetensors *st, int64_t index) {
    if (!st || index < 0 || index >= st->n_tensors)
        return NULL;
    return &st->tensors[index];
}

const pb_st_tensor *pb_safetensors_find(const pb_safetensors *st, const char *name) {
    if (!st || !name)
        return NULL;
    int64_t i = find_index(st, name);
    return i < 0 ? NULL : &st->tensors[i];
}

/* ---- conversion ----------------------------------------------------- */

/* Bytes are assembled explicitly: the data is little-endian and may be
 * unaligned. */
static float bits_to_f32(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void pb_st_tensor_to_f32(const pb_st_tensor *tensor, float *out) {
    const uint8_t *p = tensor->data;
    uint64_t n = tensor->n_elements;
    switch (tensor->dtype) {
    case PB_DTYPE_F32:
        for (uint64_t i = 0; i < n; i++, p += 4)
            out[i] = bits_to_f32((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        break;
    case PB_DTYPE_F16:
        for (uint64_t i = 0; i < n; i++, p += 2)
            out[i] = pb_fp16_to_fp32((uint16_t)(p[0] | p[1] << 8));
        break;
    case PB_DTYPE_BF16:
        for (uint64_t i = 0; i < n; i++, p += 2)
            out[i] = bits_to_f32(((uint32_t)p[0] | (uint32_t)p[1] << 8) << 16);
        break;
    default: break; /* the parser admits no other dtype */
    }
}
