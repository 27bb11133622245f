/* Expert store (moe/expert_store.h) against a synthetic file whose byte i
 * is a hash of i: every acquire hands out exactly the file's bytes of that
 * expert, with O_DIRECT and without, through evictions (LRU and LFU orders
 * on scripted sequences), pins, prefetches, random mixes with I/O threads,
 * broken layouts and a file truncated under the store. O_DIRECT files are
 * read through Linux AIO (an expert's parts in parallel) and, with no_aio,
 * by pread alone; both paths run the byte, random-mix and I/O-error tests. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/aio_abi.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common.h"
#include "moe/expert_store.h"

enum { NL = 3, NE = 6, NP = 3, PG = 4096 };

typedef struct {
    char path[256];
    int fd;
    uint8_t *data; /* the file's bytes */
    uint64_t size;
    uint64_t off[NL * NP], len[NL * NP];
} fixture;

static uint8_t byte_at(uint64_t i) {
    uint64_t z = i + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint8_t)(z ^ (z >> 31));
}

static void write_all(int fd, const uint8_t *p, uint64_t n) {
    uint64_t done = 0;
    while (done < n) {
        const ssize_t w = pwrite(fd, p + done, (size_t)(n - done), (off_t)done);
        assert_true(w > 0);
        done += (uint64_t)w;
    }
}

/* Parts at unaligned offsets with odd lengths, one part over two pages, odd
 * gaps between stacked tensors; the last part ends exactly at EOF. */
static fixture *fixture_new(void) {
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    uint64_t cur = 100;
    for (int l = 0; l < NL; l++)
        for (int p = 0; p < NP; p++) {
            const int i = l * NP + p;
            f->off[i] = cur;
            f->len[i] = 1001 + 1237 * (uint64_t)p + 333 * (uint64_t)l + (l == 1 && p == 2 ? 9000 : 0);
            cur += NE * f->len[i];
            if (!(l == NL - 1 && p == NP - 1))
                cur += 7 + 13 * (uint64_t)p;
        }
    f->size = cur;
    f->data = malloc(f->size);
    assert_non_null(f->data);
    for (uint64_t i = 0; i < f->size; i++)
        f->data[i] = byte_at(i);
    /* CODI_EXPERT_STORE_TMPDIR=/dev/shm (tmpfs) runs it without O_DIRECT */
    const char *dir = getenv("CODI_EXPERT_STORE_TMPDIR");
    snprintf(f->path, sizeof(f->path), "%s/codi_expert_store_XXXXXX", dir ? dir : "/tmp");
    f->fd = mkstemp(f->path);
    assert_true(f->fd >= 0);
    write_all(f->fd, f->data, f->size);
    return f;
}

static void fixture_free(fixture *f) {
    close(f->fd);
    unlink(f->path);
    free(f->data);
    free(f);
}

/* pread only for the stores the next tests open (set per test) */
static bool g_no_aio;

static codi_expert_store_params params(const fixture *f, int64_t n_slots, int policy, int n_io,
                                       bool direct) {
    codi_expert_store_params p = {
        .path = f->path, .n_layer = NL, .n_expert = NE, .n_parts = NP,
        .part_off = f->off, .part_bytes = f->len, .n_slots = n_slots,
        .policy = policy, .n_io_threads = n_io, .direct = direct, .no_aio = g_no_aio};
    return p;
}

/* Can this process set up a Linux AIO context at all? */
static bool aio_available(void) {
    aio_context_t ctx = 0;
    if (syscall(SYS_io_setup, 4L, &ctx) != 0)
        return false;
    syscall(SYS_io_destroy, ctx);
    return true;
}

