/* Expert store (expert_store.h): a bounded cache of expert slots filled by
 * explicit reads of the GGUF file.
 *
 * One mutex guards every field below the "guarded" line; reads run outside
 * it. A slot in state LOADING belongs to whoever reserved it (an I/O thread
 * or a synchronous acquire) until it turns READY or, on an error, EMPTY;
 * nobody else writes its buffer or evicts it.
 *
 * Each part is read as the 4096-aligned superset of its bytes (GGUF aligns
 * tensors to 32 bytes only), so the same read works with O_DIRECT; the part
 * pointer handed out is the aligned region plus the part's offset in it. */
#include "moe/expert_store.h"

#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <linux/aio_abi.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#define ALIGN ((uint64_t)4096)
#define QUEUE_CAP 256
#define MAX_IO_THREADS 64

enum { SLOT_EMPTY = 0, SLOT_LOADING, SLOT_READY };

typedef struct {
    int state;
    int layer, e;    /* what it holds or is loading (state != EMPTY) */
    int pins;        /* acquires not yet released */
    bool prefetched; /* reserved by a prefetch and not acquired since */
    uint64_t pass;   /* layer_pass[layer] when the prefetch reserved it */
    uint64_t tick;   /* last use (acquire, or prefetch reservation) */
} slot;

struct codi_expert_store {
    /* fixed after open */
    int fd;
    bool direct, no_aio;
    int n_layer, n_expert, n_parts;
    int policy;
    uint64_t *part_off, *part_bytes; /* [n_layer * n_parts] */
    int64_t n_slots;
    size_t slot_bytes;
    uint8_t *buf; /* n_slots * slot_bytes, 4096-aligned */
    pthread_t *threads;
    int n_threads;
    /* the synchronous loads' AIO context (0: none); taken by exchange, so
     * a second thread loading at the same time uses pread */
    _Atomic aio_context_t sync_ctx;

