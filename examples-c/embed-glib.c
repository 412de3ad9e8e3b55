/*
 * embed-glib: an aioctx context driven by a GLib main loop.
 *
 * A VMM whose main loop is a GMainLoop (QEMU's is) adds one GSource per
 * aioctx context it wants to run there. The source (aioctx_gsource_new below:
 * copy it) needs only two things from aioctx:
 *
 *   - aioctx_context_fd(ctx): readable whenever a bottom half is pending or
 *     a fd handler's fd is ready. GLib polls it for G_IO_IN.
 *   - aioctx_context_deadline_ns(ctx): the nearest timer deadline on
 *     CLOCK_MONOTONIC (-1: none). Timers do not make the fd readable, so
 *     prepare() turns the deadline into GLib's poll timeout (rounded up to
 *     whole milliseconds, so the loop never wakes before it).
 *
 * When the fd is readable or the deadline passed, dispatch() calls
 * aioctx_poll(ctx, false) from the loop's thread, which is the context's
 * home: BHs, fd handlers and due timers run there with the context held.
 * GLib's prepare() runs before every wait, so a timer armed by anything the
 * loop ran is seen in time; a timer armed from another thread writes the
 * context's fd (aioctx_timer_mod notifies), which wakes the loop to
 * recompute.
 *
 * The program drives aioctx's main context from a GMainLoop and checks that
 * everything is delivered, in the loop's thread, with the context held:
 *   1. a BH that reschedules itself 100 times;
 *   2. a timer that re-arms itself 10 times, never firing early;
 *   3. 50 requests completed by an IOThread: a one-shot BH to the IOThread,
 *      whose completion is a one-shot BH back on the main context;
 *   4. an fd handler on a pipe the IOThread writes to;
 *   5. then, with the loop idle, a timer armed from the IOThread;
 * while an ordinary GLib timeout runs beside them (until 5., so that the
 * loop really is idle then). It exits 0 only
 * if every check passed; a 30 s GLib timeout fails it instead of hanging.
 */
#define _GNU_SOURCE /* pthread_getname_np */
#include <aioctx.h>
#include <glib.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the reusable part: a GSource that runs an aioctx context ---------- */

typedef struct {
    GSource source;
    AioctxContext *ctx;  /* a reference, dropped in finalize */
    gpointer fd_tag;
} AioctxSource;

static bool deadline_passed(AioctxContext *ctx)
{
    int64_t deadline = aioctx_context_deadline_ns(ctx);
    return deadline >= 0 && deadline <= aioctx_clock_ns();
}

static gboolean aioctx_source_prepare(GSource *source, gint *timeout)
{
    AioctxSource *s = (AioctxSource *)source;
    int64_t deadline = aioctx_context_deadline_ns(s->ctx);
    int64_t now, ms;

    if (deadline < 0) {
        *timeout = -1;  /* no timer: wait for the fd */
        return FALSE;
    }
    now = aioctx_clock_ns();
    if (deadline <= now) {
        *timeout = 0;
        return TRUE;    /* a timer is due: dispatch without waiting */
    }
    ms = (deadline - now + 999999) / 1000000;  /* round up: never wake early */
    *timeout = ms > INT_MAX ? INT_MAX : (gint)ms;
    return FALSE;
}

static gboolean aioctx_source_check(GSource *source)
{
    AioctxSource *s = (AioctxSource *)source;
    GIOCondition revents = g_source_query_unix_fd(source, s->fd_tag);
    return (revents & (G_IO_IN | G_IO_HUP | G_IO_ERR)) != 0 || deadline_passed(s->ctx);
}

