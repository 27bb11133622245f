/* Thread pool contract (kernels/threadpool.h): every work item of every job
 * is done exactly once, run() returns only after the caller and every
 * joined worker have finished, ith is unique among concurrent callers —
 * also with more threads than cores, where workers miss jobs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/threadpool.h"

enum { ITEMS = 97 };

typedef struct {
    atomic_int next;
    atomic_int done[ITEMS];
    atomic_int inside[64]; /* callers currently inside, per ith */
    atomic_int bad_ith;
    int n;
} job;

static void task(void *arg, int ith, int nth) {
    job *j = arg;
    if (ith < 0 || ith >= nth || ith >= 64 || atomic_fetch_add(&j->inside[ith], 1) != 0)
        atomic_store(&j->bad_ith, 1);
    for (int i; (i = atomic_fetch_add(&j->next, 1)) < j->n;)
        atomic_fetch_add(&j->done[i], 1);
    if (ith >= 0 && ith < 64)
        atomic_fetch_sub(&j->inside[ith], 1);
}

static void run_jobs(int threads, int jobs) {
    codi_threadpool *p = codi_threadpool_create(threads);
    assert_non_null(p);
    assert_int_equal(codi_threadpool_size(p), threads);
    job *j = malloc(sizeof(*j));
    assert_non_null(j);
    for (int k = 0; k < jobs; k++) {
        memset(j, 0, sizeof(*j));
        j->n = 1 + k % ITEMS;
        codi_threadpool_run(p, task, j);
        /* after run() returns nobody may still be inside */
        for (int t = 0; t < 64; t++)
            assert_int_equal(atomic_load(&j->inside[t]), 0);
        assert_int_equal(atomic_load(&j->bad_ith), 0);
        for (int i = 0; i < ITEMS; i++)
            assert_int_equal(atomic_load(&j->done[i]), i < j->n ? 1 : 0);
    }
    free(j);
    codi_threadpool_free(p);
}

static void test_one_thread(void **state) {
    (void)state;
    run_jobs(1, 100);
}

static void test_two_threads(void **state) {
    (void)state;
    run_jobs(2, 20000);
}

static void test_oversubscribed(void **state) {
    (void)state;
    run_jobs(8, 5000); /* more threads than this machine's cores */
}

static void test_create_free(void **state) {
    (void)state;
    for (int i = 0; i < 50; i++) {
        codi_threadpool *p = codi_threadpool_create(1 + i % 5);
        assert_non_null(p);
        codi_threadpool_free(p);
    }
    codi_threadpool_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_thread),
        cmocka_unit_test(test_two_threads),
        cmocka_unit_test(test_oversubscribed),
        cmocka_unit_test(test_create_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
