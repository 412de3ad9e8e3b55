/* Cross-thread wake-up: a ping-pong between two threads, each blocked in its
 * event loop until the other wakes it.
 *
 *   aioctx   two IOThreads; BH "ping" on the first schedules BH "pong" on
 *            the second, which schedules "ping" again (aioctx_bh_schedule);
 *            adaptive polling on, as IOThreads have it by default
 *   aioctx_nopoll  the same with polling off (max_ns 0): what polling buys
 *   eventfd  two plain pthreads, each in epoll_wait on its own eventfd;
 *            each reads its eventfd and writes the other's
 *   libuv    two uv loops; each uv_async_t callback uv_async_send()s the other
 *            (built when meson finds libuv: HAVE_LIBUV)
 *   glib     two GMainContexts run by GMainLoops; each callback
 *            g_main_context_invoke()s the other context (HAVE_GLIB)
 *
 *   wakeup ROUND_TRIPS REPS
 *
 * Variants run interleaved (rotating order), REPS samples each; a sample is
 * ROUND_TRIPS round trips (ping + pong) timed from the first wake-up to the
 * last. Each sample checks that both sides ran exactly the expected number of
 * times. The two threads of every variant are pinned, first both to one CPU
 * (a wake-up is a context switch: this shows the software cost), then to two
 * CPUs (a wake-up is an inter-processor interrupt: on a VM with idle vCPUs
 * that costs tens of microseconds and dominates); left to the scheduler, the
 * placement, and so the result, would change from run to run. One JSON line:
 * per placement, median ns per round trip of each variant and the ratio
 * aioctx / other (below 1: aioctx is faster).
 *
 * Then the cost of an idle IOThread: its CPU time (CLOCK_THREAD_CPUTIME_ID,
 * read by a BH in it) over 2 s idle right after the ping-pong, with polling
 * on and, as the baseline, off ("idle_iothread"). */
#include "bench-common.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#ifdef HAVE_LIBUV
#include <uv.h>
#endif
#ifdef HAVE_GLIB
#include <glib.h>
#endif

#define BENCH "wakeup"

/* What every variant shares: counts per side, the goal, the end signal. */
struct pingpong {
    long target;
    long count[2];
    int cpu[2]; /* where side 0 and side 1 run */
    sem_t done;
};

static void pp_reset(struct pingpong *pp, long target)
{
    pp->target = target;
    pp->count[0] = pp->count[1] = 0;
}

static void pp_check(const struct pingpong *pp, const char *variant)
{
    /* Side 0 runs the last ping; side 1 answered all but that one. */
    if (pp->count[0] != pp->target || pp->count[1] != pp->target - 1)
        bench_fail(BENCH, 0, "%s: ping ran %ld times, pong %ld times, expected %ld and %ld", variant,
                   pp->count[0], pp->count[1], pp->target, pp->target - 1);
}

/* ---- aioctx: BHs between two IOThreads ---- */

struct aio_pp {
    struct pingpong pp;
    AioctxBh *bh[2];
    AioctxContext *ctx[2];
};

static void aio_ping(void *opaque)
{
    struct aio_pp *a = opaque;
    if (aioctx_lock_depth(a->ctx[0]) != 1)
        bench_fail(BENCH, 0, "aioctx: ping ran without its context held");
    if (++a->pp.count[0] == a->pp.target) {
        sem_post(&a->pp.done);
        return;
    }
    if (aioctx_bh_schedule(a->bh[1]) != 0)
        bench_fail(BENCH, 1, "aioctx: schedule pong");
}

static void aio_pong(void *opaque)
{
    struct aio_pp *a = opaque;
    a->pp.count[1]++;
    if (aioctx_bh_schedule(a->bh[0]) != 0)
        bench_fail(BENCH, 1, "aioctx: schedule ping");
}

static void aio_set_polling(struct aio_pp *a, int64_t max_ns)
{
    for (int i = 0; i < 2; i++)
        if (aioctx_context_set_poll_params(a->ctx[i], max_ns, 0, 0) != 0)
            bench_fail(BENCH, 1, "aioctx_context_set_poll_params");
}

static double run_aioctx(struct aio_pp *a, long trips, int64_t poll_max_ns)
{
    aio_set_polling(a, poll_max_ns);
    pp_reset(&a->pp, trips);
    int64_t t0 = bench_now_ns();
    if (aioctx_bh_schedule(a->bh[0]) != 0)
        bench_fail(BENCH, 1, "aioctx: first schedule");
    while (sem_wait(&a->pp.done) != 0 && errno == EINTR) {
    }
    int64_t t1 = bench_now_ns();
    pp_check(&a->pp, "aioctx");
    return (double)(t1 - t0) / (double)trips;
}

