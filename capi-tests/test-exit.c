/*
 * test-exit: calls made while a thread or the process ends work, or fail with
 * a documented errno; none aborts the process.
 *
 * By then the calling thread's thread-local storage is being torn down
 * (Rust's thread-locals are destroyed before atexit() handlers run in the
 * main thread, and before pthread-key destructors run in any thread). Each
 * scenario runs in a forked child (forked before this process makes any
 * aioctx call; see run_in_child in test-util.h), so a child that aborts is a
 * failure here instead of a lost TAP stream:
 *   - atexit: an atexit() handler of the main thread releases, polls,
 *     inactivates a graph, frees an IOThread (whose thread must be gone
 *     afterwards) and reads aioctx_last_error() after a failed call;
 *   - key destructor: a C thread's pthread-key destructor does the same with
 *     its own loop, and claims a new context by polling it: once the thread
 *     is gone, another thread can poll that context (it was disowned);
 *   - exited holder: a thread that exits holding a context leaves it held,
 *     the dump names it (and says it exited), and a later thread that gets
 *     the same pthread_t is not its owner (no depth, cannot release it).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <dirent.h>
#include <signal.h>

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
    child_ok(aioctx_last_error() != NULL, "aioctx_last_error() before any failure");
    child_is_int(aioctx_release(NULL), -EINVAL, "a failing call: aioctx_release(NULL)");
    child_ok(strstr(aioctx_last_error(), "aioctx_release") != NULL, "aioctx_last_error() names the call");
    child_is_int(aioctx_last_errno(), -EINVAL, "aioctx_last_errno()");
    child_is_int(aioctx_release(s.io_ctx), 0, "release a context held since before exit");
    child_is_int(aioctx_lock_depth(s.io_ctx), 0, "depth 0 after the release");
    child_is_int(aioctx_acquire(s.io_ctx), 0, "acquire");
    child_is_int(aioctx_release(s.io_ctx), 0, "release");
    int flag = 0;
    child_is_int(aioctx_bh_schedule_oneshot(s.own, set_flag, &flag), 0, "schedule a BH on the own loop");
    child_is_int(aioctx_poll(s.own, false), 1, "aioctx_poll of the own loop runs it");
    child_is_int(flag, 1, "the BH ran");
    int io_flag = 0;
    child_is_int(aioctx_bh_schedule_oneshot(s.io_ctx, set_flag, &io_flag), 0, "schedule a BH on the IOThread");
    child_is_int(aioctx_poll_while(s.io_ctx, flag_clear, &io_flag, long_timeout(), 0), 0,
              "aioctx_poll_while for it");
    child_is_int(aioctx_graph_inactivate_all(s.g), 0, "aioctx_graph_inactivate_all");
    child_is_int(aioctx_graph_activate_all(s.g), 0, "aioctx_graph_activate_all");
    child_ok(thread_named(io_name), "the IOThread runs before its free");
    child_is_int(aioctx_iothread_free(s.it), 0, "aioctx_iothread_free");
    child_ok(!thread_named(io_name), "the IOThread's thread is gone after its free");
    child_ok(aioctx_debug_dump(NULL, 0) > 0, "aioctx_debug_dump");
}

static void atexit_handler(void)
{
    calls_at_exit("exit-io");
    child_ok(1, "atexit handler finished");
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
    child_is_int(aioctx_poll(s.fresh, false), 0, "an ending thread polls (claims) a new context");
    child_is_int(aioctx_context_is_home(s.fresh), 1, "and is its home");
    child_ok(1, "key destructor finished");
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
    child_is_int(aioctx_bh_schedule_oneshot(s.fresh, set_flag, &flag), 0, "schedule on the exited thread's context");
    child_is_int(aioctx_poll_while(s.fresh, flag_clear, &flag, long_timeout(), 0), 0,
              "another thread runs the exited thread's context");
    child_is_int(aioctx_poll(s.own, false), 0, "and its own loop");
    child_ok(1, "main thread after the join");
    return 0;
}

static AioctxContext *left;

static void *take_and_exit(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "leaver");
    aioctx_acquire(left);
    return NULL;
}

struct probe {
    int depth, release, try_acquire;
};

static void *probe_thread(void *arg)
{
    struct probe *p = arg;
    p->depth = aioctx_lock_depth(left);
    p->release = aioctx_release(left);
    p->try_acquire = aioctx_try_acquire(left);
    return NULL;
}

static int scenario_holder(void)
{
    left = aioctx_context_new("left-held");
    pthread_t leaver, t;
    pthread_create(&leaver, NULL, take_and_exit, NULL);
    pthread_join(leaver, NULL);
    char dump[8192];
    aioctx_debug_dump(dump, sizeof dump);
    const char *line = strstr(dump, "context 'left-held'");
    child_ok(line && strstr(line, "owner 'leaver'") != NULL, "the dump names the thread that left it held");
    child_ok(line && strstr(line, "(exited)") != NULL, "and says it exited");
    /* glibc hands a joined thread's pthread_t (its descriptor) to a later thread. */
    struct probe p = { 0, 0, 0 };
    int reused = 0;
    for (int i = 0; i < 200 && !reused; i++) {
        pthread_create(&t, NULL, probe_thread, &p);
        reused = pthread_equal(t, leaver);
        pthread_join(t, NULL);
    }
    child_ok(reused, "a later thread got the same pthread_t");
    child_is_int(p.depth, 0, "it does not hold the context");
    child_is_int(p.release, -EPERM, "it cannot release it");
    child_is_int(p.try_acquire, -EBUSY, "it cannot take it either");
    child_is_int(aioctx_try_acquire(left), -EBUSY, "nor can anyone else");
    return 0;
}

int main(void)
{
    tap_watchdog(30);
    signal(SIGPIPE, SIG_IGN);
    run_in_child("atexit", scenario_atexit, NULL, 20, 10);
    run_in_child("key destructor", scenario_key, NULL, 26, 10);
    run_in_child("exited holder", scenario_holder, NULL, 7, 10);
    return done_testing();
}
