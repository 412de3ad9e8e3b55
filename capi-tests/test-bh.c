/*
 * test-bh: bottom halves — schedule (idempotent while pending), FIFO order,
 * cancel, delete while scheduled, self-reschedule (runs in the next poll),
 * self-delete, one-shots, scheduling from other threads, and the home
 * thread / lock held guarantees for callbacks.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

static AioctxContext *ctx;
static pthread_t main_thread;

/* ---- a generic recording callback --------------------------------------- */

#define MAXLOG 256
static int order_log[MAXLOG];
static int order_len;
static int bad_thread, bad_depth, last_depth;

struct rec {
    int id;
    int runs;
};

static void record_cb(void *opaque)
{
    struct rec *r = opaque;
    r->runs++;
    if (order_len < MAXLOG)
        order_log[order_len++] = r->id;
    if (!pthread_equal(pthread_self(), main_thread))
        bad_thread++;
    last_depth = aioctx_lock_depth(ctx);
    if (last_depth < 1)
        bad_depth++;
}

static int poll_nb(void)
{
    return aioctx_poll(ctx, false);
}

static void test_basic(void)
{
    struct rec r = { 1, 0 };
    AioctxBh *bh = aioctx_bh_new(ctx, record_cb, &r);

    ok(bh != NULL, "bh_new");
    is_int(poll_nb(), 0, "non-blocking poll with nothing pending returns 0");
    is_int(r.runs, 0, "a new BH does not run until scheduled");
    is_int(aioctx_bh_schedule(bh), 0, "bh_schedule returns 0");
    is_int(r.runs, 0, "scheduling does not run the BH synchronously");
    is_int(poll_nb(), 1, "poll returns 1 when a BH ran");
    is_int(r.runs, 1, "BH ran once");
    is_int(poll_nb(), 0, "next poll returns 0 (a BH runs once per schedule)");
    is_int(r.runs, 1, "still one run");

    aioctx_bh_schedule(bh);
    aioctx_bh_schedule(bh);
    is_int(aioctx_bh_schedule(bh), 0, "scheduling a pending BH again returns 0");
    is_int(poll_nb(), 1, "poll runs it");
    is_int(poll_nb(), 0, "and nothing remains");
    is_int(r.runs, 2, "a BH scheduled three times while pending runs once");

    is_int(aioctx_bh_schedule(bh), 0, "schedule after it ran works again");
    is_int(poll_nb(), 1, "poll");
    is_int(r.runs, 3, "ran a third time");
    is_int(bad_thread, 0, "BH callbacks ran in the home thread");
    is_int(bad_depth, 0, "BH callbacks ran with the context lock held");
    is_int(last_depth, 1, "depth inside the callback is 1 when the poller did not hold the context");
    is_int(aioctx_lock_depth(ctx), 0, "poll released the lock again");
    aioctx_bh_delete(bh);
}

static void test_fifo(void)
{
    struct rec r[5];
    AioctxBh *bh[5];
    int i;

    for (i = 0; i < 5; i++) {
        r[i].id = i;
        r[i].runs = 0;
        bh[i] = aioctx_bh_new(ctx, record_cb, &r[i]);
    }
    order_len = 0;
    aioctx_bh_schedule(bh[3]);
    aioctx_bh_schedule(bh[0]);
    aioctx_bh_schedule(bh[4]);
    aioctx_bh_schedule(bh[1]);
    aioctx_bh_schedule(bh[3]); /* already pending: keeps its position */
    aioctx_bh_schedule(bh[2]);
    is_int(poll_nb(), 1, "poll runs the scheduled BHs");
    is_int(order_len, 5, "five distinct BHs ran, each once");
    ok(order_len == 5 && order_log[0] == 3 && order_log[1] == 0 && order_log[2] == 4 &&
           order_log[3] == 1 && order_log[4] == 2,
       "BHs ran in scheduling order 3,0,4,1,2 (got %d,%d,%d,%d,%d)", order_log[0], order_log[1],
       order_log[2], order_log[3], order_log[4]);

    /* Mixed with one-shots: still one FIFO. */
    struct rec o = { 9, 0 };
    order_len = 0;
    aioctx_bh_schedule(bh[1]);
    is_int(aioctx_bh_schedule_oneshot(ctx, record_cb, &o), 0, "schedule_oneshot returns 0");
    aioctx_bh_schedule(bh[0]);
    poll_nb();
    ok(order_len == 3 && order_log[0] == 1 && order_log[1] == 9 && order_log[2] == 0,
       "regular and one-shot BHs share one FIFO (got %d: %d,%d,%d)", order_len, order_log[0],
       order_log[1], order_log[2]);

    for (i = 0; i < 5; i++)
        aioctx_bh_delete(bh[i]);
}

