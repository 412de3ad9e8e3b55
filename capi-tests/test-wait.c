/*
 * test-wait: aioctx_poll_while — the AIO_WAIT_WHILE pattern that must never
 * hang silently. Home-thread waits, waits on an IOThread's context with the
 * context released around each blocking poll, -EDEADLK at depth > 1 (the
 * migration "inactivate all with two drives on one IOThread" hang shape),
 * AIOCTX_WAIT_RELEASE_ALL, context sets as the fix, -ETIMEDOUT with a dump,
 * aioctx_wait_kick and no lost wake-ups.
 */
#define _GNU_SOURCE
/* long_timeout() bounds every wait that must succeed, so that a lost wake-up
 * makes a wait slow (see wait_prompt) instead of hanging the program until the
 * watchdog. */
#define TEST_LONG_TIMEOUT_S 3
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <pthread.h>
#include <stdatomic.h>

static AioctxContext *main_ctx;
static AioctxIoThread *iot;
static AioctxContext *iot_ctx;
static pthread_t main_thread;

/* A wait that must succeed, and promptly: with a lost wake-up, poll_while only
 * notices the condition at its timeout, and still returns 0. Waits slower than
 * PROMPT are counted and reported at the end. */
static atomic_int slow_waits;
static _Thread_local int wait_was_slow;

static int64_t prompt_ns(void)
{
    return 2 * SEC * tap_scale();
}

static int wait_prompt(AioctxContext *ctx, AioctxCond cond, void *opaque, unsigned flags)
{
    int64_t t0 = tap_now_ns();
    int rc = aioctx_poll_while(ctx, cond, opaque, long_timeout(), flags);
    int64_t dt = tap_now_ns() - t0;
    wait_was_slow = dt > prompt_ns();
    if (wait_was_slow) {
        atomic_fetch_add(&slow_waits, 1);
        diag("a wait on '%s' took %lld ms (rc %d): a lost wake-up?", aioctx_context_name(ctx),
             (long long)(dt / MS), rc);
    }
    return rc;
}

static bool flag_unset(void *opaque)
{
    return atomic_load((atomic_int *)opaque) == 0;
}

static bool flag_unset_done(void *opaque);

static void set_flag_cb(void *opaque)
{
    atomic_store((atomic_int *)opaque, 1);
}

struct counter_bh {
    AioctxBh *bh;
    int runs;
    int limit;
};

static void counting_resched_cb(void *opaque)
{
    struct counter_bh *c = opaque;
    c->runs++;
    if (c->runs < c->limit)
        aioctx_bh_schedule(c->bh);
}

static bool below_limit(void *opaque)
{
    struct counter_bh *c = opaque;
    return c->runs < c->limit;
}

static int cond_calls;
static bool false_counted(void *opaque)
{
    (void)opaque;
    cond_calls++;
    return false;
}

static pthread_t completion_thread;

static void completion_cb(void *opaque)
{
    completion_thread = pthread_self();
    atomic_store((atomic_int *)opaque, 1);
}

/* Runs on the IOThread; completes in the main context, as a VMM's I/O does. */
static void bounce_to_main_cb(void *opaque)
{
    aioctx_bh_schedule_oneshot(main_ctx, completion_cb, opaque);
}

static void delayed_set_flag_cb(void *opaque)
{
    tap_sleep_ms(30);
    atomic_store((atomic_int *)opaque, 1);
}

/* ---- the caller's current context ------------------------------------------ */

static void test_implicit_main_claim(void)
{
    /* main has claimed nothing yet: waiting on another thread's context makes it
     * the home of aioctx_main_context() (claimed because it was unhomed). */
    atomic_int flag = 0;
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag_cb, &flag);
    int rc = wait_prompt(iot_ctx, flag_unset, &flag, 0);
    is_int(rc, 0, "poll_while on an IOThread's context from a thread with no home returns 0");
    is_int(atomic_load(&flag), 1, "once the IOThread's BH set the flag");
    is_int(aioctx_context_claim(main_ctx), 0, "... and main is now the main context's home (claim -> 0)");
}

static void *claim_main_from_thread(void *arg)
{
    *(int *)arg = aioctx_context_claim(aioctx_main_context());
    return NULL;
}

