/*
 * test-lock: the recursive per-context lock — acquire/try_acquire/release,
 * per-thread depth, -EBUSY / -EPERM, hand-off to a blocked acquirer exactly
 * when the owner's depth reaches 0, and mutual exclusion under contention.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <pthread.h>
#include <stdatomic.h>

static AioctxContext *ctx;

/* Checks a lock call's result (rc, already made), then the depth it left. */
static void lock_step(int rc, const char *what, int depth, const char *depth_what)
{
    is_int(rc, 0, "%s", what);
    is_int(aioctx_lock_depth(ctx), depth, "%s", depth_what);
}

static void test_recursion(void)
{
    is_int(aioctx_lock_depth(ctx), 0, "depth 0 before acquiring");
    lock_step(aioctx_acquire(ctx), "acquire", 1, "depth 1");
    lock_step(aioctx_acquire(ctx), "acquire again (recursive)", 2, "depth 2");
    lock_step(aioctx_try_acquire(ctx), "try_acquire by the owner succeeds", 3, "depth 3");
    lock_step(aioctx_release(ctx), "release", 2, "depth 2 after one release");
    is_int(aioctx_release(ctx), 0, "release");
    lock_step(aioctx_release(ctx), "release", 0, "depth 0 after releasing every level");
    is_int(aioctx_release(ctx), -EPERM, "release when not held -> -EPERM");
    like(aioctx_last_error(), "lock-test", "the -EPERM message names the context");
    is_int(aioctx_lock_depth(ctx), 0, "depth still 0 after the failed release");
    lock_step(aioctx_try_acquire(ctx), "try_acquire of a free context succeeds", 1, "depth 1 after try_acquire");
    is_int(aioctx_release(ctx), 0, "release");
}

/* ---- another thread while the main thread owns the lock ----------------- */

struct other_result {
    int depth, try_rc, rel_rc, depth_after;
    char err[256];
};

static void *other_thread(void *arg)
{
    struct other_result *r = arg;
    r->depth = aioctx_lock_depth(ctx);
    r->try_rc = aioctx_try_acquire(ctx);
    r->rel_rc = aioctx_release(ctx);
    snprintf(r->err, sizeof r->err, "%s", aioctx_last_error());
    r->depth_after = aioctx_lock_depth(ctx);
    return NULL;
}

static void test_other_thread_while_owned(void)
{
    struct other_result r;
    pthread_t th;

    memset(&r, 0, sizeof r);
    aioctx_acquire(ctx);
    aioctx_acquire(ctx);
    pthread_create(&th, NULL, other_thread, &r);
    pthread_join(th, NULL);
    is_int(r.depth, 0, "lock_depth in a non-owner thread is 0 while another thread owns it");
    is_int(r.try_rc, -EBUSY, "try_acquire from a non-owner -> -EBUSY");
    is_int(r.rel_rc, -EPERM, "release from a non-owner -> -EPERM");
    ok(r.err[0] != '\0', "non-owner release sets last_error in that thread: '%s'", r.err);
    is_int(r.depth_after, 0, "non-owner's depth still 0");
    is_int(aioctx_lock_depth(ctx), 2, "owner's depth unchanged by the non-owner's attempts");
    aioctx_release(ctx);
    aioctx_release(ctx);
}

/* ---- hand-off to a thread blocked in acquire ----------------------------- */

static atomic_int waiter_started, waiter_acquired, waiter_may_release;
static int waiter_depth;

static void *waiter_thread(void *arg)
{
    (void)arg;
    atomic_store(&waiter_started, 1);
    int rc = aioctx_acquire(ctx);
    waiter_depth = aioctx_lock_depth(ctx);
    atomic_store(&waiter_acquired, rc == 0 ? 1 : -1);
    wait_at_least(&waiter_may_release, 1, 5 * SEC);
    aioctx_release(ctx);
    return NULL;
}

static void test_blocked_acquire_handoff(void)
{
    pthread_t th;

    aioctx_acquire(ctx);
    aioctx_acquire(ctx);
    pthread_create(&th, NULL, waiter_thread, NULL);
    wait_at_least(&waiter_started, 1, 2 * SEC);
    tap_sleep_ms(50);
    is_int(atomic_load(&waiter_acquired), 0, "a second thread blocks in acquire while main holds depth 2");
    aioctx_release(ctx);
    tap_sleep_ms(50);
    is_int(atomic_load(&waiter_acquired), 0, "still blocked while main holds depth 1");
    int64_t t0 = tap_now_ns();
    aioctx_release(ctx);
    int got = wait_at_least(&waiter_acquired, 1, 1 * SEC);
    int64_t dt = tap_now_ns() - t0;
    ok(got, "the blocked thread acquires once main's depth reaches 0");
    diag("hand-off latency: %lld us", (long long)(dt / 1000));
    ok(dt < 1000000000LL * tap_scale(), "hand-off is prompt (< 1 s, even on a loaded machine)");
    is_int(waiter_depth, 1, "the new owner has depth 1");
    is_int(aioctx_lock_depth(ctx), 0, "main's depth is 0 while the other thread owns it");
    is_int(aioctx_try_acquire(ctx), -EBUSY, "main's try_acquire -> -EBUSY while the other thread owns it");
    is_int(aioctx_release(ctx), -EPERM, "main's release -> -EPERM while the other thread owns it");
    atomic_store(&waiter_may_release, 1);
    pthread_join(th, NULL);
    is_int(aioctx_try_acquire(ctx), 0, "main can try_acquire after the other thread released");
    aioctx_release(ctx);
}