static codi_expert_store *open_store(const fixture *f, int64_t n_slots, int policy, int n_io,
                                     bool direct) {
    const codi_expert_store_params p = params(f, n_slots, policy, n_io, direct);
    codi_expert_store *s = NULL;
    char err[256] = "";
    const int rc = codi_expert_store_open(&p, &s, err, sizeof(err));
    if (rc)
        fprintf(stderr, "open: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(s);
    return s;
}

/* Aligned bytes one read of expert (l, e) requests. */
static uint64_t read_bytes(const fixture *f, int l, int e) {
    uint64_t sum = 0;
    for (int p = 0; p < NP; p++) {
        const uint64_t off = f->off[l * NP + p] + (uint64_t)e * f->len[l * NP + p];
        const uint64_t end = off + f->len[l * NP + p];
        sum += (end + PG - 1) / PG * PG - off / PG * PG;
    }
    return sum;
}

static void check_parts(const fixture *f, int l, int e, const void *parts[CODI_EXPERT_MAX_PARTS]) {
    for (int p = 0; p < NP; p++) {
        const uint64_t off = f->off[l * NP + p] + (uint64_t)e * f->len[l * NP + p];
        assert_non_null(parts[p]);
        /* the aligned region the part sits in starts on a page */
        assert_int_equal(((uintptr_t)parts[p] - off % PG) % PG, 0);
        assert_memory_equal(parts[p], f->data + off, f->len[l * NP + p]);
    }
    for (int p = NP; p < CODI_EXPERT_MAX_PARTS; p++)
        assert_null(parts[p]);
}

static void acquire_ok(codi_expert_store *s, const fixture *f, int l, int e) {
    const void *parts[CODI_EXPERT_MAX_PARTS];
    char err[256] = "";
    const int rc = codi_expert_store_acquire(s, l, e, parts, err, sizeof(err));
    if (rc)
        fprintf(stderr, "acquire(%d, %d): %s\n", l, e, err);
    assert_int_equal(rc, 0);
    check_parts(f, l, e, parts);
}

/* acquire, check, release */
static void use(codi_expert_store *s, const fixture *f, int l, int e) {
    acquire_ok(s, f, l, e);
    codi_expert_store_release(s, l, e);
}

/* exactly the experts in want[] (l * NE + e, -1 terminated) are resident */
static void check_resident(codi_expert_store *s, const int *want) {
    for (int l = 0; l < NL; l++)
        for (int e = 0; e < NE; e++) {
            bool in = false;
            for (int k = 0; want[k] >= 0; k++)
                in = in || want[k] == l * NE + e;
            if (codi_expert_store_resident(s, l, e) != in)
                fprintf(stderr, "expert %d of layer %d: resident %d, want %d\n", e, l, !in, in);
            assert_int_equal(codi_expert_store_resident(s, l, e), in);
        }
}

static void sleep_ms(int ms) {
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

static void wait_resident(codi_expert_store *s, int l, int e) {
    for (int t = 0; t < 5000 && !codi_expert_store_resident(s, l, e); t++)
        sleep_ms(1);
    assert_true(codi_expert_store_resident(s, l, e));
}

static void wait_io_errors(codi_expert_store *s, uint64_t n) {
    codi_expert_stats st;
    for (int t = 0; t < 5000; t++) {
        codi_expert_store_get_stats(s, &st);
        if (st.io_errors >= n)
            break;
        sleep_ms(1);
    }
    assert_int_equal(st.io_errors, n);
}

/* every expert, all slots: bytes, alignment, sizes, exact stats */
static void all_bytes(bool direct) {
    fixture *f = fixture_new();
    const codi_expert_store_params p = params(f, NL * NE, CODI_EXPERT_LRU, 0, direct);
    uint64_t worst = 0, total = 0;
    for (int l = 0; l < NL; l++)
        for (int e = 0; e < NE; e++) {
            worst = CODI_MAX(worst, read_bytes(f, l, e));
            total += read_bytes(f, l, e);
        }
    assert_int_equal(codi_expert_store_slot_bytes(&p), worst);
    codi_expert_store *s = open_store(f, NL * NE, CODI_EXPERT_LRU, 0, direct);
    assert_int_equal(codi_expert_store_cache_bytes(s), (uint64_t)NL * NE * worst);
    codi_expert_stats st;
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.direct, codi_expert_store_direct(s));
    if (!direct)
        assert_false(codi_expert_store_direct(s));
    else
        print_message("O_DIRECT on %s: %s\n", f->path, st.direct ? "in use" : "not supported");
    for (int round = 0; round < 2; round++)
        for (int l = NL - 1; l >= 0; l--)
            for (int e = 0; e < NE; e++)
                use(s, f, l, e);
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.acquires, 2 * NL * NE);
    assert_int_equal(st.sync_loads, NL * NE);
    assert_int_equal(st.hits, NL * NE);
    assert_int_equal(st.inflight_hits, 0);
    assert_int_equal(st.evictions, 0);
    assert_int_equal(st.prefetches, 0);
    assert_int_equal(st.io_errors, 0);
    assert_int_equal(st.bytes_read, total);
    assert_true(st.read_seconds >= 0.0 && st.stall_seconds >= st.read_seconds * 0.5);
    /* every read went through AIO exactly when O_DIRECT is in use, AIO is
     * allowed and the kernel offers it */
    const bool aio = st.direct && !g_no_aio && aio_available();
    if (st.direct && !g_no_aio && !aio)
        print_message("Linux AIO unavailable: the O_DIRECT reads used pread\n");
    assert_int_equal(st.aio_reads, aio ? (uint64_t)(NL * NE) : 0);
    /* each layer's sync loads waited under that layer, and the layers add
     * up to the total */
    double sum = 0.0;
    for (int l = 0; l < NL; l++) {
        const double w = codi_expert_store_layer_stall(s, l);
        assert_true(w > 0.0);
        sum += w;
    }
    assert_float_equal(sum, st.stall_seconds, 1e-9 + 1e-9 * st.stall_seconds);
    assert_true(codi_expert_store_layer_stall(s, -1) == 0.0);
    assert_true(codi_expert_store_layer_stall(s, NL) == 0.0);
    assert_true(codi_expert_store_layer_stall(NULL, 0) == 0.0);
    codi_expert_store_reset_stats(s);
    for (int l = 0; l < NL; l++)
        assert_true(codi_expert_store_layer_stall(s, l) == 0.0);
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.acquires, 0);
    assert_int_equal(st.bytes_read, 0);
    assert_int_equal(st.direct, codi_expert_store_direct(s));
    codi_expert_store_close(s);
    fixture_free(f);
}

