/*
 * test-adaptive-poll.c - adaptive polling: aioctx_context_set_poll_params
 * (validation, 0 turns it off), the poll window's growth and shrinking
 * (aioctx_context_poll_window_ns), a notify made during the window caught
 * without a wake-up, io_poll callbacks of aioctx_set_fd_handler_full
 * triggering io_read on an fd that is not readable, and the defaults (an
 * IOThread polls and goes back to sleeping when idle; the main context does
 * not poll).
 *
 * Spinning needs two usable CPUs: on one, the window checks are skipped
 * (that a pinned thread never spins is a Rust unit test).
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <sched.h>
#include <semaphore.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>

static void skip(const char *name, const char *why)
{
    tap_init_output();
    tap_st.run++;
    printf("ok %d - %s # SKIP %s\n", tap_st.run, name, why);
    fflush(stdout);
}

static int usable_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return 1;
    return CPU_COUNT(&set);
}

static uint64_t wakeups(AioctxContext *c)
{
    AioctxContextStats st;
    aioctx_context_stats(c, &st);
    return st.wakeups;
}

static uint64_t polls(AioctxContext *c)
{
    AioctxContextStats st;
    aioctx_context_stats(c, &st);
    return st.polls;
}

/* The first two CPUs the process may use (-1: none), read before the test
 * thread pins itself (its threads inherit that). */
static int cpu_a = -1, cpu_b = -1;

/* The i-th CPU the calling thread may use (-1: none). */
static int nth_cpu(int i)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return -1;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &set) && i-- == 0)
            return cpu;
    return -1;
}

/* Pins the calling thread to cpu (< 0: leaves it alone). Work sent from the
 * poller's own CPU closes its window, so the tests of the window put the
 * sender on another CPU than the poller. */
static void pin_self(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
        diag("cannot pin a thread to CPU %d", cpu);
}

static void pin_bh(void *opaque)
{
    pin_self(*(int *)opaque);
}

/* ---- a thread that notifies (or sets a flag) a while after being told ---- */

struct poker {
    AioctxContext *ctx;
    sem_t go;
    sem_t done; /* posted once pinned, then after each notify has returned */
    int64_t delay_ns;
    atomic_int *flag; /* set before notifying, when not NULL */
    uint64_t polls_before; /* ctx's poll count before the poll to poke */
    atomic_int quit;
    pthread_t th;
};

static void *poker_thread(void *arg)
{
    struct poker *p = arg;
    pin_self(cpu_b);
    sem_post(&p->done);
    for (;;) {
        while (sem_wait(&p->go) != 0) {
        }
        if (atomic_load(&p->quit))
            return NULL;
        /* The delay counts from the poll's start: on a loaded machine (or
         * under valgrind) the poller may begin it late, and work already
         * there when a poll begins tells nothing about its window. */
        while (polls(p->ctx) == p->polls_before)
            tap_sleep_ns(20 * 1000);
        if (p->delay_ns > 0)
            tap_sleep_ns(p->delay_ns);
        if (p->flag)
            atomic_store(p->flag, 1);
        else
            aioctx_notify(p->ctx);
        sem_post(&p->done);
    }
}

static void poker_start(struct poker *p, AioctxContext *c)
{
    memset(p, 0, sizeof(*p));
    p->ctx = c;
    sem_init(&p->go, 0, 0);
    sem_init(&p->done, 0, 0);
    pthread_create(&p->th, NULL, poker_thread, p);
    /* Pinned before any poll: a process whose threads all share one CPU
     * does not poll, and the test thread is pinned. */
    while (sem_wait(&p->done) != 0) {
    }
}

static void poker_stop(struct poker *p)
{
    atomic_store(&p->quit, 1);
    sem_post(&p->go);
    pthread_join(p->th, NULL);
    sem_destroy(&p->go);
    sem_destroy(&p->done);
}

/* One blocking poll, with the poker acting delay_ns (scaled) after it was told;
 * returns once the poker's notify has returned too (the tail of a notify
 * that ended this poll could otherwise wake the next one). */
static int poked_poll(struct poker *p, AioctxContext *c, int64_t delay_ns)
{
    /* Scaled: valgrind is slower to see work than a native run. */
    p->delay_ns = delay_ns * tap_scale();
    p->polls_before = polls(c);
    sem_post(&p->go);
    int ret = aioctx_poll(c, true);
    while (sem_wait(&p->done) != 0) {
    }
    return ret;
}

/* Polling on with a 1 s maximum (nothing a loaded machine does comes late
 * for it), and the window opened up to it: work 1 ms into a closed window
 * opens it at 4 us, work after it grows it x1000 up to the maximum. */
