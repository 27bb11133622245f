/* GGUF v3 writer: metadata and tensor infos are collected first, then the
 * file is written in one pass; each tensor's bytes come from a caller's
 * fill callback, so no more than one tensor is held in memory. */
#ifndef CODI_GGUF_WRITE_H
#define CODI_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct codi_gguf_writer codi_gguf_writer;

/* Produce tensor i's nbytes of data into dst. 0 or a negative CODI_E*. */
typedef int (*codi_gguf_fill_fn)(void *user, size_t i, void *dst, size_t nbytes, char *err, size_t errlen);

codi_gguf_writer *codi_gguf_writer_new(void);
void codi_gguf_writer_free(codi_gguf_writer *w);

/* Metadata; a later value for the same key replaces the earlier one. Each
 * returns 0 or CODI_ENOMEM (the writer then refuses to write). */
int codi_gguf_w_str(codi_gguf_writer *w, const char *key, const char *v);
int codi_gguf_w_u32(codi_gguf_writer *w, const char *key, uint32_t v);
int codi_gguf_w_f32(codi_gguf_writer *w, const char *key, float v);
int codi_gguf_w_bool(codi_gguf_writer *w, const char *key, bool v);
int codi_gguf_w_arr_str(codi_gguf_writer *w, const char *key, const char *const *v, size_t n);
int codi_gguf_w_arr_i32(codi_gguf_writer *w, const char *key, const int32_t *v, size_t n);
int codi_gguf_w_arr_f32(codi_gguf_writer *w, const char *key, const float *v, size_t n);
/* A copy of a key/value pair read by codi_gguf_open (any type), written
 * back byte for byte. 0, CODI_EINVAL (unknown type) or CODI_ENOMEM. */
struct codi_gguf_kv;
int codi_gguf_w_copy(codi_gguf_writer *w, const struct codi_gguf_kv *kv);

/* A tensor of a codi_type with ne[0..n_dims) (ne[0] contiguous). Its size
 * must be whole blocks of the type. Returns 0, CODI_EINVAL or CODI_ENOMEM. */
int codi_gguf_w_tensor(codi_gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne);
size_t codi_gguf_w_n_tensors(const codi_gguf_writer *w);
uint64_t codi_gguf_w_tensor_bytes(const codi_gguf_writer *w, size_t i);

/* Write everything to path (replaced). progress(user, done, total) after
 * each tensor, in bytes of tensor data. On failure the file is removed. */
int codi_gguf_writer_write(codi_gguf_writer *w, const char *path, codi_gguf_fill_fn fill, void *user,
                           void (*progress)(void *user, uint64_t done, uint64_t total), void *puser,
                           char *err, size_t errlen);

#endif