    /* guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t ready_cv; /* a slot left LOADING */
    pthread_cond_t queue_cv; /* a request was queued, or stop */
    slot *slots;
    int64_t *map;        /* [layer * n_expert + e] -> slot, or -1 */
    uint64_t *freq;      /* [layer * n_expert + e] acquires, kept across evictions */
    uint64_t *layer_pass;/* [layer] times the acquires moved on from that layer */
    double *layer_stall; /* [layer] stall_seconds of that layer's acquires */
    int cur_layer;       /* layer of the last acquire, -1 before the first */
    uint64_t tick;
    int64_t queue[QUEUE_CAP]; /* slot indices, reserved LOADING by a prefetch */
    int q_head, q_count;
    bool stop;
    int last_io_errno; /* of the last failed read, 0 for a short read */
    codi_expert_stats st;
};

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t round_up(uint64_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

/* Where part p of expert e lies: file offset, and the aligned span read. */
typedef struct {
    uint64_t off, len; /* the part's bytes in the file */
    uint64_t a0, span; /* aligned superset [a0, a0 + span) */
} part_range;

static part_range range_of(const uint64_t *part_off, const uint64_t *part_bytes, int n_parts,
                           int layer, int e, int p) {
    part_range r;
    const size_t i = (size_t)layer * (size_t)n_parts + (size_t)p;
    r.len = part_bytes[i];
    r.off = part_off[i] + (uint64_t)e * r.len;
    r.a0 = r.off / ALIGN * ALIGN;
    r.span = r.len ? round_up(r.off + r.len) - r.a0 : 0;
    return r;
}

/* Worst-case padded bytes of one expert: max over (layer, e) of the sum of
 * its parts' aligned spans. 0 when the parameters cannot be sized (NULL
 * arrays, bad counts, offsets that overflow). */
static uint64_t worst_slot_bytes(const codi_expert_store_params *p) {
    if (!p || !p->part_off || !p->part_bytes || p->n_layer < 1 || p->n_expert < 1 ||
        p->n_parts < 1 || p->n_parts > CODI_EXPERT_MAX_PARTS)
        return 0;
    const uint64_t lim = UINT64_MAX / 4;
    uint64_t worst = 0;
    for (int l = 0; l < p->n_layer; l++) {
        for (int k = 0; k < p->n_parts; k++) {
            const size_t i = (size_t)l * (size_t)p->n_parts + (size_t)k;
            if (p->part_bytes[i] > lim / (uint64_t)p->n_expert || p->part_off[i] > lim)
                return 0;
        }
        for (int e = 0; e < p->n_expert; e++) {
            uint64_t sum = 0;
            for (int k = 0; k < p->n_parts; k++)
                sum += range_of(p->part_off, p->part_bytes, p->n_parts, l, e, k).span;
            worst = CODI_MAX(worst, sum);
        }
    }
    return worst;
}

size_t codi_expert_store_slot_bytes(const codi_expert_store_params *p) {
    const uint64_t b = worst_slot_bytes(p);
    return b > (uint64_t)SIZE_MAX ? 0 : (size_t)b;
}

uint64_t codi_expert_store_cache_bytes(const codi_expert_store *s) {
    return s ? (uint64_t)s->n_slots * (uint64_t)s->slot_bytes : 0;
}

bool codi_expert_store_direct(const codi_expert_store *s) { return s && s->direct; }

static uint8_t *slot_buf(const codi_expert_store *s, int64_t i) {
    return s->buf + (size_t)i * s->slot_bytes;
}

/* Outcome of one expert read, folded into the stats under the lock. */
typedef struct {
    uint64_t bytes;  /* aligned bytes requested */
    double seconds;  /* wall time of the reads */
    int err;         /* errno of a failed read; 0 with short set: short read */
    bool aio;        /* the parts went out through AIO */
    bool short_read;
    int part;        /* the part that failed */
    uint64_t got, need;
} read_info;

/* Fault injection for tests (codi_expert_store_fail_reads): reads left
 * before every pread fails with EIO; -1 = off. */
static _Atomic long long g_reads_ok = -1;

void codi_expert_store_fail_reads(long long after) { atomic_store(&g_reads_ok, after); }

static bool injected_failure(void) {
    long long v = atomic_load(&g_reads_ok);
    while (v >= 0) {
        if (v == 0)
            return true;
        if (atomic_compare_exchange_weak(&g_reads_ok, &v, v - 1))
            return false;
    }
    return false;
}

/* Linux AIO on the O_DIRECT file: the parts of one expert are submitted
 * together, so they are read in parallel (one queue entry each) instead of
 * one after another. A context belongs to one thread: each I/O thread makes
 * its own, the compute thread's synchronous loads use the store's. 0 = no
 * context (AIO unavailable, buffered file, or given up after an error):
 * plain pread. */
static aio_context_t aio_open(void) {
    aio_context_t ctx = 0;
    if (syscall(SYS_io_setup, (long)CODI_EXPERT_MAX_PARTS, &ctx) != 0)
        return 0;
    return ctx;
}

static void aio_close(aio_context_t ctx) {
    if (ctx)
        syscall(SYS_io_destroy, ctx);
}

/* Submits the parts not yet failed (perr[p] == 0, span > 0) and waits for
 * them: got[p] (0 on entry) bytes arrived, or perr[p] = errno. A part that
 * could not be submitted is left at got 0 for pread. An error in the wait
 * itself (never expected with valid arguments) destroys the context, which
 * waits for or cancels what is in flight, so nothing writes the slot
 * afterwards, and turns AIO off for this caller. */
static void aio_read_parts(const codi_expert_store *s, aio_context_t *ctx, uint8_t *dst,
                           const part_range *r, const size_t *pos, uint64_t *got, int *perr) {
    struct iocb cb[CODI_EXPERT_MAX_PARTS];
    struct iocb *cbs[CODI_EXPERT_MAX_PARTS];
    int n = 0;
    for (int p = 0; p < s->n_parts; p++) {
        if (r[p].span == 0 || perr[p])
            continue;
        memset(&cb[n], 0, sizeof(cb[n]));
        cb[n].aio_data = (uint64_t)p;
        cb[n].aio_lio_opcode = IOCB_CMD_PREAD;
        cb[n].aio_fildes = (uint32_t)s->fd;
        cb[n].aio_buf = (uint64_t)(uintptr_t)(dst + pos[p]);
        cb[n].aio_nbytes = r[p].span;
        cb[n].aio_offset = (int64_t)r[p].a0;
        cbs[n] = &cb[n];
        n++;
    }
    int sub = 0;
    while (sub < n) {
        const long k = syscall(SYS_io_submit, *ctx, (long)(n - sub), cbs + sub);
        if (k > 0)
            sub += (int)k;
        else if (k < 0 && errno == EINTR)
            continue;
        else
            break; /* the rest go to pread */
    }
    int done = 0;
    while (done < sub) {
        struct io_event ev[CODI_EXPERT_MAX_PARTS];
        const long k = syscall(SYS_io_getevents, *ctx, (long)(sub - done), (long)(sub - done),
                               ev, NULL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            aio_close(*ctx); /* parts not collected keep got 0: pread reads them */
            *ctx = 0;
            return;
        }
        for (long i = 0; i < k; i++) {
            const int p = (int)ev[i].data;
            if (ev[i].res < 0)
                perr[p] = (int)-ev[i].res;
            else
                got[p] = (uint64_t)ev[i].res;
        }
        done += (int)k;
    }
}

/* Reads expert (layer, e) into dst (a slot buffer): every part's aligned
 * span, in part order in the slot. With an AIO context all parts are in
 * flight at once; pread reads what AIO did not (short reads included).
 * Runs without the lock; touches only dst. */
static int read_expert(const codi_expert_store *s, uint8_t *dst, int layer, int e,
                       aio_context_t *ctx, read_info *ri) {
    memset(ri, 0, sizeof(*ri));
    const double t0 = now_seconds();
    part_range r[CODI_EXPERT_MAX_PARTS];
    size_t pos[CODI_EXPERT_MAX_PARTS];
    uint64_t got[CODI_EXPERT_MAX_PARTS] = {0};
    int perr[CODI_EXPERT_MAX_PARTS] = {0};
    size_t at = 0;
    for (int p = 0; p < s->n_parts; p++) {
        r[p] = range_of(s->part_off, s->part_bytes, s->n_parts, layer, e, p);
        pos[p] = at;
        at += (size_t)r[p].span;
        ri->bytes += r[p].span;
        if (r[p].span && injected_failure())
            perr[p] = EIO;
    }
    if (ctx && *ctx) {
        aio_read_parts(s, ctx, dst, r, pos, got, perr);
        ri->aio = true;
    }
    int rc = 0;
    for (int p = 0; p < s->n_parts && rc == 0; p++) {
        if (r[p].len == 0)
            continue;
        const uint64_t need = r[p].off + r[p].len - r[p].a0; /* the span may run past EOF */
        while (got[p] < need && !perr[p]) {
            const ssize_t n = pread(s->fd, dst + pos[p] + got[p], (size_t)(r[p].span - got[p]),
                                    (off_t)(r[p].a0 + got[p]));
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                perr[p] = errno;
                break;
            }
            if (n == 0)
                break;
            got[p] += (uint64_t)n;
        }
        if (got[p] < need) {
            ri->err = perr[p];
            ri->short_read = perr[p] == 0;
            ri->part = p;
            ri->got = got[p];
            ri->need = need;
            rc = -1;
        }
    }
    ri->seconds = now_seconds() - t0;
    return rc;
}