static void test_bytes_direct(void **state) {
    (void)state;
    all_bytes(true);
}

static void test_bytes_buffered(void **state) {
    (void)state;
    all_bytes(false);
}

/* LRU: A B C A D evicts B; E evicts C. Stats exact. */
static void test_lru_order(void **state) {
    (void)state;
    fixture *f = fixture_new();
    for (int direct = 0; direct < 2; direct++) {
        codi_expert_store *s = open_store(f, 3, CODI_EXPERT_LRU, 0, direct);
        enum { A = 0, B = 1, C = 2, D = 3, E = 4 };
        const int l = 1;
        use(s, f, l, A);
        use(s, f, l, B);
        use(s, f, l, C);
        use(s, f, l, A);
        use(s, f, l, D);
        check_resident(s, (const int[]){l * NE + A, l * NE + C, l * NE + D, -1});
        use(s, f, l, E);
        check_resident(s, (const int[]){l * NE + A, l * NE + D, l * NE + E, -1});
        use(s, f, 2, A); /* evicts A (used before D and E) */
        check_resident(s, (const int[]){l * NE + D, l * NE + E, 2 * NE + A, -1});
        codi_expert_stats st;
        codi_expert_store_get_stats(s, &st);
        assert_int_equal(st.acquires, 7);
        assert_int_equal(st.hits, 1);
        assert_int_equal(st.sync_loads, 6);
        assert_int_equal(st.evictions, 3);
        assert_int_equal(st.bytes_read, read_bytes(f, l, A) + read_bytes(f, l, B) +
                                            read_bytes(f, l, C) + read_bytes(f, l, D) +
                                            read_bytes(f, l, E) + read_bytes(f, 2, A));
        codi_expert_store_close(s);
    }
    fixture_free(f);
}

/* LFU: counts survive eviction, ties go to the least recently used. */
static void test_lfu_order(void **state) {
    (void)state;
    fixture *f = fixture_new();
    codi_expert_store *s = open_store(f, 3, CODI_EXPERT_LFU, 0, true);
    enum { A = 0, B = 1, C = 2, D = 3, E = 4 };
    const int l = 0;
    use(s, f, l, A);
    use(s, f, l, A);
    use(s, f, l, A);
    use(s, f, l, B);
    use(s, f, l, B);
    use(s, f, l, C);
    use(s, f, l, D); /* A3 B2 C1: evicts C */
    check_resident(s, (const int[]){A, B, D, -1});
    use(s, f, l, E); /* A3 B2 D1: evicts D */
    check_resident(s, (const int[]){A, B, E, -1});
    use(s, f, l, D); /* D comes back with 2; A3 B2 E1: evicts E */
    check_resident(s, (const int[]){A, B, D, -1});
    use(s, f, l, C); /* C now 2; A3 B2 D2, B older: evicts B */
    check_resident(s, (const int[]){A, C, D, -1});
    codi_expert_stats st;
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.acquires, 10);
    assert_int_equal(st.hits, 3);
    assert_int_equal(st.sync_loads, 7);
    assert_int_equal(st.evictions, 4);
    assert_int_equal(st.bytes_read, read_bytes(f, l, A) + read_bytes(f, l, B) +
                                        2 * read_bytes(f, l, C) + 2 * read_bytes(f, l, D) +
                                        read_bytes(f, l, E));
    codi_expert_store_close(s);
    fixture_free(f);
}

