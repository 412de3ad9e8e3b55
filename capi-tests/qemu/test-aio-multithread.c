/*
 * test-aio-multithread: what QEMU's tests/unit/test-aio-multithread.c checks
 * for its lifecycle, schedule and mutex cases, through qemu-compat.h. QEMU
 * runs coroutines there; here each coroutine body is a one-shot BH that
 * does one step and schedules its next step (aio_co_schedule becomes
 * aio_bh_schedule_oneshot). The CoMutex cases use an AioContext's lock as
 * the contended mutex (aioctx's lock is what a VMM contends on); the
 * pthread case is QEMU's QemuMutex one. The MCS case tests a futex lock of
 * QEMU's own and has no aioctx counterpart.
 */
#define _GNU_SOURCE
#include "tap.h"
#include <aioctx/qemu-compat.h>

#include <pthread.h>
#include <stdatomic.h>

#define NUM_CONTEXTS 5

static IOThread *threads[NUM_CONTEXTS];
static AioContext *ctx[NUM_CONTEXTS];
static _Thread_local int id = -1;

/* Runs cb(opaque) in IOThread i and waits for it (QEMU's ctx_run). */
static void ctx_run(int i, QEMUBHFunc *cb, void *opaque)
{
    aio_wait_bh_oneshot(ctx[i], cb, opaque);
}

static void set_id_cb(void *opaque)
{
    id = *(int *)opaque;
}

static void get_id_cb(void *opaque)
{
    *(int *)opaque = id;
}

static void create_aio_contexts(void)
{
    char name[32];
    int i;
    for (i = 0; i < NUM_CONTEXTS; i++) {
        snprintf(name, sizeof name, "multi-%d", i);
        threads[i] = iothread_create(name, &error_abort);
        ctx[i] = iothread_get_aio_context(threads[i]);
    }
    for (i = 0; i < NUM_CONTEXTS; i++)
        ctx_run(i, set_id_cb, &i);
}

static void join_aio_contexts(void)
{
    int i;
    for (i = 0; i < NUM_CONTEXTS; i++)
        aio_context_ref(ctx[i]);
    for (i = 0; i < NUM_CONTEXTS; i++)
        iothread_destroy(threads[i]);
    for (i = 0; i < NUM_CONTEXTS; i++)
        aio_context_unref(ctx[i]);
}

static void test_lifecycle(void)
{
    int i, seen, all_right = 1;
    create_aio_contexts();
    for (i = 0; i < NUM_CONTEXTS; i++) {
        seen = -1;
        ctx_run(i, get_id_cb, &seen);
        all_right &= seen == i;
    }
    ok(all_right, "/aio/multi/lifecycle: a function run on IOThread i runs in IOThread i");
    is_int(id, -1, "/aio/multi/lifecycle: and not in the main thread");
    join_aio_contexts();
    ok(1, "/aio/multi/lifecycle: the IOThreads stop and join with their contexts referenced");
}

/* ---- /aio/multi/schedule ----------------------------------------------------------
 * One token per context hops from context to context: each step runs in the
 * context it was scheduled on, picks a random context (its own included)
 * and schedules the next step there, until told to stop. */

struct token {
    int at; /* the context the next step was scheduled on */
};

static struct token tokens[NUM_CONTEXTS];
static atomic_bool stop_hops;
static atomic_int count_here, count_other, wrong_context, parked;
static _Thread_local unsigned seed;

static void hop(void *opaque)
{
    struct token *t = opaque;
    int n;
    if (t->at != id)
        atomic_fetch_add(&wrong_context, 1);
    if (atomic_load(&stop_hops)) {
        atomic_fetch_add(&parked, 1); /* the poll running us kicks the waiter */
        return;
    }
    if (seed == 0)
        seed = (unsigned)id * 7919u + 1u;
    n = (int)(rand_r(&seed) % NUM_CONTEXTS);
    atomic_fetch_add(n == id ? &count_here : &count_other, 1);
    t->at = n;
    aio_bh_schedule_oneshot(ctx[n], hop, t);
}