static int io_error(const codi_expert_store *s, const read_info *ri, int layer, int e, char *err,
                    size_t errlen) {
    const part_range r = range_of(s->part_off, s->part_bytes, s->n_parts, layer, e, ri->part);
    if (ri->short_read)
        return codi_errorf(err, errlen, CODI_EIO,
                           "expert store: short read of expert %d of layer %d (part %d: %llu of "
                           "%llu bytes at offset %llu; file truncated?)",
                           e, layer, ri->part, (unsigned long long)ri->got,
                           (unsigned long long)ri->need, (unsigned long long)r.a0);
    char buf[128];
    const char *msg = strerror_r(ri->err, buf, sizeof(buf));
    return codi_errorf(err, errlen, CODI_EIO,
                       "expert store: reading expert %d of layer %d (part %d, %llu bytes at "
                       "offset %llu): %s",
                       e, layer, ri->part, (unsigned long long)r.len,
                       (unsigned long long)r.off, msg);
}

/* Under the lock: fold a finished read into the stats. */
static void count_read(codi_expert_store *s, const read_info *ri, int rc) {
    s->st.bytes_read += ri->bytes;
    s->st.aio_reads += ri->aio;
    s->st.read_seconds += ri->seconds;
    if (rc) {
        s->st.io_errors++;
        s->last_io_errno = ri->err;
    }
}

static size_t key(const codi_expert_store *s, int layer, int e) {
    return (size_t)layer * (size_t)s->n_expert + (size_t)e;
}

/* A prefetched expert not yet used is protected while the acquires have not
 * moved on past its layer: otherwise the next prefetch or a sync load of the
 * current layer could evict it before its layer comes (under LFU it has the
 * lowest count of all). Mispredicted ones lose the protection once their
 * layer is done. */
static bool is_protected(const codi_expert_store *s, const slot *sl) {
    return sl->prefetched && s->layer_pass[sl->layer] == sl->pass;
}

/* NEXTUSE: expected layer steps until expert (layer, e) is used again. */
static double next_use(const codi_expert_store *s, const slot *a) {
    const int L = s->n_layer, cur = s->cur_layer < 0 ? 0 : s->cur_layer;
    const int dist = (a->layer - cur - 1 + 2 * L) % L + 1; /* next layer: 1 */
    const double passes = (double)s->layer_pass[a->layer] + 1.0;
    double pr = (double)s->freq[key(s, a->layer, a->e)] / passes;
    pr = pr < 1.0 / passes ? 1.0 / passes : pr > 1.0 ? 1.0 : pr;
    return (double)dist + (double)L * (1.0 / pr - 1.0);
}