/* Pinned slots are never evicted; all pinned: CODI_ENOMEM. */
/* NEXTUSE: layers run in a cycle 0, 1, 2, 0, ...; an expert used on every
 * pass of its layer is kept over one used once, and among experts used
 * equally often the one of the layer just finished goes first (needed
 * last). A prefetch guess right with probability p is admitted only over an
 * expert used less often than p. */
static void test_nextuse_order(void **state) {
    (void)state;
    fixture *f = fixture_new();
    codi_expert_store *s = open_store(f, 4, CODI_EXPERT_NEXTUSE, 1, true);
    /* three passes: layer 0 uses 0, layer 1 uses 0, layer 2 uses 0 and,
     * on the first pass only, 1 */
    for (int pass = 0; pass < 3; pass++) {
        use(s, f, 0, 0);
        use(s, f, 1, 0);
        use(s, f, 2, 0);
        if (pass == 0)
            use(s, f, 2, 1);
    }
    check_resident(s, (const int[]){0 * NE + 0, 1 * NE + 0, 2 * NE + 0, 2 * NE + 1, -1});
    use(s, f, 0, 0); /* now in layer 0: layer 2's rarely used expert 1 goes */
    use(s, f, 0, 3);
    check_resident(s, (const int[]){0 * NE + 0, 0 * NE + 3, 1 * NE + 0, 2 * NE + 0, -1});
    /* the once-used expert 3 goes before layer 0's always-used expert 0 */
    use(s, f, 0, 4);
    check_resident(s, (const int[]){0 * NE + 0, 0 * NE + 4, 1 * NE + 0, 2 * NE + 0, -1});
    /* moving on to layer 1: among the always-used, layer 0's expert 0 is
     * needed last; expert 4 (once in 4 passes) still goes first */
    use(s, f, 1, 0);
    use(s, f, 1, 1);
    check_resident(s, (const int[]){0 * NE + 0, 1 * NE + 0, 1 * NE + 1, 2 * NE + 0, -1});
    use(s, f, 1, 2); /* victim among 0/0 (next use 2 layers away), 1/1 (once),
                        2/0 (1 layer away): the once-used 1/1 */
    check_resident(s, (const int[]){0 * NE + 0, 1 * NE + 0, 1 * NE + 2, 2 * NE + 0, -1});
    /* a weak guess for layer 2 does not displace the once-used 1/2 */
    codi_expert_store_prefetch_p(s, 2, 5, 0.1);
    codi_expert_stats st;
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.prefetch_declined, 1);
    codi_expert_store_prefetch_p(s, 2, 5, 0.9); /* a strong one does */
    wait_resident(s, 2, 5);
    assert_false(codi_expert_store_resident(s, 1, 2));
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.prefetch_declined, 1);
    assert_int_equal(st.prefetches, 1);
    codi_expert_store_close(s);
    fixture_free(f);
}

static void test_pinned(void **state) {
    (void)state;
    fixture *f = fixture_new();
    codi_expert_store *s = open_store(f, 2, CODI_EXPERT_LRU, 1, false);
    const void *parts[CODI_EXPERT_MAX_PARTS];
    char err[256] = "";
    acquire_ok(s, f, 0, 0);
    acquire_ok(s, f, 0, 1);
    assert_int_equal(codi_expert_store_acquire(s, 0, 2, parts, err, sizeof(err)), CODI_ENOMEM);
    assert_true(strlen(err) > 0 && strchr(err, '\n') == NULL);
    codi_expert_store_prefetch(s, 0, 3); /* nowhere to go: dropped */
    check_resident(s, (const int[]){0, 1, -1});
    codi_expert_store_release(s, 0, 0);
    acquire_ok(s, f, 0, 2); /* evicts (0, 0), the only unpinned one */
    check_resident(s, (const int[]){1, 2, -1});
    acquire_ok(s, f, 0, 1); /* (0, 1) pinned twice */
    codi_expert_store_release(s, 0, 1);
    codi_expert_store_release(s, 0, 2);
    acquire_ok(s, f, 0, 4); /* (0, 1) still pinned once: evicts (0, 2) */
    check_resident(s, (const int[]){1, 4, -1});
    codi_expert_store_release(s, 0, 1);
    codi_expert_store_release(s, 0, 4);
    codi_expert_store_release(s, 0, 4); /* extra releases are ignored */
    codi_expert_store_release(s, 2, 5); /* ... as are ones of absent experts */
    codi_expert_store_release(s, 99, 0);
    use(s, f, 0, 5);
    codi_expert_stats st;
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.acquires, 7); /* the failed one included */
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.sync_loads, 5);
    assert_int_equal(st.prefetch_dropped, 1);
    assert_int_equal(st.prefetches, 0);
    /* bad arguments */
    assert_int_equal(codi_expert_store_acquire(s, NL, 0, parts, err, sizeof(err)), CODI_EINVAL);
    assert_int_equal(codi_expert_store_acquire(s, 0, -1, parts, err, sizeof(err)), CODI_EINVAL);
    assert_int_equal(codi_expert_store_acquire(s, 0, 0, NULL, err, sizeof(err)), CODI_EINVAL);
    codi_expert_store_prefetch(s, -1, 0);
    assert_false(codi_expert_store_resident(s, 0, NE));
    codi_expert_store_close(s);
    fixture_free(f);
}

