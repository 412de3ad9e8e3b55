/*
 * test-iothread: IOThreads — a named OS thread per IOThread, its context is
 * homed there (claim/poll elsewhere -> -EPERM), BHs/timers/fd handlers run on
 * it with the context lock held, the lock excludes it, free runs the BHs
 * already scheduled then joins, and free while holding its context ->
 * -EDEADLK.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/syscall.h>

static pid_t my_tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

static int read_comm(pid_t tid, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    if (n > 0 && buf[n - 1] == '\n')
        buf[n - 1] = '\0';
    return 0;
}

static int task_exists(pid_t tid)
{
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/self/task/%d", (int)tid);
    return stat(path, &st) == 0;
}

/* ---- what a callback observes about where it runs ----------------------- */

struct where {
    AioctxContext *ctx;
    pthread_t thread;
    pid_t tid;
    int depth;          /* on ctx */
    atomic_int done;    /* how many times it ran */
};

/* Called by a callback: records where it runs. */
static void note_where(struct where *w)
{
    w->thread = pthread_self();
    w->tid = my_tid();
    w->depth = aioctx_lock_depth(w->ctx);
    atomic_fetch_add(&w->done, 1);
}

static void where_cb(void *opaque)
{
    note_where(opaque);
}

static int run_where(AioctxContext *ctx, struct where *w)
{
    memset(w, 0, sizeof *w);
    w->ctx = ctx;
    if (aioctx_bh_schedule_oneshot(ctx, where_cb, w) != 0)
        return 0;
    return wait_at_least(&w->done, 1, 2 * SEC);
}

static void test_names_and_threads(void)
{
    struct where w1, w2;
    AioctxIoThread *it1 = aioctx_iothread_new("iot-short");
    AioctxIoThread *it2 = aioctx_iothread_new("iothread-with-a-long-name");
    ok(it1 && it2, "iothread_new x2");
    if (!it1 || !it2)
        return;
    AioctxContext *c1 = aioctx_iothread_context(it1);
    AioctxContext *c2 = aioctx_iothread_context(it2);
    ok(c1 && c2 && c1 != c2, "each IOThread has its own context");
    ok(aioctx_iothread_context(it1) == c1, "iothread_context returns the same borrowed pointer");

    ok(run_where(c1, &w1), "a BH scheduled on IOThread 1 runs");
    ok(run_where(c2, &w2), "a BH scheduled on IOThread 2 runs");
    ok(!pthread_equal(w1.thread, pthread_self()) && w1.tid != my_tid(),
       "IOThread 1's BH ran on another thread (tid %d, main %d)", (int)w1.tid, (int)my_tid());
    ok(!pthread_equal(w1.thread, w2.thread) && w1.tid != w2.tid, "the two IOThreads are distinct threads");
    ok(w1.depth >= 1, "the BH ran with the IOThread's context held (depth %d)", w1.depth);
    is_int(aioctx_lock_depth(c1), 0, "main thread's depth on the IOThread context is 0");

    char comm[64] = "";
    read_comm(w1.tid, comm, sizeof comm);
    is_str(comm, "iot-short", "the IOThread's OS thread name is its name");
    comm[0] = '\0';
    read_comm(w2.tid, comm, sizeof comm);
    is_str(comm, "iothread-with-a", "a long name is truncated to 15 chars in /proc/.../comm");

    /* The same thread every time. */
    struct where again;
    run_where(c1, &again);
    is_int(again.tid, w1.tid, "later BHs run on the same IOThread");

    /* The IOThread is the home of its context. */
    is_int(aioctx_context_claim(c1), -EPERM, "claim of an IOThread's context from main -> -EPERM");
    ok(aioctx_last_error()[0] != '\0', "... with a message: '%s'", aioctx_last_error());
    is_int(aioctx_poll(c1, false), -EPERM, "poll of an IOThread's context from main -> -EPERM");

    ok(aioctx_context_name(c1) && aioctx_context_name(c1)[0],
       "the IOThread's context has a name: '%s'", aioctx_context_name(c1) ? aioctx_context_name(c1) : "");
    ok(aioctx_context_id(c2) > aioctx_context_id(c1), "the later IOThread's context has a larger id");

    is_int(aioctx_iothread_free(it1), 0, "iothread_free returns 0");
    is_int(aioctx_iothread_free(it2), 0, "iothread_free returns 0");
    int gone = 0;
    for (int i = 0; i < 1000 && !gone; i++) {
        gone = !task_exists(w1.tid) && !task_exists(w2.tid);
        if (!gone)
            tap_sleep_ms(1);
    }
    ok(gone, "after free, the IOThreads' OS threads are gone (joined)");
}