/* Does a beat b as an eviction victim under the policy? */
static bool better_victim(const codi_expert_store *s, const slot *a, const slot *b) {
    if (s->policy == CODI_EXPERT_NEXTUSE) {
        const double na = next_use(s, a), nb = next_use(s, b);
        if (na != nb)
            return na > nb;
    }
    if (s->policy == CODI_EXPERT_LFU) {
        const uint64_t fa = s->freq[key(s, a->layer, a->e)], fb = s->freq[key(s, b->layer, b->e)];
        if (fa != fb)
            return fa < fb;
    }
    return a->tick < b->tick;
}

/* Under the lock: a slot to load into, EMPTY first, else an unpinned READY
 * one by the policy; protected prefetches only as a last resort and never
 * for another prefetch. -1 if none. */
static int64_t pick_victim(const codi_expert_store *s, bool for_prefetch) {
    int64_t best = -1, best_prot = -1;
    for (int64_t i = 0; i < s->n_slots; i++) {
        const slot *sl = &s->slots[i];
        if (sl->state == SLOT_EMPTY)
            return i;
        if (sl->state != SLOT_READY || sl->pins > 0)
            continue;
        if (is_protected(s, sl)) {
            if (best_prot < 0 || sl->tick < s->slots[best_prot].tick)
                best_prot = i;
        } else if (best < 0 || better_victim(s, sl, &s->slots[best])) {
            best = i;
        }
    }
    if (best >= 0 || for_prefetch)
        return best;
    return best_prot;
}

/* Under the lock: take slot i for (layer, e), state LOADING. */
static void reserve(codi_expert_store *s, int64_t i, int layer, int e) {
    slot *sl = &s->slots[i];
    if (sl->state == SLOT_READY) {
        s->map[key(s, sl->layer, sl->e)] = -1;
        s->st.evictions++;
    }
    sl->state = SLOT_LOADING;
    sl->layer = layer;
    sl->e = e;
    sl->pins = 0;
    sl->prefetched = false;
    sl->tick = ++s->tick;
    s->map[key(s, layer, e)] = i;
}

/* Under the lock: a failed read gives the slot back. */
static void unreserve(codi_expert_store *s, int64_t i) {
    slot *sl = &s->slots[i];
    s->map[key(s, sl->layer, sl->e)] = -1;
    sl->state = SLOT_EMPTY;
    sl->prefetched = false;
    sl->pins = 0;
}

static void *io_main(void *arg) {
    codi_expert_store *s = arg;
    aio_context_t ctx = s->direct && !s->no_aio ? aio_open() : 0;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && s->q_count == 0)
            pthread_cond_wait(&s->queue_cv, &s->mu);
        if (s->stop)
            break; /* queued requests are dropped: the store is going away */
        const int64_t i = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % QUEUE_CAP;
        s->q_count--;
        slot *sl = &s->slots[i];
        const int layer = sl->layer, e = sl->e;
        s->st.prefetches++;
        pthread_mutex_unlock(&s->mu);
        read_info ri;
        const int rc = read_expert(s, slot_buf(s, i), layer, e, &ctx, &ri);
        pthread_mutex_lock(&s->mu);
        count_read(s, &ri, rc);
        if (rc)
            unreserve(s, i); /* a later acquire retries synchronously */
        else
            sl->state = SLOT_READY;
        pthread_cond_broadcast(&s->ready_cv);
    }
    pthread_mutex_unlock(&s->mu);
    aio_close(ctx);
    return NULL;
}

static void fill_parts(const codi_expert_store *s, int64_t i, int layer, int e,
                       const void *parts[CODI_EXPERT_MAX_PARTS]) {
    uint8_t *base = slot_buf(s, i);
    size_t pos = 0;
    for (int p = 0; p < CODI_EXPERT_MAX_PARTS; p++) {
        if (p >= s->n_parts) {
            parts[p] = NULL;
            continue;
        }
        const part_range r = range_of(s->part_off, s->part_bytes, s->n_parts, layer, e, p);
        parts[p] = base + pos + (r.len ? (size_t)(r.off - r.a0) : 0);
        pos += (size_t)r.span;
    }
}

/* Under the lock: the acquires moved to another layer; the one they left is
 * done, and its unused prefetches lose their protection. */
static void note_layer(codi_expert_store *s, int layer) {
    if (s->cur_layer != layer) {
        if (s->cur_layer >= 0)
            s->layer_pass[s->cur_layer]++;
        s->cur_layer = layer;
    }
}

