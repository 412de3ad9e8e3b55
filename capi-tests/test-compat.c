/*
 * test-compat: include/aioctx/qemu-compat.h, written with QEMU's names only
 * (plus tap.h). The one exception is creating block nodes, which QEMU does
 * through bdrv_open()/BlockDriver structs that have no aioctx equivalent:
 * the graph's nodes are made with aioctx_node_new() on the compat graph,
 * as ported code does (docs/PORTING.md).
 *
 * Built twice by meson: AIO_WAIT_WHILE as a GNU statement expression (the
 * default with GCC/Clang, under -std=c11 -Wpedantic -Werror) and, with
 * AIOCTX_COMPAT_ISO_C and AIOCTX_COMPAT_IMPLEMENTATION, as an ISO C
 * statement with the globals defined here instead of weak.
 */
#define _GNU_SOURCE /* pthread_getname_np */
#include "tap.h"
#include <aioctx/qemu-compat.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

static pthread_t main_thread;

/* The name of the calling thread ("" if unknown). */
static const char *thread_name(char buf[16])
{
    if (pthread_getname_np(pthread_self(), buf, 16) != 0)
        buf[0] = '\0';
    return buf;
}

/* Runs every callback that is ready on the main context. */
static void drain_main(void)
{
    while (aio_poll(qemu_get_aio_context(), false)) {
    }
}

/* ---- AIO_WAIT_WHILE on a double hold: abort with the -EDEADLK message --- */

static atomic_int never_set;

static void child_double_hold(void)
{
    IOThread *it;
    AioContext *ctx;
    qemu_init_main_loop(&error_abort);
    it = iothread_create("compat-child", &error_abort);
    ctx = iothread_get_aio_context(it);
    /* Two drives on one IOThread, each taking "its" context. */
    aio_context_acquire(ctx);
    aio_context_acquire(ctx);
    AIO_WAIT_WHILE(ctx, atomic_load(&never_set) == 0); /* QEMU: hangs here */
    printf("# AIO_WAIT_WHILE returned on a double hold\n");
    _exit(0);
}

/* Forked before this process starts any thread. */
static void test_double_hold_aborts(void)
{
    int fds[2], status = 0;
    char buf[8192];
    size_t len = 0;
    ssize_t n;
    pid_t pid;

    if (!ok(pipe(fds) == 0, "pipe"))
        return;
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        child_double_hold();
    }
    close(fds[1]);
    if (!ok(pid > 0, "fork")) {
        close(fds[0]);
        return;
    }
    while (len < sizeof buf - 1 && (n = read(fds[0], buf + len, sizeof buf - 1 - len)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    close(fds[0]);
    waitpid(pid, &status, 0);
    ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
       "AIO_WAIT_WHILE with the context held twice aborts instead of hanging");
    like(buf, "AIO_WAIT_WHILE(ctx, atomic_load(&never_set) == 0)", "the message names the wait");
    like(buf, "holds it 2 times", "and the double hold");
    like(buf, "AioctxSet", "and the fix");
}

/* ---- bottom halves ---------------------------------------------------------- */

static int order[8];
static int order_len;

static void record(void *opaque)
{
    if (order_len < 8)
        order[order_len++] = *(const int *)opaque;
}

static void count(void *opaque)
{
    ++*(int *)opaque;
}

static void test_bhs(void)
{
    AioContext *ctx = qemu_get_aio_context();
    static const int one = 1, two = 2, three = 3;
    int runs = 0;
    QEMUBH *bh = aio_bh_new(ctx, count, &runs);

    drain_main();
    qemu_bh_schedule(bh);
    qemu_bh_schedule(bh); /* pending already: runs once */
    ok(aio_poll(ctx, false), "aio_poll runs the scheduled BH");
    is_int(runs, 1, "a BH scheduled twice runs once");
    ok(!aio_poll(ctx, false), "nothing left to run");

    qemu_bh_schedule(bh);
    qemu_bh_cancel(bh);
    ok(!aio_poll(ctx, false), "a cancelled BH does not run");
    qemu_bh_schedule(bh);
    qemu_bh_delete(bh); /* deleted while scheduled: never runs */
    ok(!aio_poll(ctx, false), "a BH deleted while scheduled does not run");
    is_int(runs, 1, "still one run");

    bh = qemu_bh_new(count, &runs);
    qemu_bh_schedule(bh);
    main_loop_wait(1);
    is_int(runs, 2, "qemu_bh_new + main_loop_wait(nonblocking)");
    qemu_bh_delete(bh);

    aio_bh_schedule_oneshot(ctx, record, (void *)&one);
    aio_bh_schedule_oneshot(ctx, record, (void *)&two);
    aio_bh_schedule_oneshot(ctx, record, (void *)&three);
    drain_main();
    ok(order_len == 3 && order[0] == 1 && order[1] == 2 && order[2] == 3,
       "one-shot BHs run once each, in scheduling order");
}

/* ---- timers and clocks ------------------------------------------------------- */

struct tick {
    QEMUTimer *timer;
    int64_t deadline_ns;
    int fired;
    int early;
    int periods;  /* re-arm itself this many more times */
    int64_t period_ms;
};