/* ---- eventfd + epoll in plain C ---- */

struct raw_side {
    struct raw_pp *pp;
    int side;
    int epfd, efd;
    pthread_t thread;
};

struct raw_pp {
    struct pingpong pp;
    struct raw_side s[2];
    pthread_barrier_t start;
    int stop;
};

static void raw_signal(int efd)
{
    uint64_t one = 1;
    if (write(efd, &one, sizeof(one)) != sizeof(one))
        bench_fail(BENCH, 0, "eventfd: write: %s", strerror(errno));
}

static void *raw_thread(void *opaque)
{
    struct raw_side *s = opaque;
    struct raw_pp *r = s->pp;
    struct raw_side *other = &r->s[1 - s->side];
    bench_pin_self(r->pp.cpu[s->side]);
    pthread_barrier_wait(&r->start);
    for (;;) {
        struct epoll_event ev;
        int n = epoll_wait(s->epfd, &ev, 1, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != 1)
            bench_fail(BENCH, 0, "eventfd: epoll_wait: %s", strerror(errno));
        uint64_t v;
        if (read(s->efd, &v, sizeof(v)) != sizeof(v))
            bench_fail(BENCH, 0, "eventfd: read: %s", strerror(errno));
        if (__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE))
            return NULL;
        if (++r->pp.count[s->side] == r->pp.target && s->side == 0) {
            sem_post(&r->pp.done);
            return NULL;
        }
        raw_signal(other->efd);
    }
}

static double run_eventfd(struct raw_pp *r, long trips)
{
    pp_reset(&r->pp, trips);
    r->stop = 0;
    pthread_barrier_init(&r->start, NULL, 3);
    for (int i = 0; i < 2; i++) {
        struct raw_side *s = &r->s[i];
        s->pp = r;
        s->side = i;
        s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        s->epfd = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0};
        if (s->efd < 0 || s->epfd < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->efd, &ev) != 0 ||
            pthread_create(&s->thread, NULL, raw_thread, s) != 0)
            bench_fail(BENCH, 0, "eventfd: setup: %s", strerror(errno));
    }
    pthread_barrier_wait(&r->start);
    int64_t t0 = bench_now_ns();
    raw_signal(r->s[0].efd);
    while (sem_wait(&r->pp.done) != 0 && errno == EINTR) {
    }
    int64_t t1 = bench_now_ns();
    /* Side 1 waits for one more ping: wake it to stop. */
    __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
    raw_signal(r->s[1].efd);
    for (int i = 0; i < 2; i++) {
        pthread_join(r->s[i].thread, NULL);
        close(r->s[i].efd);
        close(r->s[i].epfd);
    }
    pthread_barrier_destroy(&r->start);
    pp_check(&r->pp, "eventfd");
    return (double)(t1 - t0) / (double)trips;
}

/* ---- libuv: uv_async_send between two loops ---- */
#ifdef HAVE_LIBUV
struct uv_pp;
struct uv_side {
    struct uv_pp *pp;
    int side;
    uv_loop_t loop;
    uv_async_t async;
    uv_thread_t thread;
};

struct uv_pp {
    struct pingpong pp;
    struct uv_side s[2];
    uv_barrier_t start;
    int stop;
};

static void uv_side_cb(uv_async_t *handle)
{
    struct uv_side *s = handle->data;
    struct uv_pp *u = s->pp;
    if (__atomic_load_n(&u->stop, __ATOMIC_ACQUIRE)) {
        uv_close((uv_handle_t *)handle, NULL);
        return;
    }
    if (++u->pp.count[s->side] == u->pp.target && s->side == 0) {
        __atomic_store_n(&u->stop, 1, __ATOMIC_RELEASE);
        uv_close((uv_handle_t *)handle, NULL);
        sem_post(&u->pp.done);
        return;
    }
    if (uv_async_send(&u->s[1 - s->side].async) != 0)
        bench_fail(BENCH, 0, "libuv: uv_async_send");
}

static void uv_side_thread(void *opaque)
{
    struct uv_side *s = opaque;
    bench_pin_self(s->pp->pp.cpu[s->side]);
    uv_barrier_wait(&s->pp->start);
    uv_run(&s->loop, UV_RUN_DEFAULT);
}

