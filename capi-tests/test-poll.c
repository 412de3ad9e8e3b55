/*
 * test-poll: home threads (first poll / claim), -EPERM for other threads,
 * notify waking a blocking poll (returns 0), and embedding: driving a
 * context from a plain poll(2) loop through aioctx_context_fd() and
 * aioctx_context_deadline_ns() as a foreign main loop would.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

/* ---- home thread ---------------------------------------------------------- */

struct homer {
    AioctxContext *ctx;
    int first_poll_rc, claim_rc, claim_again_rc;
    atomic_int phase; /* 0 start, 1 homed, 2 main done checking */
};

static void *homer_thread(void *arg)
{
    struct homer *h = arg;
    h->first_poll_rc = aioctx_poll(h->ctx, false);
    h->claim_rc = aioctx_context_claim(h->ctx);
    atomic_store(&h->phase, 1);
    while (atomic_load(&h->phase) != 2)
        tap_sleep_ms(1);
    h->claim_again_rc = aioctx_context_claim(h->ctx);
    return NULL;
}

struct outsider {
    AioctxContext *ctx;
    int claim_rc, poll_rc, notify_rc, sched_rc;
    char err[256];
    pthread_t self;
};

static atomic_int outsider_bh_runs;

static void *outsider_thread(void *arg)
{
    struct outsider *o = arg;
    o->self = pthread_self();
    o->claim_rc = aioctx_context_claim(o->ctx);
    snprintf(o->err, sizeof o->err, "%s", aioctx_last_error());
    o->poll_rc = aioctx_poll(o->ctx, false);
    o->notify_rc = aioctx_notify(o->ctx);
    o->sched_rc = aioctx_bh_schedule_oneshot(o->ctx, inc_cb, &outsider_bh_runs);
    return NULL;
}

static void test_home(void)
{
    /* First poll from another thread makes it the home. */
    AioctxContext *a = aioctx_context_new("poll-home-a");
    struct homer h = { a, -99, -99, -99, 0 };
    pthread_t th;
    pthread_create(&th, NULL, homer_thread, &h);
    while (atomic_load(&h.phase) != 1)
        tap_sleep_ms(1);
    is_int(h.first_poll_rc, 0, "first poll of an unhomed context from thread T returns 0 (T becomes home)");
    is_int(h.claim_rc, 0, "T's claim after its poll returns 0 (already home)");
    is_int(aioctx_poll(a, false), -EPERM, "poll from the main thread of T's context -> -EPERM");
    like(aioctx_last_error(), "poll-home-a", "the -EPERM message names the context");
    is_int(aioctx_context_claim(a), -EPERM, "claim from the main thread -> -EPERM");
    atomic_store(&h.phase, 2);
    pthread_join(th, NULL);
    is_int(h.claim_again_rc, 0, "claim by the home again returns 0");

    /* T has exited, and with it the context's home: a thread created now
     * (glibc usually hands it T's pthread_t) may claim it, because nobody
     * has it, not because it looks like T. */
    struct outsider late = { a, -99, -99, -99, -99, "", th };
    pthread_t th2;
    pthread_create(&th2, NULL, outsider_thread, &late);
    pthread_join(th2, NULL);
    diag("the later thread %s the exited home thread's pthread_t",
         pthread_equal(late.self, th) ? "reuses" : "does not reuse");
    /* Deterministic either way: an exited home thread leaves the context
     * without a home, so the next thread to claim it gets it. */
    is_int(late.claim_rc, 0, "claim from a thread started after the home thread exited -> 0 (no home left)");
    is_int(late.poll_rc, 0, "poll from that thread -> 0 (it is the home now)");
    aioctx_context_unref(a);

    /* Explicit claim. */
    AioctxContext *b = aioctx_context_new("poll-home-b");
    is_int(aioctx_context_claim(b), 0, "main claims an unhomed context");
    is_int(aioctx_context_claim(b), 0, "claiming again is 0");
    struct outsider o = { b, -99, -99, -99, -99, "", th };
    pthread_create(&th, NULL, outsider_thread, &o);
    pthread_join(th, NULL);
    is_int(o.claim_rc, -EPERM, "claim from another thread -> -EPERM");
    ok(o.err[0] != '\0', "with a message in that thread: '%s'", o.err);
    is_int(o.poll_rc, -EPERM, "poll from another thread -> -EPERM");
    is_int(o.notify_rc, 0, "notify from another thread is allowed");
    is_int(o.sched_rc, 0, "scheduling a one-shot from another thread is allowed");
    is_int(aioctx_poll(b, false), 1, "the home runs the BH scheduled by the other thread");
    is_int(atomic_load(&outsider_bh_runs), 1, "ran once");
    aioctx_context_unref(b);
}