static void open_window(struct poker *p, AioctxContext *c)
{
    aioctx_context_set_poll_params(c, SEC, 1000, 0);
    poked_poll(p, c, 1 * MS);
    poked_poll(p, c, 1 * MS);
    poked_poll(p, c, 20 * MS);
}

/* ---- set_poll_params ---- */

static void test_params(void)
{
    AioctxContext *c = aioctx_context_new("poll-params");
    is_int(aioctx_context_poll_window_ns(c), 0, "a new context's window is closed");
    int64_t max = -1, grow = -1, shrink = -1;
    is_int(aioctx_context_get_poll_params(c, &max, &grow, &shrink), 0, "get_poll_params");
    ok(max == 0 && grow == 0 && shrink == 0, "a new context does not poll");
    is_int(aioctx_context_set_poll_params(c, 32000, 2, 4), 0, "set_poll_params with QEMU's values");
    aioctx_context_get_poll_params(c, &max, &grow, &shrink);
    ok(max == 32000 && grow == 2 && shrink == 4, "read back");
    is_int(aioctx_context_set_poll_params(c, -1, 0, 0), -EINVAL, "negative max_ns: -EINVAL");
    like(aioctx_last_error(), "'poll-params'", "the message names the context");
    like(aioctx_last_error(), "max_ns -1", "and the value");
    is_int(aioctx_context_set_poll_params(c, 0, -2, 0), -EINVAL, "negative grow: -EINVAL");
    like(aioctx_last_error(), "grow -2", "the message names grow");
    is_int(aioctx_context_set_poll_params(c, 0, 0, INT64_MIN), -EINVAL, "negative shrink: -EINVAL");
    like(aioctx_last_error(), "shrink", "the message names shrink");
    max = -1;
    is_int(aioctx_context_get_poll_params(c, &max, NULL, NULL), 0, "get_poll_params, max_ns only");
    is_int(max, 32000, "refused calls changed nothing");
    is_int(aioctx_context_get_poll_params(NULL, &max, NULL, NULL), -EINVAL,
           "get_poll_params(NULL): -EINVAL");
    is_int(aioctx_context_set_poll_params(NULL, 0, 0, 0), -EINVAL, "NULL context: -EINVAL");
    is_int(aioctx_context_poll_window_ns(NULL), -EINVAL, "poll_window_ns(NULL): -EINVAL");
    aioctx_context_unref(c);
}

/* ---- the window ---- */

static void test_window(AioctxContext *c, struct poker *p)
{
    /* A 1 s maximum: nothing a loaded machine does comes late for it. */
    is_int(aioctx_context_set_poll_params(c, SEC, 1000, 0), 0, "polling on: max 1 s, grow x1000");
    is_int(poked_poll(p, c, 1 * MS), 0, "a blocking poll woken by a notify 1 ms in");
    is_int(aioctx_context_poll_window_ns(c), 4000,
           "work within max_ns opened the window at 4 us");
    poked_poll(p, c, 1 * MS);
    is_int(aioctx_context_poll_window_ns(c), 4000 * 1000, "work after the window grew it x1000");
    poked_poll(p, c, 20 * MS);
    is_int(aioctx_context_poll_window_ns(c), SEC, "up to max_ns");

    uint64_t before = wakeups(c);
    int caught = 0;
    for (int i = 0; i < 20; i++)
        caught += poked_poll(p, c, 100 * 1000) == 0;
    is_int(caught, 20, "20 notifies made during the window each ended a blocking poll");
    is_int((long long)(wakeups(c) - before), 0,
           "without a wake-up: the spinning poll saw them (no eventfd write)");
    is_int(aioctx_context_poll_window_ns(c), SEC, "work inside the window keeps it");

    /* Idle: a poll that only a timer ends found no work in its window. */
    atomic_int fired = 0;
    AioctxTimer *t = aioctx_timer_new(c, inc_cb, &fired);
    is_int(aioctx_context_set_poll_params(c, SEC, 1000, 4), 0, "shrink by 4");
    aioctx_timer_mod(t, aioctx_clock_ns() + 10 * MS);
    is_int(aioctx_poll(c, true), 1, "an idle poll ends with its timer");
    is_int(aioctx_context_poll_window_ns(c), SEC / 4, "an idle window shrinks by the divisor");
    is_int(aioctx_context_set_poll_params(c, SEC, 1000, 0), 0, "shrink 0 (QEMU's default)");
    aioctx_timer_mod(t, aioctx_clock_ns() + 10 * MS);
    is_int(aioctx_poll(c, true), 1, "another idle poll");
    is_int(aioctx_context_poll_window_ns(c), 0, "closes the window at once");
    is_int(atomic_load(&fired), 2, "both timers fired");

    /* A lower maximum clamps the window; 0 closes it. */
    poked_poll(p, c, 1 * MS);
    poked_poll(p, c, 1 * MS);
    ok(aioctx_context_poll_window_ns(c) > 4000, "window open again");
    is_int(aioctx_context_set_poll_params(c, 0, 0, 0), 0, "max_ns 0: polling off");
    is_int(aioctx_context_poll_window_ns(c), 0, "the window is closed at once");
    before = wakeups(c);
    is_int(poked_poll(p, c, 1 * MS), 0, "a blocking poll with polling off");
    is_int((long long)(wakeups(c) - before), 1, "slept: the notify had to wake it");
    is_int(aioctx_context_poll_window_ns(c), 0, "and the window stays closed");
    aioctx_timer_free(t);
}

