/*
 * test-chaos: random concurrent use of everything at once, under a watchdog.
 *
 * 8 worker threads, each the home of its own context, make 10^6 random
 * operations in total (AIOCTX_CHAOS_OPS overrides; scaled down by
 * AIOCTX_TEST_TIMEOUT_SCALE, as under valgrind) on 15 shared contexts (4
 * plain ones, 2 IOThreads', the main context and the 8 workers' own):
 *   - overlapping set acquires/releases (sets kept and fresh ones);
 *   - try_acquires, recursive blocking acquires, releases;
 *   - one-shot BHs onto IOThreads, main and other workers' contexts;
 *   - regular BHs: schedule, delete (with the context held), new;
 *   - timer mods and dels on every kind of context;
 *   - poll_while waits for work done by an IOThread or another worker,
 *     sometimes holding the waited-for context once, or twice with
 *     AIOCTX_WAIT_RELEASE_ALL;
 *   - non-blocking polls of the worker's own context.
 * Checked: every lock call returns what the contract says and the depth is
 * exact after each; a plain (non-atomic) counter per context, bumped only
 * with the context held (by workers and by callbacks), matches an atomic
 * tally (mutual exclusion); every one-shot BH ran exactly once, in its
 * context's home thread, with the context held; no regular BH or timer runs
 * after it was deleted, runs more often than scheduled/armed, or fails to run
 * once more when scheduled/armed after the storm; no thread holds any
 * context afterwards. A watchdog thread fails the test if the operation count
 * stops moving for 5 s (scaled), printing aioctx_debug_dump()
 * (AIOCTX_CHAOS_INJECT_HANG=1 makes a worker keep a context forever, to see it).
 *
 * poll_while is only called holding at most the context it waits for:
 * holding another one too can deadlock against an overlapping set (see
 * test-misuse, the ABBA case).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define TEST_LONG_TIMEOUT_S 10
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <pthread.h>
#include <stdatomic.h>

#define NWORKERS 8
#define NPLAIN 4
#define NIOT 2
#define NLOCK (NPLAIN + NIOT + 1 + NWORKERS)   /* plain, IOThreads, main, workers */
#define NSETS 8                                /* kept sets per worker */
#define NBH 8                                  /* regular BHs per worker */
#define NTIMER 6                               /* timers per worker */

static long total_ops = 1000000;
static uint64_t seed = 0x9e3779b97f4a7c15ull;   /* AIOCTX_CHAOS_SEED overrides */
static int inject_hang;                          /* AIOCTX_CHAOS_INJECT_HANG=1: watchdog self-test */
static long ops_per_worker;

/* ---- the contexts ---------------------------------------------------------------------------------- */

struct lockable {
    AioctxContext *ctx;
    pthread_t home;             /* valid if has_home */
    int has_home;
    volatile long plain;        /* bumped only with ctx held */
    atomic_long tally;          /* how many times it was bumped */
};

static struct lockable lk[NLOCK];
static AioctxIoThread *iot[NIOT];
static int main_idx, iot_idx0, worker_idx0;

/* Bumps ctx i's plain counter: the caller must hold it. */
static void bump(int i)
{
    long v = lk[i].plain;
    lk[i].plain = v + 1;
    atomic_fetch_add(&lk[i].tally, 1);
}

/* ---- failures, counted (TAP output only from the main thread) ---------------------------------- */

static atomic_long n_bad_rc, n_bad_depth, n_wrong_thread, n_not_held, n_run_after_delete, n_over_run,
    n_timer_disarmed_fire, n_wait_failed;
static char first_problem[512];
static atomic_int have_problem;

static void problem(atomic_long *counter, const char *fmt, ...)
{
    atomic_fetch_add(counter, 1);
    if (atomic_exchange(&have_problem, 1) == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(first_problem, sizeof first_problem, fmt, ap);
        va_end(ap);
    }
}

/* ---- one-shot BHs -------------------------------------------------------------------------------- */

static atomic_uchar *hits;           /* [NWORKERS * ops_per_worker] */
static atomic_long oneshots_scheduled, oneshots_run;

