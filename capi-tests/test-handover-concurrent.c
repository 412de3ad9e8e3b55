/*
 * test-handover-concurrent: inactivate_all / activate_all while other threads
 * use the same IOThread contexts. None of these may hang.
 *
 *  1. another thread acquires one IOThread context at a time (plain acquire);
 *  2. another thread holds the two IOThread contexts through an AioctxSet
 *     (docs/DESIGN.md, "Sets": one global acquisition order, so overlapping
 *     sets never deadlock ABBA-style), while main's handover holds the same
 *     two through its set;
 *  3. two graphs with different main contexts (each graph-wide call from its
 *     own main context's home thread, as the header allows), nodes on the same
 *     two IOThreads, handing over concurrently.
 *
 * Each scenario runs in a child process forked before any aioctx call, so a
 * deadlock in one is reported as a failure of that scenario (with the
 * library's who-holds-what dump) and the others still run. A monitor thread
 * in the child declares a deadlock after 5 s (scaled) without progress.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

#define ITERATIONS 150

static AioctxContext *ctx_a, *ctx_b;
static atomic_int progress, finished, other_stop, other_iters;
static int report_fd = -1;

static void report(const char *fmt, ...) TAP_PRINTF(1, 2);
static void report(const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1)
        n = (int)sizeof buf - 1;
    ssize_t r = write(report_fd, buf, (size_t)n);
    (void)r;
}

/* A flush that takes a while, like fdatasync: widens the windows. */
static int slow_flush(AioctxNode *node, void *opaque)
{
    (void)node;
    (void)opaque;
    tap_sleep_ns(500000);
    return 0;
}

static const AioctxDriver slow_driver = { slow_flush, NULL, NULL, NULL };

static void *monitor_thread(void *arg)
{
    (void)arg;
    AioctxContext *own = aioctx_context_new("monitor");
    aioctx_context_claim(own);
    int last = -1;
    int64_t since = tap_now_ns();
    int64_t stall = 5 * SEC * tap_scale();
    while (!atomic_load(&finished)) {
        tap_sleep_ms(50);
        int p = atomic_load(&progress);
        if (p != last) {
            last = p;
            since = tap_now_ns();
            continue;
        }
        if (tap_now_ns() - since > stall) {
            /* A timed-out wait's message is the library's dump of every context. */
            aioctx_poll_while(ctx_a, always, NULL, 1 * MS, 0);
            report("no progress for %lld s after %d main iterations and %d of the other thread: deadlock\n%s\n",
                   (long long)(stall / SEC), p, atomic_load(&other_iters), aioctx_last_error());
            _exit(3);
        }
    }
    aioctx_context_unref(own);
    return NULL;
}

/* ---- the other thread of each scenario ------------------------------------------------------ */

static void *single_acquirer(void *arg)
{
    (void)arg;
    while (!atomic_load(&other_stop)) {
        AioctxContext *c = atomic_load(&other_iters) % 2 ? ctx_a : ctx_b;
        aioctx_acquire(c);
        tap_sleep_ns(100000);
        aioctx_release(c);
        atomic_fetch_add(&other_iters, 1);
        atomic_fetch_add(&progress, 1);
    }
    return NULL;
}

static void *set_user(void *arg)
{
    (void)arg;
    AioctxSet *s = aioctx_set_new();
    aioctx_set_add(s, ctx_a);
    aioctx_set_add(s, ctx_b);
    while (!atomic_load(&other_stop)) {
        aioctx_set_acquire(s);
        tap_sleep_ns(100000);
        aioctx_set_release(s);
        atomic_fetch_add(&other_iters, 1);
        atomic_fetch_add(&progress, 1);
    }
    aioctx_set_free(s);
    return NULL;
}