/* Under the lock: pin slot i, now READY, for an acquire. */
static void pin(codi_expert_store *s, int64_t i, int layer, int e) {
    slot *sl = &s->slots[i];
    sl->pins++;
    sl->tick = ++s->tick;
    s->freq[key(s, layer, e)]++;
    if (sl->prefetched) {
        sl->prefetched = false;
        s->st.prefetch_used++;
    }
}

static bool prefetch_in_flight(const codi_expert_store *s) {
    for (int64_t i = 0; i < s->n_slots; i++)
        if (s->slots[i].state == SLOT_LOADING && s->slots[i].prefetched)
            return true;
    return false;
}

int codi_expert_store_acquire(codi_expert_store *s, int layer, int e,
                              const void *parts[CODI_EXPERT_MAX_PARTS], char *err,
                              size_t errlen) {
    if (!s || !parts)
        return codi_errorf(err, errlen, CODI_EINVAL, "expert store: NULL argument");
    if (layer < 0 || layer >= s->n_layer || e < 0 || e >= s->n_expert)
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "expert store: expert %d of layer %d out of range (%d layers, %d "
                           "experts)",
                           e, layer, s->n_layer, s->n_expert);
    const size_t k = key(s, layer, e);
    bool waited = false;
    double t_wait = 0.0;
    pthread_mutex_lock(&s->mu);
    s->st.acquires++;
    note_layer(s, layer);
    for (;;) {
        const int64_t i = s->map[k];
        if (i >= 0 && s->slots[i].state == SLOT_READY) {
            if (waited) {
                s->st.inflight_hits++;
                const double w = now_seconds() - t_wait;
                s->st.stall_seconds += w;
                s->layer_stall[layer] += w;
            } else {
                s->st.hits++;
            }
            pin(s, i, layer, e);
            pthread_mutex_unlock(&s->mu);
            fill_parts(s, i, layer, e, parts);
            return 0;
        }
        if (i >= 0) { /* LOADING: wait for that read instead of a second one */
            if (!waited) {
                waited = true;
                t_wait = now_seconds();
            }
            pthread_cond_wait(&s->ready_cv, &s->mu);
            continue;
        }
        /* not resident (or its prefetch failed): read it here */
        const double t0 = waited ? t_wait : now_seconds();
        int64_t v = pick_victim(s, false);
        while (v < 0 && prefetch_in_flight(s)) {
            /* every slot is pinned or loading; a prefetch in flight will
             * free one up (READY, unpinned) */
            pthread_cond_wait(&s->ready_cv, &s->mu);
            if (s->map[k] >= 0)
                break; /* someone else started on it meanwhile */
            v = pick_victim(s, false);
        }
        if (s->map[k] >= 0) {
            if (!waited) {
                waited = true;
                t_wait = t0;
            }
            continue;
        }
        if (v < 0) {
            const int64_t n = s->n_slots;
            pthread_mutex_unlock(&s->mu);
            return codi_errorf(err, errlen, CODI_ENOMEM,
                               "expert store: all %lld cache slots are pinned, none free for "
                               "expert %d of layer %d",
                               (long long)n, e, layer);
        }
        reserve(s, v, layer, e);
        pthread_mutex_unlock(&s->mu);
        read_info ri;
        aio_context_t ctx = atomic_exchange(&s->sync_ctx, 0);
        const int rc = read_expert(s, slot_buf(s, v), layer, e, &ctx, &ri);
        if (ctx)
            atomic_store(&s->sync_ctx, ctx);
        pthread_mutex_lock(&s->mu);
        count_read(s, &ri, rc);
        const double w = now_seconds() - t0;
        s->st.stall_seconds += w;
        s->layer_stall[layer] += w;
        if (rc) {
            unreserve(s, v);
            pthread_cond_broadcast(&s->ready_cv);
            pthread_mutex_unlock(&s->mu);
            return io_error(s, &ri, layer, e, err, errlen);
        }
        s->slots[v].state = SLOT_READY;
        s->st.sync_loads++;
        pin(s, v, layer, e);
        pthread_cond_broadcast(&s->ready_cv);
        pthread_mutex_unlock(&s->mu);
        fill_parts(s, v, layer, e, parts);
        return 0;
    }
}

void codi_expert_store_release(codi_expert_store *s, int layer, int e) {
    if (!s || layer < 0 || layer >= s->n_layer || e < 0 || e >= s->n_expert)
        return;
    pthread_mutex_lock(&s->mu);
    const int64_t i = s->map[key(s, layer, e)];
    if (i >= 0 && s->slots[i].state == SLOT_READY && s->slots[i].pins > 0)
        s->slots[i].pins--;
    pthread_mutex_unlock(&s->mu);
}

