/*
 * test-adopt.c - two waiters that adopt a context without a home at once:
 * one polls it, the other waits for that one; neither gets -EPERM.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <string.h>

struct round {
    AioctxContext *ctx;
    atomic_int flag;
    pthread_barrier_t start;
};

static struct round *cur;
static atomic_int failures;

static bool flag_unset(void *opaque)
{
    return !atomic_load((atomic_int *)opaque);
}

static void *waiter(void *arg)
{
    (void)arg;
    AioctxContext *own = aioctx_context_new("adopt-own");
    aioctx_context_claim(own);
    pthread_barrier_wait(&cur->start);
    int rc = aioctx_poll_while(cur->ctx, flag_unset, &cur->flag, 10 * SEC * tap_scale(), 0);
    if (rc != 0 && atomic_fetch_add(&failures, 1) < 3)
        diag("waiter: %d %s", rc, aioctx_last_error());
    aioctx_context_unref(own);
    return NULL;
}

static void set_flag_cb(void *opaque)
{
    atomic_store((atomic_int *)opaque, 1);
}

int main(void)
{
    tap_watchdog(120);
    int rounds = 3000 / tap_scale();
    for (int r = 0; r < rounds; r++) {
        struct round round;
        memset(&round, 0, sizeof round);
        round.ctx = aioctx_context_new("adopt-homeless");
        pthread_barrier_init(&round.start, NULL, 3);
        cur = &round;
        pthread_t a, b;
        pthread_create(&a, NULL, waiter, NULL);
        pthread_create(&b, NULL, waiter, NULL);
        /* The work is queued before either waits; whoever adopts the context runs it. */
        aioctx_bh_schedule_oneshot(round.ctx, set_flag_cb, &round.flag);
        pthread_barrier_wait(&round.start);
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        pthread_barrier_destroy(&round.start);
        aioctx_context_unref(round.ctx);
    }
    is_int(atomic_load(&failures), 0, "%d rounds of two waiters adopting one homeless context: no error",
           rounds);
    return done_testing();
}
