/* Persistent compute thread pool. The caller's thread takes part as worker
 * 0, so a pool of n threads starts n-1 pthreads. Workers spin briefly
 * before sleeping so the per-token step (hundreds of small jobs) does not pay
 * a condition-variable wake-up per job. */
#ifndef CODI_THREADPOOL_H
#define CODI_THREADPOOL_H

typedef struct codi_threadpool codi_threadpool;
typedef void (*codi_task_fn)(void *arg, int ith, int nth);

/* NULL on failure (n < 1 is treated as 1). */
codi_threadpool *codi_threadpool_create(int n_threads);
void codi_threadpool_free(codi_threadpool *p);
int codi_threadpool_size(const codi_threadpool *p);
/* Run fn(arg, ith, nth) on every thread, return when all have finished. */
void codi_threadpool_run(codi_threadpool *p, codi_task_fn fn, void *arg);

#endif
