/*
 * embed-libuv: aioctx's main context driven by a libuv loop.
 *
 * aioctx_uv_attach(ctx, loop) (libaioctx-uv, <aioctx-uv.h>) starts the
 * handles that run the context on the loop, whose thread is the context's
 * home; aioctx_uv_detach closes them. Everything else here is the scenario
 * shared with embed-glib.c (embed-scenario.h): BHs, timers, IOThread
 * completions and an fd handler all delivered in the loop's thread with the
 * context held, while an ordinary libuv timer runs beside them. Exits 0 only
 * if every check passed; a libuv timer fails it instead of hanging.
 */
#include "embed-scenario.h" /* first: it sets _GNU_SOURCE */

#include <aioctx-uv.h>

static uv_loop_t loop;
static uv_timer_t tick, watchdog;
static int uv_ticks;

static void loop_go_idle(void)
{
    uv_timer_stop(&tick);
}

static void loop_quit(void)
{
    uv_stop(&loop);
}

static void on_uv_tick(uv_timer_t *handle)
{
    (void)handle;
    uv_ticks++;
}

static void on_watchdog(uv_timer_t *handle)
{
    (void)handle;
    scenario_watchdog();
}

int main(void)
{
    AioctxContext *ctx;
    AioctxUv *attached;

    printf("aioctx %s in a libuv %s loop\n", aioctx_version(), uv_version_string());
    ctx = scenario_start("uv-io");

    expect(uv_loop_init(&loop) == 0, "uv_loop_init");
    /* This thread runs the loop: the context's home. */
    attached = aioctx_uv_attach(ctx, &loop);
    expect(attached != NULL, "aioctx_uv_attach");
    expect(uv_timer_init(&loop, &tick) == 0 && uv_timer_start(&tick, on_uv_tick, 1, 1) == 0,
           "a libuv timer");
    expect(uv_timer_init(&loop, &watchdog) == 0 &&
           uv_timer_start(&watchdog, on_watchdog, scenario_watchdog_ms(), 0) == 0,
           "the watchdog");
    uv_run(&loop, UV_RUN_DEFAULT);

    /* Close every handle and let the loop finish closing them. */
    aioctx_uv_detach(attached);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    expect(uv_loop_close(&loop) == 0, "uv_loop_close: every handle closed");
    printf("  libuv timer ticks %d\n", uv_ticks);
    scenario_finish();
    expect(uv_ticks > 0, "libuv's own timers kept running");
    printf("  all checks passed\n");
    return 0;
}
