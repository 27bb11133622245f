#include "common.h"

#include <stdarg.h>

int codi_errorf(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *codi_strerror(int code) {
    switch (code) {
    case CODI_OK: return "ok";
    case CODI_EINVAL: return "invalid argument";
    case CODI_EIO: return "I/O error";
    case CODI_EFORMAT: return "malformed file";
    case CODI_ENOMEM: return "out of memory";
    case CODI_ERANGE: return "out of range";
    case CODI_EUNSUPPORTED: return "unsupported";
    case CODI_ENOTFOUND: return "not found";
    default: return "unknown error";
    }
}
