/*
 * test-exit: calls made while a thread or the process ends work, or fail with
 * a documented errno; none aborts the process.
 *
 * By then the calling thread's thread-local storage is being torn down
 * (Rust's thread-locals are destroyed before atexit() handlers run in the
 * main thread, and before pthread-key destructors run in any thread). Each
 * scenario runs in a forked child (forked before this process makes any
 * aioctx call), whose checks travel back over a pipe as lines
 * "P label" / "F label: detail", so a child that aborts is a failure here
 * instead of a lost TAP stream:
 *   - atexit: an atexit() handler of the main thread releases, polls,
 *     inactivates a graph, frees an IOThread (whose thread must be gone
 *     afterwards) and reads aioctx_last_error() after a failed call;
 *   - key destructor: a C thread's pthread-key destructor does the same with
 *     its own loop, and claims a new context by polling it: once the thread
 *     is gone, another thread can poll that context (it was disowned).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>

static int report_fd = -1;

static void report(int pass, const char *label, const char *fmt, long long got, long long want)
{
    char line[512];
    int n = pass ? snprintf(line, sizeof line, "P %s\n", label)
                 : snprintf(line, sizeof line, "F %s: %s (got %lld, want %lld)\n", label, fmt, got, want);
    ssize_t r = write(report_fd, line, (size_t)n);
    (void)r;
}

#define check_int(got, want, label) \
    do { long long g_ = (got), w_ = (want); report(g_ == w_, (label), "value", g_, w_); } while (0)
#define check(cond, label) report(!!(cond), (label), "false", 0, 1)

/* Whether a thread of this process has the name `comm`. */
static int thread_named(const char *comm)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int found = 0;
    while (d && (e = readdir(d)) != NULL) {
        char path[300], name[32] = "";
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f && fgets(name, sizeof name, f))
            name[strcspn(name, "\n")] = 0;
        if (f)
            fclose(f);
        found |= strcmp(name, comm) == 0;
    }
    if (d)
        closedir(d);
    return found;
}

/* What both scenarios leave for their exit-time code. */
static struct {
    AioctxContext *own;         /* the exiting thread's own loop (it is home) */
    AioctxIoThread *it;
    AioctxContext *io_ctx;      /* it's context, referenced */
    AioctxGraph *g;
    AioctxContext *fresh;       /* claimed at exit by the key destructor */
} s;

static void set_flag(void *opaque)
{
    *(int *)opaque = 1;
}

static bool flag_clear(void *opaque)
{
    return *(int *)opaque == 0;
}

/* The calls made by the ending thread; `io_name` is the IOThread's name. */
static void calls_at_exit(const char *io_name)
{
    check(aioctx_last_error() != NULL, "aioctx_last_error() before any failure");
    check_int(aioctx_release(NULL), -EINVAL, "a failing call: aioctx_release(NULL)");
    check(strstr(aioctx_last_error(), "aioctx_release") != NULL, "aioctx_last_error() names the call");
    check_int(aioctx_last_errno(), -EINVAL, "aioctx_last_errno()");
    check_int(aioctx_release(s.io_ctx), 0, "release a context held since before exit");
    check_int(aioctx_lock_depth(s.io_ctx), 0, "depth 0 after the release");
    check_int(aioctx_acquire(s.io_ctx), 0, "acquire");
    check_int(aioctx_release(s.io_ctx), 0, "release");
    int flag = 0;
    check_int(aioctx_bh_schedule_oneshot(s.own, set_flag, &flag), 0, "schedule a BH on the own loop");
    check_int(aioctx_poll(s.own, false), 1, "aioctx_poll of the own loop runs it");
    check_int(flag, 1, "the BH ran");
    int io_flag = 0;
    check_int(aioctx_bh_schedule_oneshot(s.io_ctx, set_flag, &io_flag), 0, "schedule a BH on the IOThread");
    check_int(aioctx_poll_while(s.io_ctx, flag_clear, &io_flag, long_timeout(), 0), 0,
              "aioctx_poll_while for it");
    check_int(aioctx_graph_inactivate_all(s.g), 0, "aioctx_graph_inactivate_all");
    check_int(aioctx_graph_activate_all(s.g), 0, "aioctx_graph_activate_all");
    check(thread_named(io_name), "the IOThread runs before its free");
    check_int(aioctx_iothread_free(s.it), 0, "aioctx_iothread_free");
    check(!thread_named(io_name), "the IOThread's thread is gone after its free");
    check(aioctx_debug_dump(NULL, 0) > 0, "aioctx_debug_dump");
}

