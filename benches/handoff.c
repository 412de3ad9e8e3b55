/* Lock handoff under poll_while: the main thread holds an IOThread's context
 * (once), hands it work and waits for it, the AIO_WAIT_WHILE pattern:
 *
 *   aioctx    aioctx_bh_schedule() on the IOThread's context, then
 *             aioctx_poll_while(io_ctx, !done): releases io_ctx while the main
 *             loop blocks, so the IOThread can take it and run the BH, and
 *             re-acquires it before re-checking the condition; the
 *             IOThread polls adaptively (its default), and so does the wait
 *   aioctx_nopoll  the same with the IOThread's polling off (max_ns 0)
 *   pthread   the same hand-written: a recursive mutex standing for the
 *             context, a worker thread, two condition variables; the main
 *             thread posts the request and pthread_cond_wait()s (which
 *             releases the mutex) until the worker, holding the mutex, has
 *             done it
 *
 *   handoff ROUND_TRIPS REPS
 *
 * Interleaved samples of ROUND_TRIPS round trips each, with the main thread
 * and the IOThread (worker) pinned to one CPU, then to two (see
 * bench_pin_self); one JSON line with, per placement, the median round trips
 * per second of each and the ratio of their costs (aioctx / pthread, and
 * aioctx / aioctx_nopoll). Every round trip is checked: the work ran once, in the
 * IOThread, with the context held by it, and the main thread holds the
 * context once again when the wait returns. */
#include "bench-common.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>

#define BENCH "handoff"

/* ---- aioctx ---- */

struct aio_state {
    AioctxContext *io_ctx;
    long done, ran;
    int bad;
};

static void work_bh(void *opaque)
{
    struct aio_state *s = opaque;
    if (aioctx_lock_depth(s->io_ctx) != 1)
        s->bad = 1;
    s->ran++;
    __atomic_store_n(&s->done, 1, __ATOMIC_RELEASE);
}

static bool not_done(void *opaque)
{
    return !__atomic_load_n(&((struct aio_state *)opaque)->done, __ATOMIC_ACQUIRE);
}

static double run_aioctx(struct aio_state *s, AioctxBh *bh, long trips, int64_t poll_max_ns)
{
    if (aioctx_context_set_poll_params(s->io_ctx, poll_max_ns, 0, 0) != 0)
        bench_fail(BENCH, 1, "aioctx_context_set_poll_params");
    s->ran = 0;
    if (aioctx_acquire(s->io_ctx) != 0)
        bench_fail(BENCH, 1, "aioctx_acquire");
    int64_t t0 = bench_now_ns();
    for (long i = 0; i < trips; i++) {
        s->done = 0;
        if (aioctx_bh_schedule(bh) != 0)
            bench_fail(BENCH, 1, "aioctx_bh_schedule");
        int ret = aioctx_poll_while(s->io_ctx, not_done, s, -1, 0);
        if (ret != 0)
            bench_fail(BENCH, 1, "aioctx_poll_while returned %d", ret);
    }
    int64_t t1 = bench_now_ns();
    if (aioctx_lock_depth(s->io_ctx) != 1)
        bench_fail(BENCH, 0, "aioctx: main thread holds the context %d times after the waits",
                   aioctx_lock_depth(s->io_ctx));
    if (aioctx_release(s->io_ctx) != 0)
        bench_fail(BENCH, 1, "aioctx_release");
    if (s->ran != trips || s->bad)
        bench_fail(BENCH, 0, "aioctx: work ran %ld times of %ld%s", s->ran, trips,
                   s->bad ? ", once without the context held" : "");
    return (double)(t1 - t0) / (double)trips;
}

/* ---- pthread baseline ---- */

struct pt_state {
    pthread_mutex_t mutex; /* the "context" */
    pthread_cond_t request_cv, done_cv;
    int request, done, quit;
    long ran;
};

static void *pt_worker(void *opaque)
{
    struct pt_state *s = opaque;
    pthread_mutex_lock(&s->mutex);
    for (;;) {
        while (!s->request && !s->quit)
            pthread_cond_wait(&s->request_cv, &s->mutex);
        if (s->quit)
            break;
        s->request = 0;
        s->ran++;
        s->done = 1;
        pthread_cond_signal(&s->done_cv);
    }
    pthread_mutex_unlock(&s->mutex);
    return NULL;
}

static double run_pthread(struct pt_state *s, long trips)
{
    s->ran = 0;
    pthread_mutex_lock(&s->mutex);
    int64_t t0 = bench_now_ns();
    for (long i = 0; i < trips; i++) {
        s->done = 0;
        s->request = 1;
        pthread_cond_signal(&s->request_cv);
        while (!s->done)
            pthread_cond_wait(&s->done_cv, &s->mutex);
    }
    int64_t t1 = bench_now_ns();
    pthread_mutex_unlock(&s->mutex);
    if (s->ran != trips)
        bench_fail(BENCH, 0, "pthread: work ran %ld times of %ld", s->ran, trips);
    return (double)(t1 - t0) / (double)trips;
}