static void on_tick(void *opaque)
{
    struct tick *t = opaque;
    if (qemu_clock_get_ns(QEMU_CLOCK_REALTIME) < t->deadline_ns)
        t->early++;
    t->fired++;
    if (timer_pending(t->timer))
        t->early += 100; /* must read as not pending inside its callback */
    if (t->periods-- > 0) {
        int64_t now_ms = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
        t->deadline_ns = (now_ms + t->period_ms) * SCALE_MS;
        timer_mod(t->timer, now_ms + t->period_ms);
    }
}

static void test_timers(void)
{
    AioContext *ctx = qemu_get_aio_context();
    struct tick t = {0};
    int64_t start = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);
    int64_t host_s = qemu_clock_get_ns(QEMU_CLOCK_HOST) / 1000000000;

    ok(host_s > time(NULL) - 5 && host_s < time(NULL) + 5, "QEMU_CLOCK_HOST is the wall clock");
    ok(qemu_clock_get_ms(QEMU_CLOCK_REALTIME) >= start / SCALE_MS &&
       qemu_clock_get_us(QEMU_CLOCK_VIRTUAL) >= start / SCALE_US,
       "REALTIME and VIRTUAL read the monotonic clock");

    /* SCALE_MS: timer_mod takes milliseconds; re-arms itself twice. */
    t.timer = aio_timer_new(ctx, QEMU_CLOCK_REALTIME, SCALE_MS, on_tick, &t);
    t.periods = 2;
    t.period_ms = 3;
    ok(!timer_pending(t.timer), "a new timer is not pending");
    t.deadline_ns = (qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + 5) * SCALE_MS;
    timer_mod(t.timer, t.deadline_ns / SCALE_MS);
    ok(timer_pending(t.timer), "armed: pending");
    is_int(timer_expire_time_ns(t.timer), t.deadline_ns, "timer_expire_time_ns in ns");
    while (t.fired < 3)
        aio_poll(ctx, true);
    is_int(t.fired, 3, "SCALE_MS timer fired, then re-armed itself twice");
    is_int(t.early, 0, "never before its deadline, never pending in its callback");
    ok(!timer_pending(t.timer), "fired: not pending");
    is_int(timer_expire_time_ns(t.timer), -1, "timer_expire_time_ns -1 when not pending");

    timer_mod(t.timer, qemu_clock_get_ms(QEMU_CLOCK_REALTIME));
    timer_del(t.timer);
    ok(!timer_pending(t.timer), "timer_del: not pending");
    ok(!aio_poll(ctx, false), "a deleted timer does not fire");
    timer_free(t.timer);

    /* The ns variant, and timer_new_us on the main loop with a past deadline. */
    t = (struct tick){0};
    t.timer = aio_timer_new_ns(ctx, on_tick, &t);
    t.deadline_ns = qemu_clock_get_ns(QEMU_CLOCK_REALTIME) + 300000; /* 0.3 ms */
    timer_mod(t.timer, t.deadline_ns);
    while (t.fired < 1)
        aio_poll(ctx, true);
    is_int(t.early, 0, "aio_timer_new_ns: absolute ns deadline honoured");
    timer_free(t.timer);

    t = (struct tick){0};
    t.timer = timer_new_us(QEMU_CLOCK_VIRTUAL, on_tick, &t);
    t.deadline_ns = 0;
    timer_mod(t.timer, -5); /* the past: fires at the next poll */
    ok(aio_poll(ctx, false) && t.fired == 1, "a deadline in the past fires at the next poll");
    timer_free(t.timer);
    timer_free(NULL);
}

/* ---- fd handlers and notify ----------------------------------------------------- */

struct pipe_state {
    int fds[2];
    int reads;
    char last;
};

static void on_readable(void *opaque)
{
    struct pipe_state *p = opaque;
    if (read(p->fds[0], &p->last, 1) == 1)
        p->reads++;
}

static atomic_bool notifier_stop;

static void *notifier_thread(void *opaque)
{
    AioContext *ctx = opaque;
    while (!atomic_load(&notifier_stop)) {
        aio_notify(ctx);
        tap_sleep_ms(1);
    }
    return NULL;
}

static void test_fd_and_notify(void)
{
    AioContext *ctx = qemu_get_aio_context();
    struct pipe_state p = {{-1, -1}, 0, 0};
    pthread_t th;
    bool progress;

    if (!ok(pipe(p.fds) == 0, "pipe"))
        return;
    aio_set_fd_handler(ctx, p.fds[0], on_readable, NULL, NULL, NULL, &p);
    ok(!aio_poll(ctx, false), "nothing to read yet");
    ok(write(p.fds[1], "x", 1) == 1, "write");
    ok(aio_poll(ctx, true) && p.reads == 1 && p.last == 'x',
       "aio_set_fd_handler: io_read runs when the fd is readable");
    aio_set_fd_handler(ctx, p.fds[0], NULL, NULL, NULL, NULL, NULL);
    ok(write(p.fds[1], "y", 1) == 1, "write after removing the handler");
    ok(!aio_poll(ctx, false) && p.reads == 1, "a removed handler does not run");
    close(p.fds[0]);
    close(p.fds[1]);

    drain_main();
    atomic_store(&notifier_stop, false);
    pthread_create(&th, NULL, notifier_thread, ctx);
    progress = aio_poll(ctx, true);
    atomic_store(&notifier_stop, true);
    pthread_join(th, NULL);
    ok(!progress, "aio_notify from another thread wakes a blocking aio_poll, with no progress");
}