static void oneshot_cb(void *opaque)
{
    long id = (long)(intptr_t)opaque;
    int target = (int)(id & 0xff);
    long slot = id >> 8;
    if (!pthread_equal(pthread_self(), lk[target].home))
        problem(&n_wrong_thread, "one-shot %ld ran in the wrong thread", slot);
    if (aioctx_lock_depth(lk[target].ctx) < 1)
        problem(&n_not_held, "one-shot %ld ran without its context held", slot);
    else
        bump(target);
    atomic_fetch_add(&hits[slot], 1);
    atomic_fetch_add(&oneshots_run, 1);
}

/* ---- regular BHs and timers ------------------------------------------------------------------------ */

struct rbh {
    AioctxBh *bh;
    int target;
    atomic_int deleted;
    atomic_long scheduled, runs;
};

struct rtimer {
    AioctxTimer *t;
    int target;
    int armed;                 /* written with the target context held */
    atomic_long mods, fires;
    int deleted;
};

static void rbh_cb(void *opaque)
{
    struct rbh *b = opaque;
    if (atomic_load(&b->deleted))
        problem(&n_run_after_delete, "a regular BH ran after it was deleted");
    if (!pthread_equal(pthread_self(), lk[b->target].home))
        problem(&n_wrong_thread, "a regular BH ran in the wrong thread");
    if (atomic_fetch_add(&b->runs, 1) + 1 > atomic_load(&b->scheduled))
        problem(&n_over_run, "a regular BH ran more often than it was scheduled");
}

static void timer_cb(void *opaque)
{
    struct rtimer *t = opaque;
    if (aioctx_lock_depth(lk[t->target].ctx) < 1)
        problem(&n_not_held, "a timer ran without its context held");
    if (!pthread_equal(pthread_self(), lk[t->target].home))
        problem(&n_wrong_thread, "a timer ran in the wrong thread");
    if (!t->armed)
        problem(&n_timer_disarmed_fire, "a timer fired while disarmed (deleted, or already fired)");
    t->armed = 0;
    if (atomic_fetch_add(&t->fires, 1) + 1 > atomic_load(&t->mods))
        problem(&n_over_run, "a timer fired more often than it was armed");
}

/* ---- workers ----------------------------------------------------------------------------------------- */

struct worker {
    int id;
    pthread_t thread;
    uint64_t rng;
    AioctxSet *sets[NSETS];
    struct rbh bh[NBH];
    struct rtimer timer[NTIMER];
    long oneshot_seq;
    long ops[16];
};

static struct worker workers[NWORKERS];
static atomic_long ops_done;
static atomic_int workers_finished, stop;
static const char *const op_names[16] = { "set", "fresh-set", "try", "acquire", "oneshot", "bh-sched", "bh-del",
                                          "timer-mod", "timer-del", "wait", "wait-held", "poll", "", "", "", "" };

static uint32_t rnd(struct worker *w)
{
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return (uint32_t)(w->rng >> 11);
}

static void check_rc(int rc, int want, const char *what)
{
    if (rc != want)
        problem(&n_bad_rc, "%s -> %d (want %d): %s", what, rc, want, aioctx_last_error());
}

static void check_depth(int i, int want, const char *what)
{
    int d = aioctx_lock_depth(lk[i].ctx);
    if (d != want)
        problem(&n_bad_depth, "%s: depth %d on '%s', want %d", what, d, aioctx_context_name(lk[i].ctx), want);
}

/* A random context a worker may lock; any of the 15. */
static int any_ctx(struct worker *w)
{
    return (int)(rnd(w) % NLOCK);
}

/* A context that has a home thread polling it: IOThreads, main, other workers (or self). */
static int polled_ctx(struct worker *w)
{
    int r = (int)(rnd(w) % (NIOT + 1 + NWORKERS));
    return iot_idx0 + r;    /* iot_idx0.. covers IOThreads, main, workers in that order */
}

