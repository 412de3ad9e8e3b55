/*
 * test-stress: cross-thread bottom-half storms. Several producer threads
 * schedule many one-shots onto an IOThread's context and onto the main
 * context (polled by the main thread meanwhile), and hammer shared regular
 * BHs; every one-shot runs exactly once, on the right thread, and a BH
 * scheduled after its last run is never lost. Then many short storms, each
 * followed by probes that a context still wakes up for a new BH: a notify
 * lost during a storm leaves a context asleep with work pending, and the
 * probes turn that into a failure instead of a hang. Runs under the watchdog.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define NPROD 4
#define MS 1000000LL
#define SEC 1000000000LL

static int per_producer = 5000;   /* fewer under valgrind */
static AioctxContext *main_ctx, *iot_ctx;
static pthread_t main_thread;
static atomic_int iot_tid_set;
static pthread_t iot_thread;

static atomic_uchar *hits;        /* hits[i]: runs of one-shot i */
static atomic_int main_runs, iot_runs, wrong_thread, errors;

/* Regular BHs shared by all producers: one per context. */
struct shared_bh {
    AioctxBh *bh;
    AioctxContext *ctx;
    atomic_int generation;   /* bumped by producers before each schedule */
    atomic_int seen;         /* generation observed by the latest run */
    atomic_int runs;
};
static struct shared_bh sbh[2];

static void shared_cb(void *opaque)
{
    struct shared_bh *s = opaque;
    atomic_store(&s->seen, atomic_load(&s->generation));
    atomic_fetch_add(&s->runs, 1);
}

static void oneshot_cb(void *opaque)
{
    long idx = (long)(intptr_t)opaque;
    int on_main = (idx & 1) == 0;
    if (hits)
        atomic_fetch_add(&hits[idx], 1);
    if (on_main) {
        if (!pthread_equal(pthread_self(), main_thread))
            atomic_fetch_add(&wrong_thread, 1);
        atomic_fetch_add(&main_runs, 1);
    } else {
        if (!atomic_load(&iot_tid_set) || !pthread_equal(pthread_self(), iot_thread))
            atomic_fetch_add(&wrong_thread, 1);
        atomic_fetch_add(&iot_runs, 1);
    }
}

static void learn_iot_thread(void *opaque)
{
    (void)opaque;
    iot_thread = pthread_self();
    atomic_store(&iot_tid_set, 1);
}

struct producer_args {
    long p;
    int n;
    int shared;   /* also hammer the shared BHs */
};

static void *producer(void *arg)
{
    struct producer_args *a = arg;
    for (long i = 0; i < a->n; i++) {
        long idx = a->p * a->n + i;
        /* even indices on main, odd on the IOThread */
        AioctxContext *c = (idx & 1) ? iot_ctx : main_ctx;
        if (aioctx_bh_schedule_oneshot(c, oneshot_cb, (void *)(intptr_t)idx) != 0)
            atomic_fetch_add(&errors, 1);
        if (a->shared && i % 16 == 0) {
            struct shared_bh *s = &sbh[i % 32 == 0];
            atomic_fetch_add(&s->generation, 1);
            if (aioctx_bh_schedule(s->bh) != 0)
                atomic_fetch_add(&errors, 1);
        }
        if (i % 1000 == 0)
            sched_yield();
    }
    return NULL;
}

static void delete_bh_cb(void *opaque)
{
    aioctx_bh_delete(opaque);
}

static bool iot_not_done(void *opaque)
{
    int want = *(int *)opaque;
    return atomic_load(&iot_runs) < want;
}

static bool shared_not_seen(void *opaque)
{
    struct shared_bh *s = opaque;
    return atomic_load(&s->seen) != atomic_load(&s->generation);
}

/* A timer that only bounds blocking polls of the main context, so that a lost
 * wake-up makes the test slow and fail rather than hang. */
static AioctxTimer *guard;
static void guard_cb(void *opaque)
{
    (void)opaque;
}

static int poll_main_bounded(int64_t bound_ns)
{
    aioctx_timer_mod(guard, aioctx_clock_ns() + bound_ns);
    return aioctx_poll(main_ctx, true);
}

