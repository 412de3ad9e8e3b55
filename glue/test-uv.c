/*
 * test-uv: libaioctx-uv's attach/detach: NULL arguments refused with
 * EINVAL; BHs and timers (never early) run from uv_run; detach closes every
 * handle (uv_loop_close succeeds); polled from a thread that is not the
 * context's home, the handles stop instead of spinning.
 */
#define _GNU_SOURCE
#include "tap.h"
#include <aioctx-uv.h>
#include "test-util.h"
#include "glue-test.h"

#include <errno.h>

/* Runs the loop until *flag is set or 5 s (scaled) pass. */
static bool run_until(uv_loop_t *loop, atomic_int *flag)
{
    int64_t end = tap_now_ns() + long_timeout();
    while (!atomic_load(flag) && tap_now_ns() < end)
        uv_run(loop, UV_RUN_ONCE);
    return atomic_load(flag);
}

static void test_runs_bh_and_timer(void)
{
    uv_loop_t loop;
    AioctxContext *ctx = aioctx_context_new("uv-test");
    atomic_int ran = 0, fired = 0;
    AioctxBh *bh = aioctx_bh_new(ctx, inc_cb, &ran);
    AioctxTimer *timer = aioctx_timer_new(ctx, on_timer, &fired);
    AioctxUv *attached;

    uv_loop_init(&loop);
    attached = aioctx_uv_attach(ctx, &loop);
    ok(attached != NULL, "aioctx_uv_attach");
    aioctx_bh_schedule(bh);
    ok(run_until(&loop, &ran), "a BH runs from uv_run");
    timer_deadline = aioctx_clock_ns() + 5 * MS;
    aioctx_timer_mod(timer, timer_deadline);
    ok(run_until(&loop, &fired), "a timer fires (the uv timer follows its deadline)");
    ok(!atomic_load(&timer_early), "not before its deadline");

    aioctx_uv_detach(attached);
    aioctx_uv_detach(NULL);
    is_int(uv_run(&loop, UV_RUN_DEFAULT), 0, "after detach the loop has nothing left to run");
    is_int(uv_loop_close(&loop), 0, "and closes: every handle was closed");
    aioctx_timer_free(timer);
    aioctx_bh_delete(bh);
    aioctx_context_unref(ctx);
}

static void test_wrong_thread(void)
{
    uv_loop_t loop;
    struct home h;
    AioctxContext *ctx = aioctx_context_new("elsewhere");
    atomic_int ran = 0;
    AioctxBh *bh = aioctx_bh_new(ctx, inc_cb, &ran);
    AioctxUv *attached;

    home_start(&h, ctx);
    uv_loop_init(&loop);
    attached = aioctx_uv_attach(ctx, &loop);
    aioctx_bh_schedule(bh); /* makes the fd readable */
    /* The first wake-up fails (-EPERM) and stops the handles, so the loop
     * has nothing active left and uv_run returns (the watchdog catches a
     * spin). */
    uv_run(&loop, UV_RUN_DEFAULT);
    is_int(uv_loop_alive(&loop), 0,
           "polled from another thread than the home: the handles stopped, uv_run returned");
    is_int(atomic_load(&ran), 0, "the BH did not run in the wrong thread");
    aioctx_uv_detach(attached);
    uv_run(&loop, UV_RUN_DEFAULT);
    is_int(uv_loop_close(&loop), 0, "detach still closes every handle");

    home_stop(&h);
    aioctx_bh_delete(bh);
    aioctx_context_unref(ctx);
}

int main(void)
{
    uv_loop_t loop;
    AioctxContext *ctx = aioctx_context_new("args");

    tap_watchdog(60);
    uv_loop_init(&loop);
    errno = 0;
    ok(aioctx_uv_attach(NULL, &loop) == NULL, "aioctx_uv_attach(NULL, loop) is NULL");
    is_int(errno, EINVAL, "errno EINVAL");
    like(aioctx_last_error(), "NULL", "aioctx_last_error says what was NULL");
    errno = 0;
    ok(aioctx_uv_attach(ctx, NULL) == NULL, "aioctx_uv_attach(ctx, NULL) is NULL");
    is_int(errno, EINVAL, "errno EINVAL");
    is_int(uv_loop_close(&loop), 0, "nothing was left on the loop");
    aioctx_context_unref(ctx);

    test_runs_bh_and_timer();
    test_wrong_thread();
    return done_testing();
}