static void op_set(struct worker *w, AioctxSet *s, const int *member)
{
    check_rc(aioctx_set_acquire(s), 0, "set_acquire");
    for (int i = 0; i < NLOCK; i++)
        if (member[i]) {
            check_depth(i, 1, "after set_acquire");
            bump(i);
        }
    /* nested: a recursive acquire of a member, or a try on anything */
    int j = any_ctx(w);
    int rc = aioctx_try_acquire(lk[j].ctx);
    if (rc == 0) {
        check_depth(j, member[j] ? 2 : 1, "try_acquire inside a set");
        bump(j);
        check_rc(aioctx_release(lk[j].ctx), 0, "release inside a set");
    } else if (rc != -EBUSY || member[j]) {
        problem(&n_bad_rc, "try_acquire inside a set -> %d", rc);
    }
    check_rc(aioctx_set_release(s), 0, "set_release");
    for (int i = 0; i < NLOCK; i++)
        if (member[i])
            check_depth(i, 0, "after set_release");
}

static int kept_members[NWORKERS][NSETS][NLOCK];

static void op_fresh_set(struct worker *w)
{
    int member[NLOCK] = { 0 };
    AioctxSet *s = aioctx_set_new();
    int n = 1 + (int)(rnd(w) % 5);
    for (int k = 0; k < n; k++) {
        int i = any_ctx(w);
        int rc = aioctx_set_add(s, lk[i].ctx);
        check_rc(rc, member[i] ? 0 : 1, "set_add");
        member[i] = 1;
    }
    op_set(w, s, member);
    if (rnd(w) % 4 == 0) {      /* free a held set: it is released first */
        check_rc(aioctx_set_acquire(s), 0, "set_acquire before free");
        aioctx_set_free(s);
        for (int i = 0; i < NLOCK; i++)
            if (member[i])
                check_depth(i, 0, "after set_free of a held set");
    } else {
        aioctx_set_free(s);
    }
}

static void op_try(struct worker *w)
{
    int i = any_ctx(w);
    int rc = aioctx_try_acquire(lk[i].ctx);
    if (rc == 0) {
        check_depth(i, 1, "try_acquire");
        bump(i);
        check_rc(aioctx_release(lk[i].ctx), 0, "release after try");
        check_depth(i, 0, "release after try");
    } else if (rc != -EBUSY) {
        problem(&n_bad_rc, "try_acquire -> %d", rc);
    } else {
        check_depth(i, 0, "failed try_acquire");
        check_rc(aioctx_release(lk[i].ctx), -EPERM, "release after a failed try (not the owner)");
    }
}

static void op_acquire(struct worker *w)
{
    int i = any_ctx(w);
    check_rc(aioctx_acquire(lk[i].ctx), 0, "acquire");
    check_rc(aioctx_acquire(lk[i].ctx), 0, "acquire (recursive)");
    check_depth(i, 2, "recursive acquire");
    bump(i);
    check_rc(aioctx_release(lk[i].ctx), 0, "release");
    check_depth(i, 1, "release once");
    check_rc(aioctx_release(lk[i].ctx), 0, "release twice");
    check_depth(i, 0, "release twice");
}

static void op_oneshot(struct worker *w)
{
    int t = polled_ctx(w);
    long slot = (long)w->id * ops_per_worker + w->oneshot_seq++;
    long id = slot << 8 | t;
    atomic_fetch_add(&oneshots_scheduled, 1);
    check_rc(aioctx_bh_schedule_oneshot(lk[t].ctx, oneshot_cb, (void *)(intptr_t)id), 0, "bh_schedule_oneshot");
}

static void op_bh_schedule(struct worker *w)
{
    struct rbh *b = &w->bh[rnd(w) % NBH];
    if (atomic_load(&b->deleted)) {      /* deleted: make a new one in its place */
        b->target = polled_ctx(w);
        atomic_store(&b->scheduled, 0);
        atomic_store(&b->runs, 0);
        b->bh = aioctx_bh_new(lk[b->target].ctx, rbh_cb, b);
        atomic_store(&b->deleted, 0);
        return;
    }
    /* counted first: the run may come before the call returns */
    atomic_fetch_add(&b->scheduled, 1);
    check_rc(aioctx_bh_schedule(b->bh), 0, "bh_schedule");
}

