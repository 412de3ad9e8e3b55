/*
 * test-bh-scale: cancelling and deleting pending BHs costs O(1) each, so
 * deleting 40k pending BHs takes about as long as scheduling them (it was
 * quadratic: 27 s). The bound is a generous ratio against scheduling, plus
 * slack, and the loop gives up as soon as it is exceeded: a slow delete
 * fails fast instead of running into the watchdog.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <stdlib.h>
#include <string.h>

enum { N = 40000 };

static void never_cb(void *opaque)
{
    atomic_fetch_add((atomic_int *)opaque, 1);
}

/* Time to run op on every BH, or -1 once it exceeds limit_ns. */
static int64_t timed(AioctxBh **bhs, int (*op)(AioctxBh *), int64_t limit_ns)
{
    int64_t start = tap_now_ns();
    for (int i = 0; i < N; i++) {
        op(bhs[i]);
        if ((i & 255) == 0 && tap_now_ns() - start > limit_ns)
            return -1;
    }
    return tap_now_ns() - start;
}

static int delete_op(AioctxBh *bh)
{
    aioctx_bh_delete(bh);
    return 0;
}

/* Schedules all, then cancels (or deletes) all, in the order given. */
static void test_order(AioctxContext *ctx, const char *what, int (*op)(AioctxBh *), int reverse)
{
    static AioctxBh *bhs[N];
    atomic_int ran = 0;
    for (int i = 0; i < N; i++)
        bhs[reverse ? N - 1 - i : i] = aioctx_bh_new(ctx, never_cb, &ran);
    int64_t sched = timed(bhs, aioctx_bh_schedule, 60 * SEC);
    /* Scheduling is O(1): the ratio allows 20 times that, plus 300 ms. */
    int64_t limit = (20 * sched + 300 * MS) * tap_scale();
    int64_t t = timed(bhs, op, limit);
    ok(t >= 0, "%d pending BHs: %s in %.1f ms (scheduling took %.1f ms, limit %.0f ms)", N, what,
       t / 1e6, sched / 1e6, limit / 1e6);
    is_int(aioctx_poll(ctx, false), 0, "%s: none of them runs", what);
    is_int(atomic_load(&ran), 0, "... not one");
    /* After a timeout the rest are leaked: deleting them would be as slow. */
    if (op != delete_op && t >= 0)
        for (int i = 0; i < N; i++)
            aioctx_bh_delete(bhs[i]);
}

/* Cancelled and rescheduled many times with no poll in between: the queue
 * does not grow with the cancels, and the BH runs once. */
static void test_churn(AioctxContext *ctx)
{
    atomic_int ran = 0;
    AioctxBh *bh = aioctx_bh_new(ctx, inc_cb, &ran);
    int pairs = 1000000 / tap_scale();
    for (int i = 0; i < pairs; i++) {
        aioctx_bh_schedule(bh);
        aioctx_bh_cancel(bh);
    }
    aioctx_bh_schedule(bh);
    is_int(aioctx_poll(ctx, false), 1, "after %d cancel/reschedule pairs the poll runs it", pairs);
    is_int(atomic_load(&ran), 1, "... once");
    char line[4096];
    aioctx_debug_dump(line, sizeof line);
    ok(strstr(line, " 0 pending BHs") != NULL, "... and nothing is left pending");
    aioctx_bh_delete(bh);
}

int main(void)
{
    tap_watchdog(60);
    AioctxContext *ctx = aioctx_context_new("bh-scale");
    test_order(ctx, "deleted in scheduling order", delete_op, 0);
    test_order(ctx, "deleted newest first", delete_op, 1);
    test_order(ctx, "cancelled in scheduling order", aioctx_bh_cancel, 0);
    test_churn(ctx);
    aioctx_context_unref(ctx);
    return done_testing();
}