/* ---- notify ----------------------------------------------------------------- */

struct notifier {
    AioctxContext *ctx;
    atomic_int stop;
    int rc;
    int sent;
    int64_t first_at; /* just before the first notify */
};

static void *notifier_thread(void *arg)
{
    struct notifier *n = arg;
    tap_sleep_ms(30);
    /* A notify that lands before the poll blocks may legitimately be absorbed,
     * so keep notifying until the poller reports back. */
    n->first_at = tap_now_ns();
    while (!atomic_load(&n->stop)) {
        n->rc |= aioctx_notify(n->ctx);
        n->sent++;
        tap_sleep_ms(10);
    }
    return NULL;
}

static void test_notify(AioctxContext *ctx)
{
    struct notifier n = { ctx, 0, 0, 0, 0 };
    pthread_t th;
    pthread_create(&th, NULL, notifier_thread, &n);
    int rc = aioctx_poll(ctx, true);
    int64_t back = tap_now_ns();
    atomic_store(&n.stop, 1);
    pthread_join(th, NULL);
    is_int(rc, 0, "a blocking poll woken only by notify returns 0");
    ok(n.first_at && back >= n.first_at, "it really blocked until a notify (returned %lld us after the first)",
       (long long)((back - n.first_at) / 1000));
    is_int(n.rc, 0, "notify returned 0 (%d calls)", n.sent);
    is_int(aioctx_notify(ctx), 0, "notify from the home thread itself returns 0");
}

/* ---- poll return values ------------------------------------------------------ */

static int depth_in_cb;
static AioctxContext *depth_ctx;

static void depth_cb(void *opaque)
{
    (void)opaque;
    depth_in_cb = aioctx_lock_depth(depth_ctx);
}

static void test_poll_holding(AioctxContext *ctx)
{
    depth_ctx = ctx;
    aioctx_acquire(ctx);
    aioctx_acquire(ctx);
    aioctx_bh_schedule_oneshot(ctx, depth_cb, NULL);
    is_int(aioctx_poll(ctx, false), 1, "the home thread may poll while holding its context (depth 2)");
    is_int(depth_in_cb, 3, "the callback ran one level deeper (depth 3)");
    is_int(aioctx_lock_depth(ctx), 2, "depth restored to 2");
    aioctx_release(ctx);
    aioctx_release(ctx);
}

/* ---- embedding ---------------------------------------------------------------- */

static int fd_readable(int fd, int timeout_ms)
{
    struct pollfd p = { fd, POLLIN, 0 };
    int r = poll(&p, 1, timeout_ms);
    return r == 1 && (p.revents & POLLIN);
}

struct remote_sched {
    AioctxContext *ctx;
    atomic_int *counter;
    int n;
    int pipe_wr;
    int pipe_bytes;
};

static void *remote_sched_thread(void *arg)
{
    struct remote_sched *r = arg;
    for (int i = 0; i < r->n; i++) {
        aioctx_bh_schedule_oneshot(r->ctx, inc_cb, r->counter);
        if (i % 5 == 0)
            tap_sleep_ms(1);
    }
    for (int i = 0; i < r->pipe_bytes; i++) {
        if (write(r->pipe_wr, "p", 1) != 1)
            abort();
        tap_sleep_ms(2);
    }
    return NULL;
}