/* ---- IOThreads and AIO_WAIT_WHILE --------------------------------------------- */

struct work {
    atomic_bool done;
    atomic_int on_iothread;
};

/* Runs in the IOThread: QEMU's pattern, set state then aio_wait_kick(). */
static void io_work(void *opaque)
{
    struct work *w = opaque;
    char name[16];
    if (strcmp(thread_name(name), "compat-io") == 0)
        atomic_fetch_add(&w->on_iothread, 1);
    atomic_store(&w->done, true);
    aio_wait_kick();
}

static bool work_pending(void *opaque)
{
    return !atomic_load(&((struct work *)opaque)->done);
}

static void test_iothread_waits(IOThread *it)
{
    AioContext *io = iothread_get_aio_context(it);
    struct work w;
    bool waited;
    int misses = 0, ret;

    ok(io != NULL && io != qemu_get_aio_context(), "iothread_get_aio_context");

    /* The main loop waits for its IOThread, holding its context once. */
    atomic_init(&w.done, false);
    atomic_init(&w.on_iothread, 0);
    aio_context_acquire(io);
    aio_bh_schedule_oneshot(io, io_work, &w);
#if AIOCTX_COMPAT_GNUC
    waited = AIO_WAIT_WHILE(io, !atomic_load(&w.done));
    ok(waited, "AIO_WAIT_WHILE waited (the IOThread needed the context we hold)");
#else
    AIO_WAIT_WHILE(io, !atomic_load(&w.done));
    (void)waited;
#endif
    aio_context_release(io);
    ok(atomic_load(&w.done) && atomic_load(&w.on_iothread) == 1,
       "AIO_WAIT_WHILE(ctx held once): the work ran in the IOThread");

#if AIOCTX_COMPAT_GNUC
    waited = AIO_WAIT_WHILE(io, false);
    ok(!waited, "AIO_WAIT_WHILE with a false condition does not wait");
#endif

    /* The double hold, as a value: aio_wait_while_fn. */
    atomic_store(&w.done, false);
    aio_context_acquire(io);
    aio_context_acquire(io);
    aio_bh_schedule_oneshot(io, io_work, &w);
    ret = aio_wait_while_fn(io, work_pending, &w);
    is_int(ret, -EDEADLK, "aio_wait_while_fn on a double hold: -EDEADLK, no hang");
    ok(!atomic_load(&w.done), "the IOThread could not run while held");
    aio_context_release(io);
    is_int(aio_wait_while_fn(io, work_pending, &w), 0,
           "held once: the same wait completes (the work was delayed, not lost)");
    aio_context_release(io);

    /* A double hold is refused only if the macro would wait. */
    aio_context_acquire(io);
    aio_context_acquire(io);
    errno = EINTR;
#if AIOCTX_COMPAT_GNUC
    waited = AIO_WAIT_WHILE(io, false);
    ok(!waited, "AIO_WAIT_WHILE(ctx held twice, false) returns false, no abort");
#else
    AIO_WAIT_WHILE(io, false);
    ok(1, "AIO_WAIT_WHILE(ctx held twice, false) returns, no abort");
#endif
    is_int(errno, EINTR, "and leaves errno alone");
    aio_context_release(io);
    aio_context_release(io);

    /* Unlocked waits race with the IOThread: no lost wake-up. */
    for (int i = 0; i < 200; i++) {
        atomic_store(&w.done, false);
        aio_bh_schedule_oneshot(io, io_work, &w);
        AIO_WAIT_WHILE_UNLOCKED(io, !atomic_load(&w.done));
        if (!atomic_load(&w.done))
            misses++;
        atomic_store(&w.done, false);
        aio_bh_schedule_oneshot(io, io_work, &w);
        AIO_WAIT_WHILE(NULL, !atomic_load(&w.done));
        if (!atomic_load(&w.done))
            misses++;
    }
    is_int(misses, 0, "200 x AIO_WAIT_WHILE_UNLOCKED(io) and AIO_WAIT_WHILE(NULL) complete");
    is_int(atomic_load(&w.on_iothread), 402, "each work item ran once, in the IOThread");

    /* aio_wait_bh_oneshot: run in the IOThread and wait, holding it once. */
    atomic_store(&w.done, false);
    aio_context_acquire(io);
    aio_wait_bh_oneshot(io, io_work, &w);
    aio_context_release(io);
    ok(atomic_load(&w.done) && atomic_load(&w.on_iothread) == 403,
       "aio_wait_bh_oneshot ran the BH in the IOThread before returning");
    drain_main();
}

/* ---- which thread runs which context ---------------------------------------- */

struct where {
    AioContext *io, *main_ctx;
    AioContext *current;
    bool home_io, home_main, home_null;
    int errno_after;
    atomic_bool done;
};

static void ask_where(struct where *w)
{
    errno = EINTR;
    w->current = qemu_get_current_aio_context();
    w->errno_after = errno;
    w->home_io = in_aio_context_home_thread(w->io);
    w->home_main = in_aio_context_home_thread(w->main_ctx);
    w->home_null = in_aio_context_home_thread(NULL);
}