static double run_libuv(struct uv_pp *u, long trips)
{
    pp_reset(&u->pp, trips);
    u->stop = 0;
    uv_barrier_init(&u->start, 3);
    for (int i = 0; i < 2; i++) {
        struct uv_side *s = &u->s[i];
        s->pp = u;
        s->side = i;
        if (uv_loop_init(&s->loop) != 0 || uv_async_init(&s->loop, &s->async, uv_side_cb) != 0)
            bench_fail(BENCH, 0, "libuv: init");
        s->async.data = s;
    }
    for (int i = 0; i < 2; i++)
        if (uv_thread_create(&u->s[i].thread, uv_side_thread, &u->s[i]) != 0)
            bench_fail(BENCH, 0, "libuv: thread");
    uv_barrier_wait(&u->start);
    int64_t t0 = bench_now_ns();
    uv_async_send(&u->s[0].async);
    while (sem_wait(&u->pp.done) != 0 && errno == EINTR) {
    }
    int64_t t1 = bench_now_ns();
    /* Side 1 closes its handle (and its loop ends) on the next wake-up. */
    uv_async_send(&u->s[1].async);
    for (int i = 0; i < 2; i++) {
        uv_thread_join(&u->s[i].thread);
        if (uv_loop_close(&u->s[i].loop) != 0)
            bench_fail(BENCH, 0, "libuv: uv_loop_close: handles left");
    }
    uv_barrier_destroy(&u->start);
    pp_check(&u->pp, "libuv");
    return (double)(t1 - t0) / (double)trips;
}
#endif

/* ---- glib: g_main_context_invoke between two contexts ---- */
#ifdef HAVE_GLIB
struct glib_pp;
struct glib_side {
    struct glib_pp *pp;
    int side;
    GMainContext *ctx;
    GMainLoop *loop;
    GThread *thread;
};

struct glib_pp {
    struct pingpong pp;
    struct glib_side s[2];
    GMutex mutex;
    GCond cond;
    int ready;
};

static gboolean glib_quit(gpointer opaque)
{
    g_main_loop_quit(((struct glib_side *)opaque)->loop);
    return G_SOURCE_REMOVE;
}

static gboolean glib_side_cb(gpointer opaque)
{
    struct glib_side *s = opaque;
    struct glib_pp *g = s->pp;
    if (!g_main_context_is_owner(s->ctx))
        bench_fail(BENCH, 0, "glib: callback ran outside its context's thread");
    if (++g->pp.count[s->side] == g->pp.target && s->side == 0) {
        sem_post(&g->pp.done);
        return G_SOURCE_REMOVE;
    }
    g_main_context_invoke(g->s[1 - s->side].ctx, glib_side_cb, &g->s[1 - s->side]);
    return G_SOURCE_REMOVE;
}

static gpointer glib_side_thread(gpointer opaque)
{
    struct glib_side *s = opaque;
    struct glib_pp *g = s->pp;
    bench_pin_self(g->pp.cpu[s->side]);
    /* Own the context before anyone invokes into it: an unowned context
     * would run the callback in the invoking thread instead. */
    g_main_context_push_thread_default(s->ctx);
    if (!g_main_context_acquire(s->ctx))
        bench_fail(BENCH, 0, "glib: cannot acquire context");
    g_mutex_lock(&g->mutex);
    g->ready++;
    g_cond_broadcast(&g->cond);
    g_mutex_unlock(&g->mutex);
    g_main_loop_run(s->loop);
    g_main_context_release(s->ctx);
    g_main_context_pop_thread_default(s->ctx);
    return NULL;
}

static double run_glib(struct glib_pp *g, long trips)
{
    pp_reset(&g->pp, trips);
    g->ready = 0;
    for (int i = 0; i < 2; i++) {
        struct glib_side *s = &g->s[i];
        s->pp = g;
        s->side = i;
        s->ctx = g_main_context_new();
        s->loop = g_main_loop_new(s->ctx, FALSE);
        s->thread = g_thread_new(i ? "glib-pong" : "glib-ping", glib_side_thread, s);
    }
    g_mutex_lock(&g->mutex);
    while (g->ready < 2)
        g_cond_wait(&g->cond, &g->mutex);
    g_mutex_unlock(&g->mutex);
    int64_t t0 = bench_now_ns();
    g_main_context_invoke(g->s[0].ctx, glib_side_cb, &g->s[0]);
    while (sem_wait(&g->pp.done) != 0 && errno == EINTR) {
    }
    int64_t t1 = bench_now_ns();
    for (int i = 0; i < 2; i++)
        g_main_context_invoke(g->s[i].ctx, glib_quit, &g->s[i]);
    for (int i = 0; i < 2; i++) {
        g_thread_join(g->s[i].thread);
        g_main_loop_unref(g->s[i].loop);
        g_main_context_unref(g->s[i].ctx);
    }
    pp_check(&g->pp, "glib");
    return (double)(t1 - t0) / (double)trips;
}
#endif

