/*
 * embed-libuv: an aioctx context driven by a libuv loop.
 *
 * Three libuv handles run one aioctx context (uv_aioctx_init below: copy it):
 *
 *   - a uv_poll_t on aioctx_context_fd(ctx), which is readable whenever a
 *     bottom half is pending or a fd handler's fd is ready;
 *   - a uv_timer_t for aioctx_context_deadline_ns(ctx), the nearest timer
 *     deadline (timers do not make the fd readable);
 *   - a uv_prepare_t that re-arms that uv_timer_t before every wait, so a
 *     timer armed by anything the loop ran is seen in time. (A timer armed
 *     from another thread writes the context's fd: aioctx_timer_mod
 *     notifies, which wakes the loop to recompute.)
 *
 * When the fd is readable or the timer expires, aioctx_poll(ctx, false) runs
 * from the loop's thread, the context's home: BHs, fd handlers and due
 * timers run there with the context held. libuv timers have millisecond
 * resolution; the deadline is rounded up so the loop never wakes before it.
 *
 * The program drives aioctx's main context from a uv_loop and checks that
 * everything is delivered, in the loop's thread, with the context held:
 *   1. a BH that reschedules itself 100 times;
 *   2. a timer that re-arms itself 10 times, never firing early;
 *   3. 50 requests completed by an IOThread: a one-shot BH to the IOThread,
 *      whose completion is a one-shot BH back on the main context;
 *   4. an fd handler on a pipe the IOThread writes to;
 *   5. then, with the loop idle, a timer armed from the IOThread;
 * while an ordinary libuv timer runs beside them (until 5., so that the loop
 * really is idle then). It exits 0 only
 * if every check passed; a 30 s libuv timer fails it instead of hanging.
 */
#define _GNU_SOURCE /* pthread_getname_np */
#include <aioctx.h>
#include <uv.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the reusable part: libuv handles that run an aioctx context -------- */

typedef struct {
    AioctxContext *ctx;  /* a reference, dropped by uv_aioctx_close */
    uv_poll_t poll;
    uv_timer_t timer;
    uv_prepare_t prepare;
    int closing;         /* handles whose close callback is still due */
} UvAioctx;

static void uv_aioctx_run(UvAioctx *u)
{
    if (aioctx_poll(u->ctx, false) < 0) {
        fprintf(stderr, "aioctx_poll: %s\n", aioctx_last_error());
        uv_stop(u->poll.loop);
    }
}

static void uv_aioctx_on_poll(uv_poll_t *handle, int status, int events)
{
    (void)events;
    if (status < 0)
        fprintf(stderr, "uv_poll: %s\n", uv_strerror(status));
    uv_aioctx_run(handle->data);
}

static void uv_aioctx_on_timer(uv_timer_t *handle)
{
    uv_aioctx_run(handle->data);
}

/* Before every wait: arm the uv timer for the context's nearest deadline. */
static void uv_aioctx_on_prepare(uv_prepare_t *handle)
{
    UvAioctx *u = handle->data;
    int64_t deadline = aioctx_context_deadline_ns(u->ctx);
    int64_t now;
    uint64_t ms;

    if (deadline < 0) {
        uv_timer_stop(&u->timer);
        return;
    }
    now = aioctx_clock_ns();
    ms = deadline <= now ? 0 : (uint64_t)(deadline - now + 999999) / 1000000;
    uv_update_time(handle->loop); /* the timer counts from the loop's "now" */
    uv_timer_start(&u->timer, uv_aioctx_on_timer, ms, 0);
}

/* Starts running ctx on loop, whose thread must be (or become) ctx's home:
 * the first poll claims it. 0 or a negative errno (aioctx or libuv). */
static int uv_aioctx_init(UvAioctx *u, uv_loop_t *loop, AioctxContext *ctx)
{
    int fd = aioctx_context_fd(ctx), ret;
    if (fd < 0)
        return fd;
    memset(u, 0, sizeof *u);
    u->ctx = aioctx_context_ref(ctx);
    if ((ret = uv_poll_init(loop, &u->poll, fd)) < 0 ||
        (ret = uv_timer_init(loop, &u->timer)) < 0 ||
        (ret = uv_prepare_init(loop, &u->prepare)) < 0)
        return ret; /* (a real VMM would close what was initialized) */
    u->poll.data = u->timer.data = u->prepare.data = u;
    if ((ret = uv_poll_start(&u->poll, UV_READABLE, uv_aioctx_on_poll)) < 0 ||
        (ret = uv_prepare_start(&u->prepare, uv_aioctx_on_prepare)) < 0)
        return ret;
    return 0;
}

static void uv_aioctx_on_close(uv_handle_t *handle)
{
    UvAioctx *u = handle->data;
    if (--u->closing == 0)
        aioctx_context_unref(u->ctx);
}

/* Stops running the context; the loop must run once more to finish closing. */
static void uv_aioctx_close(UvAioctx *u)
{
    u->closing = 3;
    uv_close((uv_handle_t *)&u->poll, uv_aioctx_on_close);
    uv_close((uv_handle_t *)&u->timer, uv_aioctx_on_close);
    uv_close((uv_handle_t *)&u->prepare, uv_aioctx_on_close);
}

/* ---- the demonstration ---------------------------------------------------- */

#define BH_RUNS 100
#define TIMER_FIRES 10
#define TIMER_PERIOD_NS (2 * 1000000LL)
#define REQUESTS 50

static uv_loop_t loop;
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

static int uv_ticks;
static uv_timer_t tick;

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

