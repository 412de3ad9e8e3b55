/*
 * test-recheck.c - a missed kick costs latency, never a hang: a wait that
 * nothing wakes re-checks its condition anyway (1 ms, doubling up to
 * AIOCTX_WAIT_RECHECK_MS, default 64 ms). The other C tests run with the
 * backstop off (meson sets AIOCTX_WAIT_RECHECK_MS=0) so that they catch lost
 * wake-ups; this one runs with the library's default, and once with the
 * backstop off in a child process to show these waits depend on it.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static AioctxContext *iot_ctx, *other_ctx;

static bool flag_unset(void *opaque)
{
    return atomic_load((atomic_int *)opaque) == 0;
}

/* Thread: sets the flag 5 ms (scaled) after it starts, and kicks nobody. */
static void *set_flag_later(void *arg)
{
    tap_sleep_ms(5 * tap_scale());
    atomic_store((atomic_int *)arg, 1);
    return NULL;
}

/* BH: sets the flag 5 ms (scaled) after it began (the wait has begun by then: a
 * polling IOThread runs it at once), and kicks nobody. */
static void set_flag_cb(void *opaque)
{
    tap_sleep_ms(5 * tap_scale());
    atomic_store((atomic_int *)opaque, 1);
}

/* One wait on the IOThread's context for the flag: 1 if it ended with 0
 * before its timeout (a wait woken by its timeout re-checks the condition
 * too, and may then return 0: only the time tells those apart). */
static int ended_early(atomic_int *flag, int64_t timeout_ns)
{
    int64_t t0 = tap_now_ns();
    int rc = aioctx_poll_while(iot_ctx, flag_unset, flag, timeout_ns, 0);
    return rc == 0 && tap_now_ns() - t0 < timeout_ns;
}

/* Waits for a flag set outside any kick: by a plain thread, then by a BH of
 * another IOThread. Returns how many of the two waits ended early. */
static int unkicked_waits(int64_t timeout_ns)
{
    atomic_int flag = 0;
    pthread_t th;
    pthread_create(&th, NULL, set_flag_later, &flag);
    int ended = ended_early(&flag, timeout_ns);
    pthread_join(th, NULL);

    atomic_store(&flag, 0);
    aioctx_bh_schedule_oneshot(other_ctx, set_flag_cb, &flag);
    return ended + ended_early(&flag, timeout_ns);
}

/* Without the backstop (a fresh process: the variable is read once), the
 * same waits sleep until their timeout. */
static void without_backstop(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("AIOCTX_WAIT_RECHECK_MS", "0", 1);
        AioctxIoThread *a = aioctx_iothread_new("recheck-child-a");
        AioctxIoThread *b = aioctx_iothread_new("recheck-child-b");
        aioctx_context_claim(aioctx_main_context());
        iot_ctx = aioctx_iothread_context(a);
        other_ctx = aioctx_iothread_context(b);
        int ended = unkicked_waits(300 * 1000 * 1000LL * tap_scale());
        aioctx_iothread_free(a);
        aioctx_iothread_free(b);
        _exit(ended);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ok(WIFEXITED(status), "the child without the backstop exited");
    is_int(WEXITSTATUS(status), 0,
           "with AIOCTX_WAIT_RECHECK_MS=0 both unkicked waits slept until their timeout");
}

int main(void)
{
    tap_watchdog(60);
    /* meson's test environment turns the backstop off; this test is about it. */
    unsetenv("AIOCTX_WAIT_RECHECK_MS");
    without_backstop();

    is_int(aioctx_context_claim(aioctx_main_context()), 0, "main claims the main context");
    AioctxIoThread *a = aioctx_iothread_new("recheck-a");
    AioctxIoThread *b = aioctx_iothread_new("recheck-b");
    if (!ok(a && b, "two IOThreads"))
        return done_testing();
    iot_ctx = aioctx_iothread_context(a);
    other_ctx = aioctx_iothread_context(b);

    is_int(unkicked_waits(long_timeout()), 2,
           "a flag set by a plain thread, then by another IOThread's BH, without a kick: both waits end before their timeout");

    int64_t t0 = tap_now_ns();
    is_int(aioctx_poll_while(iot_ctx, always, NULL, 100 * 1000 * 1000LL, 0), -ETIMEDOUT,
           "a condition that stays true still runs into the timeout");
    ok(tap_now_ns() - t0 >= 100 * 1000 * 1000LL, "not before it");

    /* aioctx_wait_poll returns at a re-check even when nothing ran. */
    AioctxWait *w = aioctx_wait_begin(iot_ctx, long_timeout(), 0);
    ok(w != NULL, "wait_begin");
    int steps = 0;
    t0 = tap_now_ns();
    while (steps < 3 && aioctx_wait_poll(w) == 0)
        steps++;
    aioctx_wait_end(w);
    is_int(steps, 3, "aioctx_wait_poll returned 3 times with nothing to do (re-checks)");
    ok(tap_now_ns() - t0 < long_timeout(), "before the timeout");

    is_int(aioctx_iothread_free(a), 0, "free IOThread a");
    is_int(aioctx_iothread_free(b), 0, "free IOThread b");
    return done_testing();
}