/* ---- no starvation of a blocked acquirer --------------------------------- */

static atomic_int starve_acquired;

static void *starved_thread(void *arg)
{
    (void)arg;
    aioctx_acquire(ctx);
    atomic_store(&starve_acquired, 1);
    aioctx_release(ctx);
    return NULL;
}

static void test_no_starvation(void)
{
    /* The owner keeps releasing and immediately re-acquiring (as a waiting main
     * thread does around each poll). The blocked thread must still get in. */
    pthread_t th;
    aioctx_acquire(ctx);
    pthread_create(&th, NULL, starved_thread, NULL);
    tap_sleep_ms(20);
    int64_t t0 = tap_now_ns();
    int64_t end = t0 + 2000000000LL * tap_scale();
    long cycles = 0;
    while (!atomic_load(&starve_acquired) && tap_now_ns() < end) {
        aioctx_release(ctx);
        aioctx_acquire(ctx);
        cycles++;
    }
    int64_t dt = tap_now_ns() - t0;
    aioctx_release(ctx);
    pthread_join(th, NULL);
    ok(atomic_load(&starve_acquired), "a thread blocked in acquire is not starved by an owner that "
       "releases and re-acquires in a tight loop (got in after %ld cycles, %lld us)", cycles,
       (long long)(dt / 1000));
    ok(dt < 1000000000LL * tap_scale(), "within 1 s");
}

/* ---- mutual exclusion under contention ----------------------------------- */

#define NTHREADS 4
#define ITERS 20000

static int iters = ITERS;    /* fewer under valgrind */
static long shared_counter;   /* protected only by ctx */
static atomic_int inside;     /* number of threads inside the critical section */
static atomic_int violations;

static void *contender(void *arg)
{
    long id = (long)arg;
    for (int i = 0; i < iters; i++) {
        int nested = (i + id) % 3 == 0;
        if ((i & 7) == 0) {
            while (aioctx_try_acquire(ctx) == -EBUSY)
                sched_yield();
        } else {
            aioctx_acquire(ctx);
        }
        if (nested)
            aioctx_acquire(ctx);
        if (atomic_fetch_add(&inside, 1) != 0)
            atomic_fetch_add(&violations, 1);
        long v = shared_counter;
        if ((i & 255) == 0)
            sched_yield();
        shared_counter = v + 1;
        atomic_fetch_sub(&inside, 1);
        if (nested)
            aioctx_release(ctx);
        aioctx_release(ctx);
    }
    return NULL;
}

static void test_contention(void)
{
    pthread_t th[NTHREADS];
    if (tap_scale() > 1)
        iters = ITERS / 10;
    for (long i = 0; i < NTHREADS; i++)
        pthread_create(&th[i], NULL, contender, (void *)i);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    is_int(atomic_load(&violations), 0, "no two threads were ever inside the lock together");
    is_int(shared_counter, (long)NTHREADS * iters, "a counter protected only by the context lock is exact");
    is_int(aioctx_lock_depth(ctx), 0, "lock free afterwards");
}

static void test_many_contexts_independent(void)
{
    /* Holding one context says nothing about another. */
    AioctxContext *b = aioctx_context_new("lock-test-b");
    aioctx_acquire(ctx);
    is_int(aioctx_lock_depth(b), 0, "holding ctx A does not hold ctx B");
    is_int(aioctx_acquire(b), 0, "acquire B while holding A");
    is_int(aioctx_release(ctx), 0, "release A first (non-LIFO order is allowed)");
    is_int(aioctx_lock_depth(b), 1, "B still held at depth 1");
    is_int(aioctx_release(b), 0, "release B");
    aioctx_context_unref(b);
}

int main(void)
{
    tap_watchdog(20);
    ctx = aioctx_context_new("lock-test");
    if (!ok(ctx != NULL, "context_new(\"lock-test\")"))
        return done_testing();
    test_recursion();
    test_other_thread_while_owned();
    test_blocked_acquire_handoff();
    test_no_starvation();
    test_contention();
    test_many_contexts_independent();

    is_int(aioctx_acquire(NULL), -EINVAL, "acquire(NULL) -> -EINVAL");
    is_int(aioctx_try_acquire(NULL), -EINVAL, "try_acquire(NULL) -> -EINVAL");
    is_int(aioctx_release(NULL), -EINVAL, "release(NULL) -> -EINVAL");
    is_int(aioctx_lock_depth(NULL), -EINVAL, "lock_depth(NULL) -> -EINVAL");
    aioctx_context_unref(ctx);
    return done_testing();
}
