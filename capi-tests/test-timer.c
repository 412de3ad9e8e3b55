/*
 * test-timer: timers with absolute CLOCK_MONOTONIC deadlines — arming,
 * re-arming, deletion, the context's nearest deadline, expiry order,
 * self re-arming (runs again in a later poll) and wake-up precision of a
 * blocking poll.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <pthread.h>

static AioctxContext *ctx;
static pthread_t main_thread;

struct tinfo {
    AioctxTimer *t;
    int id;
    int runs;
    int64_t fired_at;
    int rearm_left;
    int rearm_rc;
    int depth;
    int in_home;
};

static int fire_log[16];
static int fire_len;

static void timer_cb(void *opaque)
{
    struct tinfo *ti = opaque;
    ti->fired_at = aioctx_clock_ns();
    ti->runs++;
    ti->depth = aioctx_lock_depth(ctx);
    ti->in_home = pthread_equal(pthread_self(), main_thread);
    if (fire_len < 16)
        fire_log[fire_len++] = ti->id;
    if (ti->rearm_left > 0) {
        ti->rearm_left--;
        /* re-arm "now": already expired, but must wait for the next poll */
        ti->rearm_rc |= aioctx_timer_mod(ti->t, aioctx_clock_ns());
    }
}

static void free_victim_cb(void *opaque)
{
    struct tinfo *victim = opaque;
    aioctx_timer_free(victim->t);
    victim->t = NULL;
}

static void test_clock(void)
{
    int64_t a = aioctx_clock_ns();
    int64_t mine = tap_now_ns();
    int64_t b = aioctx_clock_ns();
    ok(a > 0, "clock_ns is positive");
    ok(a <= mine && mine <= b, "clock_ns is CLOCK_MONOTONIC (brackets clock_gettime)");
    tap_sleep_ms(2);
    ok(aioctx_clock_ns() - b >= 2 * MS, "clock_ns advances in nanoseconds");
}

static void test_deadline(void)
{
    struct tinfo a = { 0 }, b = { 0 };
    int64_t now = aioctx_clock_ns();

    is_int(aioctx_context_deadline_ns(ctx), -1, "no timers: deadline_ns is -1");
    a.t = aioctx_timer_new(ctx, timer_cb, &a);
    b.t = aioctx_timer_new(ctx, timer_cb, &b);
    ok(a.t && b.t, "timer_new");
    is_int(aioctx_context_deadline_ns(ctx), -1, "an unarmed timer has no deadline");
    is_int(aioctx_timer_mod(a.t, now + 1000 * MS), 0, "timer_mod returns 0");
    is_int(aioctx_context_deadline_ns(ctx), now + 1000 * MS, "deadline_ns is the armed deadline");
    is_int(aioctx_timer_mod(b.t, now + 500 * MS), 0, "arm a second, nearer timer");
    is_int(aioctx_context_deadline_ns(ctx), now + 500 * MS, "deadline_ns is the nearest deadline");
    is_int(aioctx_timer_mod(b.t, now + 1500 * MS), 0, "re-arm the second timer later");
    is_int(aioctx_context_deadline_ns(ctx), now + 1000 * MS, "deadline_ns follows a re-arm to later");
    is_int(aioctx_timer_mod(a.t, now + 1200 * MS), 0, "re-arm the first timer later");
    is_int(aioctx_context_deadline_ns(ctx), now + 1200 * MS, "deadline_ns follows (re-arm replaces)");
    is_int(aioctx_timer_del(a.t), 0, "timer_del returns 0");
    is_int(aioctx_context_deadline_ns(ctx), now + 1500 * MS, "deadline_ns after deleting the nearest");
    is_int(aioctx_timer_del(b.t), 0, "timer_del");
    is_int(aioctx_context_deadline_ns(ctx), -1, "deadline_ns back to -1");
    is_int(aioctx_timer_del(b.t), 0, "timer_del of an unarmed timer returns 0");

    is_int(aioctx_timer_mod(a.t, -1), -EINVAL, "timer_mod with a negative expiry -> -EINVAL");
    ok(aioctx_last_error()[0] != '\0', "... with a message: '%s'", aioctx_last_error());
    is_int(aioctx_context_deadline_ns(ctx), -1, "the rejected timer is not armed");

    is_int(aioctx_poll(ctx, false), 0, "poll: nothing expired");
    ok(a.runs == 0 && b.runs == 0, "deleted timers never ran");

    /* An armed timer freed before it expires never runs and leaves no deadline. */
    aioctx_timer_mod(a.t, 0);
    aioctx_timer_free(a.t);
    is_int(aioctx_context_deadline_ns(ctx), -1, "freeing an armed timer disarms it");
    is_int(aioctx_poll(ctx, false), 0, "poll after freeing an expired-armed timer runs nothing");
    is_int(a.runs, 0, "the freed timer never ran");
    aioctx_timer_free(b.t);
    aioctx_timer_free(NULL);
    ok(1, "timer_free(NULL) is a no-op");
}