static void where_bh(void *opaque)
{
    struct where *w = opaque;
    ask_where(w);
    atomic_store(&w->done, true);
    aio_wait_kick();
}

static void *where_thread(void *opaque)
{
    ask_where(opaque);
    return NULL;
}

static void test_current_context(IOThread *it)
{
    struct where w = {0};
    pthread_t th;

    w.io = iothread_get_aio_context(it);
    w.main_ctx = qemu_get_aio_context();

    ask_where(&w);
    ok(w.current == w.main_ctx,
       "main loop thread: qemu_get_current_aio_context() is the main context");
    ok(w.home_main && !w.home_io && !w.home_null,
       "main loop thread: in_aio_context_home_thread() of main only");

    atomic_init(&w.done, false);
    aio_bh_schedule_oneshot(w.io, where_bh, &w);
    AIO_WAIT_WHILE_UNLOCKED(w.io, !atomic_load(&w.done));
    ok(w.current == w.io, "IOThread: qemu_get_current_aio_context() is its context");
    ok(w.home_io && !w.home_main && !w.home_null,
       "IOThread: in_aio_context_home_thread() of its context only");

    pthread_create(&th, NULL, where_thread, &w);
    pthread_join(th, NULL);
    ok(w.current == NULL, "a thread running no loop: qemu_get_current_aio_context() is NULL");
    is_int(w.errno_after, EINTR, "and errno is left alone");
    ok(!w.home_io && !w.home_main && !w.home_null, "it is the home of no context");
}

/* ---- AIO_WAIT_WHILE loses no wake-up ------------------------------------------
 *
 * The race QEMU's AIO_WAIT_WHILE has to survive: the waiter evaluates its
 * condition (true), then, before it sleeps, another thread changes the state
 * and calls aio_wait_kick(). Here it is forced: the condition's first
 * evaluation reads the flag and, before returning that (now stale) value,
 * has a kicker thread set the flag and kick. The wait must end at the next
 * poll. A timer on the polled context is the safety net: if the kick was
 * lost, the timer's callback ends the wait instead, and the test fails
 * rather than hangs.
 */

struct kicker {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    atomic_bool *flag; /* set and kick this; NULL: idle */
    bool stop;
};

static struct kicker kicker = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                               NULL, false};
static pthread_t kicker_thread;

static void *kicker_main(void *opaque)
{
    (void)opaque;
    pthread_mutex_lock(&kicker.lock);
    for (;;) {
        while (kicker.flag == NULL && !kicker.stop)
            pthread_cond_wait(&kicker.cond, &kicker.lock);
        if (kicker.flag == NULL)
            break;
        atomic_store(kicker.flag, true);
        aio_wait_kick();
        kicker.flag = NULL;
        pthread_cond_broadcast(&kicker.cond);
    }
    pthread_mutex_unlock(&kicker.lock);
    return NULL;
}

static void kicker_start(void)
{
    pthread_create(&kicker_thread, NULL, kicker_main, NULL);
}

static void kicker_stop(void)
{
    pthread_mutex_lock(&kicker.lock);
    kicker.stop = true;
    pthread_cond_broadcast(&kicker.cond);
    pthread_mutex_unlock(&kicker.lock);
    pthread_join(kicker_thread, NULL);
}

/* The kicker sets *flag and calls aio_wait_kick(); returns when it has. */
static void kick_from_other_thread(atomic_bool *flag)
{
    pthread_mutex_lock(&kicker.lock);
    kicker.flag = flag;
    pthread_cond_broadcast(&kicker.cond);
    while (kicker.flag != NULL)
        pthread_cond_wait(&kicker.cond, &kicker.lock);
    pthread_mutex_unlock(&kicker.lock);
}

struct probe {
    atomic_bool flag;
    int evals;
    int rescued;
    QEMUTimer *rescue;
};

/* The condition: "the flag is not set yet". Its first evaluation returns
 * true although the flag is set and kicked by the time it returns. */
static bool probe_unset(struct probe *p)
{
    bool unset = !atomic_load(&p->flag);
    if (p->evals++ == 0)
        kick_from_other_thread(&p->flag);
    return unset;
}

static void probe_rescue(void *opaque)
{
    ((struct probe *)opaque)->rescued++;
}

/* Arms the safety net on ctx (the context the waiter polls, in its home
 * thread). Polls ctx first, so that no wake-up left over from an earlier
 * wait (its callbacks kick) can end this one in place of the kick. */
static void probe_init(struct probe *p, AioContext *ctx)
{
    while (aio_poll(ctx, false)) {
    }
    atomic_init(&p->flag, false);
    p->evals = 0;
    p->rescued = 0;
    p->rescue = aio_timer_new(ctx, QEMU_CLOCK_REALTIME, SCALE_MS, probe_rescue, p);
    timer_mod(p->rescue, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + 1000 * tap_scale());
}

static void probe_check(struct probe *p, const char *what)
{
    timer_free(p->rescue);
    ok(p->evals == 2 && p->rescued == 0,
       "%s: a kick right after the first check of the condition ends the wait at once", what);
    if (p->rescued)
        diag("the kick was lost: the safety timer ended the wait (%d evaluations)", p->evals);
}

