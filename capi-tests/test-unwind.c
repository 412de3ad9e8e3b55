/*
 * test-unwind: a graph-wide call that fails half-way gives back what it took.
 *
 *   - logging never fails a call: with AIOCTX_WAIT_WARN_MS=1 a slow
 *     inactivate_all logs to stderr, and stderr is /dev/full, or a pipe
 *     nobody reads (EPIPE, SIGPIPE ignored): the call still succeeds;
 *   - a panic inside inactivate_all/activate_all (debug builds: the hook
 *     AIOCTX_TEST_PANIC_AT names the point, and fires once) is caught at the
 *     C boundary (-ENOTRECOVERABLE) and leaves no context held, no node
 *     quiesced and every node fully active or fully inactive: the IOThread
 *     runs, requests are accepted, a retry succeeds and the IOThread frees.
 *
 * Each scenario is a child process (the variables are read once), forked
 * before this process makes any aioctx call.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <signal.h>

static AioctxContext *main_ctx, *io_ctx;
static AioctxIoThread *it;
static AioctxGraph *g;
static AioctxNode *slow, *plain;

/* A flush slow enough for AIOCTX_WAIT_WARN_MS=1 to log. */
static int slow_flush(AioctxNode *n, void *opaque)
{
    (void)n;
    (void)opaque;
    tap_sleep_ms(20);
    return 0;
}

static void setup(void)
{
    static const AioctxDriver drv = { slow_flush, NULL, NULL, NULL };
    main_ctx = aioctx_main_context();
    aioctx_context_claim(main_ctx);
    it = aioctx_iothread_new("unwind-io");
    io_ctx = aioctx_context_ref(aioctx_iothread_context(it));
    g = aioctx_graph_new(main_ctx);
    slow = aioctx_node_new(g, "slow", io_ctx, &drv, NULL);
    plain = aioctx_node_new(g, "plain", main_ctx, NULL, NULL);
    aioctx_node_attach_child(slow, plain);
}

/* The state after a failed call: nothing held, nothing quiesced, both nodes
 * in the state `inactive`, the IOThread alive; then the calls succeed (an
 * inactivate_all of inactive nodes is a no-op). */
static void check_recovered(int inactive)
{
    child_is_int(aioctx_lock_depth(io_ctx), 0, "the IOThread's context is not held");
    child_is_int(aioctx_lock_depth(main_ctx), 0, "the main context is not held");
    child_is_int(aioctx_node_is_inactive(slow), inactive, "node 'slow' fully in one state");
    child_is_int(aioctx_node_is_inactive(plain), inactive, "node 'plain' in the same state");
    child_is_int(aioctx_node_start_request(slow, false), 0, "a read is accepted (not quiesced)");
    aioctx_node_end_request(slow);
    atomic_int ran = 0;
    aioctx_bh_schedule_oneshot(io_ctx, inc_cb, &ran);
    child_is_int(wait_count(io_ctx, &ran, 1), 0, "the IOThread runs a BH (not wedged)");
    child_is_int(aioctx_graph_inactivate_all(g), 0, "inactivate_all succeeds");
    child_is_int(aioctx_graph_activate_all(g), 0, "activate_all succeeds");
    child_is_int(aioctx_iothread_free(it), 0, "the IOThread frees");
}

/* stderr replaced by `fd`; a slow inactivate_all must log there and succeed. */
static int log_to(int fd)
{
    setenv("AIOCTX_WAIT_WARN_MS", "1", 1);
    signal(SIGPIPE, SIG_IGN);
    dup2(fd, 2);
    setup();
    struct ender e = { { slow }, 1, 30, 0 };
    pthread_t t;
    child_is_int(aioctx_node_start_request(slow, true), 0, "a request in flight");
    pthread_create(&t, NULL, ender_thread, &e);
    child_is_int(aioctx_graph_inactivate_all(g), 0, "a slow inactivate_all, its warning unwritable");
    pthread_join(t, NULL);
    child_is_int(aioctx_graph_activate_all(g), 0, "activate_all");
    check_recovered(0);
    return 0;
}

static int log_full(void)
{
    return log_to(open("/dev/full", O_WRONLY));
}

static int log_epipe(void)
{
    int p[2];
    if (pipe(p) != 0)
        return 1;
    close(p[0]);
    return log_to(p[1]);
}

#ifdef AIOCTX_TEST_PANIC_HOOK
static const char *point;

static int panic_at(void)
{
    setenv("AIOCTX_TEST_PANIC_AT", point, 1);
    setup();
    int activate = strncmp(point, "activate_all", 12) == 0;
    if (activate)
        child_is_int(aioctx_graph_inactivate_all(g), 0, "inactivate_all first");
    int rc = activate ? aioctx_graph_activate_all(g) : aioctx_graph_inactivate_all(g);
    child_is_int(rc, -ENOTRECOVERABLE, "the call panics at the point: -ENOTRECOVERABLE");
    child_ok(strstr(aioctx_last_error(), "panic") != NULL, "aioctx_last_error() says so");
    /* Once handed over to the drivers the nodes are inactive, as after an
     * error there; an activate_all that did not finish leaves them inactive. */
    check_recovered(activate || strcmp(point, "inactivate_all:handed-over") == 0);
    return 0;
}
#endif

int main(void)
{
    tap_watchdog(60);
    run_in_child("stderr is /dev/full", log_full, NULL, 12, 10);
    run_in_child("stderr is a closed pipe", log_epipe, NULL, 12, 10);
#ifdef AIOCTX_TEST_PANIC_HOOK
    static const char *const points[] = {
        "inactivate_all:acquired", "inactivate_all:quiesced", "inactivate_all:drained",
        "inactivate_all:handed-over", "activate_all:acquired",
    };
    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++) {
        point = points[i];
        run_in_child(point, panic_at, NULL, 11 + (strncmp(point, "activate_all", 12) == 0), 10);
    }
#else
    diag("release build: the panic points (AIOCTX_TEST_PANIC_AT) are compiled out");
#endif
    return done_testing();
}