/* Runs NPROD producers and has main poll until its share ran. */
static void storm(int n, int shared, int *want_main, int *want_iot)
{
    pthread_t th[NPROD];
    struct producer_args args[NPROD];
    int total = NPROD * n;
    *want_main += total / 2;
    *want_iot += total - total / 2;
    for (long p = 0; p < NPROD; p++) {
        args[p].p = p;
        args[p].n = n;
        args[p].shared = shared;
        pthread_create(&th[p], NULL, producer, &args[p]);
    }
    int64_t give_up = tap_now_ns() + 20 * SEC * tap_scale();
    while (atomic_load(&main_runs) < *want_main && tap_now_ns() < give_up) {
        if (poll_main_bounded(200 * MS) < 0)
            atomic_fetch_add(&errors, 1);
    }
    for (int p = 0; p < NPROD; p++)
        pthread_join(th[p], NULL);
}

/* ---- wake-up probes ----------------------------------------------------------- */

static atomic_int probe_ran;

static void probe_cb(void *opaque)
{
    (void)opaque;
    atomic_store(&probe_ran, 1);
}

static void *late_scheduler(void *arg)
{
    AioctxContext *c = arg;
    tap_sleep_ms(2); /* let the home thread block first */
    aioctx_bh_schedule_oneshot(c, probe_cb, NULL);
    return NULL;
}

/* Does a blocking poll of the main context wake up for a BH scheduled from
 * another thread? The guard timer ends the poll after 1 s either way. */
static int main_wakes(int64_t *dt)
{
    pthread_t th;
    atomic_store(&probe_ran, 0);
    pthread_create(&th, NULL, late_scheduler, main_ctx);
    int64_t t0 = tap_now_ns();
    while (!atomic_load(&probe_ran) && tap_now_ns() - t0 < 1 * SEC * tap_scale())
        poll_main_bounded(1 * SEC * tap_scale());
    *dt = tap_now_ns() - t0;
    pthread_join(th, NULL);
    return atomic_load(&probe_ran) && *dt < 1 * SEC * tap_scale();
}

/* Does the IOThread wake up for a BH scheduled from here? */
static int iothread_wakes(int64_t *dt)
{
    atomic_store(&probe_ran, 0);
    int64_t t0 = tap_now_ns();
    aioctx_bh_schedule_oneshot(iot_ctx, probe_cb, NULL);
    while (!atomic_load(&probe_ran) && tap_now_ns() - t0 < 1 * SEC * tap_scale())
        tap_sleep_ns(200000);
    *dt = tap_now_ns() - t0;
    return atomic_load(&probe_ran);
}

