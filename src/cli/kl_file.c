#include "kl_file.h"

#include <math.h>
#include <string.h>

static const char KL_MAGIC[8] = {'C', 'O', 'D', 'I', 'K', 'L', '0', '1'};

static int read_exact(FILE *f, void *p, size_t n, const char *path, char *err,
                      size_t errlen) {
    if (fread(p, 1, n, f) != n) {
        snprintf(err, errlen, "'%s' is truncated or unreadable", path);
        return 1;
    }
    return 0;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

int kl_read_header(FILE *f, const char *path, int32_t nv, int32_t n_ctx,
                   int32_t n_chunks, const int32_t *toks, char *err,
                   size_t errlen) {
    char magic[8];
    unsigned char raw[16];
    if (read_exact(f, magic, 8, path, err, errlen) ||
        read_exact(f, raw, sizeof raw, path, err, errlen))
        return 1;
    const uint32_t hdr[4] = {le32(raw), le32(raw + 4), le32(raw + 8),
                             le32(raw + 12)};
    if (memcmp(magic, KL_MAGIC, 8) != 0 || hdr[0] != 1) {
        snprintf(err, errlen, "'%s' is not a codi --kl-base file", path);
        return 1;
    }
    if (hdr[1] != (uint32_t)nv || hdr[2] != (uint32_t)n_ctx ||
        hdr[3] < (uint32_t)n_chunks) {
        snprintf(err, errlen,
                 "'%s' was made with vocab %u, context %u, %u windows; this "
                 "run has vocab %d, context %d, %d windows",
                 path, hdr[1], hdr[2], hdr[3], nv, n_ctx, n_chunks);
        return 1;
    }
    /* The whole file must be there before any window is evaluated. In
     * unsigned 64-bit: nv, n_ctx < 2^31 and hdr[3] < 2^32 cannot overflow
     * per_win, and the product is checked. */
    const int32_t first = n_ctx / 2;
    const uint64_t per_win = (uint64_t)n_ctx * 4 +
                             (uint64_t)(n_ctx - 1 - first) * (8 + 2 * (uint64_t)nv);
    if (per_win && hdr[3] > (UINT64_MAX - 24) / per_win) {
        snprintf(err, errlen, "'%s' claims %u windows, more than any file holds",
                 path, hdr[3]);
        return 1;
    }
    const uint64_t want = 24 + (uint64_t)hdr[3] * per_win;
    long long have = -1;
    if (fseeko(f, 0, SEEK_END) == 0)
        have = (long long)ftello(f);
    if (have < 0 || (uint64_t)have != want || fseeko(f, 24, SEEK_SET) != 0) {
        snprintf(err, errlen,
                 "'%s' is truncated or has extra data (%lld bytes, expected "
                 "%llu)",
                 path, have, (unsigned long long)want);
        return 1;
    }
    /* tokens must match; the size check bounds this loop by the file */
    for (int64_t i = 0; i < (int64_t)hdr[3] * n_ctx; i++) {
        unsigned char t[4];
        if (read_exact(f, t, 4, path, err, errlen))
            return 1;
        if (i < (int64_t)n_chunks * n_ctx && (int32_t)le32(t) != toks[i]) {
            snprintf(err, errlen,
                     "'%s' was made from a different text (token %lld "
                     "differs)",
                     path, (long long)i);
            return 1;
        }
    }
    return 0;
}

int kl_read_position(FILE *f, const char *path, int32_t nv, uint16_t *q,
                     float *blp, char *err, size_t errlen) {
    float mn, scale;
    if (read_exact(f, &mn, 4, path, err, errlen) ||
        read_exact(f, &scale, 4, path, err, errlen) ||
        read_exact(f, q, 2 * (size_t)nv, path, err, errlen))
        return 1;
    /* --kl-base writes min in [-1e30, 0] and a positive finite scale. */
    if (!(mn >= -1e30f && mn <= 0.0f) || !(scale > 0.0f && isfinite(scale)) ||
        !isfinite(mn + 65535.0f * scale)) {
        snprintf(err, errlen,
                 "'%s' is corrupt (log-probability range %g + q * %g)", path,
                 (double)mn, (double)scale);
        return 1;
    }
    for (int32_t i = 0; i < nv; i++)
        blp[i] = mn + q[i] * scale;
    return 0;
}
