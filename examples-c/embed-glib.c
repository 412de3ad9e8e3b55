/*
 * embed-glib: aioctx's main context driven by a GLib main loop (QEMU's main
 * loop is one).
 *
 * One call does it: aioctx_glib_source_new(ctx) (libaioctx-glib,
 * <aioctx-glib.h>) returns a GSource; attach it to the GMainContext whose
 * thread is the context's home. Everything else here is the scenario shared
 * with embed-libuv.c (embed-scenario.h): BHs, timers, IOThread completions
 * and an fd handler all delivered in the loop's thread with the context
 * held, while an ordinary GLib timeout runs beside them. Exits 0 only if
 * every check passed; a GLib timeout fails it instead of hanging.
 */
#include "embed-scenario.h" /* first: it sets _GNU_SOURCE */

#include <aioctx-glib.h>

static GMainLoop *loop;
static guint tick_id;
static int glib_ticks;

static void loop_go_idle(void)
{
    g_source_remove(tick_id);
    tick_id = 0;
}

static void loop_quit(void)
{
    g_main_loop_quit(loop);
}

static gboolean on_glib_tick(gpointer data)
{
    (void)data;
    glib_ticks++;
    return G_SOURCE_CONTINUE;
}

static gboolean on_watchdog(gpointer data)
{
    (void)data;
    scenario_watchdog();
    return G_SOURCE_REMOVE;
}

int main(void)
{
    AioctxContext *ctx;
    GSource *source;
    guint watchdog_id;

    printf("aioctx %s in a GLib %u.%u.%u main loop\n", aioctx_version(), glib_major_version,
           glib_minor_version, glib_micro_version);
    ctx = scenario_start("glib-io");

    /* The default GMainContext runs in this thread, the context's home. */
    source = aioctx_glib_source_new(ctx);
    expect(source != NULL, "aioctx_glib_source_new");
    g_source_attach(source, NULL);

    loop = g_main_loop_new(NULL, FALSE);
    tick_id = g_timeout_add(1, on_glib_tick, NULL);
    watchdog_id = g_timeout_add(scenario_watchdog_ms(), on_watchdog, NULL);
    g_main_loop_run(loop);

    g_source_destroy(source);
    g_source_unref(source);
    if (tick_id)
        g_source_remove(tick_id);
    g_source_remove(watchdog_id);
    g_main_loop_unref(loop);
    printf("  GLib timeout ticks %d\n", glib_ticks);
    scenario_finish();
    expect(glib_ticks > 0, "GLib's own sources kept running");
    printf("  all checks passed\n");
    return 0;
}