static void test_cancel_delete(void)
{
    struct rec a = { 1, 0 }, b = { 2, 0 }, c = { 3, 0 };
    AioctxBh *ba = aioctx_bh_new(ctx, record_cb, &a);
    AioctxBh *bb = aioctx_bh_new(ctx, record_cb, &b);
    AioctxBh *bc = aioctx_bh_new(ctx, record_cb, &c);

    aioctx_bh_schedule(ba);
    aioctx_bh_schedule(bb);
    is_int(aioctx_bh_cancel(ba), 0, "bh_cancel of a pending BH returns 0");
    is_int(poll_nb(), 1, "poll runs the other BH");
    is_int(a.runs, 0, "a cancelled BH does not run");
    is_int(b.runs, 1, "the uncancelled one does");
    is_int(aioctx_bh_cancel(ba), 0, "bh_cancel of an idle BH returns 0");
    aioctx_bh_schedule(ba);
    is_int(poll_nb(), 1, "a cancelled BH can be scheduled again");
    is_int(a.runs, 1, "and runs");

    aioctx_bh_schedule(bc);
    aioctx_bh_delete(bc); /* deleted while scheduled */
    is_int(poll_nb(), 0, "poll after deleting the only pending BH runs nothing");
    is_int(c.runs, 0, "a BH deleted while scheduled never runs");

    aioctx_bh_delete(ba);
    aioctx_bh_delete(bb);
    aioctx_bh_delete(NULL);
    ok(1, "bh_delete(NULL) is a no-op");
}

/* ---- self-rescheduling / self-deleting / chained BHs --------------------- */

struct self {
    AioctxBh *bh;
    int runs;
    int limit;
    int sched_rc;
};

static void resched_cb(void *opaque)
{
    struct self *s = opaque;
    s->runs++;
    if (s->runs < s->limit)
        s->sched_rc |= aioctx_bh_schedule(s->bh);
}

static void self_delete_cb(void *opaque)
{
    struct self *s = opaque;
    s->runs++;
    aioctx_bh_delete(s->bh);
    s->bh = NULL;
}

struct chain {
    AioctxBh *next;
    int runs;
};

static void chain_cb(void *opaque)
{
    struct chain *c = opaque;
    c->runs++;
    aioctx_bh_schedule(c->next);
}

struct killer {
    AioctxBh *victim;
    int mode; /* 0 delete, 1 cancel */
    int runs;
};

static void killer_cb(void *opaque)
{
    struct killer *k = opaque;
    k->runs++;
    if (k->mode == 0) {
        aioctx_bh_delete(k->victim);
        k->victim = NULL;
    } else {
        aioctx_bh_cancel(k->victim);
    }
}

static void test_same_batch(void)
{
    /* Both pending when the poll begins; the first deletes / cancels the second. */
    struct rec v = { 5, 0 };
    struct killer k = { aioctx_bh_new(ctx, record_cb, &v), 0, 0 };
    AioctxBh *kb = aioctx_bh_new(ctx, killer_cb, &k);
    aioctx_bh_schedule(kb);
    aioctx_bh_schedule(k.victim);
    is_int(aioctx_poll(ctx, false), 1, "poll runs a BH that deletes another pending BH");
    is_int(v.runs, 0, "a BH deleted by an earlier BH of the same poll never runs");
    is_int(aioctx_poll(ctx, false), 0, "nor later");

    k.victim = aioctx_bh_new(ctx, record_cb, &v);
    k.mode = 1;
    aioctx_bh_schedule(kb);
    aioctx_bh_schedule(k.victim);
    aioctx_poll(ctx, false);
    is_int(v.runs, 0, "a BH cancelled by an earlier BH of the same poll does not run");
    aioctx_bh_schedule(k.victim);
    is_int(aioctx_poll(ctx, false), 1, "rescheduled afterwards");
    is_int(v.runs, 1, "it runs");
    aioctx_bh_delete(k.victim);
    aioctx_bh_delete(kb);
}

