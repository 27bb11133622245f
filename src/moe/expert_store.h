/* Expert store: the expert weights of an MoE model stay in the GGUF file and
 * are read with explicit I/O (pread; O_DIRECT with aligned buffers where the
 * filesystem allows it, so the page cache does not silently hold them) into
 * a bounded cache of slots, one expert (all its parts: gate, up, down) per
 * slot. Non-expert weights are not its business.
 *
 * Lifetime and threads: the compute thread calls acquire/release/prefetch;
 * n_io_threads I/O threads serve prefetches and touch only the slots they
 * reserved. acquire() of an expert that is in flight waits for that read
 * instead of issuing a second one. A slot that is pinned (acquired and not
 * released) or being read is never evicted.
 *
 * Layout of an expert in the file: part p of expert e of layer l starts at
 * part_off[l * n_parts + p] + e * part_bytes[l * n_parts + p] and is
 * part_bytes[...] long (GGUF stacks experts along the outermost dimension,
 * so one expert's slice of a stacked tensor is contiguous). */
#ifndef CODI_MOE_EXPERT_STORE_H
#define CODI_MOE_EXPERT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CODI_EXPERT_MAX_PARTS 4

enum codi_expert_policy {
    CODI_EXPERT_LRU = 0, /* evict the least recently used */
    CODI_EXPERT_LFU,     /* evict the least frequently used (ties: LRU) */
    CODI_EXPERT_NEXTUSE, /* evict the expert whose next use is expected
                            furthest away: layers run in a cycle, so the
                            layer just done is needed last; an expert used
                            by a share p of its layer's passes is expected
                            (1/p - 1) cycles later still (Belady, estimated) */
};

typedef struct codi_expert_store_params {
    const char *path;          /* the GGUF file */
    int n_layer, n_expert, n_parts;
    const uint64_t *part_off;  /* [n_layer * n_parts] expert 0's part offset */
    const uint64_t *part_bytes;/* [n_layer * n_parts] bytes of one expert's part */
    int64_t n_slots;           /* cache capacity in experts (>= 1) */
    int policy;                /* enum codi_expert_policy */
    int n_io_threads;          /* prefetch threads (0: prefetch is a no-op) */
    bool direct;               /* try O_DIRECT (falls back to buffered) */
    bool no_aio;               /* O_DIRECT reads with pread only: no Linux AIO,
                                  which otherwise reads an expert's parts in
                                  parallel */
} codi_expert_store_params;

typedef struct codi_expert_stats {
    uint64_t acquires;       /* acquire() calls */
    uint64_t hits;           /* ... that found the expert resident */
    uint64_t inflight_hits;  /* ... that found it being prefetched (waited) */
    uint64_t sync_loads;     /* ... that had to read it themselves */
    uint64_t prefetches;     /* prefetch reads started */
    uint64_t prefetch_used;  /* prefetched experts acquired before eviction */
    uint64_t prefetch_dropped; /* requests dropped: queue full or no free slot */
    uint64_t prefetch_declined;/* guesses less likely used than their victim */
    uint64_t evictions;
    uint64_t bytes_read;     /* all reads, sync and prefetch (bytes requested
                                from the file, alignment padding included) */
    double read_seconds;     /* summed wall time of the reads themselves */
    double stall_seconds;    /* time acquire() spent waiting for data */
    bool direct;             /* O_DIRECT is in use */
    uint64_t aio_reads;      /* expert reads whose parts went out together
                                through Linux AIO (O_DIRECT only) */
    uint64_t io_errors;      /* failed or short reads, sync and prefetch (a
                                failed prefetch is retried by the acquire) */
} codi_expert_stats;

typedef struct codi_expert_store codi_expert_store;

/* Opens the file (O_DIRECT if asked and possible), allocates n_slots aligned
 * slot buffers and starts the I/O threads. 0 or a negative CODI_E* code. */
int codi_expert_store_open(const codi_expert_store_params *p, codi_expert_store **out,
                           char *err, size_t errlen);
void codi_expert_store_close(codi_expert_store *s); /* NULL is harmless */

/* Bytes of one slot (all parts, with alignment padding), and of the whole
 * cache; the caller turns a byte budget into n_slots with the former. */
size_t codi_expert_store_slot_bytes(const codi_expert_store_params *p);
uint64_t codi_expert_store_cache_bytes(const codi_expert_store *s);
bool codi_expert_store_direct(const codi_expert_store *s);

/* Makes expert (layer, e) resident and pins it; parts[p] points at part p.
 * Waits for an in-flight prefetch of it, or reads it synchronously (evicting
 * an unpinned slot). Errors: I/O error or short read (CODI_EIO), every slot
 * pinned (CODI_ENOMEM). */
int codi_expert_store_acquire(codi_expert_store *s, int layer, int e,
                              const void *parts[CODI_EXPERT_MAX_PARTS], char *err,
                              size_t errlen);
void codi_expert_store_release(codi_expert_store *s, int layer, int e);

/* Asks an I/O thread to read (layer, e) if it is neither resident nor in
 * flight. Never blocks; a request that finds no evictable slot or a full
 * queue is dropped (counted). */
void codi_expert_store_prefetch(codi_expert_store *s, int layer, int e);
/* The same for a guess that is right with probability p: declined (and
 * counted) when the slot it would take holds an expert used on at least a
 * share p of its layer's passes. p > 1: always admitted. */
void codi_expert_store_prefetch_p(codi_expert_store *s, int layer, int e, double p);
/* A read the caller is sure to wait for (an expert its current layer uses
 * and does not have): always admitted, and queued ahead of every guess. */
void codi_expert_store_prefetch_first(codi_expert_store *s, int layer, int e);

/* The share of its layer's passes that acquired (layer, e) so far. */
double codi_expert_store_use_share(codi_expert_store *s, int layer, int e);

/* Is (layer, e) resident now (not in flight)? For tests and metrics. */
bool codi_expert_store_resident(codi_expert_store *s, int layer, int e);

/* Tests only (fault injection, process-wide): after `after` more reads
 * succeed, every expert read fails with EIO; -1 turns it off. */
void codi_expert_store_fail_reads(long long after);

void codi_expert_store_get_stats(const codi_expert_store *s, codi_expert_stats *out);
void codi_expert_store_reset_stats(codi_expert_store *s);
/* The part of stall_seconds spent by acquires of that layer (0 when out of
 * range); reset with the stats. */
double codi_expert_store_layer_stall(const codi_expert_store *s, int layer);

#endif