static void op_bh_delete(struct worker *w)
{
    struct rbh *b = &w->bh[rnd(w) % NBH];
    if (atomic_load(&b->deleted))
        return;
    /* With the context held no callback of it runs: after this, none may. */
    int t = b->target;
    check_rc(aioctx_acquire(lk[t].ctx), 0, "acquire for bh_delete");
    atomic_store(&b->deleted, 1);
    aioctx_bh_delete(b->bh);
    b->bh = NULL;
    check_rc(aioctx_release(lk[t].ctx), 0, "release after bh_delete");
}

static void op_timer_mod(struct worker *w)
{
    struct rtimer *t = &w->timer[rnd(w) % NTIMER];
    int c = t->target;
    check_rc(aioctx_acquire(lk[c].ctx), 0, "acquire for timer_mod");
    if (!t->armed)
        atomic_fetch_add(&t->mods, 1);
    t->armed = 1;
    check_rc(aioctx_timer_mod(t->t, aioctx_clock_ns() + (int64_t)(rnd(w) % 2000) * 1000), 0, "timer_mod");
    check_rc(aioctx_release(lk[c].ctx), 0, "release after timer_mod");
}

static void op_timer_del(struct worker *w)
{
    struct rtimer *t = &w->timer[rnd(w) % NTIMER];
    int c = t->target;
    check_rc(aioctx_acquire(lk[c].ctx), 0, "acquire for timer_del");
    if (t->armed)
        atomic_fetch_sub(&t->mods, 1);   /* this arm will never fire */
    t->armed = 0;
    check_rc(aioctx_timer_del(t->t), 0, "timer_del");
    check_rc(aioctx_release(lk[c].ctx), 0, "release after timer_del");
}

static void set_flag(void *opaque)
{
    atomic_store((atomic_int *)opaque, 1);
}

static bool flag_clear(void *opaque)
{
    return !atomic_load((atomic_int *)opaque);
}

/* Waits for a BH on an IOThread's or another worker's context. */
static void op_wait(struct worker *w, int hold)
{
    int t;
    do
        t = polled_ctx(w);
    while (t == worker_idx0 + w->id);   /* another thread's loop */
    atomic_int flag = 0;
    unsigned flags = 0;
    int depth = 0;
    if (hold) {
        depth = 1 + (int)(rnd(w) % 2);
        for (int k = 0; k < depth; k++)
            check_rc(aioctx_acquire(lk[t].ctx), 0, "acquire before poll_while");
        flags = depth > 1 ? AIOCTX_WAIT_RELEASE_ALL : 0;
    }
    check_rc(aioctx_bh_schedule_oneshot(lk[t].ctx, set_flag, &flag), 0, "schedule the awaited BH");
    int rc = aioctx_poll_while(lk[t].ctx, flag_clear, &flag, long_timeout(), flags);
    if (rc != 0)
        problem(&n_wait_failed, "poll_while on '%s' (held %d) -> %d: %.300s", aioctx_context_name(lk[t].ctx), depth,
                rc, aioctx_last_error());
    check_depth(t, depth, "after poll_while");
    for (int k = 0; k < depth; k++)
        check_rc(aioctx_release(lk[t].ctx), 0, "release after poll_while");
}

static bool not_stopped(void *opaque)
{
    (void)opaque;
    return !atomic_load(&stop);
}