static void atexit_handler(void)
{
    calls_at_exit("exit-io");
    check(1, "atexit handler finished");
}

/* Sets up the objects calls_at_exit() uses; the caller becomes home of `own`. */
static void setup(AioctxContext *own, const char *io_name)
{
    s.own = own;
    aioctx_context_claim(own);
    s.it = aioctx_iothread_new(io_name);
    s.io_ctx = aioctx_context_ref(aioctx_iothread_context(s.it));
    s.g = aioctx_graph_new(own);
    aioctx_node_new(s.g, "exit-node", s.io_ctx, NULL, NULL);
    aioctx_acquire(s.io_ctx);
    /* A failure before the exit: the error storage exists when it begins. */
    aioctx_release(NULL);
}

static int scenario_atexit(void)
{
    setup(aioctx_main_context(), "exit-io");
    atexit(atexit_handler);
    return 0;   /* exit() runs the handler */
}

static void key_destructor(void *value)
{
    (void)value;
    calls_at_exit("key-io");
    s.fresh = aioctx_context_new("fresh");
    check_int(aioctx_poll(s.fresh, false), 0, "an ending thread polls (claims) a new context");
    check_int(aioctx_context_is_home(s.fresh), 1, "and is its home");
    check(1, "key destructor finished");
}

static void *keyed_thread(void *arg)
{
    pthread_key_t *key = arg;
    setup(aioctx_context_new("own"), "key-io");
    pthread_setspecific(*key, (void *)1);
    return NULL;
}

static int scenario_key(void)
{
    pthread_key_t key;
    pthread_t t;
    pthread_key_create(&key, key_destructor);
    pthread_create(&t, NULL, keyed_thread, &key);
    pthread_join(t, NULL);
    /* The dead thread's homes were given up: this thread can run them. */
    int flag = 0;
    check_int(aioctx_bh_schedule_oneshot(s.fresh, set_flag, &flag), 0, "schedule on the exited thread's context");
    check_int(aioctx_poll_while(s.fresh, flag_clear, &flag, long_timeout(), 0), 0,
              "another thread runs the exited thread's context");
    check_int(aioctx_poll(s.own, false), 0, "and its own loop");
    check(1, "main thread after the join");
    return 0;
}

/* Runs a scenario in a child; turns its report lines into TAP results. */
static void run(const char *name, int (*scenario)(void), int expect_lines)
{
    int fds[2];
    if (pipe(fds) != 0) {
        ok(0, "%s: pipe", name);
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        report_fd = fds[1];
        alarm(10 * (unsigned)tap_scale());
        exit(scenario());
    }
    close(fds[1]);
    FILE *in = fdopen(fds[0], "r");
    char line[600];
    int lines = 0;
    while (fgets(line, sizeof line, in)) {
        line[strcspn(line, "\n")] = 0;
        ok(line[0] == 'P', "%s: %s", name, line + 2);
        lines++;
    }
    fclose(in);
    int status = 0;
    waitpid(pid, &status, 0);
    is_int(lines, expect_lines, "%s: every check reported", name);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: the process exits normally (status %#x%s)",
       name, status, WIFSIGNALED(status) ? ", killed by a signal" : "");
}

int main(void)
{
    tap_watchdog(30);
    signal(SIGPIPE, SIG_IGN);
    run("atexit", scenario_atexit, 20);
    run("key destructor", scenario_key, 26);
    return done_testing();
}