static void test_prefetch(void **state) {
    (void)state;
    fixture *f = fixture_new();
    codi_expert_store *s = open_store(f, 4, CODI_EXPERT_LRU, 2, true);
    codi_expert_stats st;
    /* prefetched and landed before the acquire: a hit */
    codi_expert_store_prefetch(s, 1, 2);
    wait_resident(s, 1, 2);
    codi_expert_store_prefetch(s, 1, 2); /* resident: nothing */
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.prefetches, 1);
    assert_int_equal(st.bytes_read, read_bytes(f, 1, 2));
    use(s, f, 1, 2);
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.prefetch_used, 1);
    assert_int_equal(st.sync_loads, 0);
    /* acquired right after the request: waits for it, or finds it landed */
    codi_expert_store_prefetch(s, 1, 3);
    codi_expert_store_prefetch(s, 1, 3); /* in flight: nothing */
    use(s, f, 1, 3);
    use(s, f, 1, 3); /* the second use of a prefetch is not counted again */
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.acquires, 3);
    assert_int_equal(st.hits + st.inflight_hits, 3);
    assert_int_equal(st.sync_loads, 0);
    assert_int_equal(st.prefetches, 2);
    assert_int_equal(st.prefetch_used, 2);
    assert_int_equal(st.prefetch_dropped, 0);
    assert_int_equal(st.bytes_read, read_bytes(f, 1, 2) + read_bytes(f, 1, 3));
    /* a wait for a read in flight counts under its layer, 1, only */
    assert_true(codi_expert_store_layer_stall(s, 0) == 0.0);
    assert_float_equal(codi_expert_store_layer_stall(s, 1), st.stall_seconds, 1e-12);
    if (st.inflight_hits > 0)
        assert_true(codi_expert_store_layer_stall(s, 1) > 0.0);
    codi_expert_store_close(s);

    /* no I/O threads: prefetch is a no-op */
    s = open_store(f, 4, CODI_EXPERT_LRU, 0, true);
    codi_expert_store_prefetch(s, 0, 0);
    assert_false(codi_expert_store_resident(s, 0, 0));
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.prefetches + st.prefetch_dropped, 0);
    codi_expert_store_close(s);
    fixture_free(f);
}

/* Under LFU a fresh prefetch (count 0) survives the sync loads of the layer
 * before it; a mispredicted one goes first once its layer is done. */
static void test_prefetch_protected(void **state) {
    (void)state;
    fixture *f = fixture_new();
    codi_expert_store *s = open_store(f, 3, CODI_EXPERT_LFU, 1, false);
    for (int k = 0; k < 3; k++) {
        use(s, f, 0, 0);
        use(s, f, 0, 1);
    }
    codi_expert_store_prefetch(s, 1, 0);
    wait_resident(s, 1, 0);
    use(s, f, 0, 2); /* counts 3, 3, 0(protected): evicts (0, 0), the older */
    check_resident(s, (const int[]){1, 2, NE + 0, -1});
    codi_expert_store_prefetch(s, 1, 1); /* evicts (0, 2), count 1 */
    wait_resident(s, 1, 1);
    codi_expert_store_prefetch(s, 2, 5); /* a misprediction; evicts (0, 1) */
    wait_resident(s, 2, 5);
    check_resident(s, (const int[]){NE + 0, NE + 1, 2 * NE + 5, -1});
    codi_expert_store_prefetch(s, 2, 4); /* fresh prefetches never evict each
                                            other: dropped */
    use(s, f, 1, 0);
    use(s, f, 1, 1);
    use(s, f, 2, 0); /* (2, 5) still protected; (1, 0) and (1, 1) count 1 */
    check_resident(s, (const int[]){NE + 1, 2 * NE + 0, 2 * NE + 5, -1});
    use(s, f, 0, 3); /* layer 2 done: (2, 5), count 0, goes first */
    check_resident(s, (const int[]){NE + 1, 2 * NE + 0, 3, -1});
    codi_expert_stats st;
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.prefetches, 3);
    assert_int_equal(st.prefetch_used, 2);
    assert_int_equal(st.prefetch_dropped, 1);
    assert_int_equal(st.acquires, 11);
    assert_int_equal(st.hits, 6);
    assert_int_equal(st.sync_loads, 5);
    codi_expert_store_close(s);
    fixture_free(f);
}