struct io_probe {
    struct probe p;
    int evals, rescued;
    atomic_bool done;
};

/* In the IOThread: AIO_WAIT_WHILE on its own context (the home-thread path). */
static void io_probe_bh(void *opaque)
{
    struct io_probe *ip = opaque;
    AioContext *ctx = qemu_get_current_aio_context();
    probe_init(&ip->p, ctx);
    AIO_WAIT_WHILE(ctx, probe_unset(&ip->p));
    timer_free(ip->p.rescue);
    ip->evals = ip->p.evals;
    ip->rescued = ip->p.rescued;
    atomic_store(&ip->done, true);
    aio_wait_kick();
}

static void test_no_lost_wakeup(IOThread *it)
{
    AioContext *io = iothread_get_aio_context(it);
    AioContext *main_ctx = qemu_get_aio_context();
    struct probe p;
    struct io_probe ip;
    bool waited = false;

    drain_main();
    probe_init(&p, main_ctx);
#if AIOCTX_COMPAT_GNUC
    waited = AIO_WAIT_WHILE(NULL, probe_unset(&p));
#else
    AIO_WAIT_WHILE(NULL, probe_unset(&p));
    waited = true;
#endif
    ok(waited, "AIO_WAIT_WHILE(NULL): it waited");
    probe_check(&p, "AIO_WAIT_WHILE(NULL, cond) in the main loop");

    probe_init(&p, main_ctx);
    aio_context_acquire(io);
    AIO_WAIT_WHILE(io, probe_unset(&p));
    aio_context_release(io);
    probe_check(&p, "AIO_WAIT_WHILE(io, cond) holding io once");

    probe_init(&p, main_ctx);
    AIO_WAIT_WHILE_UNLOCKED(io, probe_unset(&p));
    probe_check(&p, "AIO_WAIT_WHILE_UNLOCKED(io, cond)");

    /* In the IOThread, waiting on its own context. */
    ip.evals = ip.rescued = -1;
    atomic_init(&ip.done, false);
    aio_bh_schedule_oneshot(io, io_probe_bh, &ip);
    AIO_WAIT_WHILE_UNLOCKED(io, !atomic_load(&ip.done));
    ok(ip.evals == 2 && ip.rescued == 0,
       "AIO_WAIT_WHILE(ctx, cond) in ctx's own IOThread: the kick ends the wait at once");
    if (ip.rescued > 0)
        diag("the kick was lost: the safety timer ended the wait");
    drain_main();
}

static void test_errors(void)
{
    Error *err = NULL;
    IOThread *it = iothread_create("", &err);
    ok(it == NULL && err != NULL, "iothread_create(\"\") fails with an Error");
    like(error_get_pretty(err), "name", "the Error carries aioctx's message");
    error_free(err);
    ok(iothread_create("", NULL) == NULL, "errp NULL: just NULL");
    error_free(NULL);
}

/* Fails the way QEMU functions with an Error ** do. */
static bool fail_with(int code, Error **errp)
{
    error_setg(errp, "step %d failed: %s", code, "disk full");
    return false;
}

static void test_error_api(void)
{
    Error *err = NULL, *local = NULL, *first = NULL;
    char longer[600];

    ok(!fail_with(7, &err) && err != NULL, "error_setg fills *errp");
    is_str(error_get_pretty(err), "step 7 failed: disk full", "with the formatted message");
    error_free(err);
    err = NULL;
    fail_with(1, NULL); /* NULL: ignored */

    memset(longer, 'x', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    error_setg(&err, "%s", longer);
    is_int(strlen(error_get_pretty(err)), sizeof longer - 1, "a long message is kept whole");
    error_free(err);
    err = NULL;

    error_propagate(&err, NULL);
    ok(err == NULL, "error_propagate of no error: nothing");
    fail_with(2, &local);
    error_propagate(&err, local);
    like(error_get_pretty(err), "step 2", "error_propagate moves the error");
    local = NULL;
    fail_with(3, &local);
    first = err;
    error_propagate(&err, local); /* already set: the first error wins, local is freed */
    ok(err == first, "error_propagate into a set Error keeps the first");
    like(error_get_pretty(err), "step 2", "the first error's message");
    local = NULL;
    fail_with(4, &local);
    error_propagate(NULL, local); /* freed, not leaked (valgrind) */
    error_free(err);
}

static void test_poll_params(void)
{
    AioContext *ctx = aio_context_new(&error_abort);
    Error *err = NULL;

    aio_context_set_poll_params(ctx, 32768, 2, 4, &err);
    ok(err == NULL, "aio_context_set_poll_params with QEMU's values");
    aio_context_set_poll_params(ctx, 0, 0, 0, &error_abort);
    ok(1, "poll-max-ns 0 (polling off) is valid");
    aio_context_set_poll_params(ctx, -1, 0, 0, &err);
    ok(err != NULL, "a negative poll-max-ns fails with an Error");
    like(error_get_pretty(err), "aio-context", "naming the context");
    like(error_get_pretty(err), "max_ns -1", "and the value");
    error_free(err);
    err = NULL;
    aio_context_set_poll_params(ctx, 0, -2, 0, &err);
    like(error_get_pretty(err), "grow -2", "a negative grow fails");
    error_free(err);
    err = NULL;
    aio_context_set_poll_params(ctx, 0, 0, -3, &err);
    like(error_get_pretty(err), "shrink -3", "a negative shrink fails");
    error_free(err);
    is_int(aioctx_context_set_poll_params(NULL, 0, 0, 0), -EINVAL,
           "aioctx_context_set_poll_params(NULL): -EINVAL");
    is_int(aioctx_context_set_poll_params(ctx, INT64_MIN, 0, 0), -EINVAL,
           "aioctx_context_set_poll_params: -EINVAL for a negative value");
    like(aioctx_last_error(), "aioctx_context_set_poll_params", "the message names the call");
    aio_context_unref(ctx);
}

struct polled {
    int timer_fd, pipe_fds[2];
    int work, polls, reads, ticks;
};

static void on_timerfd_tick(void *opaque)
{
    struct polled *s = opaque;
    uint64_t n;
    if (read(s->timer_fd, &n, sizeof(n)) == sizeof(n))
        s->ticks++;
}

static bool on_poll(void *opaque)
{
    struct polled *s = opaque;
    s->polls++;
    return s->work != 0;
}

static void on_polled_read(void *opaque)
{
    struct polled *s = opaque;
    s->reads++;
    s->work = 0;
}

#if AIOCTX_COMPAT_QEMU_AT_LEAST(8, 1)
static int en_work, en_polls, en_reads;

static bool on_notifier_poll(void *opaque)
{
    (void)opaque;
    en_polls++;
    return en_work != 0;
}

static void on_notifier_read(EventNotifier *e)
{
    (void)e;
    en_reads++;
    en_work = 0;
}
#endif

static void arm_timerfd(int fd, long ns)
{
    struct itimerspec its = {.it_value = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000}};
    timerfd_settime(fd, 0, &its, NULL);
}

