/*
 * The scenario both embedding examples run (embed-glib.c, embed-libuv.c):
 * the example attaches aioctx's main context to its loop, and this checks
 * that everything is delivered, in the loop's thread, with the context held:
 *   1. a BH that reschedules itself 100 times (each run is a later poll, so
 *      the context's fd must become readable again);
 *   2. a timer that re-arms itself 10 times, never firing early (only the
 *      deadline tells the loop when to wake);
 *   3. 50 requests completed by an IOThread: a one-shot BH to the IOThread,
 *      whose completion is a one-shot BH back on the main context;
 *   4. an fd handler on a pipe the IOThread writes to;
 *   5. then, with the loop idle, a timer armed from the IOThread (aioctx
 *      writes the context's fd, which wakes the loop to recompute its wait;
 *      without that it would sleep until the watchdog).
 *
 * The example defines loop_go_idle() (stop its own sources, so that the loop
 * really is idle for 5.) and loop_quit(); it calls scenario_start() before
 * running the loop, scenario_watchdog() from a 30 s loop timer (scaled by
 * AIOCTX_TEST_TIMEOUT_SCALE: valgrind), and scenario_finish() after it.
 */
#ifndef EMBED_SCENARIO_H
#define EMBED_SCENARIO_H

#define _GNU_SOURCE /* pthread_getname_np */
#include <aioctx.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void loop_go_idle(void);
static void loop_quit(void);

#define BH_RUNS 100
#define TIMER_FIRES 10
#define TIMER_PERIOD_NS (2 * 1000000LL)
#define REQUESTS 50

static struct {
    pthread_t loop_thread;
    AioctxContext *main_ctx, *io_ctx;
    AioctxIoThread *io;
    const char *io_name;
    atomic_int errors;
    bool remote_armed;
} scenario;

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

static void fail(const char *what)
{
    fprintf(stderr, "FAILED: %s (aioctx_last_error: %s)\n", what, aioctx_last_error());
    atomic_fetch_add(&scenario.errors, 1);
}

static void expect(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "FAILED: %s (aioctx_last_error: %s)\n", what, aioctx_last_error());
        exit(1);
    }
}

/* The watchdog's timeout: 30 s, times AIOCTX_TEST_TIMEOUT_SCALE (valgrind: 20). */
static unsigned scenario_watchdog_ms(void)
{
    const char *scale = getenv("AIOCTX_TEST_TIMEOUT_SCALE");
    return 30000u * (scale && atoi(scale) > 0 ? (unsigned)atoi(scale) : 1u);
}

static void check_on_loop(const char *what)
{
    if (!pthread_equal(pthread_self(), scenario.loop_thread))
        fail(what);
    if (aioctx_lock_depth(scenario.main_ctx) != 1)
        fail(what);
}

static bool first_four_done(void)
{
    return self_bh.runs == BH_RUNS && periodic.fires == TIMER_FIRES &&
           requests.completed == REQUESTS && pipe_io.bytes == REQUESTS;
}

static bool all_done(void)
{
    return first_four_done() && remote_timer.fired == 1;
}

/* 5., in the IOThread. */
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
    if (first_four_done() && !scenario.remote_armed) {
        scenario.remote_armed = true;
        loop_go_idle();
        if (aioctx_bh_schedule_oneshot(scenario.io_ctx, arm_remote_timer, NULL) != 0)
            fail("aioctx_bh_schedule_oneshot(arm_remote_timer)");
    }
    if (all_done() || atomic_load(&scenario.errors) > 0)
        loop_quit();
}

static void on_self_bh(void *opaque)
{
    (void)opaque;
    check_on_loop("BH off the loop thread or without the context held");
    if (++self_bh.runs < BH_RUNS && aioctx_bh_schedule(self_bh.bh) != 0)
        fail("aioctx_bh_schedule");
    maybe_quit();
}

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
    if (strcmp(name, scenario.io_name) == 0 && aioctx_lock_depth(scenario.io_ctx) == 1)
        atomic_fetch_add(&requests.on_iothread, 1);
    /* The fd handler sees this byte; the BH completes the request. */
    if (write(pipe_io.fds[1], "r", 1) != 1)
        fail("write to the pipe");
    if (aioctx_bh_schedule_oneshot(scenario.main_ctx, request_done, NULL) != 0)
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

