/*
 * test-notify.c - a notify is never lost: made while nobody polls, it keeps
 * the next poll (blocking or not) from blocking, and that poll consumes it.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

static AioctxContext *ctx;
static atomic_int flag;
static atomic_int rounds_done;
static int rounds;

/* QEMU's old /aio/notify sequence. */
static void test_notify_sequence(void)
{
    is_int(aioctx_poll(ctx, false), 0, "a non-blocking poll with nothing to do makes no progress");
    is_int(aioctx_notify(ctx), 0, "notify while nobody polls");
    int64_t start = aioctx_clock_ns();
    is_int(aioctx_poll(ctx, true), 0, "the next blocking poll returns 0 (no callback ran)...");
    ok(aioctx_clock_ns() - start < 1000 * MS * tap_scale(), "...at once: the notify was kept");
    is_int(aioctx_poll(ctx, false), 0, "the notify was consumed: nothing left");

    is_int(aioctx_notify(ctx), 0, "notify again");
    is_int(aioctx_poll(ctx, false), 0, "a non-blocking poll consumes it too");
    /* Were it still pending, this BH-less blocking poll would return at once;
     * a timer bounds it instead, so a lost consume shows as an early return. */
    AioctxTimer *t = aioctx_timer_new(ctx, inc_cb, &(atomic_int){0});
    start = aioctx_clock_ns();
    aioctx_timer_mod(t, start + 20 * MS);
    is_int(aioctx_poll(ctx, true), 1, "a blocking poll then sleeps until the timer");
    ok(aioctx_clock_ns() - start >= 20 * MS, "and not before it (the notify was consumed)");
    aioctx_timer_free(t);
}

static void *notifier_thread(void *arg)
{
    (void)arg;
    for (int r = 0; r < rounds; r++) {
        atomic_store(&flag, 1);
        aioctx_notify(ctx);
        while (atomic_load(&rounds_done) <= r)
            sched_yield();
    }
    return NULL;
}

/* while (!flag) poll(ctx, true) against flag = 1; notify(ctx): a notify that
 * lands between the check and the poll must not be lost. */
static void test_flag_and_notify(void)
{
    pthread_t th;
    pthread_create(&th, NULL, notifier_thread, NULL);
    for (int r = 0; r < rounds; r++) {
        while (!atomic_load(&flag))
            aioctx_poll(ctx, true);
        atomic_store(&flag, 0);
        atomic_fetch_add(&rounds_done, 1);
    }
    pthread_join(th, NULL);
    is_int(atomic_load(&rounds_done), rounds, "%d flag-and-notify rounds, none hung", rounds);
}

int main(void)
{
    tap_watchdog(60);
    rounds = 100000 / tap_scale();
    ctx = aioctx_context_new("notify");
    is_int(aioctx_context_claim(ctx), 0, "the test thread runs the context");
    test_notify_sequence();
    test_flag_and_notify();
    aioctx_context_unref(ctx);
    return done_testing();
}
