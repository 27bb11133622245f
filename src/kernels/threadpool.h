/* Persistent compute thread pool. The caller's thread takes part as worker
 * 0, so a pool of n threads starts n-1 pthreads.
 *
 * Contract: codi_threadpool_run(p, fn, arg) calls fn(arg, ith, nth) on the
 * caller (ith 0) and on any of the workers that are free to join while the
 * job is open; it returns once the caller's call has returned and every
 * worker that joined has finished. A worker may miss a job entirely (it was
 * preempted by the OS): tasks must share out their work dynamically (an
 * atomic counter of work items), never by "thread ith does part ith".
 * ith is unique among concurrent callers (use it to pick per-thread
 * scratch); nth is the pool size. This way a thread that the OS deschedules
 * on a busy machine delays a job by at most the work item it holds, not by
 * a whole time slice per job.
 *
 * Workers spin briefly (yielding the CPU now and then) before sleeping, so
 * the per-token step (hundreds of small jobs) does not pay a
 * condition-variable wake-up per job. */
#ifndef CODI_THREADPOOL_H
#define CODI_THREADPOOL_H

typedef struct codi_threadpool codi_threadpool;
typedef void (*codi_task_fn)(void *arg, int ith, int nth);

/* NULL on failure (n < 1 is treated as 1). */
codi_threadpool *codi_threadpool_create(int n_threads);
void codi_threadpool_free(codi_threadpool *p);
int codi_threadpool_size(const codi_threadpool *p);
/* See the contract above. */
void codi_threadpool_run(codi_threadpool *p, codi_task_fn fn, void *arg);

#endif