struct piper {
    int fd;
    int bytes;
};

static void pipe_read_cb(void *opaque)
{
    struct piper *p = opaque;
    char buf[16];
    ssize_t n;
    while ((n = read(p->fd, buf, sizeof buf)) > 0)
        p->bytes += (int)n;
}

static void timer_cb(void *opaque)
{
    (*(int *)opaque)++;
}

static void test_embedding(void)
{
    AioctxContext *e = aioctx_context_new("poll-embed");
    atomic_int runs = 0;
    pthread_t th;

    is_int(aioctx_context_claim(e), 0, "the foreign loop's thread claims the context");
    int fd = aioctx_context_fd(e);
    ok(fd >= 0, "context_fd returns an fd (%d)", fd);
    is_int(aioctx_context_fd(e), fd, "the same fd every time");
    ok(fcntl(fd, F_GETFD) >= 0, "it is an open fd");
    ok(!fd_readable(fd, 0), "an idle context's fd is not readable");

    /* BH from the home thread. */
    aioctx_bh_schedule_oneshot(e, inc_cb, &runs);
    ok(fd_readable(fd, 0), "readable once a BH is pending (scheduled by the home thread)");
    is_int(aioctx_poll(e, false), 1, "a non-blocking aioctx_poll runs it");
    ok(!fd_readable(fd, 0), "not readable after the poll consumed the work");

    /* BH from another thread, while nobody is in aioctx_poll. */
    struct remote_sched one = { e, &runs, 1, -1, 0 };
    pthread_create(&th, NULL, remote_sched_thread, &one);
    pthread_join(th, NULL);
    ok(fd_readable(fd, 1000), "readable once a BH is scheduled from another thread");
    is_int(aioctx_poll(e, false), 1, "aioctx_poll runs it");
    ok(!fd_readable(fd, 0), "not readable afterwards");
    is_int(atomic_load(&runs), 2, "both BHs ran");

    /* A ready handler fd. */
    int p[2];
    struct piper pr = { -1, 0 };
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0)
        abort();
    pr.fd = p[0];
    aioctx_set_fd_handler(e, p[0], pipe_read_cb, NULL, &pr);
    ok(!fd_readable(fd, 0), "registering a handler for an empty pipe does not make it readable");
    ok(write(p[1], "abcd", 4) == 4, "write to the pipe");
    ok(fd_readable(fd, 1000), "readable when a handler's fd is ready");
    is_int(aioctx_poll(e, false), 1, "aioctx_poll runs the handler");
    is_int(pr.bytes, 4, "which drained the pipe");
    ok(!fd_readable(fd, 0), "not readable after the handler drained its fd");

    /* Timers are reported through the deadline, not the fd. */
    int fired = 0;
    AioctxTimer *t = aioctx_timer_new(e, timer_cb, &fired);
    /* Scaled: under valgrind a fixed 20 ms can pass before the next check. */
    int64_t expire = aioctx_clock_ns() + 20 * MS * tap_scale();
    aioctx_timer_mod(t, expire);
    is_int(aioctx_context_deadline_ns(e), expire, "deadline_ns reports the armed timer");
    ok(!fd_readable(fd, 0), "arming a (future) timer in the home thread does not make the fd readable");
    is_int(aioctx_poll(e, false), 0, "a non-blocking poll before the deadline runs nothing");
    ok(!fd_readable(fd, 0), "an armed future timer does not keep the fd readable (no busy loop)");

    /* Another thread arming a nearer timer must wake a foreign loop blocked in poll(2),
     * or it would sleep through the new deadline. */
    struct remote_arm ra = { t, 15 * MS * tap_scale(), 0, -99 };
    pthread_create(&th, NULL, remote_arm_thread, &ra);
    int64_t t0 = aioctx_clock_ns();
    int woke = fd_readable(fd, 2000);
    int64_t dt = aioctx_clock_ns() - t0;
    pthread_join(th, NULL);
    is_int(ra.rc, 0, "timer_mod from another thread");
    ok(woke && dt < 1000 * MS * tap_scale(),
       "a timer armed by another thread wakes the foreign loop's poll(2) (%lld us) to recompute its timeout",
       (long long)(dt / 1000));
    is_int(aioctx_context_deadline_ns(e), ra.expire, "deadline_ns reports the new deadline");

    /* A foreign poll(2) loop drives everything: N remote BHs, pipe bytes and the timer. */
    enum { NBH = 50, NBYTES = 5 };
    atomic_store(&runs, 0);
    pr.bytes = 0;
    struct remote_sched many = { e, &runs, NBH, p[1], NBYTES };
    pthread_create(&th, NULL, remote_sched_thread, &many);
    int iterations = 0, poll_errors = 0;
    int64_t give_up = aioctx_clock_ns() + 3000 * MS * tap_scale();
    while ((atomic_load(&runs) < NBH || pr.bytes < NBYTES || !fired) && aioctx_clock_ns() < give_up) {
        int64_t dl = aioctx_context_deadline_ns(e);
        int timeout_ms = 200;
        if (dl >= 0) {
            int64_t left = dl - aioctx_clock_ns();
            timeout_ms = left <= 0 ? 0 : (int)((left + MS - 1) / MS);
        }
        struct pollfd pfd = { fd, POLLIN, 0 };
        poll(&pfd, 1, timeout_ms);
        if (aioctx_poll(e, false) < 0)
            poll_errors++;
        iterations++;
    }
    pthread_join(th, NULL);
    is_int(atomic_load(&runs), NBH, "the foreign loop ran all %d remote BHs", NBH);
    is_int(pr.bytes, NBYTES, "and all pipe data");
    is_int(fired, 1, "and the timer, using deadline_ns as its poll(2) timeout");
    is_int(poll_errors, 0, "using only non-blocking aioctx_poll calls, none failing");
    diag("foreign loop iterations: %d", iterations);
    ok(!fd_readable(fd, 0), "the fd is quiet once everything ran");
    is_int(aioctx_context_deadline_ns(e), -1, "no deadline left");

    aioctx_timer_free(t);
    aioctx_set_fd_handler(e, p[0], NULL, NULL, NULL);
    close(p[0]);
    close(p[1]);
    aioctx_context_unref(e);
}