/* aio_set_fd_handler passes io_poll through: while the context polls,
 * io_poll reporting work runs io_read, the fd not being readable. The
 * window is opened by a timerfd firing 200 us into a poll (within max_ns). */
static void test_io_poll(void)
{
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) < 2) {
        tap_init_output();
        tap_st.run++;
        printf("ok %d - io_poll passed through # SKIP one usable CPU: no polling\n", tap_st.run);
        return;
    }
    AioContext *ctx = aio_context_new(&error_abort);
    struct polled s = {.timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK)};
    if (!ok(s.timer_fd >= 0 && pipe(s.pipe_fds) == 0, "a timerfd and a pipe"))
        return;
    aio_context_set_poll_params(ctx, 1000000000, 1000, 0, &error_abort);
    aio_set_fd_handler(ctx, s.timer_fd, on_timerfd_tick, NULL, NULL, NULL, &s);
    aio_set_fd_handler(ctx, s.pipe_fds[0], on_polled_read, NULL, on_poll, NULL, &s);
    for (int i = 0; i < 2; i++) {
        arm_timerfd(s.timer_fd, 200 * 1000);
        aio_poll(ctx, true);
    }
    is_int(s.ticks, 2, "two timerfd ticks opened the poll window");
    is_int(s.reads, 0, "io_read has not run");
    /* A guard: should io_poll not be polled, this ends the poll, not a hang. */
    arm_timerfd(s.timer_fd, 5000000000L);
    s.work = 1;
    ok(aio_poll(ctx, true), "a blocking poll makes progress...");
    is_int(s.reads, 1, "...running io_read because io_poll reported work");
    ok(s.polls > 0, "aio_set_fd_handler passed io_poll through");
    is_int(s.ticks, 2, "not the guard");
#if AIOCTX_COMPAT_QEMU_AT_LEAST(8, 1)
    EventNotifier en;
    is_int(event_notifier_init(&en, 0), 0, "event_notifier_init");
    aio_set_event_notifier(ctx, &en, on_notifier_read, on_notifier_poll, NULL);
    en_work = 1;
    ok(aio_poll(ctx, true) && en_reads == 1 && en_polls > 0,
       "aio_set_event_notifier passes io_poll through too (io_read ran, e not set)");
    aio_set_event_notifier(ctx, &en, NULL, NULL, NULL);
    event_notifier_cleanup(&en);
#endif
    aio_set_fd_handler(ctx, s.pipe_fds[0], NULL, NULL, NULL, NULL, NULL);
    aio_set_fd_handler(ctx, s.timer_fd, NULL, NULL, NULL, NULL, NULL);
    close(s.timer_fd);
    close(s.pipe_fds[0]);
    close(s.pipe_fds[1]);
    aio_context_unref(ctx);
}

struct embedded {
    int before;
    QEMUTimer timer;
    int fired;
};

static void embedded_fire(void *opaque)
{
    ((struct embedded *)opaque)->fired++;
}

