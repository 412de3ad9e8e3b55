/*
 * iothreads: the first aioctx program to read.
 *
 * A VMM has a main loop and IOThreads that run the drives' I/O. This program:
 *   1. bounces a request main -> io-disk0 -> io-disk1 -> main with one-shot
 *      bottom halves, while a timer on the main loop reports progress;
 *   2. makes the mistake behind the live-migration hang: the main thread holds
 *      an IOThread's context twice (two drives on one IOThread) and waits for
 *      that IOThread. A plain recursive lock would hang here forever;
 *      aioctx_poll_while returns -EDEADLK at once and says why;
 *   3. does it right: an AioctxSet acquires each distinct context once, and
 *      the same wait completes;
 *   4. shuts down, freeing everything it created.
 * It exits 0 only if every step behaved as documented in aioctx.h.
 */
#define _GNU_SOURCE /* pthread_getname_np: check which thread runs each hop */
#include <aioctx.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROUND_TRIPS 1000
#define TICK_NS (20 * 1000000LL)
/* Generous, for valgrind: a wait that never ends is what we guard against. */
#define TIMEOUT_NS (30 * 1000000000LL)

/* Main thread only. Callbacks count into atomics that main checks at the end. */
static void expect(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "FAILED: %s\n  aioctx_last_error(): %s\n", what,
                aioctx_last_error());
        exit(1);
    }
}

static atomic_int callback_errors;

static void callback_error(const char *what)
{
    fprintf(stderr, "FAILED in a callback: %s (%s)\n", what, aioctx_last_error());
    atomic_fetch_add(&callback_errors, 1);
    aioctx_wait_kick(); /* let the waiting main thread see it */
}

/* Callbacks run in their context's home thread with that context held:
 * check both, so the example fails if the contract is broken. */
static void check_where(AioctxContext *ctx, const char *thread)
{
    char name[16] = "";
    if (aioctx_lock_depth(ctx) != 1)
        callback_error("callback runs without its context held");
    if (thread && (pthread_getname_np(pthread_self(), name, sizeof name) != 0 ||
                   strcmp(name, thread) != 0))
        callback_error("callback runs outside its IOThread");
}

/* ---- 1. a request bounced between three threads ---------------------- */

struct request {
    AioctxContext *main_ctx, *io0, *io1;
    atomic_int hops;  /* incremented in all three threads */
    int round_trips;  /* only the main-loop hop writes it; main reads it */
};

static void hop_on_io0(void *opaque);
static void hop_on_io1(void *opaque);
static void hop_on_main(void *opaque);

/* Each hop is a one-shot BH: schedulable from any thread, freed after it ran. */
static void forward(struct request *req, AioctxContext *next, AioctxCallback hop)
{
    atomic_fetch_add(&req->hops, 1);
    if (aioctx_bh_schedule_oneshot(next, hop, req) != 0)
        callback_error("aioctx_bh_schedule_oneshot");
}

static void hop_on_io0(void *opaque)
{
    struct request *req = opaque;
    check_where(req->io0, "io-disk0");
    forward(req, req->io1, hop_on_io1);
}

static void hop_on_io1(void *opaque)
{
    struct request *req = opaque;
    check_where(req->io1, "io-disk1");
    forward(req, req->main_ctx, hop_on_main);
}

static void hop_on_main(void *opaque)
{
    struct request *req = opaque;
    check_where(req->main_ctx, NULL);
    if (++req->round_trips < ROUND_TRIPS)
        forward(req, req->io0, hop_on_io0);
}

/* poll_while's condition: true while there is still something to wait for. */
static bool request_busy(void *opaque)
{
    const struct request *req = opaque;
    return req->round_trips < ROUND_TRIPS && atomic_load(&callback_errors) == 0;
}

struct progress {
    AioctxTimer *timer;
    const struct request *req;
    int64_t deadline;
    int ticks;
};

/* A periodic timer is a one-shot timer that re-arms itself. */
static void report_progress(void *opaque)
{
    struct progress *p = opaque;
    check_where(aioctx_main_context(), NULL);
    if (aioctx_clock_ns() < p->deadline)
        callback_error("timer fired before its deadline");
    p->ticks++;
    printf("  [timer] %4d/%d round trips, %d hops\n", p->req->round_trips,
           ROUND_TRIPS, atomic_load(&p->req->hops));
    p->deadline = aioctx_clock_ns() + TICK_NS;
    if (aioctx_timer_mod(p->timer, p->deadline) != 0)
        callback_error("aioctx_timer_mod");
}

/* ---- 2./3. waiting for an IOThread while holding its context ---------- */

static atomic_int flushes_done;

static void flush_drive(void *opaque)
{
    check_where(opaque, "io-disk0");
    atomic_fetch_add(&flushes_done, 1);
}

static bool flushes_pending(void *opaque)
{
    return atomic_load(&flushes_done) < *(const int *)opaque &&
           atomic_load(&callback_errors) == 0;
}

