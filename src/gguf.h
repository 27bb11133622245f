/* Bounds-checked GGUF v2/v3 reader. The file is mmapped; strings and tensor
 * data are views into the mapping. Every length read from the file is
 * checked against what is left and against overflow before use. */
#ifndef CODI_GGUF_H
#define CODI_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum codi_gguf_vtype {
    CODI_GGUF_UINT8 = 0,
    CODI_GGUF_INT8 = 1,
    CODI_GGUF_UINT16 = 2,
    CODI_GGUF_INT16 = 3,
    CODI_GGUF_UINT32 = 4,
    CODI_GGUF_INT32 = 5,
    CODI_GGUF_FLOAT32 = 6,
    CODI_GGUF_BOOL = 7,
    CODI_GGUF_STRING = 8,
    CODI_GGUF_ARRAY = 9,
    CODI_GGUF_UINT64 = 10,
    CODI_GGUF_INT64 = 11,
    CODI_GGUF_FLOAT64 = 12,
    CODI_GGUF_VTYPE_COUNT
};

/* A string inside the mapping: not NUL-terminated. */
typedef struct codi_gguf_str {
    const char *ptr;
    uint64_t len;
} codi_gguf_str;

typedef struct codi_gguf_kv {
    char *key;      /* NUL-terminated copy */
    int type;       /* enum codi_gguf_vtype */
    /* scalars (type != ARRAY): */
    union {
        uint64_t u64; /* all unsigned ints, bool */
        int64_t i64;  /* all signed ints */
        double f64;   /* float32/float64 */
    } v;
    codi_gguf_str str; /* type == STRING */
    /* arrays (type == ARRAY): */
    int arr_type;          /* element type (never ARRAY) */
    uint64_t arr_n;        /* element count */
    const void *arr_data;  /* numeric elements, little endian, unaligned */
    codi_gguf_str *arr_str;/* string elements (arr_type == STRING) */
} codi_gguf_kv;

typedef struct codi_gguf_tensor {
    char *name;       /* NUL-terminated copy */
    int type;         /* enum codi_type (ggml numbering) */
    int n_dims;
    int64_t ne[4];    /* ne[0] is the contiguous (row) dimension; unused = 1 */
    uint64_t offset;  /* relative to the data section */
    uint64_t nbytes;
    const void *data; /* inside the mapping */
} codi_gguf_tensor;

typedef struct codi_gguf {
    int fd;
    void *map;            /* whole file, read-only */
    uint64_t size;
    bool owns_map;        /* false for codi_gguf_parse on a caller buffer */
    uint32_t version;
    uint64_t n_kv;
    codi_gguf_kv *kv;
    uint64_t n_tensors;
    codi_gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset; /* start of the tensor data section */
} codi_gguf;

/* Open and validate. On failure *out is NULL and err names the problem. */
int codi_gguf_open(const char *path, codi_gguf **out, char *err, size_t errlen);
/* Parse a buffer the caller keeps alive (fuzzing, tests). */
int codi_gguf_parse(const void *buf, uint64_t size, codi_gguf **out, char *err,
                    size_t errlen);
void codi_gguf_close(codi_gguf *g);

const codi_gguf_kv *codi_gguf_find(const codi_gguf *g, const char *key);
const codi_gguf_tensor *codi_gguf_find_tensor(const codi_gguf *g,
                                              const char *name);

/* Typed getters: 0 on success, CODI_ENOTFOUND when absent, CODI_EFORMAT when
 * the stored type does not convert (ints convert between widths when the
 * value fits). */
int codi_gguf_get_u32(const codi_gguf *g, const char *key, uint32_t *out);
int codi_gguf_get_i32(const codi_gguf *g, const char *key, int32_t *out);
int codi_gguf_get_f32(const codi_gguf *g, const char *key, float *out);
int codi_gguf_get_bool(const codi_gguf *g, const char *key, bool *out);
/* String value as a malloc'd NUL-terminated copy. */
int codi_gguf_get_str(const codi_gguf *g, const char *key, char **out);

/* Read numeric array element i as double / int64 (no bounds on type). */
double codi_gguf_arr_f64(const codi_gguf_kv *kv, uint64_t i);
int64_t codi_gguf_arr_i64(const codi_gguf_kv *kv, uint64_t i);

const char *codi_gguf_vtype_name(int type);

#endif