enum { AIOCTX, AIOCTX_NOPOLL, EVENTFD, LIBUV, GLIB, VARIANTS };
static const char *const names[VARIANTS] = {"aioctx", "aioctx_nopoll", "eventfd", "libuv", "glib"};
/* The IOThreads' default, read when they start. */
static int64_t default_poll_max_ns;

static struct aio_pp a;
static struct raw_pp r;
#ifdef HAVE_LIBUV
static struct uv_pp u;
#endif
#ifdef HAVE_GLIB
static struct glib_pp g;
#endif
static int have[VARIANTS] = {1, 1, 1, 0, 0};

static struct pingpong *const pps[VARIANTS] = {
    &a.pp, NULL, &r.pp,
#ifdef HAVE_LIBUV
    &u.pp,
#else
    NULL,
#endif
#ifdef HAVE_GLIB
    &g.pp,
#else
    NULL,
#endif
};

/* Every variant with side 0 on cpu0 and side 1 on cpu1; prints
 * "label": {...} with the medians and ratios. */
static void run_placement(const char *label, int cpu0, int cpu1, long trips, int reps)
{
    double *samples[VARIANTS];
    for (int v = 0; v < VARIANTS; v++) {
        samples[v] = calloc((size_t)reps, sizeof(double));
        if (pps[v]) {
            pps[v]->cpu[0] = cpu0;
            pps[v]->cpu[1] = cpu1;
        }
    }
    bench_pin_iothread(BENCH, a.ctx[0], cpu0);
    bench_pin_iothread(BENCH, a.ctx[1], cpu1);

    /* One untimed warm-up round of each, then rotate the order per sample. */
    for (int rep = -1; rep < reps; rep++) {
        for (int k = 0; k < VARIANTS; k++) {
            int v = (k + (rep < 0 ? 0 : rep)) % VARIANTS;
            if (!have[v])
                continue;
            long n = rep < 0 ? (trips < 1000 ? trips : 1000) : trips;
            double ns = 0;
            switch (v) {
            case AIOCTX:
                ns = run_aioctx(&a, n, default_poll_max_ns);
                break;
            case AIOCTX_NOPOLL:
                ns = run_aioctx(&a, n, 0);
                break;
            case EVENTFD:
                ns = run_eventfd(&r, n);
                break;
#ifdef HAVE_LIBUV
            case LIBUV:
                ns = run_libuv(&u, n);
                break;
#endif
#ifdef HAVE_GLIB
            case GLIB:
                ns = run_glib(&g, n);
                break;
#endif
            default:
                break;
            }
            if (rep >= 0)
                samples[v][rep] = ns;
        }
    }

    double med[VARIANTS];
    printf("\"%s\": {\"cpus\": [%d, %d]", label, cpu0, cpu1);
    for (int v = 0; v < VARIANTS; v++) {
        if (!have[v]) {
            printf(", \"%s_ns_per_round_trip\": null", names[v]);
            continue;
        }
        med[v] = bench_median(samples[v], reps);
        printf(", \"%s_ns_per_round_trip\": %.1f, \"%s_min\": %.1f, \"%s_max\": %.1f", names[v], med[v],
               names[v], samples[v][0], names[v], samples[v][reps - 1]);
    }
    for (int v = AIOCTX_NOPOLL; v < VARIANTS; v++) {
        if (have[v])
            printf(", \"ratio_vs_%s\": %.3f", names[v], med[AIOCTX] / med[v]);
        else
            printf(", \"ratio_vs_%s\": null", names[v]);
    }
    printf("}");
    fflush(stdout);
    for (int v = 0; v < VARIANTS; v++)
        free(samples[v]);
}

/* ---- an idle IOThread's CPU time ---- */

struct cpu_read {
    int64_t ns;
    sem_t done;
};