int main(void)
{
    printf("aioctx %s\n", aioctx_version());

    /* The main thread claims the main context: it is its home (only it polls
     * it, its callbacks run here) and this thread's current context, which
     * poll_while polls while it waits for other threads. */
    AioctxContext *main_ctx = aioctx_main_context();
    expect(main_ctx != NULL, "aioctx_main_context");
    expect(aioctx_context_claim(main_ctx) == 0, "claim the main context");

    AioctxIoThread *disk0 = aioctx_iothread_new("io-disk0");
    AioctxIoThread *disk1 = aioctx_iothread_new("io-disk1");
    expect(disk0 && disk1, "aioctx_iothread_new");
    AioctxContext *io0 = aioctx_iothread_context(disk0); /* borrowed */
    AioctxContext *io1 = aioctx_iothread_context(disk1);
    expect(io0 && io1, "aioctx_iothread_context");

    printf("\n1. %d round trips main -> io-disk0 -> io-disk1 -> main\n", ROUND_TRIPS);
    static struct request req; /* static: zeroed, outlives every BH */
    req.main_ctx = main_ctx;
    req.io0 = io0;
    req.io1 = io1;
    struct progress progress = {.req = &req, .deadline = aioctx_clock_ns()};
    progress.timer = aioctx_timer_new(main_ctx, report_progress, &progress);
    expect(progress.timer != NULL, "aioctx_timer_new");
    /* First tick now (a past deadline fires at the next poll), then every 20 ms. */
    expect(aioctx_timer_mod(progress.timer, progress.deadline) == 0, "aioctx_timer_mod");

    forward(&req, io0, hop_on_io0);
    /* We are the main context's home, so this polls it until the request is
     * done: the main-loop hops and the timer run inside this call. */
    int ret = aioctx_poll_while(main_ctx, request_busy, &req, TIMEOUT_NS, 0);
    expect(ret == 0, "aioctx_poll_while(main) for the round trips");
    expect(aioctx_timer_del(progress.timer) == 0, "aioctx_timer_del");
    printf("  done: %d round trips, %d hops, %d timer ticks\n", req.round_trips,
           atomic_load(&req.hops), progress.ticks);
    expect(req.round_trips == ROUND_TRIPS && atomic_load(&req.hops) == 3 * ROUND_TRIPS,
           "every hop ran exactly once");
    expect(progress.ticks >= 1, "the progress timer ran");

    /* Two drives, both served by io-disk0: each drive's code takes "its"
     * context, so the main thread holds io-disk0's context twice. */
    AioctxContext *drive_ctx[2] = {io0, io0};

    printf("\n2. wrong: acquire io-disk0 once per drive, then wait for it\n");
    for (int i = 0; i < 2; i++)
        expect(aioctx_acquire(drive_ctx[i]) == 0, "aioctx_acquire");
    expect(aioctx_lock_depth(io0) == 2, "main holds io-disk0 twice");
    /* A flush io-disk0 must run: it needs the context, which we hold. */
    expect(aioctx_bh_schedule_oneshot(io0, flush_drive, io0) == 0, "schedule flush 1");
    int want = 1;
    /* poll_while releases the context once while it polls. Held twice, it
     * would stay held: io-disk0 could never flush, the wait never end. */
    ret = aioctx_poll_while(io0, flushes_pending, &want, TIMEOUT_NS, 0);
    printf("  aioctx_poll_while -> %d (%s)\n  %s\n", ret, strerror(-ret),
           aioctx_last_error());
    expect(ret == -EDEADLK, "poll_while refuses a double hold with -EDEADLK");
    expect(aioctx_lock_depth(io0) == 2, "the refused wait left the depth alone");
    expect(atomic_load(&flushes_done) == 0, "io-disk0 could not flush while held");
    for (int i = 0; i < 2; i++)
        expect(aioctx_release(drive_ctx[i]) == 0, "aioctx_release");

    printf("\n3. right: collect the drives' contexts in a set, acquire it, wait\n");
    AioctxSet *set = aioctx_set_new();
    expect(set != NULL, "aioctx_set_new");
    expect(aioctx_set_add(set, drive_ctx[0]) == 1, "first drive adds io-disk0");
    expect(aioctx_set_add(set, drive_ctx[1]) == 0, "second drive: already a member");
    expect(aioctx_set_len(set) == 1, "one distinct context");
    expect(aioctx_set_acquire(set) == 0, "aioctx_set_acquire");
    expect(aioctx_lock_depth(io0) == 1, "the set holds io-disk0 once");
    expect(aioctx_bh_schedule_oneshot(io0, flush_drive, io0) == 0, "schedule flush 2");
    want = 2; /* flush 1 was only delayed, never lost: wait for both */
    ret = aioctx_poll_while(io0, flushes_pending, &want, TIMEOUT_NS, 0);
    expect(ret == 0, "aioctx_poll_while(io-disk0) while holding it once");
    expect(aioctx_lock_depth(io0) == 1, "poll_while gave the context back");
    printf("  aioctx_poll_while -> 0: %d flushes done\n", atomic_load(&flushes_done));
    expect(aioctx_set_release(set) == 0, "aioctx_set_release");
    aioctx_set_free(set); /* drops the set's references */

    printf("\n4. shutdown\n");
    aioctx_timer_free(progress.timer);
    /* Each runs the BHs already scheduled on its thread, stops it, joins it. */
    expect(aioctx_iothread_free(disk0) == 0, "aioctx_iothread_free(io-disk0)");
    expect(aioctx_iothread_free(disk1) == 0, "aioctx_iothread_free(io-disk1)");
    expect(atomic_load(&callback_errors) == 0, "no callback reported an error");
    printf("  IOThreads joined; all checks passed\n");
    return 0;
}