static void test_home_waits(void)
{
    int rc_other = -99;
    pthread_t th;
    pthread_create(&th, NULL, claim_main_from_thread, &rc_other);
    pthread_join(th, NULL);
    is_int(rc_other, -EPERM, "another thread cannot claim the main context any more");

    cond_calls = 0;
    is_int(aioctx_poll_while(main_ctx, false_counted, NULL, -1, 0), 0,
           "poll_while with a condition already false returns 0 at once");
    is_int(cond_calls, 1, "the condition was evaluated once");

    struct counter_bh c = { NULL, 0, 3 };
    c.bh = aioctx_bh_new(main_ctx, counting_resched_cb, &c);
    aioctx_bh_schedule(c.bh);
    is_int(aioctx_poll_while(main_ctx, below_limit, &c, -1, 0), 0,
           "the home thread's poll_while polls its context until the condition is false");
    is_int(c.runs, 3, "the BH ran until the condition turned false, and no more");

    /* The home thread holding its own context (even twice) may still wait on it. */
    c.runs = 0;
    aioctx_acquire(main_ctx);
    aioctx_acquire(main_ctx);
    aioctx_bh_schedule(c.bh);
    is_int(wait_prompt(main_ctx, below_limit, &c, 0), 0,
           "home thread holding its context at depth 2 can poll_while on it");
    is_int(c.runs, 3, "the BHs ran");
    is_int(aioctx_lock_depth(main_ctx), 2, "depth 2 afterwards");
    aioctx_release(main_ctx);
    aioctx_release(main_ctx);
    aioctx_bh_delete(c.bh);

    /* Timeout in the home case. */
    int64_t t0 = tap_now_ns();
    is_int(aioctx_poll_while(main_ctx, always, NULL, 30 * MS, 0), -ETIMEDOUT,
           "home poll_while with a never-false condition -> -ETIMEDOUT");
    int64_t dt = tap_now_ns() - t0;
    ok(dt >= 30 * MS && dt < 1 * SEC * tap_scale(), "after the timeout (%lld ms for 30 ms)",
       (long long)(dt / MS));
}

struct homeless {
    int rc;
    int64_t dt;
    char err[256];
};

static void *homeless_thread(void *arg)
{
    struct homeless *h = arg;
    int64_t t0 = tap_now_ns();
    h->rc = aioctx_poll_while(iot_ctx, always, NULL, long_timeout(), 0);
    h->dt = tap_now_ns() - t0;
    snprintf(h->err, sizeof h->err, "%s", aioctx_last_error());
    return NULL;
}

static void test_no_loop_to_poll(void)
{
    /* A thread that is home of nothing, with the main context homed elsewhere,
     * has no loop to poll while waiting on another thread's context. */
    struct homeless h = { -99, 0, "" };
    pthread_t th;
    pthread_create(&th, NULL, homeless_thread, &h);
    pthread_join(th, NULL);
    is_int(h.rc, -EPERM, "poll_while from a thread with no loop to poll -> -EPERM");
    ok(h.dt < 1 * SEC * tap_scale(), "at once (%lld us)", (long long)(h.dt / 1000));
    ok(h.err[0] != '\0', "... with a message: '%s'", h.err);
}

struct unhomed_waiter {
    AioctxContext *ctx;
    atomic_int flag;
    int rc;
    bool was_home;
};

static void *unhomed_waiter_thread(void *arg)
{
    struct unhomed_waiter *u = arg;
    aioctx_bh_schedule_oneshot(u->ctx, set_flag_cb, &u->flag);
    u->rc = wait_prompt(u->ctx, flag_unset, &u->flag, 0);
    u->was_home = aioctx_context_is_home(u->ctx);
    return NULL;
}

static void test_unhomed_ctx(void)
{
    struct unhomed_waiter u;
    pthread_t th;
    u.ctx = aioctx_context_new("wait-unhomed");
    atomic_store(&u.flag, 0);
    u.rc = -99;
    pthread_create(&th, NULL, unhomed_waiter_thread, &u);
    pthread_join(th, NULL);
    is_int(u.rc, 0, "poll_while on an unhomed context polls it in the caller");
    is_int(atomic_load(&u.flag), 1, "its BH ran");
    ok(u.was_home, "that thread became the context's home");
    is_int(aioctx_context_claim(u.ctx), 0, "once it exited, the context had no home: another thread may claim it");
    aioctx_context_unref(u.ctx);
}

struct cond_probe {
    atomic_int flag;
    int calls, bad_depth, bad_thread;
};

