/*
 * test-deadlock.c - a wait may hold other contexts; only a real wait-for
 * cycle ends it: -EDEADLK naming the cycle within 100 ms, every lock as on
 * entry, or completion with AIOCTX_WAIT_RELEASE_HELD. No false refusal in
 * 10^4 waits without a cycle; aioctx_iothread_free from a main-loop callback
 * while the IOThread's BH acquires the main context ends.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <stdlib.h>
#include <string.h>

static AioctxContext *main_ctx;

/* A BH that takes `ctx` (blocking), sets `done` and gives it back. */
struct taker {
    AioctxContext *ctx;
    atomic_int done;
    atomic_llong blocked_at;
};

static void take_cb(void *opaque)
{
    struct taker *t = opaque;
    atomic_store(&t->blocked_at, aioctx_clock_ns());
    aioctx_acquire(t->ctx);
    atomic_store(&t->done, 1);
    aioctx_release(t->ctx);
}

static bool not_done(void *opaque)
{
    return !atomic_load(&((struct taker *)opaque)->done);
}

static int64_t detect_bound(void)
{
    return 100 * MS * tap_scale();
}

/* main holds io's context and y, and waits on io, whose BH takes y. */
static void test_two_thread_cycle(unsigned flags)
{
    const char *mode = flags ? "RELEASE_HELD" : "default";
    AioctxIoThread *io = aioctx_iothread_new("dl-io");
    AioctxContext *io_ctx = aioctx_iothread_context(io);
    AioctxContext *y = aioctx_context_new("dl-y");
    struct taker t = { y, 0, 0 };
    aioctx_acquire(y);
    aioctx_acquire(io_ctx);
    aioctx_bh_schedule_oneshot(io_ctx, take_cb, &t);
    int rc = aioctx_poll_while(io_ctx, not_done, &t, 5 * SEC * tap_scale(), flags);
    int64_t took = aioctx_clock_ns() - atomic_load(&t.blocked_at);
    if (flags) {
        is_int(rc, 0, "%s: the wait lends y to the IOThread and completes", mode);
        ok(atomic_load(&t.done), "%s: the BH ran", mode);
    } else {
        is_int(rc, -EDEADLK, "default: the cycle is reported");
        like(aioctx_last_error(), "deadlock", "default: the message says deadlock");
        like(aioctx_last_error(), "'dl-y'", "default: and names the context the IOThread needs");
        like(aioctx_last_error(), "'dl-io'", "default: and the IOThread");
        ok(took < detect_bound(), "default: reported %lld us after the cycle formed",
           (long long)(took / 1000));
    }
    is_int(aioctx_lock_depth(io_ctx), 1, "%s: io's context held as on entry", mode);
    is_int(aioctx_lock_depth(y), 1, "%s: y held as on entry", mode);
    aioctx_release(io_ctx);
    aioctx_release(y);
    is_int(aioctx_iothread_free(io), 0, "%s: the IOThread stops", mode);
    ok(atomic_load(&t.done), "%s: its BH finished once y was free", mode);
    aioctx_context_unref(y);
}

/* main waits on io holding z; io's BH takes y, held by a plain thread that
 * then takes z: main -> io -> holder -> main. */
struct holder {
    AioctxContext *y, *z;
    atomic_int has_y, go;
};

static void *holder_thread(void *arg)
{
    struct holder *h = arg;
    aioctx_acquire(h->y);
    atomic_store(&h->has_y, 1);
    while (!atomic_load(&h->go))
        tap_sleep_ms(1);
    tap_sleep_ms(10); /* let io block on y first */
    aioctx_acquire(h->z);
    aioctx_release(h->z);
    aioctx_release(h->y);
    return NULL;
}

static void test_three_thread_cycle(void)
{
    AioctxIoThread *io = aioctx_iothread_new("dl3-io");
    AioctxContext *io_ctx = aioctx_iothread_context(io);
    struct holder h = { aioctx_context_new("dl3-y"), aioctx_context_new("dl3-z"), 0, 0 };
    struct taker t = { h.y, 0, 0 };
    pthread_t th;
    pthread_create(&th, NULL, holder_thread, &h);
    while (!atomic_load(&h.has_y))
        tap_sleep_ms(1);
    aioctx_acquire(h.z);
    aioctx_bh_schedule_oneshot(io_ctx, take_cb, &t);
    atomic_store(&h.go, 1);
    int rc = aioctx_poll_while(io_ctx, not_done, &t, 5 * SEC * tap_scale(), 0);
    int64_t took = aioctx_clock_ns() - atomic_load(&t.blocked_at) - 10 * MS;
    is_int(rc, -EDEADLK, "three threads: the cycle is reported");
    like(aioctx_last_error(), "'dl3-y'", "three threads: the message names y");
    like(aioctx_last_error(), "'dl3-z'", "three threads: and z");
    ok(took < detect_bound(), "three threads: reported about %lld us after it formed",
       (long long)(took / 1000));
    is_int(aioctx_lock_depth(h.z), 1, "three threads: z held as on entry");
    aioctx_release(h.z);
    pthread_join(th, NULL);
    is_int(aioctx_iothread_free(io), 0, "three threads: the IOThread stops");
    ok(atomic_load(&t.done), "three threads: its BH finished");
    aioctx_context_unref(h.y);
    aioctx_context_unref(h.z);
}

