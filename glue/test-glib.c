/*
 * test-glib: libaioctx-glib's GSource (and the compat aio_get_g_source):
 * NULL refused with EINVAL; BHs and timers (never early) run from a
 * GMainContext; a source polled from a thread that is not the context's
 * home warns and removes itself instead of spinning.
 */
#define _GNU_SOURCE
#include "tap.h"
#include <aioctx-glib.h>
#include <aioctx/qemu-compat.h>
#include "test-util.h"
#include "glue-test.h"

#include <errno.h>

static char warning[512];

static void capture_log(const gchar *domain, GLogLevelFlags level, const gchar *msg,
                        gpointer data)
{
    (void)domain;
    (void)level;
    (void)data;
    snprintf(warning, sizeof warning, "%s", msg);
}

/* Iterates gctx until *flag is set or 5 s (scaled) pass. */
static bool iterate_until(GMainContext *gctx, atomic_int *flag)
{
    int64_t end = tap_now_ns() + long_timeout();
    while (!atomic_load(flag) && tap_now_ns() < end)
        g_main_context_iteration(gctx, TRUE);
    return atomic_load(flag);
}

static void test_runs_bh_and_timer(void)
{
    GMainContext *gctx = g_main_context_new();
    AioctxContext *ctx = aioctx_context_new("glib-test");
    atomic_int ran = 0, fired = 0;
    AioctxBh *bh = aioctx_bh_new(ctx, inc_cb, &ran);
    AioctxTimer *timer = aioctx_timer_new(ctx, on_timer, &fired);
    GSource *source = aioctx_glib_source_new(ctx);

    ok(source != NULL, "aioctx_glib_source_new gives a source");
    is_str(g_source_get_name(source), "glib-test", "named after the context");
    g_source_attach(source, gctx);
    aioctx_bh_schedule(bh);
    ok(iterate_until(gctx, &ran), "a BH runs from g_main_context_iteration");
    timer_deadline = aioctx_clock_ns() + 5 * MS;
    aioctx_timer_mod(timer, timer_deadline);
    ok(iterate_until(gctx, &fired), "a timer fires (the source turned its deadline into a timeout)");
    ok(!atomic_load(&timer_early), "not before its deadline");

    g_source_destroy(source);
    g_source_unref(source);
    aioctx_timer_free(timer);
    aioctx_bh_delete(bh);
    aioctx_context_unref(ctx);
    g_main_context_unref(gctx);
}

static void test_wrong_thread(void)
{
    GMainContext *gctx = g_main_context_new();
    struct home h;
    AioctxContext *ctx = aioctx_context_new("elsewhere");
    atomic_int ran = 0;
    AioctxBh *bh = aioctx_bh_new(ctx, inc_cb, &ran);
    GSource *source;
    int64_t end = tap_now_ns() + long_timeout();

    home_start(&h, ctx);
    source = aioctx_glib_source_new(ctx);
    g_source_attach(source, gctx);
    aioctx_bh_schedule(bh); /* makes the fd readable */
    g_log_set_default_handler(capture_log, NULL);
    while (!g_source_is_destroyed(source) && tap_now_ns() < end)
        g_main_context_iteration(gctx, FALSE);
    g_log_set_default_handler(g_log_default_handler, NULL);
    ok(g_source_is_destroyed(source), "polled from another thread than the home: removed itself");
    like(warning, "elsewhere", "the warning names the context");
    like(warning, "home", "and says why (aioctx_last_error)");
    is_int(atomic_load(&ran), 0, "the BH did not run in the wrong thread");

    g_source_unref(source);
    home_stop(&h);
    aioctx_bh_delete(bh);
    aioctx_context_unref(ctx);
    g_main_context_unref(gctx);
}

static void test_compat(void)
{
    GMainContext *gctx = g_main_context_new();
    AioContext *ctx = aioctx_context_new("compat");
    atomic_int ran = 0;
    GSource *source = aio_get_g_source(ctx);

    ok(source != NULL, "aio_get_g_source (qemu-compat.h after aioctx-glib.h)");
    g_source_attach(source, gctx);
    aio_bh_schedule_oneshot(ctx, inc_cb, &ran);
    ok(iterate_until(gctx, &ran), "its context's BH runs from the GMainContext");
    g_source_destroy(source);
    g_source_unref(source);
    aioctx_context_unref(ctx);
    g_main_context_unref(gctx);
}

int main(void)
{
    tap_watchdog(60);

    errno = 0;
    ok(aioctx_glib_source_new(NULL) == NULL, "aioctx_glib_source_new(NULL) is NULL");
    is_int(errno, EINVAL, "errno EINVAL");
    like(aioctx_last_error(), "NULL", "aioctx_last_error says what was NULL");

    test_runs_bh_and_timer();
    test_wrong_thread();
    test_compat();
    return done_testing();
}