/* Random acquires (some held), prefetches and releases with 2 I/O threads:
 * bytes checked on every acquire and again before each release. */
/* prefetch_first: queued ahead of the guesses (the ring's head wraps below
 * slot 0 on the first one) and admitted where a guess is declined; every
 * queued read lands with the file's bytes. */
static void test_prefetch_first(void **state) {
    (void)state;
    fixture *f = fixture_new();
    codi_expert_store *s = open_store(f, 6, CODI_EXPERT_LFU, 1, true);
    codi_expert_store_prefetch_first(s, 2, 4); /* empty queue: head wraps */
    codi_expert_store_prefetch(s, 0, 0);
    codi_expert_store_prefetch(s, 0, 1);
    codi_expert_store_prefetch_first(s, 1, 0);
    codi_expert_store_prefetch(s, 0, 2);
    codi_expert_store_prefetch_first(s, 1, 1);
    const int got[][2] = {{2, 4}, {0, 0}, {0, 1}, {1, 0}, {0, 2}, {1, 1}};
    for (int k = 0; k < 6; k++)
        wait_resident(s, got[k][0], got[k][1]);
    codi_expert_stats st;
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.prefetches, 6);
    assert_int_equal(st.prefetch_dropped, 0);
    for (int k = 0; k < 6; k++)
        use(s, f, got[k][0], got[k][1]);
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.hits, 6);
    assert_int_equal(st.prefetch_used, 6);
    codi_expert_store_close(s);

    /* one slot, used on every pass of its layer: a guess right half the time
     * is declined, the sure read is not */
    s = open_store(f, 1, CODI_EXPERT_LFU, 1, true);
    for (int k = 0; k < 3; k++)
        use(s, f, 0, 0);
    codi_expert_store_prefetch_p(s, 0, 1, 0.5);
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.prefetch_declined, 1);
    assert_true(codi_expert_store_resident(s, 0, 0));
    codi_expert_store_prefetch_first(s, 0, 1);
    wait_resident(s, 0, 1);
    use(s, f, 0, 1);
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.prefetch_declined, 1);
    assert_int_equal(st.prefetch_used, 1);
    codi_expert_store_close(s);
    fixture_free(f);
}

static void random_mix(int policy, bool direct, uint64_t seed) {
    fixture *f = fixture_new();
    codi_expert_store *s = open_store(f, 5, policy, 2, direct);
    enum { MAX_HELD = 3 };
    int held[MAX_HELD][2];
    const void *held_parts[MAX_HELD][CODI_EXPERT_MAX_PARTS];
    int n_held = 0;
    uint64_t x = seed, requests = 0;
    for (int op = 0; op < 4000; op++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        const unsigned r = (unsigned)(x >> 33);
        const int l = (int)(r % NL), e = (int)((r / NL) % NE), kind = (int)((r / 64) % 10);
        if (kind < 4) {
            codi_expert_store_prefetch(s, l, e);
            requests++;
        } else if (kind < 8) {
            const void *parts[CODI_EXPERT_MAX_PARTS];
            char err[256] = "";
            const int rc = codi_expert_store_acquire(s, l, e, parts, err, sizeof(err));
            if (rc)
                fprintf(stderr, "acquire: %s\n", err);
            assert_int_equal(rc, 0);
            check_parts(f, l, e, parts);
            if (kind == 7 && n_held < MAX_HELD) {
                held[n_held][0] = l;
                held[n_held][1] = e;
                memcpy(held_parts[n_held], parts, sizeof(parts));
                n_held++;
            } else {
                codi_expert_store_release(s, l, e);
            }
        } else if (n_held > 0) {
            const int k = (int)((r / 1024) % (unsigned)n_held);
            check_parts(f, held[k][0], held[k][1], held_parts[k]);
            codi_expert_store_release(s, held[k][0], held[k][1]);
            held[k][0] = held[n_held - 1][0];
            held[k][1] = held[n_held - 1][1];
            memcpy(held_parts[k], held_parts[n_held - 1], sizeof(held_parts[k]));
            n_held--;
        }
    }
    for (int k = 0; k < n_held; k++) {
        check_parts(f, held[k][0], held[k][1], held_parts[k]);
        codi_expert_store_release(s, held[k][0], held[k][1]);
    }
    codi_expert_stats st;
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.acquires, st.hits + st.inflight_hits + st.sync_loads);
    assert_true(st.prefetches + st.prefetch_dropped <= requests);
    assert_true(st.prefetch_used <= st.prefetches);
    assert_true(st.sync_loads > 0 && st.prefetches > 0 && st.evictions > 0);
    assert_int_equal(st.io_errors, 0);
    if (getenv("CODI_TEST_VERBOSE"))
        print_message("acquires %llu hits %llu inflight %llu sync %llu prefetches %llu used %llu "
                      "dropped %llu evictions %llu\n",
                      (unsigned long long)st.acquires, (unsigned long long)st.hits,
                      (unsigned long long)st.inflight_hits, (unsigned long long)st.sync_loads,
                      (unsigned long long)st.prefetches, (unsigned long long)st.prefetch_used,
                      (unsigned long long)st.prefetch_dropped, (unsigned long long)st.evictions);
    codi_expert_store_close(s); /* with requests possibly still queued */
    fixture_free(f);
}