static bool probe_cond(void *opaque)
{
    struct cond_probe *p = opaque;
    p->calls++;
    if (aioctx_lock_depth(iot_ctx) != 1)
        p->bad_depth++;
    if (!pthread_equal(pthread_self(), main_thread))
        p->bad_thread++;
    return atomic_load(&p->flag) == 0;
}

/* ---- waiting on an IOThread's context ---------------------------------------- */

static void test_wait_on_iothread(void)
{
    /* Not holding it. */
    int all = 1;
    int64_t t0 = tap_now_ns();
    for (int i = 0; i < 200; i++) {
        atomic_int flag = 0;
        aioctx_bh_schedule_oneshot(iot_ctx, set_flag_cb, &flag);
        int rc = wait_prompt(iot_ctx, flag_unset, &flag, 0);
        if (rc != 0 || atomic_load(&flag) != 1 || wait_was_slow) {
            all = 0;
            diag("iteration %d: rc %d flag %d: %s", i, rc, atomic_load(&flag), aioctx_last_error());
            break;
        }
    }
    ok(all, "200 waits for a flag set by a BH on an IOThread all return 0 promptly (no lost wake-up)");
    diag("200 cross-thread waits took %lld ms", (long long)((tap_now_ns() - t0) / MS));

    /* Holding it at depth 1: released around each blocking poll. */
    atomic_int flag = 0;
    is_int(aioctx_acquire(iot_ctx), 0, "main acquires the IOThread's context once");
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag_cb, &flag);
    int rc = wait_prompt(iot_ctx, flag_unset, &flag, 0);
    is_int(rc, 0, "poll_while at depth 1 releases the context so the IOThread can run the BH");
    is_int(atomic_load(&flag), 1, "the BH ran");
    is_int(aioctx_lock_depth(iot_ctx), 1, "depth restored to 1");
    is_int(aioctx_release(iot_ctx), 0, "release");

    /* cond runs in the caller with its locks as they were on entry. */
    struct cond_probe cp;
    memset(&cp, 0, sizeof cp);
    aioctx_acquire(iot_ctx);
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag_cb, &cp.flag);
    rc = wait_prompt(iot_ctx, probe_cond, &cp, 0);
    aioctx_release(iot_ctx);
    is_int(rc, 0, "poll_while with a probing condition");
    ok(cp.calls >= 2, "cond was called before and after the wait (%d calls)", cp.calls);
    is_int(cp.bad_depth, 0, "cond always ran with the caller's depth on ctx as on entry (1)");
    is_int(cp.bad_thread, 0, "cond always ran in the calling thread");

    /* The main loop keeps running while waiting: a completion BH in the main context. */
    atomic_store(&flag, 0);
    aioctx_bh_schedule_oneshot(iot_ctx, bounce_to_main_cb, &flag);
    rc = wait_prompt(iot_ctx, flag_unset, &flag, 0);
    is_int(rc, 0, "waiting on the IOThread context while its BH schedules a completion BH in main");
    is_int(atomic_load(&flag), 1, "the completion ran");
    ok(pthread_equal(completion_thread, main_thread),
       "the completion BH ran in the main thread during the wait (its current context is polled)");
}

/* ---- the migration hang shape ------------------------------------------------ */

