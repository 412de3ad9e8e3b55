/*
 * test-fork-first-ring: the first raw-file open of a process fails (no such
 * file) after it made its context's io_uring; then the process forks. The
 * ring's queues are not mapped in a fork()'s child, so the child must not
 * use that ring: a flush of an image it opens then completes (on the worker
 * pool) instead of writing to memory the child does not have. Before the
 * fork hooks were registered ahead of the first ring, the child crashed
 * here.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <errno.h>
#include <unistd.h>

static AioctxGraph *graph;
static char dir[64], img[128];

static int child(void)
{
    AioctxNode *n = aioctx_node_open_file(graph, "disk", aioctx_main_context(), img,
                                          AIOCTX_OPEN_RDWR | AIOCTX_OPEN_AIO_IO_URING);
    child_ok(n != NULL, "the child opens an image on the context of the parent's ring");
    child_is_int(n ? aioctx_node_flush(n) : -1, 0, "and flushes it");
    /* _exit(): what the parent's threads referenced is unreachable here,
     * which a leak checker would report at exit(). */
    _exit(0);
}

int main(void)
{
    if (!io_uring_usable()) {
        printf("1..0 # SKIP io_uring is not available to this process\n");
        return 0;
    }
    tap_watchdog(30);
    ok(make_temp_dir(dir, sizeof dir, "fork-ring") != NULL, "temp dir");
    snprintf(img, sizeof img, "%s/disk.img", dir);
    ok(make_image(img, 1 << 20, 0644) == 0, "an image");
    AioctxContext *main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main thread claims the main context");
    graph = aioctx_graph_new(main_ctx);

    char missing[160];
    snprintf(missing, sizeof missing, "%s/missing.img", dir);
    AioctxNode *none = aioctx_node_open_file(graph, "missing", main_ctx, missing,
                                             AIOCTX_OPEN_RDWR | AIOCTX_OPEN_AIO_IO_URING);
    ok(none == NULL, "the process's first open fails: no such file");

    run_in_child("child", child, NULL, 2, 15);

    AioctxNode *n = aioctx_node_open_file(graph, "disk", main_ctx, img, AIOCTX_OPEN_RDWR | AIOCTX_OPEN_AIO_IO_URING);
    ok(n != NULL, "the parent opens the image on its ring");
    is_int(n ? aioctx_node_flush(n) : -1, 0, "and flushes it");
    aioctx_graph_free(graph);
    unlink(img);
    rmdir(dir);
    return done_testing();
}