/* ---- a process on one CPU never polls ---- */

static void on_timerfd(void *opaque)
{
    uint64_t n;
    if (read(*(int *)opaque, &n, sizeof(n)) != sizeof(n))
        diag("timerfd read: %s", strerror(errno));
}

/* A new context with polling on (max 1 s), its window after three polls
 * each ended by a timerfd 200 us in: work within max_ns that opens it
 * (and no notify, whose CPU would matter) wherever the process may spin. */
static int64_t window_after_timerfd_polls(void)
{
    AioctxContext *c = aioctx_context_new("timerfd-polls");
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    aioctx_context_set_poll_params(c, SEC, 1000, 0);
    aioctx_set_fd_handler(c, tfd, on_timerfd, NULL, &tfd);
    for (int i = 0; i < 3; i++) {
        struct itimerspec its = {.it_value = {.tv_nsec = 200 * 1000 * tap_scale()}};
        timerfd_settime(tfd, 0, &its, NULL);
        aioctx_poll(c, true);
    }
    int64_t window = aioctx_context_poll_window_ns(c);
    aioctx_set_fd_handler(c, tfd, NULL, NULL, NULL);
    close(tfd);
    aioctx_context_unref(c);
    return window;
}

/* The forked child has one thread, here pinned to one CPU. */
static int one_cpu_child(void)
{
    pin_self(cpu_a);
    child_is_int(window_after_timerfd_polls(), 0, "a process on one CPU never opens its window");
    return 0;
}

static void test_one_cpu_process(bool spins)
{
    if (!spins) {
        skip("a process on one CPU never polls", "one usable CPU");
        return;
    }
    /* First in the program: the child's thread has not counted its CPUs
     * (a count is trusted for a while, and the child inherits it). */
    run_in_child("one CPU", one_cpu_child, NULL, 1, 30);
    ok(window_after_timerfd_polls() > 0, "on two CPUs, the same polls open the window");
}

/* ---- io_poll ---- */

struct polled {
    AioctxContext *ctx;
    int fd;
    atomic_int work; /* what io_poll looks at */
    atomic_int polls, reads;
    int set_rc;       /* what set_fd_handler returned inside io_poll */
    char set_err[512];
    bool try_set;
};

static bool on_poll(void *opaque)
{
    struct polled *s = opaque;
    atomic_fetch_add(&s->polls, 1);
    if (s->try_set) {
        s->try_set = false;
        s->set_rc = aioctx_set_fd_handler(s->ctx, s->fd, NULL, NULL, NULL);
        snprintf(s->set_err, sizeof(s->set_err), "%s", aioctx_last_error());
    }
    return atomic_load(&s->work) != 0;
}

