/*
 * test-poll-reentry: polls re-entered from their own callbacks.
 *  - The last reference to a context dropped inside one of its callbacks:
 *    the poll keeps the context alive until it returns (it was freed under
 *    the running dispatch, which then read freed memory: run with glibc's
 *    malloc perturbation, so such a read finds garbage, and under valgrind).
 *  - A nested poll (aioctx_poll from a BH of the same context) uses up fd
 *    readiness the outer poll had seen: the outer poll must not call the
 *    read handler of an fd that is no longer readable (with a blocking fd it
 *    would block).
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <malloc.h>
#include <poll.h>

/* ---- the last reference dropped inside a callback -------------------------------- */

struct owner {
    AioctxContext *ctx;
    atomic_int unrefs, timer_runs;
};

static void unref_cb(void *opaque)
{
    struct owner *o = opaque;
    aioctx_context_unref(o->ctx);
    atomic_fetch_add(&o->unrefs, 1);
}

static void timer_cb(void *opaque)
{
    atomic_fetch_add(&((struct owner *)opaque)->timer_runs, 1);
}

static void test_last_unref_in_callback(int from_timer)
{
    struct owner o = { 0 };
    o.ctx = aioctx_context_new("reentry-unref");
    /* A one-shot BH (or a timer) drops the last reference; a timer due in
     * the same dispatch runs after it, from the context's timer list. */
    AioctxTimer *t = aioctx_timer_new(o.ctx, timer_cb, &o);
    AioctxTimer *u = from_timer ? aioctx_timer_new(o.ctx, unref_cb, &o) : NULL;
    int64_t now = aioctx_clock_ns();
    if (from_timer)
        aioctx_timer_mod(u, now - 2);
    else
        aioctx_bh_schedule_oneshot(o.ctx, unref_cb, &o);
    aioctx_timer_mod(t, now - 1);
    is_int(aioctx_poll(o.ctx, false), 1, "%s dropping the last reference: the poll returns normally",
           from_timer ? "a timer" : "a BH");
    is_int(atomic_load(&o.unrefs), 1, "... the callback ran");
    is_int(atomic_load(&o.timer_runs), 1, "... and so did the timer due in that dispatch");
    /* The context is gone: its timers report it. */
    is_int(aioctx_timer_mod(t, now), -ENODEV, "... and the context is freed once the poll returned");
    aioctx_timer_free(t);
    aioctx_timer_free(u);
}

/* ---- a nested poll ---------------------------------------------------------------- */

struct pipe_reader {
    int fd;
    atomic_int calls, not_readable;
};

static void read_cb(void *opaque)
{
    struct pipe_reader *r = opaque;
    atomic_fetch_add(&r->calls, 1);
    struct pollfd p = { .fd = r->fd, .events = POLLIN };
    if (poll(&p, 1, 0) != 1) {
        /* The blocking read would hang here. */
        atomic_fetch_add(&r->not_readable, 1);
        return;
    }
    char c;
    ssize_t n = read(r->fd, &c, 1);
    (void)n;
}

static void nested_poll_cb(void *opaque)
{
    aioctx_poll(opaque, false);
}

static void test_nested_poll(void)
{
    AioctxContext *ctx = aioctx_context_new("reentry-nested");
    int fds[2];
    ok(pipe(fds) == 0, "pipe (blocking)");
    struct pipe_reader r = { .fd = fds[0] };
    is_int(aioctx_set_fd_handler(ctx, fds[0], read_cb, NULL, &r), 0, "read handler on the pipe");
    for (int round = 0; round < 3; round++) {
        ok(write(fds[1], "x", 1) == 1, "round %d: a byte in the pipe", round);
        /* BHs run before fd handlers: the BH's nested poll reads the byte
         * before the outer poll gets to its (stale) readiness. */
        aioctx_bh_schedule_oneshot(ctx, nested_poll_cb, ctx);
        is_int(aioctx_poll(ctx, false), 1, "... the outer poll ran callbacks");
        is_int(atomic_load(&r.calls), round + 1, "... the read handler ran once, in the nested poll");
        is_int(atomic_load(&r.not_readable), 0, "... never on an fd that was not readable");
    }
    /* What the nested poll did not consume is dispatched by the next poll. */
    ok(write(fds[1], "y", 1) == 1, "a byte with no nested poll");
    is_int(aioctx_poll(ctx, false), 1, "a plain poll runs the handler");
    is_int(atomic_load(&r.calls), 4, "... once more");
    aioctx_set_fd_handler(ctx, fds[0], NULL, NULL, NULL);
    close(fds[0]);
    close(fds[1]);
    aioctx_context_unref(ctx);
}

int main(void)
{
    tap_watchdog(20);
    /* Freed memory is overwritten, so a read of a freed context misbehaves. */
    mallopt(M_PERTURB, 0xa5);
    test_last_unref_in_callback(0);
    test_last_unref_in_callback(1);
    test_nested_poll();
    return done_testing();
}