/* How likely expert (layer, e) is to be used on a pass of its layer: the
 * share of that layer's passes that acquired it. */
static double use_share(const codi_expert_store *s, int layer, int e) {
    const double passes = (double)s->layer_pass[layer] + 1.0;
    const double pr = (double)s->freq[key(s, layer, e)] / passes;
    return pr > 1.0 ? 1.0 : pr;
}

double codi_expert_store_use_share(codi_expert_store *s, int layer, int e) {
    if (!s || layer < 0 || layer >= s->n_layer || e < 0 || e >= s->n_expert)
        return 0.0;
    pthread_mutex_lock(&s->mu);
    const double p = use_share(s, layer, e);
    pthread_mutex_unlock(&s->mu);
    return p;
}

void codi_expert_store_prefetch(codi_expert_store *s, int layer, int e) {
    codi_expert_store_prefetch_p(s, layer, e, 2.0);
}

static void prefetch(codi_expert_store *s, int layer, int e, double p, bool first);

void codi_expert_store_prefetch_p(codi_expert_store *s, int layer, int e, double p) {
    prefetch(s, layer, e, p, false);
}

void codi_expert_store_prefetch_first(codi_expert_store *s, int layer, int e) {
    prefetch(s, layer, e, 2.0, true);
}

static void prefetch(codi_expert_store *s, int layer, int e, double p, bool first) {
    if (!s || s->n_threads == 0 || layer < 0 || layer >= s->n_layer || e < 0 ||
        e >= s->n_expert)
        return;
    pthread_mutex_lock(&s->mu);
    if (s->map[key(s, layer, e)] < 0) {
        int64_t v = s->q_count < QUEUE_CAP ? pick_victim(s, true) : -1;
        /* admission: a guess that is used with probability p displaces only
         * an expert less likely to be used (else the read is likely wasted
         * and the victim read again later) */
        if (v >= 0 && p <= 1.0 && s->slots[v].state == SLOT_READY &&
            use_share(s, s->slots[v].layer, s->slots[v].e) >= p) {
            s->st.prefetch_declined++;
            v = -2;
        }
        if (v == -1) {
            s->st.prefetch_dropped++;
        } else if (v >= 0) {
            reserve(s, v, layer, e);
            s->slots[v].prefetched = true;
            s->slots[v].pass = s->layer_pass[layer];
            if (first) { /* ahead of every queued guess */
                s->q_head = (s->q_head + QUEUE_CAP - 1) % QUEUE_CAP;
                s->queue[s->q_head] = v;
            } else {
                s->queue[(s->q_head + s->q_count) % QUEUE_CAP] = v;
            }
            s->q_count++;
            pthread_cond_signal(&s->queue_cv);
        }
    }
    pthread_mutex_unlock(&s->mu);
}

bool codi_expert_store_resident(codi_expert_store *s, int layer, int e) {
    if (!s || layer < 0 || layer >= s->n_layer || e < 0 || e >= s->n_expert)
        return false;
    pthread_mutex_lock(&s->mu);
    const int64_t i = s->map[key(s, layer, e)];
    const bool r = i >= 0 && s->slots[i].state == SLOT_READY;
    pthread_mutex_unlock(&s->mu);
    return r;
}

void codi_expert_store_get_stats(const codi_expert_store *s, codi_expert_stats *out) {
    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    if (!s)
        return;
    codi_expert_store *m = (codi_expert_store *)s; /* the lock only */
    pthread_mutex_lock(&m->mu);
    *out = s->st;
    pthread_mutex_unlock(&m->mu);
    out->direct = s->direct;
}

void codi_expert_store_reset_stats(codi_expert_store *s) {
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    memset(&s->st, 0, sizeof(s->st));
    s->st.direct = s->direct;
    memset(s->layer_stall, 0, (size_t)s->n_layer * sizeof(double));
    pthread_mutex_unlock(&s->mu);
}

double codi_expert_store_layer_stall(const codi_expert_store *s, int layer) {
    if (!s || layer < 0 || layer >= s->n_layer)
        return 0.0;
    codi_expert_store *m = (codi_expert_store *)s; /* the lock only */
    pthread_mutex_lock(&m->mu);
    const double v = s->layer_stall[layer];
    pthread_mutex_unlock(&m->mu);
    return v;
}

static void stop_threads(codi_expert_store *s) {
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->queue_cv);
    pthread_mutex_unlock(&s->mu);
    for (int t = 0; t < s->n_threads; t++)
        pthread_join(s->threads[t], NULL);
    s->n_threads = 0;
}

