/* Read-only view of a Hugging Face safetensors checkpoint: one
 * model.safetensors, or the shards named by model.safetensors.index.json.
 * Files are mmapped; every header length, offset and shape is checked
 * against the file before use. */
#ifndef CODI_SAFETENSORS_H
#define CODI_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

enum { ST_F32 = 0, ST_F16, ST_BF16 };

typedef struct st_tensor {
    char *name;
    int dtype;     /* ST_* */
    int n_dims;
    int64_t shape[4]; /* as stored: shape[0] outermost (PyTorch order) */
    uint64_t n_elems;
    const uint8_t *data;
    const char *file; /* shard it came from (for messages) */
} st_tensor;

typedef struct st_set st_set;

int st_open_dir(const char *dir, st_set **out, char *err, size_t errlen);
void st_close(st_set *s);
size_t st_count(const st_set *s);
const st_tensor *st_at(const st_set *s, size_t i);
const st_tensor *st_find(const st_set *s, const char *name);
/* Element i as float. */
float st_get(const st_tensor *t, uint64_t i);

#endif