static gboolean aioctx_source_dispatch(GSource *source, GSourceFunc cb, gpointer data)
{
    AioctxSource *s = (AioctxSource *)source;
    int ret = aioctx_poll(s->ctx, false);
    (void)cb;
    (void)data;
    if (ret < 0) {
        fprintf(stderr, "aioctx_poll: %s\n", aioctx_last_error());
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static void aioctx_source_finalize(GSource *source)
{
    aioctx_context_unref(((AioctxSource *)source)->ctx);
}

static GSourceFuncs aioctx_source_funcs = {
    .prepare = aioctx_source_prepare,
    .check = aioctx_source_check,
    .dispatch = aioctx_source_dispatch,
    .finalize = aioctx_source_finalize,
};

/* A GSource that runs ctx in the thread of the GMainContext it is attached
 * to. That thread must be (or become) ctx's home: the first poll claims it.
 * NULL if ctx has no fd. */
static GSource *aioctx_gsource_new(AioctxContext *ctx)
{
    int fd = aioctx_context_fd(ctx);
    GSource *source;
    AioctxSource *s;

    if (fd < 0)
        return NULL;
    source = g_source_new(&aioctx_source_funcs, sizeof(AioctxSource));
    s = (AioctxSource *)source;
    s->ctx = aioctx_context_ref(ctx);
    s->fd_tag = g_source_add_unix_fd(source, fd, G_IO_IN);
    g_source_set_name(source, aioctx_context_name(ctx));
    return source;
}

/* ---- the demonstration ---------------------------------------------------- */

#define BH_RUNS 100
#define TIMER_FIRES 10
#define TIMER_PERIOD_NS (2 * 1000000LL)
#define REQUESTS 50

static GMainLoop *loop;
static pthread_t loop_thread;
static AioctxContext *main_ctx, *io_ctx;
static atomic_int errors;

static void fail(const char *what)
{
    fprintf(stderr, "FAILED: %s (aioctx_last_error: %s)\n", what, aioctx_last_error());
    atomic_fetch_add(&errors, 1);
}

/* Every main-context callback runs in the loop's thread with the context held. */
static void check_on_loop(const char *what)
{
    if (!pthread_equal(pthread_self(), loop_thread))
        fail(what);
    if (aioctx_lock_depth(main_ctx) != 1)
        fail(what);
}

static struct {
    AioctxBh *bh;
    int runs;
} self_bh;

static struct {
    AioctxTimer *timer;
    int64_t deadline;
    int fires;
    int early;
} periodic;

static struct {
    atomic_int on_iothread;
    int completed;
} requests;

static struct {
    int fds[2];
    int bytes;
} pipe_io = {{-1, -1}, 0};

static struct {
    AioctxTimer *timer;
    atomic_llong deadline;
    int fired;
} remote_timer;

static int glib_ticks;
static guint tick_id;
static bool idle_phase; /* 5.: the GLib timeout stops too */

static bool first_four_done(void)
{
    return self_bh.runs == BH_RUNS && periodic.fires == TIMER_FIRES &&
           requests.completed == REQUESTS && pipe_io.bytes == REQUESTS;
}

static bool all_done(void)
{
    return first_four_done() && remote_timer.fired == 1;
}

/* 5. Runs in the IOThread once the loop is idle: no BH pending, no timer
 * armed, so the loop blocks with no timeout. A timer armed from another
 * thread makes aioctx write the context's fd, which wakes the loop to
 * recompute its timeout; without that the loop would sleep until the
 * watchdog. */
static void arm_remote_timer(void *opaque)
{
    (void)opaque;
    usleep(5000); /* let the loop go to sleep */
    atomic_store(&remote_timer.deadline, aioctx_clock_ns() + 2000000);
    if (aioctx_timer_mod(remote_timer.timer, atomic_load(&remote_timer.deadline)) != 0)
        fail("aioctx_timer_mod from the IOThread");
}

static void maybe_quit(void)
{
    static bool remote_armed;
    if (first_four_done() && !remote_armed) {
        remote_armed = true;
        idle_phase = true;
        if (aioctx_bh_schedule_oneshot(io_ctx, arm_remote_timer, NULL) != 0)
            fail("aioctx_bh_schedule_oneshot(arm_remote_timer)");
    }
    if (all_done() || atomic_load(&errors) > 0)
        g_main_loop_quit(loop);
}

/* 1. A BH that reschedules itself: each run happens in a later poll, so the
 * context's fd must become readable again for GLib to dispatch it. */
static void on_self_bh(void *opaque)
{
    (void)opaque;
    check_on_loop("BH off the loop thread or without the context held");
    if (++self_bh.runs < BH_RUNS && aioctx_bh_schedule(self_bh.bh) != 0)
        fail("aioctx_bh_schedule");
    maybe_quit();
}

/* 2. A periodic timer: only the deadline tells GLib when to wake. */
static void on_periodic(void *opaque)
{
    (void)opaque;
    check_on_loop("timer off the loop thread or without the context held");
    if (aioctx_clock_ns() < periodic.deadline)
        periodic.early++;
    if (++periodic.fires < TIMER_FIRES) {
        periodic.deadline = aioctx_clock_ns() + TIMER_PERIOD_NS;
        if (aioctx_timer_mod(periodic.timer, periodic.deadline) != 0)
            fail("aioctx_timer_mod");
    }
    maybe_quit();
}

/* 3./4. Work done by the IOThread, completed on the main context. */
static void request_done(void *opaque)
{
    (void)opaque;
    check_on_loop("completion off the loop thread");
    requests.completed++;
    maybe_quit();
}

static void on_remote_timer(void *opaque)
{
    (void)opaque;
    check_on_loop("remote timer off the loop thread");
    if (aioctx_clock_ns() < atomic_load(&remote_timer.deadline))
        fail("the remote timer fired early");
    remote_timer.fired++;
    maybe_quit();
}

static void request_on_iothread(void *opaque)
{
    char name[16] = "";
    (void)opaque;
    pthread_getname_np(pthread_self(), name, sizeof name);
    if (strcmp(name, "glib-io") == 0 && aioctx_lock_depth(io_ctx) == 1)
        atomic_fetch_add(&requests.on_iothread, 1);
    /* The fd handler sees this byte; the BH completes the request. */
    if (write(pipe_io.fds[1], "r", 1) != 1)
        fail("write to the pipe");
    if (aioctx_bh_schedule_oneshot(main_ctx, request_done, NULL) != 0)
        fail("aioctx_bh_schedule_oneshot back to main");
}

static void on_pipe_readable(void *opaque)
{
    char buf[64];
    ssize_t n;
    (void)opaque;
    check_on_loop("fd handler off the loop thread");
    n = read(pipe_io.fds[0], buf, sizeof buf);
    if (n > 0)
        pipe_io.bytes += (int)n;
    maybe_quit();
}

/* An ordinary GLib source beside the aioctx one. */
static gboolean on_glib_tick(gpointer data)
{
    (void)data;
    glib_ticks++;
    if (idle_phase) {
        tick_id = 0;
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static gboolean on_watchdog(gpointer data)
{
    (void)data;
    fail("watchdog: not everything was delivered in time");
    fprintf(stderr, "  bh %d/%d, timer %d/%d, requests %d/%d, pipe %d/%d, remote timer %d/1\n",
            self_bh.runs, BH_RUNS, periodic.fires, TIMER_FIRES, requests.completed, REQUESTS,
            pipe_io.bytes, REQUESTS, remote_timer.fired);
    g_main_loop_quit(loop);
    return G_SOURCE_REMOVE;
}

static void expect(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "FAILED: %s (aioctx_last_error: %s)\n", what, aioctx_last_error());
        exit(1);
    }
}

int main(void)
{
    const char *scale_env = getenv("AIOCTX_TEST_TIMEOUT_SCALE"); /* valgrind: 20 */
    guint scale = scale_env && atoi(scale_env) > 0 ? (guint)atoi(scale_env) : 1;
    GMainContext *gctx = g_main_context_default();
    AioctxIoThread *io;
    GSource *source;
    guint watchdog_id;

    printf("aioctx %s in a GLib %u.%u.%u main loop\n", aioctx_version(), glib_major_version,
           glib_minor_version, glib_micro_version);
    loop_thread = pthread_self();
    main_ctx = aioctx_main_context();
    expect(main_ctx != NULL, "aioctx_main_context");
    /* The GMainLoop's thread is the context's home: it polls it. */
    expect(aioctx_context_claim(main_ctx) == 0, "aioctx_context_claim");

    io = aioctx_iothread_new("glib-io");
    expect(io != NULL, "aioctx_iothread_new");
    io_ctx = aioctx_iothread_context(io);

    source = aioctx_gsource_new(main_ctx);
    expect(source != NULL, "aioctx_gsource_new");
    g_source_attach(source, gctx);
    loop = g_main_loop_new(gctx, FALSE);
    tick_id = g_timeout_add(1, on_glib_tick, NULL);
    watchdog_id = g_timeout_add_seconds(30 * scale, on_watchdog, NULL);

    self_bh.bh = aioctx_bh_new(main_ctx, on_self_bh, NULL);
    expect(self_bh.bh != NULL, "aioctx_bh_new");
    expect(aioctx_bh_schedule(self_bh.bh) == 0, "aioctx_bh_schedule");

    periodic.timer = aioctx_timer_new(main_ctx, on_periodic, NULL);
    expect(periodic.timer != NULL, "aioctx_timer_new");
    periodic.deadline = aioctx_clock_ns() + TIMER_PERIOD_NS;
    expect(aioctx_timer_mod(periodic.timer, periodic.deadline) == 0, "aioctx_timer_mod");

    remote_timer.timer = aioctx_timer_new(main_ctx, on_remote_timer, NULL);
    expect(remote_timer.timer != NULL, "aioctx_timer_new");

    expect(pipe(pipe_io.fds) == 0, "pipe");
    expect(aioctx_set_fd_handler(main_ctx, pipe_io.fds[0], on_pipe_readable, NULL, NULL) == 0,
           "aioctx_set_fd_handler");

    for (int i = 0; i < REQUESTS; i++)
        expect(aioctx_bh_schedule_oneshot(io_ctx, request_on_iothread, NULL) == 0,
               "aioctx_bh_schedule_oneshot to the IOThread");

    g_main_loop_run(loop);

    printf("  BH runs %d, timer fires %d (early: %d), requests %d (on the IOThread: %d),\n"
           "  pipe bytes %d, remote timer %d, GLib timeout ticks %d\n",
           self_bh.runs, periodic.fires, periodic.early, requests.completed,
           atomic_load(&requests.on_iothread), pipe_io.bytes, remote_timer.fired, glib_ticks);

    /* Shutdown: every object is freed, so valgrind sees no leak. */
    if (tick_id)
        g_source_remove(tick_id);
    g_source_remove(watchdog_id);
    expect(aioctx_set_fd_handler(main_ctx, pipe_io.fds[0], NULL, NULL, NULL) == 0,
           "remove the fd handler");
    close(pipe_io.fds[0]);
    close(pipe_io.fds[1]);
    g_source_destroy(source);
    g_source_unref(source);
    g_main_loop_unref(loop);
    aioctx_timer_free(periodic.timer);
    aioctx_timer_free(remote_timer.timer);
    aioctx_bh_delete(self_bh.bh);
    expect(aioctx_iothread_free(io) == 0, "aioctx_iothread_free");

    expect(atomic_load(&errors) == 0, "no callback reported an error");
    expect(all_done(), "everything was delivered");
    expect(periodic.early == 0, "no timer fired before its deadline");
    expect(atomic_load(&requests.on_iothread) == REQUESTS,
           "the requests ran in the IOThread with its context held");
    expect(glib_ticks > 0, "GLib's own sources kept running");
    printf("  all checks passed\n");
    return 0;
}