/* Frees what open() set up before the mutex and threads exist. */
static void free_partial(codi_expert_store *s) {
    aio_close(atomic_load(&s->sync_ctx));
    if (s->fd >= 0)
        close(s->fd);
    free(s->threads);
    free(s->buf);
    free(s->slots);
    free(s->map);
    free(s->freq);
    free(s->layer_pass);
    free(s->layer_stall);
    free(s->part_off);
    free(s->part_bytes);
    free(s);
}

void codi_expert_store_close(codi_expert_store *s) {
    if (!s)
        return;
    stop_threads(s);
    pthread_cond_destroy(&s->queue_cv);
    pthread_cond_destroy(&s->ready_cv);
    pthread_mutex_destroy(&s->mu);
    free_partial(s);
}

static int check_params(const codi_expert_store_params *p, char *err, size_t errlen) {
    if (!p || !p->path || !p->part_off || !p->part_bytes)
        return codi_errorf(err, errlen, CODI_EINVAL, "expert store: NULL parameter");
    if (p->n_layer < 1 || p->n_expert < 1)
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "expert store: need at least one layer and one expert (%d, %d)",
                           p->n_layer, p->n_expert);
    if (p->n_parts < 1 || p->n_parts > CODI_EXPERT_MAX_PARTS)
        return codi_errorf(err, errlen, CODI_EINVAL, "expert store: %d parts per expert (1..%d)",
                           p->n_parts, CODI_EXPERT_MAX_PARTS);
    if (p->n_slots < 1)
        return codi_errorf(err, errlen, CODI_EINVAL, "expert store: %lld cache slots (>= 1)",
                           (long long)p->n_slots);
    if (p->policy != CODI_EXPERT_LRU && p->policy != CODI_EXPERT_LFU &&
        p->policy != CODI_EXPERT_NEXTUSE)
        return codi_errorf(err, errlen, CODI_EINVAL, "expert store: unknown policy %d",
                           p->policy);
    if (p->n_io_threads < 0 || p->n_io_threads > MAX_IO_THREADS)
        return codi_errorf(err, errlen, CODI_EINVAL, "expert store: %d I/O threads (0..%d)",
                           p->n_io_threads, MAX_IO_THREADS);
    if ((uint64_t)p->n_layer * (uint64_t)p->n_expert > (uint64_t)INT32_MAX)
        return codi_errorf(err, errlen, CODI_EINVAL, "expert store: too many experts");
    return 0;
}

/* Every expert of every part lies inside the file. */
static int check_ranges(const codi_expert_store_params *p, uint64_t size, char *err,
                        size_t errlen) {
    for (int l = 0; l < p->n_layer; l++)
        for (int k = 0; k < p->n_parts; k++) {
            const size_t i = (size_t)l * (size_t)p->n_parts + (size_t)k;
            const uint64_t off = p->part_off[i], len = p->part_bytes[i];
            const bool bad = off > size ||
                             (len > 0 && (uint64_t)p->n_expert > (size - off) / len);
            if (bad)
                return codi_errorf(err, errlen, CODI_EFORMAT,
                                   "expert store: layer %d part %d (%d experts of %llu bytes at "
                                   "offset %llu) runs past the end of %s (%llu bytes)",
                                   l, k, p->n_expert, (unsigned long long)len,
                                   (unsigned long long)off, p->path,
                                   (unsigned long long)size);
        }
    return 0;
}

/* Opens path with O_DIRECT if asked and the filesystem takes an aligned
 * read (a probe of the first 4096 bytes); else buffered, with random-access advice. */
static int open_file(const char *path, bool want_direct, bool *direct) {
    *direct = false;
    if (want_direct) {
        const int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
        if (fd >= 0) {
            void *probe = NULL;
            if (posix_memalign(&probe, ALIGN, ALIGN) == 0) {
                ssize_t n;
                do
                    n = pread(fd, probe, ALIGN, 0);
                while (n < 0 && errno == EINTR);
                const int e = n < 0 ? errno : 0;
                free(probe);
                if (n >= 0 || e != EINVAL) {
                    *direct = true; /* other errors show up on the real reads */
                    return fd;
                }
            }
            close(fd);
        }
    }
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
    return fd;
}

