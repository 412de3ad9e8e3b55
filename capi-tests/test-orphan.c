/* A context outlives its freed IOThread (nodes still use it): work queued on
 * it, and waits on it, run in the next thread that polls it instead of
 * hanging. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>

#include "aioctx.h"
#include "tap.h"

static pthread_t flush_thread;
static int flushes;

static int record_flush(AioctxNode *n, void *opaque)
{
    (void)opaque;
    flush_thread = pthread_self();
    flushes++;
    ok(aioctx_lock_depth(aioctx_node_context(n)) >= 1, "flush runs with the node's context held");
    return 0;
}

static void set_flag(void *opaque)
{
    *(int *)opaque = 1;
}

static bool flag_clear(void *opaque)
{
    return *(int *)opaque == 0;
}

int main(void)
{
    tap_watchdog(10);
    AioctxContext *main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main thread claims the main context");

    AioctxIoThread *it = aioctx_iothread_new("orphan-io");
    AioctxContext *io_ctx = aioctx_context_ref(aioctx_iothread_context(it));
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxDriver drv = { record_flush, NULL, NULL, NULL };
    AioctxNode *n = aioctx_node_new(g, "orphan", io_ctx, &drv, NULL);
    ok(n != NULL, "node on the IOThread's context");

    is_int(aioctx_iothread_free(it), 0, "IOThread freed while a node still uses its context");
    is_int(aioctx_node_flush(n), 0, "a flush on the orphaned context completes (no hang)");
    is_int(flushes, 1, "the driver's flush ran once");
    ok(pthread_equal(flush_thread, pthread_self()), "it ran in the thread that polled the context");

    int flag = 0;
    is_int(aioctx_bh_schedule_oneshot(io_ctx, set_flag, &flag), 0, "BH scheduled on the orphaned context");
    is_int(aioctx_poll_while(io_ctx, flag_clear, &flag, 5000000000LL, 0), 0, "poll_while on it completes");
    is_int(flag, 1, "the BH ran");

    is_int(aioctx_graph_inactivate_all(g), 0, "inactivate_all over the orphaned context");
    ok(aioctx_node_is_inactive(n), "the node is inactive");
    is_int(aioctx_graph_activate_all(g), 0, "activate_all brings it back");

    aioctx_graph_free(g);
    aioctx_context_unref(io_ctx);
    return done_testing();
}