static void test_migration_hang_shape(void)
{
    const char *name = aioctx_context_name(iot_ctx);
    atomic_int flag = 0;

    /* Two drives on one IOThread: the context acquired twice. */
    aioctx_acquire(iot_ctx);
    aioctx_acquire(iot_ctx);
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag_cb, &flag);
    /* First with a timeout, so a regression is reported as -ETIMEDOUT rather than
     * a hang; then exactly as the migration code calls it: no timeout. */
    int rc = aioctx_poll_while(iot_ctx, flag_unset, &flag, 2 * SEC * tap_scale(), 0);
    is_int(rc, -EDEADLK, "poll_while (2 s timeout) with the IOThread context held twice -> -EDEADLK");
    if (rc == -ETIMEDOUT) {
        diag("the wait hung until its timeout; skipping the no-timeout variant");
        aioctx_release(iot_ctx);
        aioctx_release(iot_ctx);
        return;
    }
    int64_t t0 = tap_now_ns();
    rc = aioctx_poll_while(iot_ctx, flag_unset, &flag, -1, 0);
    int64_t dt = tap_now_ns() - t0;
    is_int(rc, -EDEADLK, "poll_while (no timeout) with the IOThread context held twice -> -EDEADLK (no hang)");
    ok(dt < 500 * MS * tap_scale(), "returned immediately (%lld us)", (long long)(dt / 1000));
    const char *msg = aioctx_last_error();
    diag("message: %s", msg);
    like(msg, name ? name : "?", "the message names the context");
    like(msg, "2", "the message gives the depth (2)");
    ok(strstr(msg, "AIOCTX_WAIT_RELEASE_ALL") || strstr(msg, "set"),
       "the message names the fix (AIOCTX_WAIT_RELEASE_ALL or a context set)");
    is_int(aioctx_lock_depth(iot_ctx), 2, "depth unchanged (2)");
    is_int(atomic_load(&flag), 0, "the BH could not run meanwhile");

    /* With AIOCTX_WAIT_RELEASE_ALL every level is released and restored. */
    rc = wait_prompt(iot_ctx, flag_unset, &flag, AIOCTX_WAIT_RELEASE_ALL);
    is_int(rc, 0, "AIOCTX_WAIT_RELEASE_ALL: poll_while at depth 2 completes");
    is_int(atomic_load(&flag), 1, "the IOThread ran the BH");
    is_int(aioctx_lock_depth(iot_ctx), 2, "depth restored to 2");
    aioctx_release(iot_ctx);
    aioctx_release(iot_ctx);
    is_int(aioctx_lock_depth(iot_ctx), 0, "depth 0");

    /* The fix: a set holds each context once, however many drives use it. */
    AioctxSet *set = aioctx_set_new();
    is_int(aioctx_set_add(set, iot_ctx), 1, "drive 1's context added to the set");
    is_int(aioctx_set_add(set, iot_ctx), 0, "drive 2's (same) context is already present");
    is_int(aioctx_set_add(set, main_ctx), 1, "the main context added too");
    is_int(aioctx_set_acquire(set), 0, "set_acquire");
    is_int(aioctx_lock_depth(iot_ctx), 1, "the IOThread context is held once");
    atomic_store(&flag, 0);
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag_cb, &flag);
    t0 = tap_now_ns();
    rc = wait_prompt(iot_ctx, flag_unset, &flag, 0);
    dt = tap_now_ns() - t0;
    is_int(rc, 0, "with the set, poll_while completes: the IOThread runs the BH while main waits");
    is_int(atomic_load(&flag), 1, "the flag was set");
    diag("set wait took %lld us", (long long)(dt / 1000));
    is_int(aioctx_lock_depth(iot_ctx), 1, "IOThread context depth restored to 1");
    is_int(aioctx_lock_depth(main_ctx), 1, "main context still held at depth 1");
    is_int(aioctx_set_release(set), 0, "set_release");
    is_int(aioctx_lock_depth(iot_ctx), 0, "IOThread context depth 0");
    is_int(aioctx_lock_depth(main_ctx), 0, "main context depth 0");
    aioctx_set_free(set);

    /* And the IOThread is fully usable afterwards. */
    atomic_store(&flag, 0);
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag_cb, &flag);
    is_int(wait_prompt(iot_ctx, flag_unset, &flag, 0), 0,
           "the IOThread still runs BHs afterwards");
}

static void test_timeouts(void)
{
    const char *name = aioctx_context_name(iot_ctx);
    int64_t t0 = tap_now_ns();
    int rc = aioctx_poll_while(iot_ctx, always, NULL, 50 * MS, 0);
    int64_t dt = tap_now_ns() - t0;
    is_int(rc, -ETIMEDOUT, "poll_while with a never-false condition and a 50 ms timeout -> -ETIMEDOUT");
    ok(dt >= 50 * MS, "not before the timeout (%lld ms)", (long long)(dt / MS));
    ok(dt < 1 * SEC * tap_scale(), "and not much later");
    const char *msg = aioctx_last_error();
    diag("timeout message: %s", msg);
    like(msg, name ? name : "?", "the -ETIMEDOUT message dumps the contexts (names the waited-on one)");

    aioctx_acquire(iot_ctx);
    is_int(aioctx_poll_while(iot_ctx, always, NULL, 20 * MS, 0), -ETIMEDOUT, "timeout while holding at depth 1");
    is_int(aioctx_lock_depth(iot_ctx), 1, "depth restored to 1 after -ETIMEDOUT");
    aioctx_acquire(iot_ctx);
    is_int(aioctx_poll_while(iot_ctx, always, NULL, 20 * MS, AIOCTX_WAIT_RELEASE_ALL), -ETIMEDOUT,
           "timeout with AIOCTX_WAIT_RELEASE_ALL at depth 2");
    is_int(aioctx_lock_depth(iot_ctx), 2, "depth restored to 2 after -ETIMEDOUT");
    is_int(aioctx_poll_while(iot_ctx, always, NULL, 20 * MS, 0), -EDEADLK,
           "depth 2 without the flag -> -EDEADLK even with a timeout");
    is_int(aioctx_lock_depth(iot_ctx), 2, "depth still 2");
    aioctx_release(iot_ctx);
    aioctx_release(iot_ctx);

    /* The IOThread was never starved by these waits. */
    atomic_int flag = 0;
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag_cb, &flag);
    is_int(wait_prompt(iot_ctx, flag_unset, &flag, 0), 0, "IOThread alive");
}

