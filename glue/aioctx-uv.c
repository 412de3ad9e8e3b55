/*
 * libaioctx-uv: libuv handles that run an aioctx context (include/aioctx-uv.h).
 * Uses only aioctx's public embedding calls: the context's fd, its next
 * timer deadline and a non-blocking poll.
 */
/* uv.h needs POSIX types (pthread_rwlock_t) that strict C11 hides. */
#define _POSIX_C_SOURCE 200809L
#include "aioctx-uv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

struct AioctxUv {
    AioctxContext *ctx; /* a reference, dropped when the last handle closed */
    uv_poll_t poll;
    uv_timer_t timer;
    uv_prepare_t prepare;
    int open_handles;   /* freed when their close callbacks brought this to 0 */
};

static void stop(AioctxUv *u)
{
    uv_poll_stop(&u->poll);
    uv_timer_stop(&u->timer);
    uv_prepare_stop(&u->prepare);
}

static void run(AioctxUv *u)
{
    if (aioctx_poll(u->ctx, false) < 0) {
        /* Only a wrong thread fails, and it would fail on every wake-up. */
        fprintf(stderr, "aioctx-uv: context '%s' no longer run: %s\n",
                aioctx_context_name(u->ctx), aioctx_last_error());
        stop(u);
    }
}

static void on_poll(uv_poll_t *handle, int status, int events)
{
    (void)status; /* an error on an eventfd: polling once more is harmless */
    (void)events;
    run(handle->data);
}

static void on_timer(uv_timer_t *handle)
{
    run(handle->data);
}

/* Before every wait: a timer armed by anything the loop ran is seen in time
 * (timers do not make the fd readable). */
static void on_prepare(uv_prepare_t *handle)
{
    AioctxUv *u = handle->data;
    int64_t deadline = aioctx_context_deadline_ns(u->ctx);
    int64_t now;
    uint64_t ms;

    if (deadline < 0) {
        uv_timer_stop(&u->timer);
        return;
    }
    now = aioctx_clock_ns();
    /* Rounded up: waking a little late is fine, early would spin. */
    ms = deadline <= now ? 0 : (uint64_t)(deadline - now + 999999) / 1000000;
    uv_update_time(handle->loop); /* the timer counts from the loop's "now" */
    uv_timer_start(&u->timer, on_timer, ms, 0);
}

static void on_close(uv_handle_t *handle)
{
    AioctxUv *u = handle->data;
    if (--u->open_handles == 0) {
        aioctx_context_unref(u->ctx);
        free(u);
    }
}

AioctxUv *aioctx_uv_attach(AioctxContext *ctx, uv_loop_t *loop)
{
    int fd = aioctx_context_fd(ctx), ret;
    AioctxUv *u;

    if (fd < 0 || !loop) {
        errno = fd < 0 ? -fd : EINVAL;
        return NULL;
    }
    u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->ctx = aioctx_context_ref(ctx);
    /* Timer and prepare handles cannot fail to initialize; the poll handle
     * can (libuv refuses some fds), and then the two are closed again. */
    uv_timer_init(loop, &u->timer);
    uv_prepare_init(loop, &u->prepare);
    u->timer.data = u->prepare.data = u->poll.data = u;
    u->open_handles = 2;
    ret = uv_poll_init(loop, &u->poll, fd);
    if (ret < 0) {
        uv_close((uv_handle_t *)&u->timer, on_close);
        uv_close((uv_handle_t *)&u->prepare, on_close);
        errno = -ret;
        return NULL;
    }
    u->open_handles = 3;
    uv_poll_start(&u->poll, UV_READABLE, on_poll);
    uv_prepare_start(&u->prepare, on_prepare);
    return u;
}

void aioctx_uv_detach(AioctxUv *u)
{
    if (!u)
        return;
    uv_close((uv_handle_t *)&u->poll, on_close);
    uv_close((uv_handle_t *)&u->timer, on_close);
    uv_close((uv_handle_t *)&u->prepare, on_close);
}