static pthread_barrier_t started;

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int self = worker_idx0 + w->id;
    char tname[16];
    snprintf(tname, sizeof tname, "chaos-w%d", w->id);
    pthread_setname_np(pthread_self(), tname);   /* as the dump names holders */
    check_rc(aioctx_context_claim(lk[self].ctx), 0, "claim own context");
    pthread_barrier_wait(&started);    /* every worker home of its context, homes known */
    for (long n = 0; n < ops_per_worker; n++) {
        if (inject_hang && w->id == 0 && n == 1000) {
            /* self-test of the watchdog: keep an IOThread's context forever */
            aioctx_acquire(lk[iot_idx0].ctx);
            for (;;)
                tap_sleep_ms(1000);
        }
        uint32_t r = rnd(w) % 1000;
        int op;
        if (r < 250)
            op = 0;
        else if (r < 300)
            op = 1;
        else if (r < 450)
            op = 2;
        else if (r < 550)
            op = 3;
        else if (r < 700)
            op = 4;
        else if (r < 780)
            op = 5;
        else if (r < 800)
            op = 6;
        else if (r < 860)
            op = 7;
        else if (r < 880)
            op = 8;
        else if (r < 895)
            op = 9;
        else if (r < 910)
            op = 10;
        else
            op = 11;
        switch (op) {
        case 0: {
            int k = (int)(rnd(w) % NSETS);
            op_set(w, w->sets[k], kept_members[w->id][k]);
            break;
        }
        case 1: op_fresh_set(w); break;
        case 2: op_try(w); break;
        case 3: op_acquire(w); break;
        case 4: op_oneshot(w); break;
        case 5: op_bh_schedule(w); break;
        case 6: op_bh_delete(w); break;
        case 7: op_timer_mod(w); break;
        case 8: op_timer_del(w); break;
        case 9: op_wait(w, 0); break;
        case 10: op_wait(w, 1); break;
        default:
            if (aioctx_poll(lk[self].ctx, false) < 0)
                problem(&n_bad_rc, "poll of own context: %s", aioctx_last_error());
        }
        w->ops[op]++;
        atomic_fetch_add_explicit(&ops_done, 1, memory_order_relaxed);
    }
    for (int i = 0; i < NLOCK; i++)
        check_depth(i, 0, "a worker after its operations");
    atomic_fetch_add(&workers_finished, 1);
    aioctx_wait_kick();   /* the main thread may wait for this (not a callback: no automatic kick) */
    /* Keep running callbacks others send here until the main thread says stop. */
    int rc = aioctx_poll_while(lk[self].ctx, not_stopped, NULL, -1, 0);
    check_rc(rc, 0, "poll_while until stop");
    for (int i = 0; i < NLOCK; i++)
        check_depth(i, 0, "a worker at the end");
    return NULL;
}

/* ---- the watchdog ------------------------------------------------------------------------------------ */

static atomic_int watchdog_stop;
static atomic_long final_progress;       /* waits completed after the storm */
static char main_phase[256] = "storm";   /* what the main thread waits for */

static void phase(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(main_phase, sizeof main_phase, fmt, ap);
    va_end(ap);
    atomic_fetch_add(&final_progress, 1);
}

static void *watchdog(void *arg)
{
    (void)arg;
    long last = -1;
    int64_t last_change = tap_now_ns();
    int64_t limit = 5 * SEC * tap_scale();
    while (!atomic_load(&watchdog_stop)) {
        tap_sleep_ms(50);
        long now_ops = atomic_load(&ops_done) + atomic_load(&oneshots_run) + atomic_load(&final_progress);
        if (now_ops != last) {
            last = now_ops;
            last_change = tap_now_ns();
            continue;
        }
        if (tap_now_ns() - last_change > limit) {
            static char dump[1 << 16];
            aioctx_debug_dump(dump, sizeof dump);
            printf("# chaos watchdog: no progress for %lld s after %ld operations (%d workers finished, "
                   "%ld of %ld one-shots ran); main thread: %s\n",
                   (long long)(limit / SEC), atomic_load(&ops_done), atomic_load(&workers_finished),
                   atomic_load(&oneshots_run), atomic_load(&oneshots_scheduled), main_phase);
            tap_comment("", dump);
            printf("Bail out! chaos: deadlock or lost wake-up (dump above)\n");
            fflush(stdout);
            _exit(1);
        }
    }
    return NULL;
}

/* ---- main ------------------------------------------------------------------------------------------- */

static void learn_home(void *opaque)
{
    *(pthread_t *)opaque = pthread_self();
}

static bool oneshots_pending(void *opaque)
{
    (void)opaque;
    return atomic_load(&oneshots_run) < atomic_load(&oneshots_scheduled) ||
           atomic_load(&workers_finished) < NWORKERS;
}

struct final_wait {
    atomic_long *counter;
    long want;
};

static bool final_pending(void *opaque)
{
    struct final_wait *f = opaque;
    return atomic_load(f->counter) < f->want;
}