static int64_t default_poll_max_ns;

static void run_placement(const char *label, int cpu0, int cpu1, struct aio_state *as, AioctxBh *bh,
                          struct pt_state *ps, pthread_t worker, long trips, int reps)
{
    double *ours = calloc((size_t)reps, sizeof(double)), *base = calloc((size_t)reps, sizeof(double));
    double *nopoll = calloc((size_t)reps, sizeof(double));
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu1, &set);
    bench_pin_self(cpu0);
    bench_pin_iothread(BENCH, as->io_ctx, cpu1);
    if (pthread_setaffinity_np(worker, sizeof(set), &set) != 0)
        bench_fail(BENCH, 0, "cannot pin the worker");

    long warm = trips < 1000 ? trips : 1000;
    run_aioctx(as, bh, warm, default_poll_max_ns);
    run_aioctx(as, bh, warm, 0);
    run_pthread(ps, warm);
    for (int r = 0; r < reps; r++) {
        if (r % 2 == 0) {
            ours[r] = run_aioctx(as, bh, trips, default_poll_max_ns);
            nopoll[r] = run_aioctx(as, bh, trips, 0);
            base[r] = run_pthread(ps, trips);
        } else {
            base[r] = run_pthread(ps, trips);
            nopoll[r] = run_aioctx(as, bh, trips, 0);
            ours[r] = run_aioctx(as, bh, trips, default_poll_max_ns);
        }
    }
    double mo = bench_median(ours, reps), mb = bench_median(base, reps);
    double mn = bench_median(nopoll, reps);
    printf("\"%s\": {\"cpus\": [%d, %d], "
           "\"aioctx_ns_per_round_trip\": %.1f, \"aioctx_round_trips_per_s\": %.0f, "
           "\"aioctx_min\": %.1f, \"aioctx_max\": %.1f, "
           "\"pthread_ns_per_round_trip\": %.1f, \"pthread_round_trips_per_s\": %.0f, "
           "\"pthread_min\": %.1f, \"pthread_max\": %.1f, \"ratio\": %.3f, "
           "\"aioctx_nopoll_ns_per_round_trip\": %.1f, \"ratio_vs_nopoll\": %.3f}",
           label, cpu0, cpu1, mo, 1e9 / mo, ours[0], ours[reps - 1], mb, 1e9 / mb, base[0], base[reps - 1],
           mo / mb, mn, mo / mn);
    fflush(stdout);
    free(nopoll);
    free(ours);
    free(base);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s ROUND_TRIPS REPS\n", argv[0]);
        return 2;
    }
    long trips = atol(argv[1]);
    int reps = atoi(argv[2]);
    if (trips < 1 || reps < 1 || reps > 1000)
        return 2;
    if (aioctx_context_claim(aioctx_main_context()) != 0)
        bench_fail(BENCH, 1, "claim the main context");
    AioctxIoThread *io = aioctx_iothread_new("bench-io");
    if (!io)
        bench_fail(BENCH, 1, "aioctx_iothread_new");
    struct aio_state as = {.io_ctx = aioctx_iothread_context(io)};
    if (aioctx_context_get_poll_params(as.io_ctx, &default_poll_max_ns, NULL, NULL) != 0)
        bench_fail(BENCH, 1, "aioctx_context_get_poll_params");
    AioctxBh *bh = aioctx_bh_new(as.io_ctx, work_bh, &as);
    if (!bh)
        bench_fail(BENCH, 1, "aioctx_bh_new");

    struct pt_state ps = {.request_cv = PTHREAD_COND_INITIALIZER, .done_cv = PTHREAD_COND_INITIALIZER};
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&ps.mutex, &attr);
    pthread_t worker;
    if (pthread_create(&worker, NULL, pt_worker, &ps) != 0)
        bench_fail(BENCH, 0, "pthread_create");

    int cpu0 = bench_cpu(0), cpu1 = bench_cpu(1);
    if (cpu0 < 0)
        bench_fail(BENCH, 0, "no CPU to run on");
    printf("{\"bench\": \"handoff\", \"round_trips\": %ld, \"reps\": %d, ", trips, reps);
    run_placement("same_cpu", cpu0, cpu0, &as, bh, &ps, worker, trips, reps);
    if (cpu1 >= 0) {
        printf(", ");
        run_placement("cross_cpu", cpu0, cpu1, &as, bh, &ps, worker, trips, reps);
    }
    printf("}\n");

    pthread_mutex_lock(&ps.mutex);
    ps.quit = 1;
    pthread_cond_signal(&ps.request_cv);
    pthread_mutex_unlock(&ps.mutex);
    pthread_join(worker, NULL);
    pthread_mutex_destroy(&ps.mutex);
    pthread_mutexattr_destroy(&attr);
    aioctx_bh_delete(bh);
    aioctx_iothread_free(io);
    return 0;
}