/* ---- free runs the BHs already scheduled ----------------------------------- */

static atomic_int gate_entered;
static atomic_int pending_runs;

static void slow_gate_cb(void *opaque)
{
    (void)opaque;
    atomic_store(&gate_entered, 1);
    tap_sleep_ms(100);
}

static void pending_cb(void *opaque)
{
    (void)opaque;
    atomic_fetch_add(&pending_runs, 1);
}

static void test_free_runs_pending(void)
{
    enum { N = 50 };
    AioctxIoThread *it = aioctx_iothread_new("iot-pending");
    AioctxContext *c = aioctx_iothread_context(it);
    aioctx_bh_schedule_oneshot(c, slow_gate_cb, NULL);
    wait_at_least(&gate_entered, 1, 2 * SEC);
    for (int i = 0; i < N; i++)
        aioctx_bh_schedule_oneshot(c, pending_cb, NULL);
    /* The IOThread is inside slow_gate_cb for ~100 ms: all N are still pending. */
    ok(atomic_load(&pending_runs) == 0, "the %d BHs are still pending when free is called", N);
    is_int(aioctx_iothread_free(it), 0, "iothread_free with pending BHs returns 0");
    is_int(atomic_load(&pending_runs), N, "free ran every BH already scheduled before stopping");
}

/* ---- free while holding the IOThread's context ------------------------------- */

static void test_free_deadlock(void)
{
    AioctxIoThread *it = aioctx_iothread_new("iot-deadlk");
    AioctxContext *c = aioctx_iothread_context(it);

    atomic_store(&pending_runs, 0);
    is_int(aioctx_acquire(c), 0, "main acquires the IOThread's context");
    aioctx_bh_schedule_oneshot(c, pending_cb, NULL);
    aioctx_bh_schedule_oneshot(c, pending_cb, NULL);
    tap_sleep_ms(50);
    is_int(atomic_load(&pending_runs), 0, "a BH on the IOThread does not run while main holds its context");
    int64_t t0 = tap_now_ns();
    is_int(aioctx_iothread_free(it), -EDEADLK, "iothread_free while holding its context -> -EDEADLK");
    ok(tap_now_ns() - t0 < 500 * MS * tap_scale(), "immediately, not after a hang");
    like(aioctx_last_error(), aioctx_context_name(c) ? aioctx_context_name(c) : "?",
         "the message names the context");
    is_int(aioctx_lock_depth(c), 1, "the context is still held at depth 1");
    is_int(aioctx_release(c), 0, "release it");
    ok(wait_at_least(&pending_runs, 2, 2 * SEC), "the IOThread runs the BHs once the context is released");
    is_int(aioctx_iothread_free(it), 0, "now iothread_free succeeds");
}

/* A thread that runs no event loop, holding another context twice, frees an
 * IOThread whose last BH acquires that context: the free lends it until the
 * thread has exited (it hung in the join), then gives the depth back. */
struct loopless_free {
    AioctxContext *held;
    atomic_int bh_ran;
    int rc, depth_after;
};

static void acquire_held_cb(void *opaque)
{
    struct loopless_free *f = opaque;
    aioctx_acquire(f->held);
    atomic_store(&f->bh_ran, 1);
    aioctx_release(f->held);
}

static void *loopless_free_thread(void *arg)
{
    struct loopless_free *f = arg;
    AioctxIoThread *it = aioctx_iothread_new("iot-lend");
    aioctx_acquire(f->held);
    aioctx_acquire(f->held);
    aioctx_bh_schedule_oneshot(aioctx_iothread_context(it), acquire_held_cb, f);
    tap_sleep_ms(20);
    f->rc = aioctx_iothread_free(it);
    f->depth_after = aioctx_lock_depth(f->held);
    aioctx_release(f->held);
    aioctx_release(f->held);
    return NULL;
}