int main(void)
{
    tap_watchdog(15);

    test_home();

    AioctxContext *ctx = aioctx_context_new("poll-notify");
    is_int(aioctx_context_claim(ctx), 0, "main claims poll-notify");
    test_notify(ctx);
    test_poll_holding(ctx);

    /* A blocking poll with a pending BH returns 1 at once. */
    atomic_int runs = 0;
    aioctx_bh_schedule_oneshot(ctx, inc_cb, &runs);
    is_int(aioctx_poll(ctx, true), 1, "blocking poll with a pending BH returns 1");
    is_int(atomic_load(&runs), 1, "the BH ran");
    aioctx_context_unref(ctx);

    test_embedding();

    is_int(aioctx_poll(NULL, false), -EINVAL, "poll(NULL) -> -EINVAL");
    is_int(aioctx_poll(NULL, true), -EINVAL, "blocking poll(NULL) -> -EINVAL (no hang)");
    is_int(aioctx_notify(NULL), -EINVAL, "notify(NULL) -> -EINVAL");
    is_int(aioctx_context_claim(NULL), -EINVAL, "context_claim(NULL) -> -EINVAL");
    is_int(aioctx_context_fd(NULL), -EINVAL, "context_fd(NULL) -> -EINVAL");
    return done_testing();
}