static void maybe_stop(void)
{
    static bool remote_armed;
    if (first_four_done() && !remote_armed) {
        remote_armed = true;
        uv_timer_stop(&tick); /* nothing else may wake the loop now */
        if (aioctx_bh_schedule_oneshot(io_ctx, arm_remote_timer, NULL) != 0)
            fail("aioctx_bh_schedule_oneshot(arm_remote_timer)");
    }
    if (all_done() || atomic_load(&errors) > 0)
        uv_stop(&loop);
}

/* 1. A BH that reschedules itself: each run happens in a later poll, so the
 * context's fd must become readable again for libuv to call us. */
static void on_self_bh(void *opaque)
{
    (void)opaque;
    check_on_loop("BH off the loop thread or without the context held");
    if (++self_bh.runs < BH_RUNS && aioctx_bh_schedule(self_bh.bh) != 0)
        fail("aioctx_bh_schedule");
    maybe_stop();
}

/* 2. A periodic timer: only the deadline tells libuv when to wake. */
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
    maybe_stop();
}

/* 3./4. Work done by the IOThread, completed on the main context. */
static void request_done(void *opaque)
{
    (void)opaque;
    check_on_loop("completion off the loop thread");
    requests.completed++;
    maybe_stop();
}

static void on_remote_timer(void *opaque)
{
    (void)opaque;
    check_on_loop("remote timer off the loop thread");
    if (aioctx_clock_ns() < atomic_load(&remote_timer.deadline))
        fail("the remote timer fired early");
    remote_timer.fired++;
    maybe_stop();
}

static void request_on_iothread(void *opaque)
{
    char name[16] = "";
    (void)opaque;
    pthread_getname_np(pthread_self(), name, sizeof name);
    if (strcmp(name, "uv-io") == 0 && aioctx_lock_depth(io_ctx) == 1)
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
    maybe_stop();
}

/* An ordinary libuv timer beside the aioctx handles. */
static void on_uv_tick(uv_timer_t *handle)
{
    (void)handle;
    uv_ticks++;
}

static void on_watchdog(uv_timer_t *handle)
{
    (void)handle;
    fail("watchdog: not everything was delivered in time");
    fprintf(stderr, "  bh %d/%d, timer %d/%d, requests %d/%d, pipe %d/%d, remote timer %d/1\n",
            self_bh.runs, BH_RUNS, periodic.fires, TIMER_FIRES, requests.completed, REQUESTS,
            pipe_io.bytes, REQUESTS, remote_timer.fired);
    uv_stop(&loop);
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
    uint64_t scale = scale_env && atoi(scale_env) > 0 ? (uint64_t)atoi(scale_env) : 1;
    AioctxIoThread *io;
    UvAioctx uv_ctx;
    uv_timer_t watchdog;

    printf("aioctx %s in a libuv %s loop\n", aioctx_version(), uv_version_string());
    loop_thread = pthread_self();
    main_ctx = aioctx_main_context();
    expect(main_ctx != NULL, "aioctx_main_context");
    /* The loop's thread is the context's home: it polls it. */
    expect(aioctx_context_claim(main_ctx) == 0, "aioctx_context_claim");

    io = aioctx_iothread_new("uv-io");
    expect(io != NULL, "aioctx_iothread_new");
    io_ctx = aioctx_iothread_context(io);

    expect(uv_loop_init(&loop) == 0, "uv_loop_init");
    expect(uv_aioctx_init(&uv_ctx, &loop, main_ctx) == 0, "uv_aioctx_init");
    expect(uv_timer_init(&loop, &tick) == 0 && uv_timer_start(&tick, on_uv_tick, 1, 1) == 0,
           "a libuv timer");
    expect(uv_timer_init(&loop, &watchdog) == 0 &&
           uv_timer_start(&watchdog, on_watchdog, 30000 * scale, 0) == 0, "the watchdog");

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

    uv_run(&loop, UV_RUN_DEFAULT);

    printf("  BH runs %d, timer fires %d (early: %d), requests %d (on the IOThread: %d),\n"
           "  pipe bytes %d, remote timer %d, libuv timer ticks %d\n",
           self_bh.runs, periodic.fires, periodic.early, requests.completed,
           atomic_load(&requests.on_iothread), pipe_io.bytes, remote_timer.fired, uv_ticks);

    /* Shutdown: close every handle, let the loop finish closing them, free
     * everything, so valgrind sees no leak. */
    uv_close((uv_handle_t *)&tick, NULL);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_aioctx_close(&uv_ctx);
    uv_run(&loop, UV_RUN_DEFAULT);
    expect(uv_loop_close(&loop) == 0, "uv_loop_close: every handle closed");
    expect(aioctx_set_fd_handler(main_ctx, pipe_io.fds[0], NULL, NULL, NULL) == 0,
           "remove the fd handler");
    close(pipe_io.fds[0]);
    close(pipe_io.fds[1]);
    aioctx_timer_free(periodic.timer);
    aioctx_timer_free(remote_timer.timer);
    aioctx_bh_delete(self_bh.bh);
    expect(aioctx_iothread_free(io) == 0, "aioctx_iothread_free");

    expect(atomic_load(&errors) == 0, "no callback reported an error");
    expect(all_done(), "everything was delivered");
    expect(periodic.early == 0, "no timer fired before its deadline");
    expect(atomic_load(&requests.on_iothread) == REQUESTS,
           "the requests ran in the IOThread with its context held");
    expect(uv_ticks > 0, "libuv's own timers kept running");
    printf("  all checks passed\n");
    return 0;
}