static void test_free_from_loopless_thread_holding_a_context(void)
{
    struct loopless_free f = { .held = aioctx_context_new("held-by-freer") };
    pthread_t t;
    pthread_create(&t, NULL, loopless_free_thread, &f);
    pthread_join(t, NULL);
    is_int(f.rc, 0, "iothread_free from a loop-less thread holding a context its BH needs -> 0");
    ok(atomic_load(&f.bh_ran), "  the BH ran (the context was lent to it)");
    is_int(f.depth_after, 2, "  the caller holds the context again, at depth 2");
    aioctx_context_unref(f.held);
}

/* The same, and while the context is lent another thread takes it and then
 * waits for a second context the freeing thread holds: taking the lent one
 * back must lend the second in turn, not wait for ever. */
struct lend_cycle {
    AioctxContext *x, *y;
    atomic_int bh_let_go, taker_done;
    int rc, depth_x, depth_y;
};

static void take_x_briefly_cb(void *opaque)
{
    struct lend_cycle *c = opaque;
    aioctx_acquire(c->x);
    aioctx_release(c->x);
    atomic_store(&c->bh_let_go, 1);
    tap_sleep_ms(100); /* the taker takes X meanwhile */
}

static void *taker_thread(void *arg)
{
    struct lend_cycle *c = arg;
    while (!atomic_load(&c->bh_let_go))
        tap_sleep_ms(1);
    aioctx_acquire(c->x);
    aioctx_acquire(c->y);
    aioctx_release(c->y);
    aioctx_release(c->x);
    atomic_store(&c->taker_done, 1);
    return NULL;
}

static void *cycle_free_thread(void *arg)
{
    struct lend_cycle *c = arg;
    AioctxIoThread *it = aioctx_iothread_new("iot-lend2");
    aioctx_acquire(c->x);
    aioctx_acquire(c->y);
    aioctx_bh_schedule_oneshot(aioctx_iothread_context(it), take_x_briefly_cb, c);
    c->rc = aioctx_iothread_free(it);
    c->depth_x = aioctx_lock_depth(c->x);
    c->depth_y = aioctx_lock_depth(c->y);
    aioctx_release(c->y);
    aioctx_release(c->x);
    return NULL;
}

static void test_free_lending_through_a_cycle(void)
{
    struct lend_cycle c = { .x = aioctx_context_new("lend-x"), .y = aioctx_context_new("lend-y") };
    pthread_t taker, freer;
    pthread_create(&taker, NULL, taker_thread, &c);
    pthread_create(&freer, NULL, cycle_free_thread, &c);
    pthread_join(freer, NULL);
    pthread_join(taker, NULL);
    is_int(c.rc, 0, "iothread_free whose lent context another thread took, waiting for one the caller holds -> 0");
    ok(atomic_load(&c.taker_done), "  that thread got both and finished");
    ok(c.depth_x == 1 && c.depth_y == 1, "  and the caller holds both contexts again");
    aioctx_context_unref(c.x);
    aioctx_context_unref(c.y);
}

struct self_free {
    AioctxIoThread *it;
    int rc;
    char err[256];
    atomic_int done;
};

static void self_free_cb(void *opaque)
{
    struct self_free *f = opaque;
    f->rc = aioctx_iothread_free(f->it);
    snprintf(f->err, sizeof f->err, "%s", aioctx_last_error());
    atomic_store(&f->done, 1);
}

static void test_free_from_itself(void)
{
    struct self_free f;
    memset(&f, 0, sizeof f);
    f.it = aioctx_iothread_new("iot-selffree");
    f.rc = -99;
    aioctx_bh_schedule_oneshot(aioctx_iothread_context(f.it), self_free_cb, &f);
    ok(wait_at_least(&f.done, 1, 2 * SEC), "a BH on the IOThread calling iothread_free on it returns");
    is_int(f.rc, -EDEADLK, "iothread_free from the IOThread itself -> -EDEADLK");
    ok(f.err[0] != '\0', "... with a message: '%s'", f.err);
    struct where w;
    ok(run_where(aioctx_iothread_context(f.it), &w), "the IOThread is still running afterwards");
    is_int(aioctx_iothread_free(f.it), 0, "and can be freed from main");
}

/* ---- timers and fd handlers on an IOThread --------------------------------- */

struct iot_timer {
    struct where fired;     /* where (and whether) the timer fired */
    AioctxTimer *t;
    int64_t armed_for;
    int64_t fired_at;
};