static void test_timer_extras(void)
{
    AioContext *ctx = qemu_get_aio_context();
    struct embedded e = { 1, { 0 }, 0 };
    int64_t now_ms;

    drain_main();
    timer_init_ms(&e.timer, QEMU_CLOCK_REALTIME, embedded_fire, &e);
    ok(!timer_pending(&e.timer), "timer_init_ms: an embedded timer starts disarmed");
    ok(timer_expired(&e.timer, 0), "timer_expired: a disarmed timer counts as expired (QEMU)");
    now_ms = qemu_clock_get_ms(QEMU_CLOCK_REALTIME);
    timer_mod(&e.timer, now_ms + 100000);
    ok(!timer_expired(&e.timer, now_ms), "timer_expired: not before its time");
    ok(timer_expired(&e.timer, now_ms + 100000), "timer_expired: at its time");
    timer_mod_anticipate(&e.timer, now_ms + 200000);
    is_int(timer_expire_time_ns(&e.timer), (now_ms + 100000) * SCALE_MS,
           "timer_mod_anticipate does not postpone");
    timer_mod_anticipate(&e.timer, now_ms + 50000);
    is_int(timer_expire_time_ns(&e.timer), (now_ms + 50000) * SCALE_MS,
           "timer_mod_anticipate brings the deadline forward");
    timer_mod_anticipate(&e.timer, now_ms - 10);
    ok(aio_poll(ctx, false) && e.fired == 1, "an anticipated past deadline fires at the next poll");
    ok(!timer_pending(&e.timer), "and the timer is no longer pending");
    timer_mod_anticipate(&e.timer, now_ms + 100000);
    ok(timer_pending(&e.timer), "timer_mod_anticipate arms a disarmed timer");
    timer_deinit(&e.timer);
    ok(!aio_poll(ctx, false) && e.fired == 1 && e.before == 1,
       "timer_deinit disarms the embedded timer and leaves its struct alone");

    timer_init_ns(&e.timer, QEMU_CLOCK_VIRTUAL, embedded_fire, &e);
    timer_mod_ns(&e.timer, 0);
    ok(aio_poll(ctx, false) && e.fired == 2, "timer_init_ns: fires on the main context");
    timer_deinit(&e.timer);
    timer_init_us(&e.timer, QEMU_CLOCK_REALTIME, embedded_fire, &e);
    timer_mod(&e.timer, qemu_clock_get_us(QEMU_CLOCK_REALTIME));
    ok(aio_poll(ctx, false) && e.fired == 3, "timer_init_us: microsecond deadlines");
    timer_deinit(&e.timer);
}

static void test_misc_names(void)
{
    AioContext *ctx = qemu_get_aio_context();
    EventNotifier e;
    int runs = 0;
    QEMUBH *bh = aio_bh_new_full(ctx, count, &runs, "named", NULL);

    drain_main();
    qemu_bh_schedule(bh);
    ok(aio_poll(ctx, false) && runs == 1, "aio_bh_new_full: a BH like aio_bh_new's");
    qemu_bh_delete(bh);

    is_int(event_notifier_init(&e, true), 0, "event_notifier_init(active)");
    ok(event_notifier_test_and_clear(&e), "an active notifier starts set");
    ok(!event_notifier_test_and_clear(&e), "and is clear once tested");
    is_int(event_notifier_set(&e), 0, "event_notifier_set");
    is_int(event_notifier_set(&e), 0, "set twice");
    ok(event_notifier_test_and_clear(&e), "set");
    ok(!event_notifier_test_and_clear(&e), "one clear clears both sets");
    event_notifier_cleanup(&e);
    event_notifier_cleanup(&e); /* twice: no-op */
    ok(!e.initialized, "event_notifier_cleanup");
}

/* ---- block layer: the migration handover ----------------------------------- */

struct drive_counts {
    atomic_int flushes, inactivates, activates, wrong_thread;
    atomic_int fail_activate; /* -errno to return from activate */
};

static void check_iothread(struct drive_counts *c)
{
    char name[16];
    if (strcmp(thread_name(name), "compat-io") != 0)
        atomic_fetch_add(&c->wrong_thread, 1);
}

static int drv_flush(BlockDriverState *bs, void *opaque)
{
    (void)bs;
    check_iothread(opaque);
    atomic_fetch_add(&((struct drive_counts *)opaque)->flushes, 1);
    return 0;
}

static int drv_inactivate(BlockDriverState *bs, void *opaque)
{
    (void)bs;
    check_iothread(opaque);
    atomic_fetch_add(&((struct drive_counts *)opaque)->inactivates, 1);
    return 0;
}

static int drv_activate(BlockDriverState *bs, void *opaque)
{
    struct drive_counts *c = opaque;
    (void)bs;
    check_iothread(c);
    atomic_fetch_add(&c->activates, 1);
    return atomic_load(&c->fail_activate);
}

static void end_request_bh(void *opaque)
{
    bdrv_dec_in_flight(opaque);
}

static bool flag_unset(void *opaque)
{
    return !atomic_load((atomic_bool *)opaque);
}

static void set_flag_and_kick(void *opaque)
{
    atomic_store((atomic_bool *)opaque, true);
    aio_wait_kick();
}

