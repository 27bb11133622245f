/* Fuzz target: the safetensors reader of `codi convert`
 * (src/convert/safetensors.c, st_open_dir) on one model.safetensors file:
 * u64 header length, JSON header, tensor data. The input is written into a
 * private directory (in /dev/shm when there is one) and opened; every tensor
 * it accepts has its first and last element read. Input: the file. */
#include "fuzz_common.h"

#include <sys/stat.h>
#include <unistd.h>

#include "convert/safetensors.h"

static char dir[256], file[300];

static void remove_dir(void) {
    unlink(file);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/codi-fuzz-st.XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    atexit(remove_dir);
    return 0;
}

static volatile float sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FILE *f = fopen(file, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    st_set *s = NULL;
    char err[512] = "";
    int rc = st_open_dir(dir, &s, err, sizeof err);
    if (rc) {
        fuzz_check_error(rc, err, sizeof err);
        FUZZ_CHECK(s == NULL);
        return 0;
    }
    FUZZ_CHECK(st_count(s) > 0);
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_at(s, i);
        FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= 4);
        FUZZ_CHECK(st_find(s, t->name) != NULL);
        if (t->n_elems) {
            sink += st_get(t, 0);
            sink += st_get(t, t->n_elems - 1);
        }
    }
    st_close(s);
    return 0;
}