static void read_thread_cpu(void *opaque)
{
    struct cpu_read *c = opaque;
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    c->ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    sem_post(&c->done);
}

/* CPU time the IOThread of ctx has used so far. */
static int64_t iothread_cpu_ns(AioctxContext *ctx)
{
    struct cpu_read c;
    sem_init(&c.done, 0, 0);
    if (aioctx_bh_schedule_oneshot(ctx, read_thread_cpu, &c) != 0)
        bench_fail(BENCH, 1, "aioctx_bh_schedule_oneshot");
    while (sem_wait(&c.done) != 0 && errno == EINTR) {
    }
    sem_destroy(&c.done);
    return c.ns;
}

/* CPU time of side 1 over idle_ns of idle right after a ping-pong (so that
 * its poll window is open as the idle period begins), polling per max_ns. */
static int64_t idle_cpu_ns(int64_t poll_max_ns, int64_t idle_ns, long trips)
{
    run_aioctx(&a, trips, poll_max_ns);
    int64_t before = iothread_cpu_ns(a.ctx[1]);
    struct timespec ts = {.tv_sec = idle_ns / 1000000000, .tv_nsec = idle_ns % 1000000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return iothread_cpu_ns(a.ctx[1]) - before;
}

static void run_idle(long trips)
{
    const int64_t idle_ns = 2000000000;
    long n = trips < 1000 ? trips : 1000;
    int64_t on = idle_cpu_ns(default_poll_max_ns, idle_ns, n);
    int64_t off = idle_cpu_ns(0, idle_ns, n);
    printf("\"idle_iothread\": {\"idle_ns\": %lld, \"poll_max_ns\": %lld, \"polling_cpu_ns\": %lld, "
           "\"nopoll_cpu_ns\": %lld, \"polling_cpu_percent\": %.4f}",
           (long long)idle_ns, (long long)default_poll_max_ns, (long long)on, (long long)off,
           100.0 * (double)on / (double)idle_ns);
    aio_set_polling(&a, default_poll_max_ns);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s ROUND_TRIPS REPS\n", argv[0]);
        return 2;
    }
    long trips = atol(argv[1]);
    int reps = atoi(argv[2]);
    if (trips < 2 || reps < 1 || reps > 1000)
        return 2;

    sem_init(&a.pp.done, 0, 0);
    AioctxIoThread *io[2] = {aioctx_iothread_new("bench-ping"), aioctx_iothread_new("bench-pong")};
    if (!io[0] || !io[1])
        bench_fail(BENCH, 1, "aioctx_iothread_new");
    a.ctx[0] = aioctx_iothread_context(io[0]);
    a.ctx[1] = aioctx_iothread_context(io[1]);
    if (aioctx_context_get_poll_params(a.ctx[0], &default_poll_max_ns, NULL, NULL) != 0)
        bench_fail(BENCH, 1, "aioctx_context_get_poll_params");
    a.bh[0] = aioctx_bh_new(a.ctx[0], aio_ping, &a);
    a.bh[1] = aioctx_bh_new(a.ctx[1], aio_pong, &a);
    if (!a.bh[0] || !a.bh[1])
        bench_fail(BENCH, 1, "aioctx_bh_new");
    sem_init(&r.pp.done, 0, 0);
#ifdef HAVE_LIBUV
    sem_init(&u.pp.done, 0, 0);
    have[LIBUV] = 1;
#endif
#ifdef HAVE_GLIB
    sem_init(&g.pp.done, 0, 0);
    g_mutex_init(&g.mutex);
    g_cond_init(&g.cond);
    have[GLIB] = 1;
#endif

    int cpu0 = bench_cpu(0), cpu1 = bench_cpu(1);
    if (cpu0 < 0)
        bench_fail(BENCH, 0, "no CPU to run on");
    printf("{\"bench\": \"wakeup\", \"round_trips\": %ld, \"reps\": %d, ", trips, reps);
    run_placement("same_cpu", cpu0, cpu0, trips, reps);
    if (cpu1 >= 0) {
        printf(", ");
        run_placement("cross_cpu", cpu0, cpu1, trips, reps);
    }
    printf(", ");
    run_idle(trips);
    printf("}\n");

    aioctx_bh_delete(a.bh[0]);
    aioctx_bh_delete(a.bh[1]);
    aioctx_iothread_free(io[0]);
    aioctx_iothread_free(io[1]);
    return 0;
}