static void test_self_and_chain(void)
{
    struct self s = { NULL, 0, 5, 0 };
    s.bh = aioctx_bh_new(ctx, resched_cb, &s);
    aioctx_bh_schedule(s.bh);
    int each_once = 1;
    for (int i = 1; i <= 5; i++) {
        int rc = poll_nb();
        if (rc != 1 || s.runs != i) {
            each_once = 0;
            diag("poll %d: rc %d runs %d", i, rc, s.runs);
        }
    }
    ok(each_once, "a self-rescheduling BH runs exactly once per poll (next poll, not the same one)");
    is_int(poll_nb(), 0, "after it stops rescheduling, poll returns 0");
    is_int(s.runs, 5, "ran 5 times in total");
    is_int(s.sched_rc, 0, "rescheduling from its own callback returns 0");

    /* Non-blocking poll on a context whose only BH keeps rescheduling must return. */
    s.runs = 0;
    s.limit = 1000000;
    aioctx_bh_schedule(s.bh);
    for (int i = 0; i < 3; i++)
        poll_nb();
    is_int(s.runs, 3, "an endlessly self-rescheduling BH does not starve the caller (3 polls, 3 runs)");
    aioctx_bh_cancel(s.bh);
    is_int(poll_nb(), 0, "cancel stops the self-rescheduling BH");
    aioctx_bh_delete(s.bh);

    struct self d = { NULL, 0, 0, 0 };
    d.bh = aioctx_bh_new(ctx, self_delete_cb, &d);
    aioctx_bh_schedule(d.bh);
    is_int(poll_nb(), 1, "a BH that deletes itself in its callback ran");
    is_int(d.runs, 1, "once");
    is_int(poll_nb(), 0, "and is gone (valgrind checks the free)");

    struct rec tail = { 7, 0 };
    AioctxBh *tb = aioctx_bh_new(ctx, record_cb, &tail);
    struct chain head = { tb, 0 };
    AioctxBh *hb = aioctx_bh_new(ctx, chain_cb, &head);
    aioctx_bh_schedule(hb);
    is_int(poll_nb(), 1, "poll runs the first BH of a chain");
    is_int(head.runs, 1, "head ran");
    is_int(tail.runs, 0, "a BH scheduled by another BH during the poll waits for the next poll");
    is_int(poll_nb(), 1, "next poll");
    is_int(tail.runs, 1, "runs it");
    aioctx_bh_delete(hb);
    aioctx_bh_delete(tb);
}

static void test_many_pending(void)
{
    enum { N = 100 };
    static struct rec r[N];
    static AioctxBh *bh[N];
    int all = 1;
    for (int i = 0; i < N; i++) {
        r[i].id = i;
        r[i].runs = 0;
        bh[i] = aioctx_bh_new(ctx, record_cb, &r[i]);
        aioctx_bh_schedule(bh[i]);
    }
    order_len = 0;
    is_int(poll_nb(), 1, "one poll with %d pending BHs", N);
    for (int i = 0; i < N; i++)
        if (r[i].runs != 1 || order_log[i] != i)
            all = 0;
    ok(all, "one poll ran every BH pending when it began, in order");
    for (int i = 0; i < N; i++)
        aioctx_bh_delete(bh[i]);
}

/* ---- one-shots ------------------------------------------------------------ */

static void count_cb(void *opaque)
{
    (*(int *)opaque)++;
}

static void oneshot_from_bh_cb(void *opaque)
{
    int *x = opaque;
    x[0]++;
    aioctx_bh_schedule_oneshot(ctx, count_cb, &x[1]);
}

static void test_oneshot(void)
{
    int x = 0;
    is_int(aioctx_bh_schedule_oneshot(ctx, count_cb, &x), 0, "schedule_oneshot returns 0");
    is_int(x, 0, "a one-shot does not run synchronously");
    is_int(poll_nb(), 1, "poll runs the one-shot");
    is_int(x, 1, "ran once");
    is_int(poll_nb(), 0, "a one-shot does not run again");
    is_int(x, 1, "still one run");

    int many = 0;
    for (int i = 0; i < 1000; i++)
        aioctx_bh_schedule_oneshot(ctx, count_cb, &many);
    poll_nb();
    is_int(many, 1000, "1000 one-shots with the same callback and opaque each run (no dedup)");

    int y[2] = { 0, 0 };
    aioctx_bh_schedule_oneshot(ctx, oneshot_from_bh_cb, y);
    poll_nb();
    ok(y[0] == 1 && y[1] == 0, "a one-shot scheduled from a BH does not run in the same poll");
    poll_nb();
    is_int(y[1], 1, "it runs in the next poll");

    /* Pending one-shots at context destruction are freed, not leaked or run. */
    AioctxContext *tmp = aioctx_context_new("bh-tmp");
    int z = 0;
    aioctx_bh_schedule_oneshot(tmp, count_cb, &z);
    aioctx_context_unref(tmp);
    is_int(z, 0, "a one-shot pending on a destroyed context never ran (valgrind: no leak)");
}

