/*
 * test-callback-race: once aioctx_bh_cancel, aioctx_bh_delete,
 * aioctx_timer_del or aioctx_timer_free returns in another thread than the
 * context's home, the callback does not start any more, and is not running:
 * the call waits for a callback that already started, so
 * `aioctx_bh_delete(bh); free(dev);` is safe. From the callback itself the
 * calls return at once.
 *
 * Two kinds of rounds per call:
 *  - "running": the canceller waits until the callback entered, then
 *    cancels; the callback waits for the canceller to be about to call, then
 *    keeps running for 2 ms. The canceller checks that the callback has left
 *    once the call returned: without the wait this fails in nearly every
 *    round, and the freed `dev` is a use-after-free that valgrind reports;
 *  - "start": the canceller cancels at a random moment just after
 *    scheduling, and the callback checks on entry that no cancel of its round
 *    returned (rare without the fix: tens in 300k rounds).
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

enum kind { BH_CANCEL, BH_DELETE, TIMER_DEL, TIMER_FREE };
static const char *const kind_name[] = { "aioctx_bh_cancel", "aioctx_bh_delete",
                                         "aioctx_timer_del", "aioctx_timer_free" };

static AioctxContext *ctx;
static atomic_int stop;

/* The home thread: polls ctx until told to stop. */
static void *home_thread(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop))
        aioctx_poll(ctx, true);
    return NULL;
}

static void stop_cb(void *opaque)
{
    (void)opaque;
    atomic_store(&stop, 1);
}

/* What a callback works on: freed right after the cancel returns. */
struct dev {
    atomic_int entered;
    atomic_int running;
    atomic_long round;          /* the round that scheduled the callback */
    atomic_long *cancelled;     /* the last round whose cancel returned */
    atomic_int *late;           /* callbacks that started after their cancel */
    atomic_int stopping;        /* the canceller is about to call */
    int linger_us;              /* how long to run on once it is (0: no wait) */
};

static void dev_cb(void *opaque)
{
    struct dev *d = opaque;
    atomic_store(&d->running, 1);
    atomic_store(&d->entered, 1);
    if (atomic_load(d->cancelled) == atomic_load(&d->round))
        atomic_fetch_add(d->late, 1);
    if (d->linger_us > 0) {
        int64_t give_up = tap_now_ns() + long_timeout();
        while (!atomic_load(&d->stopping) && tap_now_ns() < give_up)
            ;
        int64_t until = tap_now_ns() + d->linger_us * 1000LL;
        while (tap_now_ns() < until)
            ;
    }
    atomic_store(&d->running, 0);
}

/* A BH or a timer on dev, started (scheduled or armed to fire now). */
struct job {
    AioctxBh *bh;
    AioctxTimer *t;
};

static struct job job_new(enum kind k, struct dev *d)
{
    struct job j = { NULL, NULL };
    if (k == BH_CANCEL || k == BH_DELETE)
        j.bh = aioctx_bh_new(ctx, dev_cb, d);
    else
        j.t = aioctx_timer_new(ctx, dev_cb, d);
    return j;
}

static void job_start(struct job *j)
{
    if (j->bh)
        aioctx_bh_schedule(j->bh);
    else
        aioctx_timer_mod(j->t, 0);
}

/* The call under test; deleting and freeing end the job. */
static void job_stop(enum kind k, struct job *j)
{
    switch (k) {
    case BH_CANCEL: aioctx_bh_cancel(j->bh); break;
    case BH_DELETE: aioctx_bh_delete(j->bh); j->bh = NULL; break;
    case TIMER_DEL: aioctx_timer_del(j->t); break;
    case TIMER_FREE: aioctx_timer_free(j->t); j->t = NULL; break;
    }
}

static void job_free(struct job *j)
{
    aioctx_bh_delete(j->bh);
    aioctx_timer_free(j->t);
}

/* Rounds where the canceller acts while the callback runs. */
static void test_running(enum kind k, int rounds)
{
    atomic_long cancelled = -1;
    atomic_int late = 0;
    int still_running = 0, never_ran = 0;
    for (int r = 0; r < rounds; r++) {
        struct dev *d = calloc(1, sizeof(*d));
        d->cancelled = &cancelled;
        d->late = &late;
        d->linger_us = 2000;
        atomic_store(&d->round, r);
        struct job j = job_new(k, d);
        job_start(&j);
        int64_t end = tap_now_ns() + long_timeout();
        while (!atomic_load(&d->entered) && tap_now_ns() < end)
            ;
        if (!atomic_load(&d->entered)) {
            never_ran++;
            job_stop(k, &j);
            job_free(&j);
            free(d);
            break;
        }
        atomic_store(&d->stopping, 1);
        job_stop(k, &j);
        still_running += atomic_load(&d->running);
        job_free(&j);
        free(d); /* a callback still running now writes freed memory */
    }
    is_int(never_ran, 0, "%s: every callback started while not cancelled", kind_name[k]);
    is_int(still_running, 0, "%s: never returned while the callback ran in the home thread (%d rounds)",
           kind_name[k], rounds);
}

/* Rounds where the canceller acts at a random moment around the start. */
static void test_start(enum kind k, int64_t budget_ns)
{
    atomic_long cancelled = -1;
    atomic_int late = 0;
    struct dev d = { .cancelled = &cancelled, .late = &late };
    struct job j = job_new(k, &d);
    unsigned seed = 12345;
    int64_t end = tap_now_ns() + budget_ns;
    long r;
    for (r = 0; tap_now_ns() < end; r++) {
        atomic_store(&d.round, r);
        job_start(&j);
        for (int spin = rand_r(&seed) % 400; spin > 0; spin--)
            atomic_signal_fence(memory_order_seq_cst);
        job_stop(k, &j);
        atomic_store(&cancelled, r);
        if (!j.bh && !j.t)
            j = job_new(k, &d);
    }
    job_free(&j);
    is_int(atomic_load(&late), 0, "%s: no callback started after the call returned (%ld rounds)",
           kind_name[k], r);
}

/* From the callback itself each call returns at once (no self-deadlock). */
struct self {
    enum kind k;
    struct job j;
    atomic_int ran;
};

static void self_cb(void *opaque)
{
    struct self *s = opaque;
    job_stop(s->k, &s->j);
    atomic_fetch_add(&s->ran, 1);
}

static void test_from_callback(enum kind k)
{
    struct self s = { .k = k };
    if (k == BH_CANCEL || k == BH_DELETE)
        s.j.bh = aioctx_bh_new(ctx, self_cb, &s);
    else
        s.j.t = aioctx_timer_new(ctx, self_cb, &s);
    job_start(&s.j);
    is_int(wait_at_least(&s.ran, 1, 5 * SEC), 1, "%s from its own callback returns", kind_name[k]);
    job_free(&s.j);
}

int main(void)
{
    tap_watchdog(60);
    ctx = aioctx_context_new("callback-race");
    pthread_t home;
    pthread_create(&home, NULL, home_thread, NULL);

    /* Fewer rounds under valgrind (which scales the timeouts). */
    int slow = tap_scale() > 1;
    for (enum kind k = BH_CANCEL; k <= TIMER_FREE; k++) {
        test_running(k, slow ? 10 : 200);
        test_start(k, (slow ? 200 : 500) * MS);
        test_from_callback(k);
    }

    aioctx_bh_schedule_oneshot(ctx, stop_cb, NULL);
    pthread_join(home, NULL);
    aioctx_context_unref(ctx);
    return done_testing();
}