static void test_random_lru(void **state) {
    (void)state;
    random_mix(CODI_EXPERT_LRU, true, 1);
    random_mix(CODI_EXPERT_LRU, false, 2);
}

static void test_random_lfu(void **state) {
    (void)state;
    random_mix(CODI_EXPERT_LFU, true, 3);
    random_mix(CODI_EXPERT_LFU, false, 4);
}

static int try_open(codi_expert_store_params p, char *err, size_t errlen) {
    codi_expert_store *s = (codi_expert_store *)&p; /* must be reset to NULL */
    const int rc = codi_expert_store_open(&p, &s, err, errlen);
    if (rc)
        assert_null(s);
    codi_expert_store_close(s);
    return rc;
}

static void test_bad_open(void **state) {
    (void)state;
    fixture *f = fixture_new();
    char err[256];
    codi_expert_store_params p = params(f, 4, CODI_EXPERT_LRU, 1, true);
    assert_int_equal(try_open(p, err, sizeof(err)), 0);
    /* file one byte short of the last expert */
    assert_int_equal(ftruncate(f->fd, (off_t)f->size - 1), 0);
    assert_int_equal(try_open(p, err, sizeof(err)), CODI_EFORMAT);
    assert_non_null(strstr(err, f->path));
    assert_int_equal(ftruncate(f->fd, (off_t)f->size), 0);
    write_all(f->fd, f->data, f->size);
    assert_int_equal(try_open(p, err, sizeof(err)), 0);
    /* offsets past the end, and sizes that overflow */
    uint64_t off[NL * NP], len[NL * NP];
    memcpy(off, f->off, sizeof(off));
    memcpy(len, f->len, sizeof(len));
    p.part_off = off;
    p.part_bytes = len;
    off[4] = f->size + 1;
    assert_int_equal(try_open(p, err, sizeof(err)), CODI_EFORMAT);
    off[4] = UINT64_MAX - 10;
    assert_int_equal(try_open(p, err, sizeof(err)), CODI_EFORMAT);
    off[4] = f->off[4];
    len[5] = UINT64_MAX / 3;
    assert_int_equal(try_open(p, err, sizeof(err)), CODI_EFORMAT);
    assert_int_equal(codi_expert_store_slot_bytes(&p), 0);
    len[5] = f->len[5];
    assert_int_equal(try_open(p, err, sizeof(err)), 0);
    /* parameters */
    codi_expert_store_params q = p;
    q.n_slots = 0;
    assert_int_equal(try_open(q, err, sizeof(err)), CODI_EINVAL);
    q = p;
    q.n_parts = 0;
    assert_int_equal(try_open(q, err, sizeof(err)), CODI_EINVAL);
    q.n_parts = CODI_EXPERT_MAX_PARTS + 1;
    assert_int_equal(try_open(q, err, sizeof(err)), CODI_EINVAL);
    q = p;
    q.n_layer = 0;
    assert_int_equal(try_open(q, err, sizeof(err)), CODI_EINVAL);
    q = p;
    q.policy = 7;
    assert_int_equal(try_open(q, err, sizeof(err)), CODI_EINVAL);
    q = p;
    q.n_io_threads = -1;
    assert_int_equal(try_open(q, err, sizeof(err)), CODI_EINVAL);
    q = p;
    q.path = NULL;
    assert_int_equal(try_open(q, err, sizeof(err)), CODI_EINVAL);
    q = p;
    q.part_off = NULL;
    assert_int_equal(try_open(q, err, sizeof(err)), CODI_EINVAL);
    q = p;
    q.path = "/tmp/codi_expert_store_does_not_exist/x.gguf";
    assert_int_equal(try_open(q, err, sizeof(err)), CODI_EIO);
    assert_int_equal(codi_expert_store_open(&p, NULL, err, sizeof(err)), CODI_EINVAL);
    assert_int_equal(codi_expert_store_open(NULL, NULL, NULL, 0), CODI_EINVAL);
    /* NULL handles are harmless */
    codi_expert_store_close(NULL);
    codi_expert_stats st;
    codi_expert_store_get_stats(NULL, &st);
    assert_int_equal(st.acquires, 0);
    codi_expert_store_reset_stats(NULL);
    codi_expert_store_prefetch(NULL, 0, 0);
    codi_expert_store_release(NULL, 0, 0);
    assert_false(codi_expert_store_resident(NULL, 0, 0));
    assert_int_equal(codi_expert_store_cache_bytes(NULL), 0);
    assert_false(codi_expert_store_direct(NULL));
    assert_int_equal(codi_expert_store_slot_bytes(NULL), 0);
    fixture_free(f);
}