/* ---- scheduling from other threads --------------------------------------- */

static atomic_int remote_runs;
static int remote_bad_thread;

static void remote_cb(void *opaque)
{
    (void)opaque;
    if (!pthread_equal(pthread_self(), main_thread))
        remote_bad_thread++;
    atomic_fetch_add(&remote_runs, 1);
}

struct sched_args {
    AioctxBh *bh;
    int delay_ms;
    int rc;
    int64_t acted_at; /* just before scheduling */
};

static void *scheduler_thread(void *arg)
{
    struct sched_args *a = arg;
    tap_sleep_ms(a->delay_ms);
    a->acted_at = tap_now_ns();
    a->rc = aioctx_bh_schedule(a->bh);
    return NULL;
}

static void *oneshot_thread(void *arg)
{
    struct sched_args *a = arg;
    tap_sleep_ms(a->delay_ms);
    a->rc = aioctx_bh_schedule_oneshot(ctx, remote_cb, NULL);
    return NULL;
}

static void test_cross_thread(void)
{
    AioctxBh *bh = aioctx_bh_new(ctx, remote_cb, NULL);
    struct sched_args a = { bh, 30, -1, 0 };
    pthread_t th;

    pthread_create(&th, NULL, scheduler_thread, &a);
    int rc = aioctx_poll(ctx, true);
    int64_t back = tap_now_ns();
    pthread_join(th, NULL);
    is_int(a.rc, 0, "bh_schedule from another thread returns 0");
    is_int(rc, 1, "a blocking poll is woken by a BH scheduled from another thread and returns 1");
    is_int(atomic_load(&remote_runs), 1, "the BH ran");
    ok(back >= a.acted_at, "one blocking poll waited for the schedule (returned %lld us after it)",
       (long long)((back - a.acted_at) / 1000));

    struct sched_args o = { NULL, 30, -1, 0 };
    pthread_create(&th, NULL, oneshot_thread, &o);
    rc = aioctx_poll(ctx, true);
    pthread_join(th, NULL);
    is_int(o.rc, 0, "schedule_oneshot from another thread returns 0");
    is_int(rc, 1, "a blocking poll is woken by a one-shot scheduled from another thread");
    is_int(atomic_load(&remote_runs), 2, "the one-shot ran");
    is_int(remote_bad_thread, 0, "BHs scheduled from other threads run in the home thread");

    /* A blocking poll with work already pending does not block. */
    aioctx_bh_schedule(bh);
    int64_t t0 = tap_now_ns();
    rc = aioctx_poll(ctx, true);
    int64_t dt = tap_now_ns() - t0;
    is_int(rc, 1, "blocking poll with a pending BH returns 1");
    ok(dt < 500000000LL * tap_scale(), "without blocking (%lld us)", (long long)(dt / 1000));
    aioctx_bh_delete(bh);
}

static void test_poll_while_holding(void)
{
    struct rec r = { 1, 0 };
    AioctxBh *bh = aioctx_bh_new(ctx, record_cb, &r);
    aioctx_acquire(ctx);
    aioctx_bh_schedule(bh);
    is_int(poll_nb(), 1, "the home thread may poll while holding its own context");
    is_int(r.runs, 1, "the BH ran");
    is_int(last_depth, 2, "callbacks then run one level deeper (depth 2)");
    is_int(aioctx_lock_depth(ctx), 1, "depth is back to 1 after the poll");
    aioctx_release(ctx);
    aioctx_bh_delete(bh);
}

/* Cancelling a BH, disarming a timer or removing an fd handler whose
 * callback runs in an IOThread and is blocked acquiring a context the
 * caller holds: the call cannot wait for it (it never returns while the
 * caller holds that context), so it returns at once, as QEMU's do. */
struct blocked_cb {
    AioctxContext *held;
    atomic_int started, finished;
    int pipe[2];
};

static void blocking_cb(void *opaque)
{
    struct blocked_cb *b = opaque;
    char c;
    if (read(b->pipe[0], &c, 1) < 0) {
        /* a BH or a timer: nothing to read */
    }
    atomic_store(&b->started, 1);
    aioctx_acquire(b->held);
    aioctx_release(b->held);
    atomic_store(&b->finished, 1);
}