static void test_expiry(void)
{
    struct tinfo a = { 0 };
    a.t = aioctx_timer_new(ctx, timer_cb, &a);

    aioctx_timer_mod(a.t, aioctx_clock_ns() + 50 * MS);
    is_int(aioctx_poll(ctx, false), 0, "non-blocking poll before the deadline runs nothing");
    is_int(a.runs, 0, "timer not yet run");
    is_int(aioctx_timer_mod(a.t, 0), 0, "timer_mod(0): a deadline in the past is valid");
    is_int(aioctx_poll(ctx, false), 1, "poll runs an expired timer and returns 1");
    is_int(a.runs, 1, "ran once");
    ok(a.in_home, "timer callback runs in the home thread");
    ok(a.depth >= 1, "timer callback runs with the context lock held (depth %d)", a.depth);
    is_int(aioctx_context_deadline_ns(ctx), -1, "a fired timer is no longer armed");
    is_int(aioctx_poll(ctx, false), 0, "a fired timer does not run again");
    is_int(a.runs, 1, "still one run");

    /* Deleted before expiring, with another timer bounding a blocking poll. */
    struct tinfo guard = { 0 };
    guard.t = aioctx_timer_new(ctx, timer_cb, &guard);
    int64_t now = aioctx_clock_ns();
    aioctx_timer_mod(a.t, now + 10 * MS);
    aioctx_timer_mod(guard.t, now + 30 * MS);
    aioctx_timer_del(a.t);
    while (guard.runs == 0)
        aioctx_poll(ctx, true);
    ok(aioctx_clock_ns() >= now + 30 * MS, "blocking poll returned after the guard deadline");
    is_int(a.runs, 1, "a deleted timer never ran even though its deadline passed");

    /* Self re-arming. */
    a.runs = 0;
    a.rearm_left = 2;
    aioctx_timer_mod(a.t, 0);
    is_int(aioctx_poll(ctx, false), 1, "poll runs the self-re-arming timer");
    is_int(a.runs, 1, "once in this poll, though it re-armed itself into the past");
    is_int(aioctx_poll(ctx, false), 1, "next poll");
    is_int(a.runs, 2, "runs it again");
    is_int(aioctx_poll(ctx, false), 1, "next poll");
    is_int(a.runs, 3, "and again");
    is_int(aioctx_poll(ctx, false), 0, "once it stops re-arming, poll returns 0");
    is_int(a.rearm_rc, 0, "timer_mod from its own callback returned 0");

    /* Expiry order follows deadlines, not arming order. */
    struct tinfo o[3] = { { 0 } };
    now = aioctx_clock_ns();
    for (int i = 0; i < 3; i++) {
        o[i].id = i;
        o[i].t = aioctx_timer_new(ctx, timer_cb, &o[i]);
    }
    aioctx_timer_mod(o[0].t, now - 1 * MS);
    aioctx_timer_mod(o[1].t, now - 3 * MS);
    aioctx_timer_mod(o[2].t, now - 2 * MS);
    fire_len = 0;
    aioctx_poll(ctx, false);
    ok(fire_len == 3 && fire_log[0] == 1 && fire_log[1] == 2 && fire_log[2] == 0,
       "expired timers run in deadline order (got %d: %d,%d,%d)", fire_len, fire_log[0],
       fire_log[1], fire_log[2]);

    for (int i = 0; i < 3; i++)
        aioctx_timer_free(o[i].t);

    /* A timer freed by an earlier timer's callback in the same poll never runs. */
    struct tinfo victim = { 0 };
    victim.t = aioctx_timer_new(ctx, timer_cb, &victim);
    AioctxTimer *killer = aioctx_timer_new(ctx, free_victim_cb, &victim);
    now = aioctx_clock_ns();
    aioctx_timer_mod(killer, now - 2 * MS);
    aioctx_timer_mod(victim.t, now - 1 * MS);
    is_int(aioctx_poll(ctx, false), 1, "poll runs the timer that frees another expired timer");
    is_int(victim.runs, 0, "a timer freed by an earlier callback in the same poll never runs");
    aioctx_timer_free(killer);
    aioctx_timer_free(guard.t);
    aioctx_timer_free(a.t);
}