/* ---- nested and crossed waits ------------------------------------------------- */

struct nested {
    atomic_int inner_flag;
    int inner_rc;
    int ran;
};

static void nested_wait_cb(void *opaque)
{
    /* A main-context BH that itself waits (as QEMU code does from BHs). */
    struct nested *n = opaque;
    n->ran = 1;
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag_cb, &n->inner_flag);
    n->inner_rc = wait_prompt(iot_ctx, flag_unset, &n->inner_flag, 0);
}

struct crossed {
    atomic_int main_flag;   /* set by a main-context BH */
    atomic_int done;
    int rc;
};

static bool flag_unset_done(void *opaque)
{
    return atomic_load(&((struct crossed *)opaque)->done) == 0;
}

static void iot_waits_for_main_cb(void *opaque)
{
    /* Runs on the IOThread: waits for work in the main context. */
    struct crossed *c = opaque;
    c->rc = wait_prompt(main_ctx, flag_unset, &c->main_flag, 0);
    atomic_store(&c->done, 1);
}

static void test_nested_and_crossed(void)
{
    struct nested n;
    atomic_int outer = 0;
    memset(&n, 0, sizeof n);
    n.inner_rc = -99;
    aioctx_bh_schedule_oneshot(main_ctx, nested_wait_cb, &n);
    aioctx_bh_schedule_oneshot(iot_ctx, delayed_set_flag_cb, &outer);
    int rc = wait_prompt(iot_ctx, flag_unset, &outer, 0);
    is_int(rc, 0, "outer wait on the IOThread completes");
    ok(n.ran, "a main-context BH ran during the outer wait");
    is_int(n.inner_rc, 0, "and its own nested poll_while completed");

    /* The IOThread waits for the main context while main waits for the IOThread. */
    struct crossed c;
    memset(&c, 0, sizeof c);
    c.rc = -99;
    aioctx_bh_schedule_oneshot(iot_ctx, iot_waits_for_main_cb, &c);
    tap_sleep_ms(10);
    aioctx_bh_schedule_oneshot(main_ctx, set_flag_cb, &c.main_flag);
    rc = wait_prompt(iot_ctx, flag_unset_done, &c, 0);
    is_int(rc, 0, "main waits for an IOThread BH that itself waits for a main-context BH");
    is_int(c.rc, 0, "the IOThread's poll_while on the main context returned 0");
}

/* ---- kicks ------------------------------------------------------------------------ */

struct kicker {
    atomic_int flag;
    atomic_int go;
    int delay_us;
};

static void *kicker_thread(void *arg)
{
    struct kicker *k = arg;
    while (!atomic_load(&k->go))
        ;
    if (k->delay_us)
        tap_sleep_ns((int64_t)k->delay_us * 1000);
    atomic_store(&k->flag, 1);
    aioctx_wait_kick();
    return NULL;
}