static void test_cancel_of_a_callback_blocked_on_the_caller(void)
{
    static const char *what[] = { "aioctx_bh_cancel", "aioctx_timer_del", "fd handler removal" };
    AioctxIoThread *it = aioctx_iothread_new("bh-blocked");
    AioctxContext *io = aioctx_iothread_context(it);
    for (int kind = 0; kind < 3; kind++) {
        struct blocked_cb b = { .held = ctx };
        if (!ok(pipe2(b.pipe, O_NONBLOCK) == 0, "a pipe"))
            break;
        AioctxBh *bh = aioctx_bh_new(io, blocking_cb, &b);
        AioctxTimer *t = aioctx_timer_new(io, blocking_cb, &b);
        aioctx_acquire(ctx);
        if (kind == 0)
            aioctx_bh_schedule(bh);
        else if (kind == 1)
            aioctx_timer_mod(t, aioctx_clock_ns());
        else if (aioctx_set_fd_handler(io, b.pipe[0], blocking_cb, NULL, &b) != 0 || write(b.pipe[1], "x", 1) != 1)
            ok(0, "watch the pipe");
        while (!atomic_load(&b.started))
            tap_sleep_ms(1);
        tap_sleep_ms(10); /* from started to blocked on the context */
        int64_t t0 = tap_now_ns();
        int rc = kind == 0 ? aioctx_bh_cancel(bh)
                 : kind == 1 ? aioctx_timer_del(t)
                             : aioctx_set_fd_handler(io, b.pipe[0], NULL, NULL, NULL);
        int64_t took = tap_now_ns() - t0;
        is_int(rc, 0, "%s while its callback is blocked acquiring the caller's context -> 0", what[kind]);
        ok(took < 500 * 1000000LL * tap_scale() && !atomic_load(&b.finished),
           "  at once (%lld us), not waiting for the callback", (long long)(took / 1000));
        aioctx_release(ctx);
        while (!atomic_load(&b.finished))
            tap_sleep_ms(1);
        aioctx_bh_delete(bh);
        aioctx_timer_free(t);
        close(b.pipe[0]);
        close(b.pipe[1]);
    }
    is_int(aioctx_iothread_free(it), 0, "iothread_free");
}

/* Two BHs on two IOThreads, each cancelling the other while both run: each
 * would wait for the other to return, so neither waits. */
struct crossing {
    AioctxBh *bh[2];
    atomic_int started, finished;
};

static struct crossing crossing;

static void cancel_the_other(void *opaque)
{
    int me = (int)(intptr_t)opaque;
    atomic_fetch_add(&crossing.started, 1);
    while (atomic_load(&crossing.started) < 2)
        tap_sleep_ms(1);
    aioctx_bh_cancel(crossing.bh[!me]);
    atomic_fetch_add(&crossing.finished, 1);
}

static void test_bhs_cancelling_each_other(void)
{
    AioctxIoThread *it[2] = { aioctx_iothread_new("bh-cross0"), aioctx_iothread_new("bh-cross1") };
    for (int i = 0; i < 2; i++)
        crossing.bh[i] = aioctx_bh_new(aioctx_iothread_context(it[i]), cancel_the_other, (void *)(intptr_t)i);
    aioctx_bh_schedule(crossing.bh[0]);
    aioctx_bh_schedule(crossing.bh[1]);
    int64_t end = tap_now_ns() + 5000 * 1000000LL * tap_scale();
    while (atomic_load(&crossing.finished) < 2 && tap_now_ns() < end)
        tap_sleep_ms(1);
    is_int(atomic_load(&crossing.finished), 2, "two running BHs cancelling each other both return");
    for (int i = 0; i < 2; i++) {
        aioctx_bh_delete(crossing.bh[i]);
        aioctx_iothread_free(it[i]);
    }
}

int main(void)
{
    tap_watchdog(15);
    main_thread = pthread_self();
    ctx = aioctx_context_new("bh-test");
    if (!ok(ctx != NULL, "context_new(\"bh-test\")"))
        return done_testing();
    is_int(aioctx_context_claim(ctx), 0, "main thread claims the context");

    test_basic();
    test_fifo();
    test_cancel_delete();
    test_self_and_chain();
    test_same_batch();
    test_many_pending();
    test_oneshot();
    test_cross_thread();
    test_poll_while_holding();
    test_cancel_of_a_callback_blocked_on_the_caller();
    test_bhs_cancelling_each_other();

    aioctx_context_unref(ctx);
    return done_testing();
}