/* Waits on random IOThreads while holding random contexts, for BHs that take
 * contexts main does not hold: no cycle, so every wait must succeed. */
static void test_no_false_refusal(void)
{
    enum { NIO = 3, NFREE = 3 };
    AioctxIoThread *io[NIO];
    AioctxContext *ctxs[NIO + NFREE];
    for (int i = 0; i < NIO; i++) {
        char name[16];
        snprintf(name, sizeof name, "dlr-io%d", i);
        io[i] = aioctx_iothread_new(name);
        ctxs[i] = aioctx_iothread_context(io[i]);
    }
    for (int i = 0; i < NFREE; i++)
        ctxs[NIO + i] = aioctx_context_new("dlr-free");
    unsigned seed = 12345;
    int waits = 10000 / tap_scale(), failed = 0;
    for (int n = 0; n < waits; n++) {
        bool held[NIO + NFREE];
        for (int i = 0; i < NIO + NFREE; i++) {
            held[i] = rand_r(&seed) & 1;
            if (held[i])
                aioctx_acquire(ctxs[i]);
        }
        int w = rand_r(&seed) % NIO;
        struct taker t = { NULL, 0, 0 };
        /* The BH takes a context main does not hold, or none. */
        for (int i = NIO; i < NIO + NFREE; i++)
            if (!held[i] && rand_r(&seed) % 2)
                t.ctx = ctxs[i];
        if (!t.ctx)
            t.ctx = ctxs[w]; /* its own: recursive, never blocks */
        aioctx_bh_schedule_oneshot(ctxs[w], take_cb, &t);
        int rc = aioctx_poll_while(ctxs[w], not_done, &t, 10 * SEC * tap_scale(), 0);
        if (rc != 0 && failed++ < 3)
            diag("wait %d: %d %s", n, rc, aioctx_last_error());
        for (int i = NIO + NFREE - 1; i >= 0; i--)
            if (held[i])
                aioctx_release(ctxs[i]);
    }
    is_int(failed, 0, "%d waits holding random contexts without a cycle: none refused", waits);
    for (int i = 0; i < NIO; i++)
        aioctx_iothread_free(io[i]);
    for (int i = 0; i < NFREE; i++)
        aioctx_context_unref(ctxs[NIO + i]);
}

/* A main-loop callback frees an IOThread whose queued BH takes the main context. */
struct freeing {
    AioctxIoThread *io;
    int rc;
    atomic_int freed;
};

static void slow_take_main_cb(void *opaque)
{
    tap_sleep_ms(20);
    take_cb(opaque);
}

static void free_io_cb(void *opaque)
{
    struct freeing *f = opaque;
    f->rc = aioctx_iothread_free(f->io);
    atomic_store(&f->freed, 1);
}

static void test_iothread_free_from_callback(void)
{
    struct freeing f = { aioctx_iothread_new("dl-free-io"), -99, 0 };
    struct taker t = { main_ctx, 0, 0 };
    aioctx_bh_schedule_oneshot(aioctx_iothread_context(f.io), slow_take_main_cb, &t);
    aioctx_bh_schedule_oneshot(main_ctx, free_io_cb, &f);
    int64_t deadline = aioctx_clock_ns() + 5 * SEC * tap_scale();
    while (!atomic_load(&f.freed) && aioctx_clock_ns() < deadline)
        aioctx_poll(main_ctx, true);
    ok(atomic_load(&f.freed), "iothread_free from a main-loop callback returned");
    is_int(f.rc, 0, "and stopped the thread");
    ok(atomic_load(&t.done), "the IOThread's BH got the main context and finished");
}

int main(void)
{
    tap_watchdog(60);
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main thread claims the main context");
    test_two_thread_cycle(0);
    test_two_thread_cycle(AIOCTX_WAIT_RELEASE_HELD);
    test_three_thread_cycle();
    test_no_false_refusal();
    test_iothread_free_from_callback();
    return done_testing();
}