static void iot_timer_cb(void *opaque)
{
    struct iot_timer *x = opaque;
    x->fired_at = aioctx_clock_ns();
    note_where(&x->fired);
}

static void arm_timer_bh(void *opaque)
{
    struct iot_timer *x = opaque;
    x->t = aioctx_timer_new(x->fired.ctx, iot_timer_cb, x);
    x->armed_for = aioctx_clock_ns() + 10 * MS;
    aioctx_timer_mod(x->t, x->armed_for);
}

static void free_timer_bh(void *opaque)
{
    struct iot_timer *x = opaque;
    aioctx_timer_free(x->t);
    x->t = NULL;
}

struct iot_fd {
    struct where got;       /* where (and how often) the handler ran */
    int fd;
    int bytes;
    int set_rc;
};

static void iot_read_cb(void *opaque)
{
    struct iot_fd *f = opaque;
    char buf[16];
    ssize_t n = read(f->fd, buf, sizeof buf);
    if (n > 0)
        f->bytes += (int)n;
    note_where(&f->got);
}

static void add_fd_bh(void *opaque)
{
    struct iot_fd *f = opaque;
    f->set_rc = aioctx_set_fd_handler(f->got.ctx, f->fd, iot_read_cb, NULL, f);
}

static void del_fd_bh(void *opaque)
{
    struct iot_fd *f = opaque;
    f->set_rc = aioctx_set_fd_handler(f->got.ctx, f->fd, NULL, NULL, NULL);
}

static void test_timer_and_fd_on_iothread(void)
{
    AioctxIoThread *it = aioctx_iothread_new("iot-timer-fd");
    AioctxContext *c = aioctx_iothread_context(it);
    struct where w;
    run_where(c, &w);

    struct iot_timer x;
    memset(&x, 0, sizeof x);
    x.fired.ctx = c;
    aioctx_bh_schedule_oneshot(c, arm_timer_bh, &x);
    ok(wait_at_least(&x.fired.done, 1, 2 * SEC), "a timer armed on the IOThread fires on its own");
    is_int(x.fired.tid, w.tid, "on the IOThread");
    ok(x.fired_at >= x.armed_for, "not before its deadline");
    diag("IOThread timer lateness: %lld us", (long long)((x.fired_at - x.armed_for) / 1000));
    aioctx_bh_schedule_oneshot(c, free_timer_bh, &x);

    int p[2];
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0)
        abort();
    struct iot_fd f;
    memset(&f, 0, sizeof f);
    f.got.ctx = c;
    f.fd = p[0];
    f.set_rc = -99;
    aioctx_bh_schedule_oneshot(c, add_fd_bh, &f);
    /* BHs run in order: once a later marker BH ran, the add BH ran too. */
    struct where marker;
    run_where(c, &marker);
    is_int(f.set_rc, 0, "set_fd_handler from a BH on the IOThread");
    ok(write(p[1], "hey", 3) == 3, "main writes to the pipe");
    ok(wait_at_least(&f.got.done, 1, 2 * SEC), "the IOThread's blocking poll wakes for the fd and runs the handler");
    is_int(f.got.tid, w.tid, "the handler ran on the IOThread");
    is_int(f.bytes, 3, "and read the data");
    aioctx_bh_schedule_oneshot(c, del_fd_bh, &f);
    is_int(aioctx_iothread_free(it), 0, "iothread_free");
    is_int(f.set_rc, 0, "the handler was removed by a pending BH during free");
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    tap_watchdog(20);

    ok(aioctx_iothread_new(NULL) == NULL, "iothread_new(NULL) -> NULL");
    ok(aioctx_last_error()[0] != '\0', "... with a message: '%s'", aioctx_last_error());
    ok(aioctx_iothread_new("") == NULL, "iothread_new(\"\") -> NULL");
    ok(aioctx_iothread_context(NULL) == NULL, "iothread_context(NULL) -> NULL");

    test_names_and_threads();
    test_free_runs_pending();
    test_free_deadlock();
    test_free_from_itself();
    test_free_from_loopless_thread_holding_a_context();
    test_free_lending_through_a_cycle();
    test_timer_and_fd_on_iothread();
    is_int(aioctx_iothread_free(NULL), 0, "iothread_free(NULL) -> 0 (no-op)");
    return done_testing();
}
