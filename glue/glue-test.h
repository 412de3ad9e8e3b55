/*
 * What the glue tests (test-glib.c, test-uv.c) share: a context whose home
 * is another thread, and a timer callback that notes an early firing.
 * Include after tap.h, aioctx.h and test-util.h.
 */
#ifndef AIOCTX_GLUE_TEST_H
#define AIOCTX_GLUE_TEST_H

#include <pthread.h>

/* A thread that claims ctx (becoming its home) and stays until home_stop. */
struct home {
    AioctxContext *ctx;
    pthread_t thread;
    atomic_int state; /* 1: claimed, 2: may exit */
};

static void *home_thread(void *arg)
{
    struct home *h = arg;
    aioctx_context_claim(h->ctx);
    atomic_store(&h->state, 1);
    while (atomic_load(&h->state) != 2)
        tap_sleep_ms(1);
    return NULL;
}

static void home_start(struct home *h, AioctxContext *ctx)
{
    h->ctx = ctx;
    atomic_store(&h->state, 0);
    pthread_create(&h->thread, NULL, home_thread, h);
    while (atomic_load(&h->state) != 1)
        tap_sleep_ms(1);
}

static void home_stop(struct home *h)
{
    atomic_store(&h->state, 2);
    pthread_join(h->thread, NULL);
}

/* A timer callback: sets *opaque, and timer_early if it ran before
 * timer_deadline. */
static int64_t timer_deadline;
static atomic_int timer_early;

static void on_timer(void *opaque)
{
    if (aioctx_clock_ns() < timer_deadline)
        atomic_store(&timer_early, 1);
    atomic_store((atomic_int *)opaque, 1);
}

#endif /* AIOCTX_GLUE_TEST_H */
