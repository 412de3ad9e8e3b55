/*
 * test-stress: a cross-thread bottom-half storm. Several producer threads
 * schedule many one-shots onto an IOThread's context and onto the main
 * context (polled by the main thread meanwhile), and hammer shared regular
 * BHs; every one-shot runs exactly once, on the right thread, and a BH
 * scheduled after its last run is never lost. Runs under the watchdog.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define NPROD 4

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

static void *producer(void *arg)
{
    long p = (long)(intptr_t)arg;
    for (long i = 0; i < per_producer; i++) {
        long idx = p * per_producer + i;
        /* even indices on main, odd on the IOThread */
        AioctxContext *c = (idx & 1) ? iot_ctx : main_ctx;
        if (aioctx_bh_schedule_oneshot(c, oneshot_cb, (void *)(intptr_t)idx) != 0)
            atomic_fetch_add(&errors, 1);
        if (i % 16 == 0) {
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

int main(void)
{
    tap_watchdog(30);
    if (tap_scale() > 1)
        per_producer = 500;
    main_thread = pthread_self();
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main thread claims the main context");
    AioctxIoThread *it = aioctx_iothread_new("stress-iot");
    if (!ok(it != NULL, "iothread_new"))
        return done_testing();
    iot_ctx = aioctx_iothread_context(it);
    aioctx_bh_schedule_oneshot(iot_ctx, learn_iot_thread, NULL);
    while (!atomic_load(&iot_tid_set))
        tap_sleep_ms(1);

    int total = NPROD * per_producer;
    hits = calloc((size_t)total, sizeof *hits);
    for (int i = 0; i < 2; i++) {
        sbh[i].ctx = i ? iot_ctx : main_ctx;
        sbh[i].bh = aioctx_bh_new(sbh[i].ctx, shared_cb, &sbh[i]);
    }

    pthread_t th[NPROD];
    int64_t t0 = tap_now_ns();
    for (long p = 0; p < NPROD; p++)
        pthread_create(&th[p], NULL, producer, (void *)(intptr_t)p);

    /* The main thread runs its loop while the storm goes on. */
    int want_main = total / 2, want_iot = total - total / 2;
    int64_t give_up = tap_now_ns() + 20000000000LL * tap_scale();
    while (atomic_load(&main_runs) < want_main && tap_now_ns() < give_up) {
        if (aioctx_poll(main_ctx, true) < 0)
            atomic_fetch_add(&errors, 1);
    }
    for (int p = 0; p < NPROD; p++)
        pthread_join(th[p], NULL);
    int rc = aioctx_poll_while(iot_ctx, iot_not_done, &want_iot, 20000000000LL * tap_scale(), 0);
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
            while (shared_not_seen(s))
                aioctx_poll(main_ctx, false);
        } else {
            aioctx_poll_while(iot_ctx, shared_not_seen, s, 5000000000LL * tap_scale(), 0);
        }
        ok(atomic_load(&s->seen) == gen,
           "%s: the shared BH ran after its last schedule (no lost schedule)", i ? "IOThread" : "main");
        ok(atomic_load(&s->runs) >= 1 && atomic_load(&s->runs) <= gen,
           "%s: it ran %d times for %d schedules (pending reschedules coalesce)", i ? "IOThread" : "main",
           atomic_load(&s->runs), gen);
    }
    is_int(aioctx_poll(main_ctx, false), 0, "nothing left pending on the main context");

    aioctx_bh_delete(sbh[0].bh);
    /* Delete the IOThread's BH in its home thread; free runs that pending one-shot. */
    aioctx_bh_schedule_oneshot(iot_ctx, delete_bh_cb, sbh[1].bh);
    is_int(aioctx_iothread_free(it), 0, "iothread_free");
    free(hits);
    return done_testing();
}