static void test_remote_arm(void)
{
    /* A blocking poll with no deadline at all must notice a timer armed by
     * another thread and recompute its timeout. */
    struct tinfo a = { 0 };
    struct remote_arm r = { NULL, 10 * MS, 0, -99 };
    pthread_t th;
    struct tinfo guard = { 0 };
    a.t = aioctx_timer_new(ctx, timer_cb, &a);
    r.t = a.t;
    /* A far guard bounds the poll, so a missed notification is a late run, not a hang. */
    guard.t = aioctx_timer_new(ctx, timer_cb, &guard);
    aioctx_timer_mod(guard.t, aioctx_clock_ns() + 1000 * MS * tap_scale());
    pthread_create(&th, NULL, remote_arm_thread, &r);
    int rc = 0;
    while (a.runs == 0 && rc >= 0)
        rc = aioctx_poll(ctx, true);
    aioctx_timer_free(guard.t);
    int64_t back = aioctx_clock_ns();
    pthread_join(th, NULL);
    is_int(r.rc, 0, "timer_mod from another thread returns 0");
    is_int(rc, 1, "a blocking poll with no timer armed runs a timer another thread armed meanwhile");
    ok(a.fired_at >= r.expire, "not before its deadline");
    diag("remote-armed timer: poll returned %lld us after the deadline", (long long)((back - r.expire) / 1000));
    ok(back - r.expire < 50 * MS * tap_scale(), "and promptly (< 50 ms late)");
    aioctx_timer_free(a.t);
}

static int cmp_ll(const void *x, const void *y)
{
    long long a = *(const long long *)x, b = *(const long long *)y;
    return a < b ? -1 : a > b;
}

/* One round: RUNS blocking polls on a timer 2 ms ahead; returns the median lateness. */
static long long precision_round(struct tinfo *a, int *all_progress, int *all_after)
{
    enum { RUNS = 7 };
    long long late[RUNS];
    for (int i = 0; i < RUNS; i++) {
        int64_t deadline = aioctx_clock_ns() + 2 * MS;
        a->runs = 0;
        aioctx_timer_mod(a->t, deadline);
        int rc = aioctx_poll(ctx, true);
        int64_t back = aioctx_clock_ns();
        if (rc != 1 || a->runs != 1) {
            *all_progress = 0;
            diag("run %d: blocking poll returned %d with %d timer runs", i, rc, a->runs);
            while (a->runs == 0)
                aioctx_poll(ctx, true);
        }
        if (a->fired_at < deadline)
            *all_after = 0;
        late[i] = (long long)(back - deadline);
    }
    qsort(late, RUNS, sizeof late[0], cmp_ll);
    diag("blocking poll wake-up lateness after a 2 ms timer: min %lld us, median %lld us, max %lld us",
         late[0] / 1000, late[RUNS / 2] / 1000, late[RUNS - 1] / 1000);
    return late[RUNS / 2];
}

