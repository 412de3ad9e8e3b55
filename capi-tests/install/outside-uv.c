/*
 * Built outside the tree against an installed libaioctx-uv
 * (`pkg-config --cflags --libs aioctx-uv`, tools/check-install.sh): a BH run
 * by a libuv loop through aioctx_uv_attach. Exit status 0 if it ran.
 */
#define _GNU_SOURCE /* uv.h needs POSIX types that strict C11 hides */
#include <aioctx-uv.h>

#include <stdio.h>

static void stop(void *opaque)
{
    uv_stop(opaque);
}

int main(void)
{
    uv_loop_t loop;
    AioctxContext *ctx = aioctx_main_context();
    AioctxUv *attached;
    int stopped;

    uv_loop_init(&loop);
    attached = aioctx_uv_attach(ctx, &loop);
    if (!attached) {
        fprintf(stderr, "aioctx_uv_attach: %s\n", aioctx_last_error());
        return 1;
    }
    aioctx_bh_schedule_oneshot(ctx, stop, &loop);
    stopped = uv_run(&loop, UV_RUN_DEFAULT) != 0; /* uv_stop with handles left: nonzero */
    aioctx_uv_detach(attached);
    uv_run(&loop, UV_RUN_DEFAULT);
    stopped = stopped && uv_loop_close(&loop) == 0;
    printf("%s\n", stopped ? "ok" : "FAILED");
    return stopped ? 0 : 1;
}
