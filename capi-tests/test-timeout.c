/*
 * test-timeout.c - a wait's timeout holds even while another thread holds the
 * context it must take back or dispatch, also when that thread blocks on a
 * mutex the waiter owns; AIOCTX_WAIT_WARN_MS fires in those waits too.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <stdlib.h>
#include <string.h>

static AioctxContext *main_ctx;
static atomic_int warnings;

static void count_warnings(void *opaque, int level, const char *message)
{
    (void)opaque;
    (void)message;
    if (level == AIOCTX_LOG_WARNING)
        atomic_fetch_add(&warnings, 1);
}

static int64_t slack(void)
{
    return 50 * MS * tap_scale();
}

/* Takes `ctx` as soon as the waiter gives it back and holds it until the
 * waiter let it go (`let_go`), or, with `mutex`, until it can lock that
 * mutex. */
struct grabber {
    AioctxContext *ctx;
    atomic_int let_go;
    pthread_mutex_t *mutex;
    atomic_int holding;
};

static void *grabber_thread(void *arg)
{
    struct grabber *g = arg;
    aioctx_acquire(g->ctx);
    atomic_store(&g->holding, 1);
    if (g->mutex) {
        pthread_mutex_lock(g->mutex);
        pthread_mutex_unlock(g->mutex);
    } else {
        while (!atomic_load(&g->let_go))
            tap_sleep_ms(1);
    }
    aioctx_release(g->ctx);
    return NULL;
}

static void check_timely(int rc, int64_t start, int64_t timeout, const char *what)
{
    int64_t took = aioctx_clock_ns() - start;
    is_int(rc, -ETIMEDOUT, "%s: -ETIMEDOUT", what);
    ok(took < timeout + slack(), "%s: after %lld ms (timeout %lld ms)", what,
       (long long)(took / MS), (long long)(timeout / MS));
}

/* The waiter holds an IOThread's context once and gives it back around each
 * poll; another thread takes it and keeps it past the deadline. */
static void test_retake_bounded(pthread_mutex_t *mutex, const char *what)
{
    AioctxIoThread *io = aioctx_iothread_new("to-io");
    AioctxContext *io_ctx = aioctx_iothread_context(io);
    struct grabber g = { io_ctx, 0, mutex, 0 };
    pthread_t th;
    int64_t timeout = 200 * MS * tap_scale();
    aioctx_acquire(io_ctx);
    pthread_create(&th, NULL, grabber_thread, &g);
    int before = atomic_load(&warnings);
    int64_t start = aioctx_clock_ns();
    int rc = aioctx_poll_while(io_ctx, always, NULL, timeout, 0);
    check_timely(rc, start, timeout, what);
    if (atomic_load(&g.holding)) {
        like(aioctx_last_error(), "no longer holds", "%s: the message says the context was not taken back", what);
        is_int(aioctx_lock_depth(io_ctx), 0, "%s: and it is not held", what);
    } else {
        /* The grabber never got in: the wait kept the context as on entry. */
        is_int(aioctx_lock_depth(io_ctx), 1, "%s: held as on entry", what);
        aioctx_release(io_ctx);
    }
    ok(atomic_load(&warnings) > before, "%s: AIOCTX_WAIT_WARN_MS logged a warning", what);
    atomic_store(&g.let_go, 1);
    if (mutex)
        pthread_mutex_unlock(mutex);
    pthread_join(th, NULL);
    is_int(aioctx_iothread_free(io), 0, "%s: the IOThread stops", what);
}

/* The home thread waits on its own context, which another thread holds: the
 * dispatch's lock is bounded by the deadline too. */
static void test_dispatch_bounded(void)
{
    AioctxContext *ctx = aioctx_context_new("to-own");
    aioctx_context_claim(ctx);
    struct grabber g = { ctx, 0, NULL, 0 };
    pthread_t th;
    pthread_create(&th, NULL, grabber_thread, &g);
    while (!atomic_load(&g.holding))
        tap_sleep_ms(1);
    aioctx_bh_schedule_oneshot(ctx, inc_cb, &(atomic_int){0});
    int64_t timeout = 200 * MS * tap_scale();
    int64_t start = aioctx_clock_ns();
    int rc = aioctx_poll_while(ctx, always, NULL, timeout, 0);
    check_timely(rc, start, timeout, "own context held by another thread");
    is_int(aioctx_lock_depth(ctx), 0, "own context: nothing left held");
    atomic_store(&g.let_go, 1);
    pthread_join(th, NULL);
    aioctx_context_unref(ctx);
}

int main(void)
{
    /* Read once, at the first wait. */
    setenv("AIOCTX_WAIT_WARN_MS", "50", 1);
    tap_watchdog(60);
    aioctx_set_log_handler(count_warnings, NULL);
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main thread claims the main context");
    test_retake_bounded(NULL, "holder keeps it past the deadline");
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&m);
    test_retake_bounded(&m, "holder blocks on a mutex the waiter owns");
    pthread_mutex_destroy(&m);
    test_dispatch_bounded();
    aioctx_set_log_handler(NULL, NULL);
    return done_testing();
}