static void scenario_watchdog(void)
{
    fail("watchdog: not everything was delivered in time");
    fprintf(stderr, "  bh %d/%d, timer %d/%d, requests %d/%d, pipe %d/%d, remote timer %d/1\n",
            self_bh.runs, BH_RUNS, periodic.fires, TIMER_FIRES, requests.completed, REQUESTS,
            pipe_io.bytes, REQUESTS, remote_timer.fired);
    loop_quit();
}

/* The calling thread runs the loop: it claims the main context, which it
 * returns, so that the example can attach it to its loop. */
static AioctxContext *scenario_start(const char *io_name)
{
    scenario.loop_thread = pthread_self();
    scenario.io_name = io_name;
    scenario.main_ctx = aioctx_main_context();
    expect(scenario.main_ctx != NULL, "aioctx_main_context");
    expect(aioctx_context_claim(scenario.main_ctx) == 0, "aioctx_context_claim");
    scenario.io = aioctx_iothread_new(io_name);
    expect(scenario.io != NULL, "aioctx_iothread_new");
    scenario.io_ctx = aioctx_iothread_context(scenario.io);

    self_bh.bh = aioctx_bh_new(scenario.main_ctx, on_self_bh, NULL);
    expect(self_bh.bh != NULL, "aioctx_bh_new");
    expect(aioctx_bh_schedule(self_bh.bh) == 0, "aioctx_bh_schedule");

    periodic.timer = aioctx_timer_new(scenario.main_ctx, on_periodic, NULL);
    expect(periodic.timer != NULL, "aioctx_timer_new");
    periodic.deadline = aioctx_clock_ns() + TIMER_PERIOD_NS;
    expect(aioctx_timer_mod(periodic.timer, periodic.deadline) == 0, "aioctx_timer_mod");

    remote_timer.timer = aioctx_timer_new(scenario.main_ctx, on_remote_timer, NULL);
    expect(remote_timer.timer != NULL, "aioctx_timer_new");

    expect(pipe(pipe_io.fds) == 0, "pipe");
    expect(aioctx_set_fd_handler(scenario.main_ctx, pipe_io.fds[0], on_pipe_readable, NULL,
                                 NULL) == 0,
           "aioctx_set_fd_handler");

    for (int i = 0; i < REQUESTS; i++)
        expect(aioctx_bh_schedule_oneshot(scenario.io_ctx, request_on_iothread, NULL) == 0,
               "aioctx_bh_schedule_oneshot to the IOThread");
    return scenario.main_ctx;
}

/* After the loop returned (and the example detached the context): reports,
 * frees everything (so valgrind sees no leak), and exits 1 unless every
 * check passed. */
static void scenario_finish(void)
{
    printf("  BH runs %d, timer fires %d (early: %d), requests %d (on the IOThread: %d),\n"
           "  pipe bytes %d, remote timer %d\n",
           self_bh.runs, periodic.fires, periodic.early, requests.completed,
           atomic_load(&requests.on_iothread), pipe_io.bytes, remote_timer.fired);
    expect(aioctx_set_fd_handler(scenario.main_ctx, pipe_io.fds[0], NULL, NULL, NULL) == 0,
           "remove the fd handler");
    close(pipe_io.fds[0]);
    close(pipe_io.fds[1]);
    aioctx_timer_free(periodic.timer);
    aioctx_timer_free(remote_timer.timer);
    aioctx_bh_delete(self_bh.bh);
    expect(aioctx_iothread_free(scenario.io) == 0, "aioctx_iothread_free");

    expect(atomic_load(&scenario.errors) == 0, "no callback reported an error");
    expect(all_done(), "everything was delivered");
    expect(periodic.early == 0, "no timer fired before its deadline");
    expect(atomic_load(&requests.on_iothread) == REQUESTS,
           "the requests ran in the IOThread with its context held");
}

#endif /* EMBED_SCENARIO_H */