static void *second_graph(void *arg)
{
    (void)arg;
    AioctxContext *x = aioctx_context_new("second-main");
    aioctx_context_claim(x);
    AioctxGraph *g = aioctx_graph_new(x);
    aioctx_node_new(g, "g2-a", ctx_a, &slow_driver, NULL);
    aioctx_node_new(g, "g2-b", ctx_b, &slow_driver, NULL);
    int bad = 0;
    while (!atomic_load(&other_stop)) {
        bad += aioctx_graph_inactivate_all(g) != 0;
        bad += aioctx_graph_activate_all(g) != 0;
        atomic_fetch_add(&other_iters, 1);
        atomic_fetch_add(&progress, 1);
    }
    if (bad)
        report("the second graph's calls failed %d times: %s\n", bad, aioctx_last_error());
    aioctx_graph_free(g);
    aioctx_context_unref(x);
    return (void *)(intptr_t)bad;
}

/* ---- one scenario, in a child process ---------------------------------------------------------- */

static int run_scenario(void *(*other)(void *))
{
    signal(SIGALRM, SIG_DFL);
    alarm(120 * (unsigned)tap_scale());
    aioctx_context_claim(aioctx_main_context());
    AioctxIoThread *a = aioctx_iothread_new("conc-a");
    AioctxIoThread *b = aioctx_iothread_new("conc-b");
    ctx_a = aioctx_iothread_context(a);
    ctx_b = aioctx_iothread_context(b);
    AioctxGraph *g = aioctx_graph_new(NULL);
    aioctx_node_new(g, "a1", ctx_a, &slow_driver, NULL);
    aioctx_node_new(g, "a2", ctx_a, &slow_driver, NULL);
    aioctx_node_new(g, "b1", ctx_b, &slow_driver, NULL);
    aioctx_node_new(g, "m1", aioctx_main_context(), &slow_driver, NULL);

    pthread_t mon, oth;
    pthread_create(&mon, NULL, monitor_thread, NULL);
    pthread_create(&oth, NULL, other, NULL);
    int bad = 0;
    for (int i = 0; i < ITERATIONS; i++) {
        int r1 = aioctx_graph_inactivate_all(g);
        int r2 = aioctx_graph_activate_all(g);
        if ((r1 || r2) && bad++ == 0)
            report("iteration %d: inactivate_all %d, activate_all %d: %s\n", i, r1, r2, aioctx_last_error());
        atomic_fetch_add(&progress, 1);
    }
    atomic_store(&other_stop, 1);
    void *other_bad;
    pthread_join(oth, &other_bad);
    atomic_store(&finished, 1);
    pthread_join(mon, NULL);
    aioctx_graph_free(g);
    aioctx_iothread_free(a);
    aioctx_iothread_free(b);
    report("%d handovers in main, %d iterations of the other thread\n", ITERATIONS, atomic_load(&other_iters));
    return bad || other_bad ? 1 : 0;
}

static void scenario(void *(*other)(void *), const char *what)
{
    int p[2];
    if (pipe(p)) {
        ok(0, "%s: pipe", what);
        return;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        report_fd = p[1];
        _exit(run_scenario(other));
    }
    close(p[1]);
    char buf[8192];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && ((r = read(p[0], buf + len, sizeof buf - 1 - len)) > 0 || (r < 0 && errno == EINTR)))
        if (r > 0)
            len += (size_t)r;
    buf[len] = '\0';
    close(p[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    int passed = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    ok(passed, "%s: %d handovers, no hang, no error", what, ITERATIONS);
    if (!passed)
        diag("child status %#x (%s)", status,
             WIFEXITED(status) && WEXITSTATUS(status) == 3 ? "deadlock detected" :
             WIFSIGNALED(status) ? "killed by a signal" : "errors");
    if (len)
        diag("%s", buf);
}

int main(void)
{
    tap_watchdog(300);
    scenario(single_acquirer, "another thread acquiring one IOThread context at a time");
    scenario(set_user, "another thread holding both IOThread contexts through an AioctxSet");
    scenario(second_graph, "a second graph (own main context, own thread) on the same IOThreads");
    return done_testing();
}