int codi_expert_store_open(const codi_expert_store_params *p, codi_expert_store **out,
                           char *err, size_t errlen) {
    if (!out)
        return codi_errorf(err, errlen, CODI_EINVAL, "expert store: out is NULL");
    *out = NULL;
    int rc = check_params(p, err, errlen);
    if (rc)
        return rc;

    codi_expert_store *s = calloc(1, sizeof(*s));
    if (!s)
        return codi_errorf(err, errlen, CODI_ENOMEM, "expert store: out of memory");
    s->fd = -1;
    s->n_layer = p->n_layer;
    s->n_expert = p->n_expert;
    s->n_parts = p->n_parts;
    s->policy = p->policy;
    s->no_aio = p->no_aio;
    s->n_slots = p->n_slots;
    s->cur_layer = -1;

    /* the file and its size first, checked before the cache is allocated */
    s->fd = open_file(p->path, p->direct, &s->direct);
    struct stat sb;
    if (s->fd < 0 || fstat(s->fd, &sb) != 0) {
        const int e = errno;
        const char *what = s->fd < 0 ? "open" : "stat";
        free_partial(s);
        char ebuf[128];
        return codi_errorf(err, errlen, CODI_EIO, "expert store: cannot %s %s: %s", what,
                           p->path, strerror_r(e, ebuf, sizeof(ebuf)));
    }
    s->st.direct = s->direct;
    atomic_store(&s->sync_ctx, s->direct && !s->no_aio ? aio_open() : 0);
    rc = check_ranges(p, (uint64_t)sb.st_size, err, errlen);
    if (rc) {
        free_partial(s);
        return rc;
    }
    const uint64_t sb64 = worst_slot_bytes(p);
    if (sb64 == 0) {
        free_partial(s);
        return codi_errorf(err, errlen, CODI_EINVAL, "expert store: the experts have no bytes");
    }
    if (sb64 > (uint64_t)SIZE_MAX || (uint64_t)p->n_slots > (uint64_t)SIZE_MAX / sb64) {
        free_partial(s);
        return codi_errorf(err, errlen, CODI_ENOMEM,
                           "expert store: a cache of %lld slots of %llu bytes is too large",
                           (long long)p->n_slots, (unsigned long long)sb64);
    }
    s->slot_bytes = (size_t)sb64;

    const size_t n_keys = (size_t)p->n_layer * (size_t)p->n_expert;
    const size_t n_pl = (size_t)p->n_layer * (size_t)p->n_parts;
    void *buf = NULL;
    if (posix_memalign(&buf, ALIGN, (size_t)p->n_slots * s->slot_bytes) != 0)
        buf = NULL;
    s->buf = buf;
    s->slots = calloc((size_t)p->n_slots, sizeof(slot));
    s->map = malloc(n_keys * sizeof(int64_t));
    s->freq = calloc(n_keys, sizeof(uint64_t));
    s->layer_pass = calloc((size_t)p->n_layer, sizeof(uint64_t));
    s->layer_stall = calloc((size_t)p->n_layer, sizeof(double));
    s->part_off = malloc(n_pl * sizeof(uint64_t));
    s->part_bytes = malloc(n_pl * sizeof(uint64_t));
    s->threads = calloc((size_t)CODI_MAX(p->n_io_threads, 1), sizeof(pthread_t));
    if (!s->buf || !s->slots || !s->map || !s->freq || !s->layer_pass || !s->layer_stall ||
        !s->part_off || !s->part_bytes || !s->threads) {
        free_partial(s);
        return codi_errorf(err, errlen, CODI_ENOMEM,
                           "expert store: out of memory for %lld slots of %zu bytes",
                           (long long)p->n_slots, (size_t)sb64);
    }
    memcpy(s->part_off, p->part_off, n_pl * sizeof(uint64_t));
    memcpy(s->part_bytes, p->part_bytes, n_pl * sizeof(uint64_t));
    for (size_t i = 0; i < n_keys; i++)
        s->map[i] = -1;

    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free_partial(s);
        return codi_errorf(err, errlen, CODI_ENOMEM, "expert store: cannot create a mutex");
    }
    if (pthread_cond_init(&s->ready_cv, NULL) != 0) {
        pthread_mutex_destroy(&s->mu);
        free_partial(s);
        return codi_errorf(err, errlen, CODI_ENOMEM, "expert store: cannot create a condvar");
    }
    if (pthread_cond_init(&s->queue_cv, NULL) != 0) {
        pthread_cond_destroy(&s->ready_cv);
        pthread_mutex_destroy(&s->mu);
        free_partial(s);
        return codi_errorf(err, errlen, CODI_ENOMEM, "expert store: cannot create a condvar");
    }
    for (int t = 0; t < p->n_io_threads; t++) {
        if (pthread_create(&s->threads[t], NULL, io_main, s) != 0) {
            codi_expert_store_close(s);
            return codi_errorf(err, errlen, CODI_ENOMEM,
                               "expert store: cannot start I/O thread %d of %d", t + 1,
                               p->n_io_threads);
        }
        s->n_threads = t + 1;
    }
    *out = s;
    return 0;
}