static void test_kick(void)
{
    int all = 1;
    int64_t worst = 0;
    for (int i = 0; i < 100; i++) {
        struct kicker k;
        pthread_t th;
        atomic_store(&k.flag, 0);
        atomic_store(&k.go, 0);
        k.delay_us = i % 4 == 0 ? 0 : (i % 7) * 100;
        pthread_create(&th, NULL, kicker_thread, &k);
        atomic_store(&k.go, 1);
        int64_t t0 = tap_now_ns();
        int rc = wait_prompt(iot_ctx, flag_unset, &k.flag, 0);
        int64_t dt = tap_now_ns() - t0;
        pthread_join(th, NULL);
        if (dt > worst)
            worst = dt;
        if (rc != 0 || wait_was_slow) {
            all = 0;
            diag("kick %d: rc %d: %s", i, rc, rc ? aioctx_last_error() : "slow");
            break;
        }
    }
    ok(all, "100 waits woken only by aioctx_wait_kick() from another thread all return 0 promptly (no lost kick)");
    diag("slowest kicked wait: %lld us", (long long)(worst / 1000));
    ok(worst < prompt_ns(), "each kicked wait ended promptly (before its timeout)");
}

/* Completions wake the waiters of their own context only; state changed by
 * another context's callback reaches waiters through aioctx_wait_kick(). */
struct other_waiter {
    AioctxContext *own;
    atomic_int *flag;
    atomic_int ready;
    int rc;
};

static void *other_waiter_thread(void *arg)
{
    struct other_waiter *w = arg;
    aioctx_context_claim(w->own);
    atomic_store(&w->ready, 1);
    w->rc = wait_prompt(iot_ctx, flag_unset, w->flag, 0);
    return NULL;
}

static void delayed_set_flag_and_kick_cb(void *opaque)
{
    delayed_set_flag_cb(opaque);
    aioctx_wait_kick();
}

static void test_wake_all(void)
{
    AioctxIoThread *other = aioctx_iothread_new("wait-other-iot");
    AioctxContext *other_ctx = aioctx_iothread_context(other);
    atomic_int flag = 0;
    struct other_waiter w = { aioctx_context_new("wait-waiter2"), &flag, 0, -99 };
    pthread_t th;
    pthread_create(&th, NULL, other_waiter_thread, &w);
    while (!atomic_load(&w.ready))
        tap_sleep_ms(1);
    tap_sleep_ms(20);
    /* The flag is set by a BH on a *different* IOThread than the one waited on. */
    aioctx_bh_schedule_oneshot(other_ctx, delayed_set_flag_and_kick_cb, &flag);
    int rc = wait_prompt(iot_ctx, flag_unset, &flag, 0);
    pthread_join(th, NULL);
    is_int(rc, 0, "main's wait ends when a BH on another IOThread sets its flag and kicks");
    is_int(w.rc, 0, "a second waiter (another thread, its own context) is woken too");
    is_int(aioctx_iothread_free(other), 0, "free the second IOThread");
    aioctx_context_unref(w.own);
}

int main(void)
{
    tap_watchdog(50);
    main_thread = pthread_self();
    main_ctx = aioctx_main_context();
    iot = aioctx_iothread_new("wait-iot");
    if (!ok(iot != NULL, "iothread_new(\"wait-iot\")"))
        return done_testing();
    iot_ctx = aioctx_iothread_context(iot);

    test_implicit_main_claim();
    test_home_waits();
    test_unhomed_ctx();
    test_no_loop_to_poll();
    test_wait_on_iothread();
    test_migration_hang_shape();
    test_timeouts();
    test_nested_and_crossed();
    test_kick();
    test_wake_all();

    is_int(aioctx_poll_while(NULL, always, NULL, 0, 0), -EINVAL, "poll_while(NULL ctx) -> -EINVAL");
    is_int(aioctx_poll_while(main_ctx, NULL, NULL, 0, 0), -EINVAL, "poll_while(NULL cond) -> -EINVAL");
    ok(aioctx_last_error()[0] != '\0', "... with a message: '%s'", aioctx_last_error());
    is_int(aioctx_poll_while(main_ctx, always, NULL, 0, 0x80), -EINVAL, "poll_while with unknown flags -> -EINVAL");
    is_int(aioctx_poll_while(iot_ctx, always, NULL, -1, ~AIOCTX_WAIT_RELEASE_ALL), -EINVAL,
           "poll_while with unknown flag bits -> -EINVAL before waiting (no hang)");
    aioctx_wait_kick();
    ok(1, "aioctx_wait_kick with no waiter is harmless");

    is_int(atomic_load(&slow_waits), 0,
           "every wait that should end ended promptly (< %d ms): no lost wake-ups", (int)(prompt_ns() / MS));
    is_int(aioctx_iothread_free(iot), 0, "iothread_free");
    return done_testing();
}