static void test_multi_schedule(int ms)
{
    int i;
    atomic_store(&stop_hops, false);
    atomic_store(&parked, 0);
    create_aio_contexts();
    for (i = 0; i < NUM_CONTEXTS; i++) {
        tokens[i].at = i;
        aio_bh_schedule_oneshot(ctx[i], hop, &tokens[i]);
    }
    tap_sleep_ms(ms);
    atomic_store(&stop_hops, true);
    AIO_WAIT_WHILE(NULL, atomic_load(&parked) < NUM_CONTEXTS);
    join_aio_contexts();
    diag("scheduled %d, queued %d", atomic_load(&count_other), atomic_load(&count_here));
    is_int(atomic_load(&parked), NUM_CONTEXTS, "/aio/multi/schedule: every token stopped");
    is_int(atomic_load(&wrong_context), 0,
           "/aio/multi/schedule: every step ran in the context it was scheduled on");
    ok(atomic_load(&count_other) > 0 && atomic_load(&count_here) > 0,
       "/aio/multi/schedule: steps moved to other contexts and stayed in their own");
}

/* ---- /aio/multi/mutex/... --------------------------------------------------------------
 * Each of `threads` contexts runs a step that takes the mutex, bumps a plain
 * counter, drops the mutex and bumps an atomic one, then schedules itself
 * again; once told to stop, each says so. Equal counters: the mutex excluded
 * every other holder. */

#define STEPS_PER_BH 64

static uint32_t counter;
static atomic_uint atomic_counter;
static atomic_int running;
static atomic_bool now_stopping;
static AioContext *mutex_ctx; /* the contended lock of the CoMutex cases */
static pthread_mutex_t pmutex = PTHREAD_MUTEX_INITIALIZER;
static bool use_pthread;

static void mutex_step(void *opaque)
{
    int i;
    (void)opaque;
    if (atomic_load(&now_stopping)) {
        atomic_fetch_sub(&running, 1);
        return;
    }
    for (i = 0; i < STEPS_PER_BH; i++) {
        if (use_pthread)
            pthread_mutex_lock(&pmutex);
        else
            aio_context_acquire(mutex_ctx);
        counter++;
        if (use_pthread)
            pthread_mutex_unlock(&pmutex);
        else
            aio_context_release(mutex_ctx);
        /* After the unlock, as in QEMU: the stop check must not see a
         * holder that has not counted yet. */
        atomic_fetch_add(&atomic_counter, 1);
    }
    aio_bh_schedule_oneshot(qemu_get_current_aio_context(), mutex_step, NULL);
}

static void test_multi_mutex(const char *name, int nthreads, int ms, bool pthread_mutex)
{
    int i;
    counter = 0;
    atomic_store(&atomic_counter, 0);
    atomic_store(&now_stopping, false);
    use_pthread = pthread_mutex;
    mutex_ctx = aio_context_new(&error_abort);

    create_aio_contexts();
    atomic_store(&running, nthreads);
    for (i = 0; i < nthreads; i++)
        aio_bh_schedule_oneshot(ctx[i], mutex_step, NULL);
    tap_sleep_ms(ms);
    atomic_store(&now_stopping, true);
    AIO_WAIT_WHILE(NULL, atomic_load(&running) > 0);
    join_aio_contexts();
    aio_context_unref(mutex_ctx);

    diag("%s: %u iterations in %d ms", name, counter, ms);
    ok(counter > 0, "%s: the threads took the mutex", name);
    is_int(counter, atomic_load(&atomic_counter),
           "%s: the protected counter lost no increment", name);
}

int main(void)
{
    tap_watchdog(60);
    is_int(qemu_init_main_loop(&error_abort), 0, "qemu_init_main_loop");

    test_lifecycle();
    test_multi_schedule(500);
    test_multi_mutex("/aio/multi/mutex/contended", NUM_CONTEXTS, 500, false);
    test_multi_mutex("/aio/multi/mutex/handoff", 2, 500, false);
    test_multi_mutex("/aio/multi/mutex/pthread", NUM_CONTEXTS, 500, true);
    return done_testing();
}
