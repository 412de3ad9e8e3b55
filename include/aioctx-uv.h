/*
 * aioctx-uv: run an aioctx context from a libuv loop.
 *
 * Link with `pkg-config --cflags --libs aioctx-uv` (libaioctx-uv, an optional
 * library built when libuv's development files are present).
 */
#ifndef AIOCTX_UV_H
#define AIOCTX_UV_H

#include <aioctx.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * The libuv handles that run one context on one loop (opaque).
 */
typedef struct AioctxUv AioctxUv;

/**
 * Starts running ctx on loop, whose thread must be ctx's home or become it
 * (claim it first with aioctx_context_claim(ctx), or the first poll claims
 * it): BHs, fd handlers and due timers run there, with ctx held.
 *
 * Three handles do it: a uv_poll_t on aioctx_context_fd(ctx), a uv_timer_t
 * for aioctx_context_deadline_ns(ctx) (rounded up to whole milliseconds, so
 * a timer never fires early) and a uv_prepare_t that re-arms that timer
 * before every wait; a timer armed from another thread wakes the loop
 * through the fd. When woken they call aioctx_poll(ctx, false). If a poll
 * fails (another thread is ctx's home: -EPERM), the handles stop and the
 * error is printed to stderr with aioctx_last_error().
 *
 * The handles keep the loop alive (uv_run does not return on its own) and
 * hold a reference to ctx until aioctx_uv_detach.
 *
 * Returns NULL with errno set on failure: EINVAL if ctx or loop is NULL
 * (aioctx_last_error() says why for an invalid ctx), ENOMEM, or the error of
 * uv_poll_init (then the two handles already set up close when the loop
 * runs next).
 *
 * Since: 0.2
 */
AioctxUv *aioctx_uv_attach(AioctxContext *ctx, uv_loop_t *loop);

/**
 * Stops running the context and closes the handles, from the loop's
 * thread. The handles finish closing, and the reference to the context is
 * dropped, when the loop runs again (as with uv_close): run it once more
 * before uv_loop_close. Accepts NULL.
 *
 * Since: 0.2
 */
void aioctx_uv_detach(AioctxUv *uv);

#ifdef __cplusplus
}
#endif

#endif /* AIOCTX_UV_H */
