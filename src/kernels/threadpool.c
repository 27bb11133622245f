/* Thread pool with open/close jobs (see threadpool.h). A job is published
 * by storing fn/arg, setting `open` and bumping `gen`. A worker that sees a
 * new gen announces itself in `active` and only then checks `open`: if the
 * job is still open it runs the current fn/arg, else it backs out without
 * touching them. The caller runs its own share, closes the job, and waits
 * until `active` drops to zero; fn/arg are rewritten only while the job is
 * closed and no worker is active, so a late worker never sees a stale or
 * half-written job. */
#include "kernels/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#define SPIN_ITERS 20000 /* pause iterations before sleeping (~0.5 ms) */
#define YIELD_EVERY 256  /* sched_yield() this often while spinning */

struct codi_threadpool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    codi_task_fn fn;
    void *arg;
    atomic_uint gen;     /* bumped once per job */
    atomic_bool open;    /* the current job may be joined */
    atomic_int active;   /* workers inside (or about to check) a job */
    atomic_int sleeping; /* workers blocked on cv_work */
    atomic_bool stop;
};

typedef struct {
    codi_threadpool *p;
    int ith;
} worker_arg;

static inline void cpu_relax(int i) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % YIELD_EVERY == YIELD_EVERY - 1)
        sched_yield();
}

static void *worker_main(void *v) {
    worker_arg *wa = v;
    codi_threadpool *p = wa->p;
    const int ith = wa->ith;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load(&p->stop) && spins < SPIN_ITERS)
            cpu_relax(spins++);
        if (g == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleeping, 1);
            while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv_work, &p->mu);
            atomic_fetch_sub(&p->sleeping, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            return NULL;
        seen = g;
        atomic_fetch_add(&p->active, 1); /* seq_cst: before reading open */
        if (atomic_load(&p->open))
            p->fn(p->arg, ith, p->n);
        atomic_fetch_sub_explicit(&p->active, 1, memory_order_release);
    }
}

codi_threadpool *codi_threadpool_create(int n_threads) {
    if (n_threads < 1)
        n_threads = 1;
    codi_threadpool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->open, false);
    atomic_init(&p->active, 0);
    atomic_init(&p->sleeping, 0);
    atomic_init(&p->stop, false);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) {
        free(p);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof(*wa));
        if (!wa || (wa->p = p, wa->ith = i,
                    pthread_create(&p->threads[i], NULL, worker_main, wa) != 0)) {
            free(wa);
            p->n = i; /* only threads 1..i-1 exist */
            codi_threadpool_free(p);
            return NULL;
        }
    }
    return p;
}

void codi_threadpool_free(codi_threadpool *p) {
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_work);
    free(p->threads);
    free(p);
}

int codi_threadpool_size(const codi_threadpool *p) { return p ? p->n : 1; }

void codi_threadpool_run(codi_threadpool *p, codi_task_fn fn, void *arg) {
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    /* No worker is active here (the previous run waited for them), so
     * fn/arg can be rewritten. */
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->open, true);
    atomic_fetch_add(&p->gen, 1); /* seq_cst: pairs with the sleeping count */
    if (atomic_load(&p->sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0, p->n);
    atomic_store(&p->open, false); /* seq_cst: late workers back out */
    for (int i = 0; atomic_load(&p->active) > 0; i++)
        cpu_relax(i);
}