static void test_block(IOThread *it)
{
    static const AioctxDriver drv = {
        .flush = drv_flush, .inactivate = drv_inactivate, .activate = drv_activate,
    };
    static struct drive_counts counts;
    AioContext *io = iothread_get_aio_context(it);
    BlockDriverState *d0, *d1;
    Error *err = NULL;
    atomic_bool flag;
    struct probe probe;

    bdrv_init();
    ok(aioctx_compat_block_graph != NULL, "bdrv_init creates the block graph");
    /* Two drives on one IOThread: the topology of the migration hang. */
    d0 = aioctx_node_new(aioctx_compat_block_graph, "drive0", io, &drv, &counts);
    d1 = aioctx_node_new(aioctx_compat_block_graph, "drive1", io, &drv, &counts);
    if (!ok(d0 && d1, "two nodes on the IOThread's context"))
        return;
    ok(bdrv_find_node("drive1") == d1 && bdrv_find_node("nope") == NULL, "bdrv_find_node");
    is_str(bdrv_get_node_name(d0), "drive0", "bdrv_get_node_name");
    ok(bdrv_get_aio_context(d0) == io && bdrv_get_aio_context(d1) == io,
       "bdrv_get_aio_context: both on the IOThread");

    /* A request in flight, ended by the IOThread; bdrv_drain waits for it. */
    bdrv_inc_in_flight(d0);
    aio_bh_schedule_oneshot(io, end_request_bh, d0);
    bdrv_drain(d0);
    ok(1, "bdrv_drain returned after the IOThread ended the request");
    is_int(bdrv_flush(d0), 0, "bdrv_flush");
    is_int(atomic_load(&counts.flushes), 1, "the driver's flush ran");

    atomic_init(&flag, false);
    aio_context_acquire(io);
    aio_bh_schedule_oneshot(io, set_flag_and_kick, &flag);
    BDRV_POLL_WHILE(d0, !atomic_load(&flag));
    aio_context_release(io);
    ok(!flag_unset(&flag), "BDRV_POLL_WHILE(bs, cond)");

    probe_init(&probe, qemu_get_aio_context());
    aio_context_acquire(io);
    BDRV_POLL_WHILE(d0, probe_unset(&probe));
    aio_context_release(io);
    probe_check(&probe, "BDRV_POLL_WHILE(bs, cond) holding bs's context once");

    /* The hang: each drive's code acquired "its" context. */
    aio_context_acquire(bdrv_get_aio_context(d0));
    aio_context_acquire(bdrv_get_aio_context(d1));
    is_int(bdrv_inactivate_all(), -EDEADLK,
           "bdrv_inactivate_all while holding the drives' context: -EDEADLK, not a hang");
    aio_context_release(bdrv_get_aio_context(d1));
    aio_context_release(bdrv_get_aio_context(d0));
    ok(!bdrv_is_inactive(d0) && !bdrv_is_inactive(d1), "the refusal changed nothing");

    is_int(bdrv_inactivate_all(), 0, "bdrv_inactivate_all");
    ok(bdrv_is_inactive(d0) && bdrv_is_inactive(d1), "both drives inactive");
    is_int(atomic_load(&counts.inactivates), 2, "each drive inactivated once");
    is_int(atomic_load(&counts.flushes), 3, "and flushed first");
    is_int(bdrv_inactivate_all(), 0, "a second bdrv_inactivate_all is a no-op");
    is_int(atomic_load(&counts.inactivates), 2, "no drive inactivated twice");

    atomic_store(&counts.fail_activate, -EIO);
    bdrv_activate_all(&err);
    ok(err != NULL, "bdrv_activate_all reports the driver's failure in an Error");
    like(error_get_pretty(err), "drive", "naming the node");
    error_free(err);
    err = NULL;

    atomic_store(&counts.fail_activate, 0);
    bdrv_invalidate_cache_all(&err);
    ok(err == NULL, "bdrv_activate_all recovers (by its pre-7.1 name, bdrv_invalidate_cache_all)");
    ok(!bdrv_is_inactive(d0) && !bdrv_is_inactive(d1), "both drives active again");
    is_int(atomic_load(&counts.wrong_thread), 0, "driver callbacks ran in the IOThread");

    bdrv_close_all();
    ok(aioctx_compat_block_graph == NULL && bdrv_find_node("drive0") == NULL,
       "bdrv_close_all frees the graph");
    is_int(bdrv_inactivate_all(), 0, "no graph: nothing to inactivate");
}

int main(void)
{
    IOThread *it;
    AioContext *other;

    tap_watchdog(60);
    main_thread = pthread_self();
    test_double_hold_aborts(); /* first: fork before any thread exists */

    is_int(qemu_init_main_loop(&error_abort), 0, "qemu_init_main_loop");
    ok(qemu_get_aio_context() != NULL, "qemu_get_aio_context");

    other = aio_context_new(&error_abort);
    aio_context_ref(other);
    aio_context_unref(other);
    aio_context_acquire(other);
    aio_context_acquire(other);
    aio_context_release(other);
    aio_context_release(other);
    ok(other != NULL, "aio_context_new, ref/unref, recursive acquire/release");
    aio_context_unref(other);

    test_bhs();
    test_timers();
    test_fd_and_notify();
    test_errors();
    test_error_api();
    test_poll_params();
    test_io_poll();
    test_timer_extras();
    test_misc_names();

    it = iothread_create("compat-io", &error_abort);
    kicker_start();
    test_current_context(it);
    test_iothread_waits(it);
    test_no_lost_wakeup(it);
    test_block(it);
    kicker_stop();
    iothread_destroy(it);
    drain_main();
    ok(pthread_equal(main_thread, pthread_self()), "still the main thread");
    return done_testing();
}