/* The file shrinks under the store: CODI_EIO naming the expert, the slot
 * comes back; a failed prefetch is retried by the acquire. */
static void io_error(bool direct) {
    fixture *f = fixture_new();
    codi_expert_store *s = open_store(f, 3, CODI_EXPERT_LRU, 1, direct);
    use(s, f, 0, 0);
    const off_t cut = (off_t)f->off[NP]; /* layer 1 onwards is gone */
    assert_int_equal(ftruncate(f->fd, cut), 0);
    const void *parts[CODI_EXPERT_MAX_PARTS];
    char err[256] = "";
    assert_int_equal(codi_expert_store_acquire(s, 2, 4, parts, err, sizeof(err)), CODI_EIO);
    assert_non_null(strstr(err, "expert 4 of layer 2"));
    assert_false(codi_expert_store_resident(s, 2, 4));
    codi_expert_stats st;
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.io_errors, 1);
    use(s, f, 0, 0); /* still there */
    /* a prefetch that fails: the slot comes back, the acquire retries */
    codi_expert_store_prefetch(s, 1, 3);
    wait_io_errors(s, 2);
    assert_false(codi_expert_store_resident(s, 1, 3));
    err[0] = '\0';
    assert_int_equal(codi_expert_store_acquire(s, 1, 3, parts, err, sizeof(err)), CODI_EIO);
    assert_non_null(strstr(err, "expert 3 of layer 1"));
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.io_errors, 3);
    /* the file is back: the same experts load */
    write_all(f->fd, f->data, f->size);
    codi_expert_store_prefetch(s, 1, 3);
    use(s, f, 1, 3);
    use(s, f, 2, 4);
    use(s, f, 1, 2);
    use(s, f, 0, 0);
    codi_expert_store_get_stats(s, &st);
    assert_int_equal(st.io_errors, 3);
    assert_int_equal(st.acquires, 8);
    assert_int_equal(st.hits + st.inflight_hits + st.sync_loads, 6);
    codi_expert_store_close(s);
    fixture_free(f);
}

static void test_io_error_direct(void **state) {
    (void)state;
    io_error(true);
}

static void test_io_error_buffered(void **state) {
    (void)state;
    io_error(false);
}

static void test_bytes_direct_pread(void **state) {
    (void)state;
    g_no_aio = true;
    all_bytes(true);
    random_mix(CODI_EXPERT_NEXTUSE, true, 77);
    io_error(true);
    g_no_aio = false;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_direct),
        cmocka_unit_test(test_bytes_buffered),
        cmocka_unit_test(test_bytes_direct_pread),
        cmocka_unit_test(test_lru_order),
        cmocka_unit_test(test_lfu_order),
        cmocka_unit_test(test_nextuse_order),
        cmocka_unit_test(test_pinned),
        cmocka_unit_test(test_prefetch),
        cmocka_unit_test(test_prefetch_protected),
        cmocka_unit_test(test_prefetch_first),
        cmocka_unit_test(test_random_lru),
        cmocka_unit_test(test_random_lfu),
        cmocka_unit_test(test_bad_open),
        cmocka_unit_test(test_io_error_direct),
        cmocka_unit_test(test_io_error_buffered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