int main(void)
{
    tap_watchdog(120);
    const char *env = getenv("AIOCTX_CHAOS_OPS");
    if (env && atol(env) > 0)
        total_ops = atol(env);
    else if (tap_scale() > 1)
        total_ops = total_ops * 4 / tap_scale();   /* valgrind (scale 20): 200,000 operations */
    ops_per_worker = total_ops / NWORKERS;
    inject_hang = getenv("AIOCTX_CHAOS_INJECT_HANG") && atoi(getenv("AIOCTX_CHAOS_INJECT_HANG")) == 1;
    if (getenv("AIOCTX_CHAOS_SEED"))
        seed = strtoull(getenv("AIOCTX_CHAOS_SEED"), NULL, 0) | 1;
    diag("%ld operations, seed %#llx (AIOCTX_CHAOS_OPS, AIOCTX_CHAOS_SEED)", total_ops, (unsigned long long)seed);
    hits = calloc((size_t)NWORKERS * (size_t)ops_per_worker, sizeof *hits);

    AioctxContext *main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main claims the main context");
    /* Layout: plain 0..3, IOThreads 4..5, main 6, workers 7..14. */
    for (int i = 0; i < NPLAIN; i++) {
        char name[16];
        snprintf(name, sizeof name, "chaos-plain%d", i);
        lk[i].ctx = aioctx_context_new(name);
    }
    iot_idx0 = NPLAIN;
    for (int t = 0; t < NIOT; t++) {
        char name[16];
        snprintf(name, sizeof name, "chaos-io%d", t);
        iot[t] = aioctx_iothread_new(name);
        lk[iot_idx0 + t].ctx = aioctx_iothread_context(iot[t]);
        atomic_int ran = 0;
        aioctx_bh_schedule_oneshot(lk[iot_idx0 + t].ctx, learn_home, &lk[iot_idx0 + t].home);
        aioctx_bh_schedule_oneshot(lk[iot_idx0 + t].ctx, inc_cb, &ran);
        wait_count(lk[iot_idx0 + t].ctx, &ran, 1);
        lk[iot_idx0 + t].has_home = 1;
    }
    main_idx = NPLAIN + NIOT;
    lk[main_idx].ctx = main_ctx;
    lk[main_idx].home = pthread_self();
    lk[main_idx].has_home = 1;
    worker_idx0 = main_idx + 1;
    for (int i = 0; i < NWORKERS; i++) {
        char name[16];
        snprintf(name, sizeof name, "chaos-w%d", i);
        lk[worker_idx0 + i].ctx = aioctx_context_new(name);
    }
    int made = 1;
    for (int i = 0; i < NLOCK; i++)
        made &= lk[i].ctx != NULL;
    if (!ok(made, "%d contexts: %d plain, %d IOThreads', main, %d workers'", NLOCK, NPLAIN, NIOT, NWORKERS))
        return done_testing();

    /* Per worker: kept sets, regular BHs, timers. */
    for (int i = 0; i < NWORKERS; i++) {
        struct worker *w = &workers[i];
        w->id = i;
        w->rng = seed * (uint64_t)(2 * i + 1);
        for (int k = 0; k < NSETS; k++) {
            w->sets[k] = aioctx_set_new();
            int n = 1 + (int)(rnd(w) % 6);
            for (int m = 0; m < n; m++) {
                int c = any_ctx(w);
                aioctx_set_add(w->sets[k], lk[c].ctx);
                kept_members[i][k][c] = 1;
            }
        }
        for (int k = 0; k < NBH; k++) {
            struct rbh *b = &w->bh[k];
            b->target = polled_ctx(w);
            b->bh = aioctx_bh_new(lk[b->target].ctx, rbh_cb, b);
        }
        for (int k = 0; k < NTIMER; k++) {
            struct rtimer *t = &w->timer[k];
            t->target = polled_ctx(w);
            t->t = aioctx_timer_new(lk[t->target].ctx, timer_cb, t);
        }
    }

    /* Workers claim their contexts, then wait here until every home is known. */
    pthread_t wd;
    pthread_create(&wd, NULL, watchdog, NULL);
    pthread_barrier_init(&started, NULL, NWORKERS + 1);
    for (int i = 0; i < NWORKERS; i++) {
        pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
        lk[worker_idx0 + i].home = workers[i].thread;
        lk[worker_idx0 + i].has_home = 1;
    }
    pthread_barrier_wait(&started);
    int64_t t0 = tap_now_ns();

    /* The main thread runs its loop until every worker is done and every one-shot ran. */
    phase("waiting for the workers and every one-shot");
    int rc = aioctx_poll_while(main_ctx, oneshots_pending, NULL, 60 * SEC * tap_scale(), 0);
    if (!is_int(rc, 0, "every worker finished and every one-shot ran"))
        diag("%s", aioctx_last_error());
    int64_t dt = tap_now_ns() - t0;
    diag("%ld operations by %d threads in %lld ms (%ld one-shot BHs)", atomic_load(&ops_done), NWORKERS,
         (long long)(dt / 1000000), atomic_load(&oneshots_scheduled));
    long per_op[16] = { 0 };
    for (int i = 0; i < NWORKERS; i++)
        for (int k = 0; k < 16; k++)
            per_op[k] += workers[i].ops[k];
    diag("set %ld, fresh-set %ld, try %ld, acquire %ld, oneshot %ld, bh-sched %ld, bh-del %ld, timer-mod %ld, "
         "timer-del %ld, wait %ld, wait-held %ld, poll %ld",
         per_op[0], per_op[1], per_op[2], per_op[3], per_op[4], per_op[5], per_op[6], per_op[7], per_op[8],
         per_op[9], per_op[10], per_op[11]);
    (void)op_names;

    /* Every one-shot exactly once. */
    long missing = 0, dup = 0, total = 0;
    for (int i = 0; i < NWORKERS; i++)
        for (long k = 0; k < workers[i].oneshot_seq; k++) {
            int h = atomic_load(&hits[(long)i * ops_per_worker + k]);
            missing += h == 0;
            dup += h > 1;
            total++;
        }
    is_int(missing, 0, "no one-shot BH was lost (%ld scheduled)", total);
    is_int(dup, 0, "no one-shot BH ran twice");

    /* Regular BHs: one more schedule of each survivor runs it exactly once more. */
    long over = 0, stale = 0, survivors = 0;
    for (int i = 0; i < NWORKERS; i++)
        for (int k = 0; k < NBH; k++) {
            struct rbh *b = &workers[i].bh[k];
            if (atomic_load(&b->deleted))
                continue;
            survivors++;
            phase("regular BH %d of worker %d on '%s': scheduled %ld, ran %ld", k, i,
                  aioctx_context_name(lk[b->target].ctx), atomic_load(&b->scheduled), atomic_load(&b->runs));
            /* let any pending run finish first */
            struct final_wait f0 = { &b->runs, atomic_load(&b->scheduled) > 0 ? 1 : 0 };
            aioctx_poll_while(lk[b->target].ctx, final_pending, &f0, long_timeout(), 0);
            tap_sleep_ms(1);
            long before = atomic_load(&b->runs);
            atomic_fetch_add(&b->scheduled, 1);
            aioctx_bh_schedule(b->bh);
            phase("regular BH %d of worker %d on '%s', scheduled once more: scheduled %ld, ran %ld", k, i,
                  aioctx_context_name(lk[b->target].ctx), atomic_load(&b->scheduled), atomic_load(&b->runs));
            struct final_wait f = { &b->runs, before + 1 };
            if (aioctx_poll_while(lk[b->target].ctx, final_pending, &f, long_timeout(), 0) != 0)
                stale++;
            if (atomic_load(&b->runs) > atomic_load(&b->scheduled))
                over++;
        }
    is_int(stale, 0, "each of the %ld surviving regular BHs runs when scheduled after the storm", survivors);
    is_int(over, 0, "no regular BH ran more often than it was scheduled");

    /* Timers: armed ones fire; then one more arm of each fires exactly once. */
    long t_stale = 0, t_armed_left = 0;
    for (int i = 0; i < NWORKERS; i++)
        for (int k = 0; k < NTIMER; k++) {
            struct rtimer *t = &workers[i].timer[k];
            phase("timer %d of worker %d on '%s': armed %d, %ld arms, %ld fires", k, i,
                  aioctx_context_name(lk[t->target].ctx), t->armed, atomic_load(&t->mods), atomic_load(&t->fires));
            struct final_wait f0 = { &t->fires, atomic_load(&t->mods) };
            if (aioctx_poll_while(lk[t->target].ctx, final_pending, &f0, long_timeout(), 0) != 0)
                t_armed_left++;
            aioctx_acquire(lk[t->target].ctx);
            atomic_fetch_add(&t->mods, 1);
            t->armed = 1;
            aioctx_timer_mod(t->t, aioctx_clock_ns());
            aioctx_release(lk[t->target].ctx);
            phase("timer %d of worker %d on '%s', re-armed: armed %d, %ld arms, %ld fires", k, i,
                  aioctx_context_name(lk[t->target].ctx), t->armed, atomic_load(&t->mods), atomic_load(&t->fires));
            struct final_wait f = { &t->fires, atomic_load(&t->mods) };
            if (aioctx_poll_while(lk[t->target].ctx, final_pending, &f, long_timeout(), 0) != 0)
                t_stale++;
        }
    is_int(t_armed_left, 0, "every timer armed during the storm fired");
    is_int(t_stale, 0, "each of the %d timers fires when armed after the storm", NWORKERS * NTIMER);

    phase("stopping the workers");
    atomic_store(&stop, 1);
    aioctx_wait_kick();
    for (int i = 0; i < NWORKERS; i++)
        pthread_join(workers[i].thread, NULL);
    atomic_store(&watchdog_stop, 1);
    pthread_join(wd, NULL);

    /* Mutual exclusion: the plain counters lost no update. */
    long torn = 0, bumps = 0;
    for (int i = 0; i < NLOCK; i++) {
        torn += lk[i].plain != atomic_load(&lk[i].tally);
        bumps += atomic_load(&lk[i].tally);
    }
    is_int(torn, 0, "mutual exclusion: %ld increments under the context locks, none lost", bumps);
    is_int(atomic_load(&n_bad_rc), 0, "every lock, set, BH and timer call returned what the contract says");
    is_int(atomic_load(&n_bad_depth), 0, "the lock depth was exact after every operation");
    is_int(atomic_load(&n_wrong_thread), 0, "every callback ran in its context's home thread");
    is_int(atomic_load(&n_not_held), 0, "every callback ran with its context held");
    is_int(atomic_load(&n_run_after_delete), 0, "no regular BH ran after bh_delete");
    is_int(atomic_load(&n_over_run), 0, "no BH or timer ran more often than scheduled / armed");
    is_int(atomic_load(&n_timer_disarmed_fire), 0, "no timer fired while disarmed");
    is_int(atomic_load(&n_wait_failed), 0, "every poll_while returned 0");
    if (atomic_load(&have_problem))
        diag("first problem: %s", first_problem);
    int left = 0;
    for (int i = 0; i < NLOCK; i++)
        left += aioctx_lock_depth(lk[i].ctx) != 0;
    is_int(left, 0, "the main thread holds no context");

    for (int i = 0; i < NWORKERS; i++) {
        for (int k = 0; k < NSETS; k++)
            aioctx_set_free(workers[i].sets[k]);
        for (int k = 0; k < NBH; k++)
            aioctx_bh_delete(workers[i].bh[k].bh);
        for (int k = 0; k < NTIMER; k++)
            aioctx_timer_free(workers[i].timer[k].t);
    }
    for (int t = 0; t < NIOT; t++)
        is_int(aioctx_iothread_free(iot[t]), 0, "iothread_free(%d)", t);
    for (int i = 0; i < NPLAIN; i++)
        aioctx_context_unref(lk[i].ctx);
    for (int i = 0; i < NWORKERS; i++)
        aioctx_context_unref(lk[worker_idx0 + i].ctx);
    free(hits);
    pthread_barrier_destroy(&started);
    return done_testing();
}