static void test_precision(void)
{
    int all_after = 1, all_progress = 1;
    long long best = -1;
    struct tinfo a = { 0 };
    a.t = aioctx_timer_new(ctx, timer_cb, &a);

    /* A coarse timeout (ms ticks, 10 ms slack) is late in every round; a load
     * spike on a busy CI machine is not: up to 3 rounds, the best counts. */
    for (int round = 0; round < 3; round++) {
        long long median = precision_round(&a, &all_progress, &all_after);
        if (best < 0 || median < best)
            best = median;
        if (best < 5 * MS * tap_scale())
            break;
    }
    ok(all_progress, "a blocking poll with only a timer armed returns 1 after running it (no early return)");
    ok(all_after, "the timer never runs before its deadline");
    ok(best < 5 * MS * tap_scale(),
       "median wake-up lateness %lld us < %d ms (sub-millisecond timeout precision)",
       best / 1000, 5 * tap_scale());
    aioctx_timer_free(a.t);
}

/* A timer whose callback re-arms it (a periodic timer), freed from another
 * thread while the callback runs: once aioctx_timer_free returned the
 * callback never runs again, so its opaque may be freed. */
struct periodic {
    AioctxTimer *t;
    atomic_int runs, entered;
    int magic;
};

static void periodic_cb(void *opaque)
{
    struct periodic *p = opaque;
    if (p->magic != 0x7e57)
        atomic_store(&p->runs, -1000000);  /* ran on a freed opaque */
    atomic_fetch_add(&p->runs, 1);
    atomic_store(&p->entered, 1);
    tap_sleep_ms(50);                      /* the free waits meanwhile */
    aioctx_timer_mod(p->t, aioctx_clock_ns() + 1000000);
}

static void test_free_of_a_self_arming_timer(void)
{
    AioctxIoThread *it = aioctx_iothread_new("timer-periodic");
    struct periodic *p = calloc(1, sizeof *p);
    p->magic = 0x7e57;
    p->t = aioctx_timer_new(aioctx_iothread_context(it), periodic_cb, p);
    aioctx_timer_mod(p->t, aioctx_clock_ns());
    while (!atomic_load(&p->entered))
        tap_sleep_ms(1);
    aioctx_timer_free(p->t);
    int runs = atomic_load(&p->runs);
    p->magic = 0;                          /* as free(opaque) would */
    tap_sleep_ms(100);
    is_int(atomic_load(&p->runs), runs, "a self-arming timer freed while its callback runs never runs again");
    is_int(aioctx_iothread_free(it), 0, "iothread_free");
    free(p);
}

int main(void)
{
    tap_watchdog(15);
    main_thread = pthread_self();
    ctx = aioctx_context_new("timer-test");
    if (!ok(ctx != NULL, "context_new(\"timer-test\")"))
        return done_testing();
    is_int(aioctx_context_claim(ctx), 0, "main thread claims the context");

    test_clock();
    test_deadline();
    test_expiry();
    test_precision();
    test_remote_arm();
    test_free_of_a_self_arming_timer();

    ok(aioctx_timer_new(NULL, timer_cb, NULL) == NULL, "timer_new(NULL ctx) -> NULL");
    ok(aioctx_timer_new(ctx, NULL, NULL) == NULL, "timer_new(ctx, NULL cb) -> NULL");
    is_int(aioctx_timer_mod(NULL, 0), -EINVAL, "timer_mod(NULL) -> -EINVAL");
    is_int(aioctx_timer_del(NULL), -EINVAL, "timer_del(NULL) -> -EINVAL");
    is_int(aioctx_context_deadline_ns(NULL), -EINVAL, "context_deadline_ns(NULL) -> -EINVAL");
    aioctx_context_unref(ctx);
    return done_testing();
}