static void on_read(void *opaque)
{
    struct polled *s = opaque;
    atomic_fetch_add(&s->reads, 1);
    atomic_store(&s->work, 0);
    uint64_t v;
    /* Drains the fd when it was written; reading an empty one fails (EAGAIN). */
    if (read(s->fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        diag("read: %s", strerror(errno));
}

static void test_io_poll(AioctxContext *c, struct poker *p, bool spins)
{
    struct polled s = {.ctx = c, .fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
    is_int(aioctx_set_fd_handler_full(c, s.fd, NULL, NULL, on_poll, &s), -EINVAL,
           "io_poll without io_read: -EINVAL");
    like(aioctx_last_error(), "io_read", "the message says io_read is needed");
    is_int(aioctx_set_fd_handler_full(c, s.fd, on_read, NULL, on_poll, &s), 0,
           "set_fd_handler_full with io_poll");

    /* Polling off: io_poll is never called; the fd is still watched. */
    is_int(aioctx_context_set_poll_params(c, 0, 0, 0), 0, "polling off");
    atomic_store(&s.work, 1);
    atomic_int fired = 0;
    AioctxTimer *t = aioctx_timer_new(c, inc_cb, &fired);
    aioctx_timer_mod(t, aioctx_clock_ns() + 10 * MS);
    is_int(aioctx_poll(c, true), 1, "a blocking poll with polling off ends with its timer");
    is_int(atomic_load(&s.polls), 0, "io_poll was not called");
    is_int(atomic_load(&s.reads), 0, "nor io_read (the fd is not readable)");
    uint64_t one = 1;
    is_int(write(s.fd, &one, sizeof(one)), (long long)sizeof(one), "write the eventfd");
    is_int(aioctx_poll(c, true), 1, "a readable fd still runs io_read");
    is_int(atomic_load(&s.reads), 1, "once");

    if (!spins) {
        skip("io_poll while spinning", "one usable CPU: this thread never spins");
    } else {
        /* Should io_poll not be called, the guard ends the poll (and the
         * checks fail) instead of a hang. */
        atomic_int guarded = 0;
        AioctxTimer *guard = aioctx_timer_new(c, inc_cb, &guarded);
        aioctx_timer_mod(guard, aioctx_clock_ns() + long_timeout());
        open_window(p, c);
        is_int(aioctx_context_poll_window_ns(c), SEC, "polling on, window open");

        atomic_store(&s.work, 1);
        is_int(aioctx_poll(c, true), 1, "io_poll reporting work ends a blocking poll with progress");
        is_int(atomic_load(&s.reads), 2, "io_read ran without the fd being readable");
        ok(atomic_load(&s.polls) > 0, "io_poll was called (%d times)", atomic_load(&s.polls));

        /* Work appearing during the window (another thread sets the flag). */
        p->flag = &s.work;
        is_int(poked_poll(p, c, 200 * 1000), 1, "work io_poll sees 200 us into the window");
        p->flag = NULL;
        is_int(atomic_load(&s.reads), 3, "ran io_read once");

        /* Both at once: io_read runs once. */
        is_int(write(s.fd, &one, sizeof(one)), (long long)sizeof(one), "write the eventfd");
        atomic_store(&s.work, 1);
        is_int(aioctx_poll(c, true), 1, "io_poll true and the fd readable");
        is_int(atomic_load(&s.reads), 4, "one io_read for both");
        aioctx_timer_mod(t, aioctx_clock_ns() + 10 * MS);
        is_int(aioctx_poll(c, true), 1, "then only the timer");
        is_int(atomic_load(&s.reads), 4, "no io_read left over");

        /* Changing handlers from io_poll would deadlock: refused. */
        open_window(p, c);
        s.try_set = true;
        aioctx_timer_mod(t, aioctx_clock_ns() + 10 * MS);
        aioctx_poll(c, true);
        is_int(s.set_rc, -EDEADLK, "set_fd_handler from io_poll: -EDEADLK");
        ok(strstr(s.set_err, "io_poll") != NULL, "the message names io_poll: %s", s.set_err);
        is_int(atomic_load(&guarded), 0, "no poll needed the guard timer");
        aioctx_timer_free(guard);
    }

    is_int(aioctx_set_fd_handler(c, s.fd, NULL, NULL, NULL), 0, "remove the handler");
    int polls = atomic_load(&s.polls);
    atomic_store(&s.work, 1);
    aioctx_timer_mod(t, aioctx_clock_ns() + 10 * MS);
    aioctx_poll(c, true);
    is_int(atomic_load(&s.polls), polls, "a removed io_poll is never called again");
    aioctx_timer_free(t);
    close(s.fd);
}

/* ---- defaults ---- */

static void test_main_default(struct poker *p)
{
    AioctxContext *m = aioctx_main_context();
    int64_t max = -1;
    aioctx_context_get_poll_params(m, &max, NULL, NULL);
    is_int(max, 0, "the main context's max_ns is 0");
    for (int i = 0; i < 3; i++)
        poked_poll(p, m, 100 * 1000);
    is_int(aioctx_context_poll_window_ns(m), 0, "the main context does not poll by default");
}

struct cpu_sample {
    int64_t ns;
    atomic_int done;
};

static void sample_cpu(void *opaque)
{
    struct cpu_sample *s = opaque;
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    s->ns = (int64_t)ts.tv_sec * SEC + ts.tv_nsec;
    atomic_store(&s->done, 1);
}

static bool sample_pending(void *opaque)
{
    return !atomic_load(&((struct cpu_sample *)opaque)->done);
}

static void take_sample(AioctxContext *io, struct cpu_sample *s)
{
    atomic_store(&s->done, 0);
    aioctx_bh_schedule_oneshot(io, sample_cpu, s);
    is_int(aioctx_poll_while(io, sample_pending, s, long_timeout(), 0), 0, "sampled its CPU time");
}

/* BH: busy-waits 20 us, then counts (inc_cb): the thread that scheduled it
 * is then surely waiting, its poll begun, when the count moves. */
static void inc_after_20us(void *opaque)
{
    int64_t at = aioctx_clock_ns() + 20 * 1000;
    while (aioctx_clock_ns() < at) {
    }
    inc_cb(opaque);
}

static void test_iothread_default(AioctxIoThread *it, bool spins)
{
    AioctxContext *io = aioctx_iothread_context(it);
    static int io_cpu;
    io_cpu = cpu_b;
    aioctx_bh_schedule_oneshot(io, pin_bh, &io_cpu);
    int64_t max = -1, grow = -1, shrink = -1;
    aioctx_context_get_poll_params(io, &max, &grow, &shrink);
    ok(max == 64000 && grow == 0 && shrink == 0, "an IOThread's default: max_ns 64000 (%lld), "
       "QEMU's grow and shrink", (long long)max);
    /* Work that comes ~20 us after the IOThread began to poll, which a
     * window would catch: its window opens. (A late round closes it again,
     * as it should: look for it open after any round.) The BH itself takes
     * 20 us, so the main thread's wait has begun to poll when the count
     * moves (with an instant BH the IOThread could win every race, and the
     * wait never polled). */
    atomic_int n = 0;
    int64_t widest = 0, widest_main = 0;
    AioctxContext *m = aioctx_main_context();
    for (int i = 0; i < 200; i++) {
        int64_t at = aioctx_clock_ns() + 20 * 1000;
        while (aioctx_clock_ns() < at) {
        }
        aioctx_bh_schedule_oneshot(io, inc_after_20us, &n);
        struct count_wait w = {&n, i + 1};
        aioctx_poll_while(io, below_target, &w, long_timeout(), 0);
        int64_t window = aioctx_context_poll_window_ns(io);
        widest = window > widest ? window : widest;
        window = aioctx_context_poll_window_ns(m);
        widest_main = window > widest_main ? window : widest_main;
    }
    is_int(atomic_load(&n), 200, "200 round trips to an IOThread");
    if (!spins || tap_scale() > 1)
        skip("an IOThread polls by default", "one usable CPU, or a slowed-down run");
    else
        ok(widest > 0 && widest <= 64000, "an IOThread polls by default (widest window %lld ns)",
           (long long)widest);
    /* The waits polled the main context, which does not poll itself: they
     * spun with the IOThread's parameters. */
    if (!spins || tap_scale() > 1)
        skip("poll_while spins with the waited context's parameters", "one usable CPU, or slow");
    else
        ok(widest_main > 0 && widest_main <= 64000,
           "poll_while on the main loop spins with the IOThread's parameters (widest window %lld ns)",
           (long long)widest_main);

    /* Idle: it sleeps instead of spinning. */
    struct cpu_sample a, b;
    take_sample(io, &a);
    tap_sleep_ms(300);
    take_sample(io, &b);
    is_int(aioctx_context_poll_window_ns(io), 0, "after 300 ms idle its window is closed");
    ok(b.ns - a.ns < 30 * MS * tap_scale(), "and it used little CPU meanwhile (%lld us)",
       (long long)((b.ns - a.ns) / 1000));
    aioctx_iothread_free(it);
}

int main(void)
{
    tap_watchdog(60);
    bool spins = usable_cpus() > 1;
    cpu_a = nth_cpu(0);
    cpu_b = nth_cpu(1);
    test_one_cpu_process(spins);
    /* Started before the test thread pins itself, so it does not inherit
     * that: a process whose threads all have one CPU never polls. */
    AioctxIoThread *it = aioctx_iothread_new("poll-io");
    pin_self(cpu_a);
    test_params();

    AioctxContext *c = aioctx_context_new("adaptive");
    is_int(aioctx_context_claim(c), 0, "the test thread runs the context");
    struct poker p;
    poker_start(&p, c);
    if (spins)
        test_window(c, &p);
    else
        skip("the poll window", "one usable CPU: this thread never spins");
    test_io_poll(c, &p, spins);
    poker_stop(&p);

    AioctxContext *m = aioctx_main_context();
    poker_start(&p, m);
    test_main_default(&p);
    poker_stop(&p);
    /* Its waits then poll the main context, which does not poll itself. */
    aioctx_context_unref(c);
    test_iothread_default(it, spins);
    return done_testing();
}