int main(void)
{
    tap_watchdog(40);
    int rounds = 40;
    if (tap_scale() > 1) {
        per_producer = 500;
        rounds = 4;
    }
    main_thread = pthread_self();
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main thread claims the main context");
    guard = aioctx_timer_new(main_ctx, guard_cb, NULL);
    AioctxIoThread *it = aioctx_iothread_new("stress-iot");
    if (!ok(it != NULL, "iothread_new"))
        return done_testing();
    iot_ctx = aioctx_iothread_context(it);
    aioctx_bh_schedule_oneshot(iot_ctx, learn_iot_thread, NULL);
    while (!atomic_load(&iot_tid_set))
        tap_sleep_ms(1);

    /* ---- one big storm, every one-shot tracked ---- */
    int total = NPROD * per_producer;
    hits = calloc((size_t)total, sizeof *hits);
    for (int i = 0; i < 2; i++) {
        sbh[i].ctx = i ? iot_ctx : main_ctx;
        sbh[i].bh = aioctx_bh_new(sbh[i].ctx, shared_cb, &sbh[i]);
    }
    int want_main = 0, want_iot = 0;
    int64_t t0 = tap_now_ns();
    storm(per_producer, 1, &want_main, &want_iot);
    int rc = aioctx_poll_while(iot_ctx, iot_not_done, &want_iot, 5 * SEC * tap_scale(), 0);
    int iot_stuck = rc != 0;
    if (!is_int(rc, 0, "waited for every IOThread one-shot"))
        diag("%s", aioctx_last_error());
    diag("%d one-shots from %d threads onto 2 contexts: %lld ms", total, NPROD,
         (long long)((tap_now_ns() - t0) / 1000000));

    is_int(atomic_load(&errors), 0, "every schedule and poll call succeeded");
    is_int(atomic_load(&main_runs), want_main, "main context ran %d one-shots", want_main);
    is_int(atomic_load(&iot_runs), want_iot, "IOThread ran %d one-shots", want_iot);
    int missing = 0, dup = 0;
    for (int i = 0; i < total; i++) {
        int h = atomic_load(&hits[i]);
        if (h == 0)
            missing++;
        else if (h > 1)
            dup++;
    }
    is_int(missing, 0, "no one-shot was lost");
    is_int(dup, 0, "no one-shot ran twice");
    is_int(atomic_load(&wrong_thread), 0, "every one-shot ran in its context's home thread");

    /* Shared regular BHs: runs never exceed schedules, and the last schedule is not lost. */
    for (int i = 0; i < 2; i++) {
        struct shared_bh *s = &sbh[i];
        int gen = atomic_load(&s->generation);
        if (i == 0) {
            int64_t end = tap_now_ns() + 1 * SEC * tap_scale();
            while (shared_not_seen(s) && tap_now_ns() < end)
                aioctx_poll(main_ctx, false);
        } else {
            aioctx_poll_while(iot_ctx, shared_not_seen, s, 1 * SEC * tap_scale(), 0);
        }
        ok(atomic_load(&s->seen) == gen,
           "%s: the shared BH ran after its last schedule (no lost schedule)", i ? "IOThread" : "main");
        ok(atomic_load(&s->runs) >= 1 && atomic_load(&s->runs) <= gen,
           "%s: it ran %d times for %d schedules (pending reschedules coalesce)", i ? "IOThread" : "main",
           atomic_load(&s->runs), gen);
    }
    while (aioctx_poll(main_ctx, false) > 0)
        ;
    aioctx_bh_delete(sbh[0].bh);
    aioctx_bh_schedule_oneshot(iot_ctx, delete_bh_cb, sbh[1].bh);
    free(hits);
    hits = NULL;

    /* ---- many short storms, each followed by wake-up probes ---- */
    int main_lost = 0, iot_lost = 0, done_rounds = 0;
    int64_t dt;
    for (int r = 0; r < rounds && !main_lost && !iot_lost && !iot_stuck; r++) {
        storm(500, 0, &want_main, &want_iot);
        if (aioctx_poll_while(iot_ctx, iot_not_done, &want_iot, 1 * SEC * tap_scale(), 0) != 0) {
            iot_lost = 1;
            diag("round %d: the IOThread stopped running its BHs: %s", r, aioctx_last_error());
            break;
        }
        if (!main_wakes(&dt)) {
            main_lost = 1;
            diag("round %d: the main context's blocking poll missed a BH scheduled from another "
                 "thread (ran %d, %lld ms)", r, atomic_load(&probe_ran), (long long)(dt / MS));
        }
        if (!iothread_wakes(&dt)) {
            iot_lost = 1;
            diag("round %d: the IOThread did not wake up for a new BH within 1 s", r);
        }
        done_rounds++;
    }
    is_int(iot_lost, 0, "after each of %d short storms the IOThread still wakes up for new BHs", done_rounds);
    is_int(main_lost, 0, "after each of %d short storms the main context still wakes up for new BHs",
           done_rounds);
    is_int(atomic_load(&wrong_thread), 0, "every one-shot ran in its context's home thread");
    is_int(atomic_load(&errors), 0, "every call succeeded");

    aioctx_timer_free(guard);
    if (iot_stuck || iot_lost) {
        /* Freeing would wait forever for the asleep IOThread: let exit() end it. */
        diag("not freeing the stuck IOThread");
        return done_testing();
    }
    is_int(aioctx_iothread_free(it), 0, "iothread_free");
    return done_testing();
}
