/*
 * test-misuse: every exported function, misused on purpose.
 *
 * For each of the header's functions: NULL and otherwise invalid arguments
 * (-EINVAL, or NULL from a constructor), calls from the wrong thread
 * (release by a non-owner, poll from a non-home thread: -EPERM), calls in the
 * wrong state (a set released without an acquire or twice, a write to an
 * inactive node, an image another process has locked), empty and duplicate
 * names, cycles, missing files, directories, FIFOs and sockets given as
 * images, read-only files opened for writing (as a non-root child process)
 * and images on a read-only mount.
 *
 * Every case checks, in the thread that made the call:
 *   1. the return value (the negative errno, NULL, or the documented value);
 *   2. errno == E and aioctx_last_errno() == -E;
 *   3. aioctx_last_error() is non-empty, starts with the function's name and
 *      is not left over from an earlier failure (each case first makes a
 *      sentinel failure, so a stale message cannot pass);
 *   4. the caller holds every involved context exactly as deep as before.
 * Calls documented as no-ops (NULL to *_free, ...) must not record a failure.
 * At the end, every function declared in aioctx.h must have been exercised.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/select.h>
#include <grp.h>

/* ---- TAP extras: skip and todo ---------------------------------------------------------- */

static void skip(const char *name, const char *why)
{
    tap_init_output();
    tap_st.run++;
    printf("ok %d - %s # SKIP %s\n", tap_st.run, name, why);
    fflush(stdout);
}


/* ---- the functions of aioctx.h, and which ones were exercised -------------------------- */

static const char *const api[] = {
    "aioctx_bh_new", "aioctx_bh_schedule", "aioctx_bh_cancel", "aioctx_bh_delete",
    "aioctx_bh_schedule_oneshot", "aioctx_context_new", "aioctx_main_context",
    "aioctx_context_ref", "aioctx_context_unref", "aioctx_context_name", "aioctx_context_id",
    "aioctx_context_claim", "aioctx_acquire", "aioctx_try_acquire", "aioctx_release",
    "aioctx_lock_depth", "aioctx_poll", "aioctx_notify", "aioctx_context_fd",
    "aioctx_context_deadline_ns", "aioctx_context_stats", "aioctx_clock_ns",
    "aioctx_set_fd_handler", "aioctx_set_log_handler", "aioctx_debug_dump",
    "aioctx_debug_dump_lines", "aioctx_last_error", "aioctx_last_errno", "aioctx_version",
    "aioctx_graph_new", "aioctx_graph_free", "aioctx_graph_find", "aioctx_graph_inactivate_all",
    "aioctx_graph_activate_all", "aioctx_iothread_new", "aioctx_iothread_context",
    "aioctx_iothread_free", "aioctx_node_new", "aioctx_node_open_file", "aioctx_node_name",
    "aioctx_node_context", "aioctx_node_attach_child", "aioctx_node_start_request",
    "aioctx_node_end_request", "aioctx_node_in_flight", "aioctx_node_is_inactive",
    "aioctx_node_drain", "aioctx_node_flush", "aioctx_node_pread", "aioctx_node_pwrite",
    "aioctx_set_new", "aioctx_set_add", "aioctx_set_len", "aioctx_set_acquire",
    "aioctx_set_release", "aioctx_set_free", "aioctx_timer_new", "aioctx_timer_mod",
    "aioctx_timer_del", "aioctx_timer_free", "aioctx_poll_while", "aioctx_wait_kick",
};
#define NAPI ((int)(sizeof api / sizeof api[0]))
static atomic_int exercised[NAPI];
static atomic_int cases;      /* misuse cases tried */

/* The function a case calls: the first aioctx_ identifier of its text. */
static void function_of(const char *expr, char *out, size_t len)
{
    const char *p = strstr(expr, "aioctx_");
    size_t n = 0;
    if (p)
        while (n + 1 < len && (p[n] == '_' || (p[n] >= 'a' && p[n] <= 'z') || (p[n] >= '0' && p[n] <= '9')))
            n++;
    memcpy(out, p ? p : "", n);
    out[n] = '\0';
    for (int i = 0; i < NAPI; i++)
        if (strcmp(api[i], out) == 0)
            atomic_fetch_add(&exercised[i], 1);
}

/* ---- involved contexts: the caller's depth on each must not change ----------------------- */

#define MAXCTX 16
static AioctxContext *involved[MAXCTX];
static pthread_mutex_t involved_lock = PTHREAD_MUTEX_INITIALIZER;

static void involve(AioctxContext *c)
{
    pthread_mutex_lock(&involved_lock);
    for (int i = 0; i < MAXCTX; i++)
        if (!involved[i]) {
            involved[i] = c;
            break;
        }
    pthread_mutex_unlock(&involved_lock);
}

static void uninvolve(AioctxContext *c)
{
    pthread_mutex_lock(&involved_lock);
    for (int i = 0; i < MAXCTX; i++)
        if (involved[i] == c)
            involved[i] = NULL;
    pthread_mutex_unlock(&involved_lock);
}

struct snap {
    AioctxContext *ctx[MAXCTX];
    int depth[MAXCTX];
};

static void snapshot(struct snap *s)
{
    pthread_mutex_lock(&involved_lock);
    for (int i = 0; i < MAXCTX; i++) {
        s->ctx[i] = involved[i];
        s->depth[i] = involved[i] ? aioctx_lock_depth(involved[i]) : 0;
    }
    pthread_mutex_unlock(&involved_lock);
}

/* 1 if the calling thread's depths equal the snapshot's; else names the first difference. */
static int depths_same(const struct snap *s, char *why, size_t len)
{
    for (int i = 0; i < MAXCTX; i++) {
        if (!s->ctx[i])
            continue;
        int now = aioctx_lock_depth(s->ctx[i]);
        if (now != s->depth[i]) {
            snprintf(why, len, "context '%s': depth %d before, %d after", aioctx_context_name(s->ctx[i]),
                     s->depth[i], now);
            return 0;
        }
    }
    return 1;
}

/* ---- a sentinel failure before each case -------------------------------------------------- */

#define SENTINEL "sentinel-no-such-node"
static AioctxGraph *sentinel_graph;

static void sentinel(void)
{
    (void)aioctx_graph_find(sentinel_graph, SENTINEL);   /* ENOENT, names SENTINEL */
    errno = 0;
}

/* ---- the checks ----------------------------------------------------------------------------- */

enum kind {
    K_INT,      /* returns -E */
    K_PTR,      /* returns NULL, errno E */
    K_VAL,      /* returns a documented value, and records failure E */
    K_VOID,     /* void, records failure E */
    K_NOERR,    /* a no-op or success: records no failure */
};

struct got {
    long long rc;
    int err;
    int last;
    char msg[1024];
};

static void capture(struct got *g, long long rc)
{
    g->err = errno;
    g->last = aioctx_last_errno();
    g->rc = rc;
    const char *m = aioctx_last_error();
    snprintf(g->msg, sizeof g->msg, "%s", m ? m : "(NULL)");
}

static void check(const char *expr, enum kind kind, long long want_rc, int want_errno, const struct got *g,
                  int depth_ok, const char *why, int line)
{
    char fn[64];
    function_of(expr, fn, sizeof fn);
    atomic_fetch_add(&cases, 1);
    switch (kind) {
    case K_INT:
        if (!is_int(g->rc, -want_errno, "%s -> -%s", expr, strerror(want_errno)))
            diag("line %d: %s", line, g->msg);
        break;
    case K_PTR:
        ok(g->rc == 0, "%s -> NULL", expr);
        break;
    case K_VAL:
    case K_NOERR:
        is_int(g->rc, want_rc, "%s -> %lld", expr, want_rc);
        break;
    case K_VOID:
        ok(1, "%s returns (void)", expr);
        break;
    }
    if (kind == K_NOERR) {
        ok(g->last == -ENOENT && strstr(g->msg, SENTINEL) != NULL,
           "  ... records no failure (last_errno %d)", g->last);
    } else {
        ok(g->err == want_errno && g->last == -want_errno,
           "  ... errno %d (%s), aioctx_last_errno() %d", g->err, strerror(g->err), g->last);
        int fresh = strncmp(g->msg, fn, strlen(fn)) == 0 && g->msg[strlen(fn)] == ':' &&
                    strstr(g->msg, SENTINEL) == NULL;
        if (!ok(fresh, "  ... last_error names %s: '%.200s'", fn, g->msg))
            diag("line %d: full message: %s", line, g->msg);
    }
    if (!ok(depth_ok, "  ... the caller's lock depths are unchanged"))
        diag("line %d: %s", line, why);
}

/* Runs one case: snapshot the depths, make the sentinel failure, call, capture. */
#define RUN_CASE(text, kind, want_rc, want_errno, value)                                     \
    do {                                                                                      \
        struct snap s_;                                                                       \
        struct got g_;                                                                        \
        char w_[256] = "";                                                                    \
        snapshot(&s_);                                                                        \
        sentinel();                                                                           \
        long long r_ = (long long)(value);                                                    \
        capture(&g_, r_);                                                                     \
        int d_ = depths_same(&s_, w_, sizeof w_);                                             \
        check((text), (kind), (want_rc), (want_errno), &g_, d_, w_, __LINE__);                \
    } while (0)

/* An int (or int64) call that must fail with -E. */
#define MISUSE_INT(expr, E) RUN_CASE(#expr, K_INT, 0, (E), (expr))
/* A constructor (or getter) that must return NULL, errno E. */
#define MISUSE_PTR(expr, E) RUN_CASE(#expr, K_PTR, 0, (E), ((const void *)(expr) != NULL))
/* A call documented to return V on this misuse, recording failure E. */
#define MISUSE_VAL(expr, V, E) RUN_CASE(#expr, K_VAL, (V), (E), (expr))
/* A void call that must record failure E. */
#define MISUSE_VOID(stmt, E) RUN_CASE(#stmt, K_VOID, 0, (E), ((stmt), 0))
/* A call documented as a no-op or a success: returns V, records no failure. */
#define NOERR(expr, V) RUN_CASE(#expr, K_NOERR, (V), 0, (expr))
#define NOERR_VOID(stmt) RUN_CASE(#stmt, K_NOERR, 0, 0, ((stmt), 0))

/* A case run where TAP cannot be printed (a callback): checked later. */
struct rec {
    struct got g;
    int depth_ok;
    char why[256];
};

#define RECORD(r, expr)                                                                       \
    do {                                                                                      \
        struct snap s_;                                                                       \
        snapshot(&s_);                                                                        \
        sentinel();                                                                           \
        long long v_ = (long long)(expr);                                                     \
        capture(&(r)->g, v_);                                                                 \
        (r)->depth_ok = depths_same(&s_, (r)->why, sizeof (r)->why);                          \
    } while (0)

static void check_rec(const char *text, int want_errno, const struct rec *r, int line)
{
    check(text, K_INT, 0, want_errno, &r->g, r->depth_ok, r->why, line);
}

/* ---- fixtures --------------------------------------------------------------------------------- */

static AioctxContext *main_ctx;
static AioctxContext *ctx_a, *ctx_b;
static AioctxIoThread *iot;
static AioctxContext *iot_ctx;
static AioctxGraph *g;                     /* nodes: c_main, c_io, raw_rw, raw_ro */
static AioctxNode *c_main, *c_io, *raw_rw, *raw_ro;
static AioctxGraph *g_inactive;            /* inactive nodes: in_c, in_raw */
static AioctxNode *in_c, *in_raw;
static char dir[64], img_rw[128], img_ro[128], img_in[128], img_locked[128], fifo[128], sock[128],
    regular[128], root_only[128], sub_dir[128], big_img[128];

static void cb(void *opaque)
{
    (void)opaque;
}

static void io_cb(void *opaque, int64_t ret)
{
    if (opaque)
        *(int64_t *)opaque = ret;
}

static bool cond_false(void *opaque)
{
    (void)opaque;
    return false;
}

static void line_cb(void *opaque, const char *line)
{
    (void)opaque;
    (void)line;
}

static void set_flag(void *opaque)
{
    atomic_store((atomic_int *)opaque, 1);
}

static bool flag_clear(void *opaque)
{
    return !atomic_load((atomic_int *)opaque);
}

/* Runs fn(arg) in a new thread and waits for it. */
static void in_thread(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    pthread_create(&t, NULL, fn, arg);
    pthread_join(t, NULL);
}

/* ---- contexts and their lock ------------------------------------------------------------------ */

static void test_contexts(void)
{
    AioctxContextStats st;
    diag("contexts and the lock: invalid arguments");
    MISUSE_PTR(aioctx_context_new(NULL), EINVAL);
    MISUSE_PTR(aioctx_context_new(""), EINVAL);
    MISUSE_PTR(aioctx_context_new("\xff\xfe not UTF-8"), EINVAL);
    MISUSE_PTR(aioctx_context_ref(NULL), EINVAL);
    NOERR_VOID(aioctx_context_unref(NULL));
    NOERR_VOID(aioctx_context_unref(main_ctx));
    ok(aioctx_context_id(main_ctx) > 0, "  the main context survives an unref (never freed)");
    NOERR(aioctx_context_ref(main_ctx) == main_ctx, 1);
    NOERR(aioctx_main_context() == main_ctx, 1);
    MISUSE_PTR(aioctx_context_name(NULL), EINVAL);
    MISUSE_VAL(aioctx_context_id(NULL), 0, EINVAL);
    MISUSE_INT(aioctx_context_claim(NULL), EINVAL);
    MISUSE_INT(aioctx_acquire(NULL), EINVAL);
    MISUSE_INT(aioctx_try_acquire(NULL), EINVAL);
    MISUSE_INT(aioctx_release(NULL), EINVAL);
    MISUSE_INT(aioctx_lock_depth(NULL), EINVAL);
    MISUSE_INT(aioctx_poll(NULL, false), EINVAL);
    MISUSE_INT(aioctx_poll(NULL, true), EINVAL);
    MISUSE_INT(aioctx_notify(NULL), EINVAL);
    MISUSE_INT(aioctx_context_fd(NULL), EINVAL);
    MISUSE_INT(aioctx_context_deadline_ns(NULL), EINVAL);
    MISUSE_INT(aioctx_context_stats(NULL, &st), EINVAL);
    MISUSE_INT(aioctx_context_stats(ctx_a, NULL), EINVAL);
    NOERR(aioctx_clock_ns() > 0, 1);
    NOERR(aioctx_context_claim(main_ctx), 0);   /* already the home: 0 */

    diag("contexts: wrong thread, wrong state (main thread)");
    MISUSE_INT(aioctx_context_claim(iot_ctx), EPERM);
    MISUSE_INT(aioctx_poll(iot_ctx, false), EPERM);
    MISUSE_INT(aioctx_poll(iot_ctx, true), EPERM);
    MISUSE_INT(aioctx_release(ctx_a), EPERM);                 /* never acquired */
    is_int(aioctx_acquire(ctx_a), 0, "acquire ctx-a");
    is_int(aioctx_release(ctx_a), 0, "release ctx-a");
    MISUSE_INT(aioctx_release(ctx_a), EPERM);                 /* released twice */
    is_int(aioctx_acquire(ctx_a), 0, "acquire ctx-a twice (recursive)");
    is_int(aioctx_acquire(ctx_a), 0, "  ...");
    is_int(aioctx_release(ctx_a), 0, "release once");
    is_int(aioctx_release(ctx_a), 0, "release twice");
    MISUSE_INT(aioctx_release(ctx_a), EPERM);                 /* a third time */
    is_int(aioctx_lock_depth(ctx_a), 0, "depth 0 after the refused release");

    diag("fd handlers");
    int closed = 1000;
    while (fcntl(closed, F_GETFD) != -1)   /* an fd number that is not open */
        closed++;
    int reg = open(regular, O_RDONLY);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    MISUSE_INT(aioctx_set_fd_handler(NULL, 0, cb, NULL, NULL), EINVAL);
    MISUSE_INT(aioctx_set_fd_handler(ctx_a, -1, cb, NULL, NULL), EINVAL);
    MISUSE_INT(aioctx_set_fd_handler(ctx_a, -7, NULL, NULL, NULL), EINVAL);
    MISUSE_INT(aioctx_set_fd_handler(ctx_a, INT_MIN, NULL, cb, NULL), EINVAL);
    MISUSE_INT(aioctx_set_fd_handler(ctx_a, closed, cb, NULL, NULL), EBADF);
    MISUSE_INT(aioctx_set_fd_handler(ctx_a, reg, cb, NULL, NULL), EPERM);
    MISUSE_INT(aioctx_set_fd_handler(ctx_a, dfd, NULL, cb, NULL), EPERM);
    NOERR(aioctx_set_fd_handler(ctx_a, closed, NULL, NULL, NULL), 0);  /* removing an fd never added */
    close(reg);
    close(dfd);
}

/* The other thread's view: everything below is refused there. */
static void *wrong_thread(void *arg)
{
    (void)arg;
    diag("wrong thread (a plain thread with no event loop of its own)");
    MISUSE_INT(aioctx_release(ctx_a), EPERM);                 /* owned by main */
    MISUSE_INT(aioctx_try_acquire(ctx_a), EBUSY);
    MISUSE_INT(aioctx_release(main_ctx), EPERM);              /* owned by nobody */
    MISUSE_INT(aioctx_poll(main_ctx, false), EPERM);          /* home is main */
    MISUSE_INT(aioctx_poll(main_ctx, true), EPERM);
    MISUSE_INT(aioctx_context_claim(main_ctx), EPERM);
    MISUSE_INT(aioctx_poll(iot_ctx, false), EPERM);
    MISUSE_INT(aioctx_poll_while(iot_ctx, always, NULL, 0, 0), EPERM);   /* no loop to poll */
    MISUSE_INT(aioctx_graph_inactivate_all(g), EPERM);
    MISUSE_INT(aioctx_graph_activate_all(g), EPERM);
    MISUSE_INT(aioctx_node_drain(c_main), EPERM);
    MISUSE_INT(aioctx_node_drain(c_io), EPERM);
    MISUSE_INT(aioctx_node_flush(c_io), EPERM);
    MISUSE_INT(aioctx_node_flush(raw_rw), EPERM);
    return NULL;
}

static void test_wrong_thread(void)
{
    is_int(aioctx_acquire(ctx_a), 0, "main acquires ctx-a");
    in_thread(wrong_thread, NULL);
    is_int(aioctx_lock_depth(ctx_a), 1, "main still holds ctx-a once after the other thread's refused release");
    is_int(aioctx_release(ctx_a), 0, "main releases ctx-a");
    for (int i = 0; i < 2; i++)
        ok(!aioctx_node_is_inactive(i ? c_io : c_main), "the refused graph-wide calls changed no node (%d)", i);
}

/* ---- an IOThread misusing the API from its own callbacks ------------------------------------- */

struct iot_results {
    atomic_int done;
    struct rec free_self, poll_main, claim_main, inactivate, drain;
    int depth_in_cb;
};

static void iot_misuse_bh(void *opaque)
{
    struct iot_results *r = opaque;
    r->depth_in_cb = aioctx_lock_depth(iot_ctx);
    RECORD(&r->free_self, aioctx_iothread_free(iot));
    RECORD(&r->poll_main, aioctx_poll(main_ctx, false));
    RECORD(&r->claim_main, aioctx_context_claim(main_ctx));
    RECORD(&r->inactivate, aioctx_graph_inactivate_all(g));
    RECORD(&r->drain, aioctx_node_drain(c_main));   /* c_io: its home thread may */
    atomic_store(&r->done, 1);
}

static bool iot_not_done(void *opaque)
{
    return !atomic_load(&((struct iot_results *)opaque)->done);
}

static void test_iothread(void)
{
    diag("IOThreads");
    MISUSE_PTR(aioctx_iothread_new(NULL), EINVAL);
    MISUSE_PTR(aioctx_iothread_new(""), EINVAL);
    MISUSE_PTR(aioctx_iothread_new("\xc3\x28 bad UTF-8"), EINVAL);
    MISUSE_PTR(aioctx_iothread_context(NULL), EINVAL);
    NOERR(aioctx_iothread_free(NULL), 0);

    /* Freeing an IOThread while holding its context: -EDEADLK, it keeps running. */
    is_int(aioctx_acquire(iot_ctx), 0, "main acquires the IOThread's context");
    MISUSE_INT(aioctx_iothread_free(iot), EDEADLK);
    is_int(aioctx_acquire(iot_ctx), 0, "  and again (depth 2)");
    MISUSE_INT(aioctx_iothread_free(iot), EDEADLK);
    is_int(aioctx_release(iot_ctx), 0, "release");
    is_int(aioctx_release(iot_ctx), 0, "release");
    atomic_int flag = 0;
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag, &flag);
    is_int(aioctx_poll_while(iot_ctx, flag_clear, &flag, long_timeout(), 0), 0,
           "  the IOThread still runs BHs after the refused frees");

    /* From the IOThread's own callback (its context held once by the dispatch). */
    struct iot_results r;
    memset(&r, 0, sizeof r);
    aioctx_bh_schedule_oneshot(iot_ctx, iot_misuse_bh, &r);
    is_int(aioctx_poll_while(iot_ctx, iot_not_done, &r, long_timeout(), 0), 0, "the IOThread ran the misuse BH");
    is_int(r.depth_in_cb, 1, "  a BH runs with its context held once");
    check_rec("aioctx_iothread_free(it) from its own BH", EDEADLK, &r.free_self, __LINE__);
    check_rec("aioctx_poll(main_ctx) from the IOThread", EPERM, &r.poll_main, __LINE__);
    check_rec("aioctx_context_claim(main_ctx) from the IOThread", EPERM, &r.claim_main, __LINE__);
    check_rec("aioctx_graph_inactivate_all(g) from the IOThread", EPERM, &r.inactivate, __LINE__);
    check_rec("aioctx_node_drain(c_main) from the IOThread", EPERM, &r.drain, __LINE__);
    atomic_store(&flag, 0);
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag, &flag);
    is_int(aioctx_poll_while(iot_ctx, flag_clear, &flag, long_timeout(), 0), 0,
           "  the IOThread still runs BHs after its refused self-free");
}

/* ---- bottom halves and timers -------------------------------------------------------------------- */

static void test_bh_timer(void)
{
    diag("bottom halves");
    MISUSE_PTR(aioctx_bh_new(NULL, cb, NULL), EINVAL);
    MISUSE_PTR(aioctx_bh_new(ctx_a, NULL, NULL), EINVAL);
    MISUSE_INT(aioctx_bh_schedule(NULL), EINVAL);
    MISUSE_INT(aioctx_bh_cancel(NULL), EINVAL);
    NOERR_VOID(aioctx_bh_delete(NULL));
    MISUSE_INT(aioctx_bh_schedule_oneshot(NULL, cb, NULL), EINVAL);
    MISUSE_INT(aioctx_bh_schedule_oneshot(ctx_a, NULL, NULL), EINVAL);
    MISUSE_INT(aioctx_bh_schedule_oneshot(NULL, NULL, NULL), EINVAL);

    diag("timers");
    MISUSE_PTR(aioctx_timer_new(NULL, cb, NULL), EINVAL);
    MISUSE_PTR(aioctx_timer_new(ctx_a, NULL, NULL), EINVAL);
    MISUSE_INT(aioctx_timer_mod(NULL, 0), EINVAL);
    MISUSE_INT(aioctx_timer_del(NULL), EINVAL);
    NOERR_VOID(aioctx_timer_free(NULL));
    AioctxTimer *t = aioctx_timer_new(ctx_a, cb, NULL);
    MISUSE_INT(aioctx_timer_mod(t, -1), EINVAL);
    MISUSE_INT(aioctx_timer_mod(t, INT64_MIN), EINVAL);
    is_int(aioctx_context_deadline_ns(ctx_a), -1, "  refused arms left the timer disarmed");
    NOERR(aioctx_timer_del(t), 0);                 /* not armed: 0 */
    aioctx_timer_free(t);

    diag("a BH and a timer that outlive their context");
    AioctxContext *tmp = aioctx_context_new("misuse-doomed");
    AioctxBh *bh = aioctx_bh_new(tmp, cb, NULL);
    AioctxTimer *tt = aioctx_timer_new(tmp, cb, NULL);
    aioctx_context_unref(tmp);
    MISUSE_INT(aioctx_bh_schedule(bh), ENODEV);
    MISUSE_INT(aioctx_timer_mod(tt, 0), ENODEV);
    NOERR(aioctx_bh_cancel(bh), 0);
    NOERR(aioctx_timer_del(tt), 0);
    NOERR_VOID(aioctx_bh_delete(bh));
    NOERR_VOID(aioctx_timer_free(tt));
}

/* ---- sets ---------------------------------------------------------------------------------------- */

static AioctxSet *shared_set;

static void *set_other_thread(void *arg)
{
    (void)arg;
    diag("a set held by main, misused by another thread");
    MISUSE_INT(aioctx_set_release(shared_set), EPERM);
    MISUSE_INT(aioctx_set_acquire(shared_set), EBUSY);
    MISUSE_INT(aioctx_set_add(shared_set, main_ctx), EBUSY);
    MISUSE_INT(aioctx_release(ctx_b), EPERM);
    return NULL;
}

static void test_sets(void)
{
    diag("sets: invalid arguments");
    AioctxSet *s = NULL;
    NOERR((s = aioctx_set_new()) != NULL, 1);
    MISUSE_INT(aioctx_set_add(NULL, ctx_a), EINVAL);
    MISUSE_INT(aioctx_set_add(s, NULL), EINVAL);
    MISUSE_INT(aioctx_set_add(NULL, NULL), EINVAL);
    MISUSE_VAL(aioctx_set_len(NULL), 0, EINVAL);
    MISUSE_INT(aioctx_set_acquire(NULL), EINVAL);
    MISUSE_INT(aioctx_set_release(NULL), EINVAL);
    NOERR_VOID(aioctx_set_free(NULL));

    diag("sets: wrong state");
    NOERR(aioctx_set_acquire(s), 0);     /* an empty set */
    NOERR(aioctx_set_release(s), 0);
    MISUSE_INT(aioctx_set_release(s), EPERM);
    is_int(aioctx_set_add(s, ctx_a), 1, "add ctx-a");
    is_int(aioctx_set_add(s, ctx_b), 1, "add ctx-b");
    is_int(aioctx_set_add(s, iot_ctx), 1, "add the IOThread's context");
    NOERR(aioctx_set_add(s, ctx_b), 0);
    MISUSE_INT(aioctx_set_release(s), EPERM);                  /* never acquired */
    is_int(aioctx_set_acquire(s), 0, "acquire the set");
    MISUSE_INT(aioctx_set_acquire(s), EBUSY);                  /* twice */
    MISUSE_INT(aioctx_set_add(s, main_ctx), EBUSY);            /* while held */
    is_int((int)aioctx_set_len(s), 3, "  the refused add added nothing");
    shared_set = s;
    in_thread(set_other_thread, NULL);
    ok(aioctx_lock_depth(ctx_a) == 1 && aioctx_lock_depth(ctx_b) == 1 && aioctx_lock_depth(iot_ctx) == 1,
       "main still holds each member once after the other thread's refusals");
    is_int(aioctx_set_release(s), 0, "release the set");
    MISUSE_INT(aioctx_set_release(s), EPERM);                  /* twice */

    /* A member released behind the set's back: -EPERM, the others still released. */
    is_int(aioctx_set_acquire(s), 0, "acquire the set again");
    is_int(aioctx_release(ctx_b), 0, "release ctx-b behind the set's back");
    {
        struct snap before;
        struct got got;
        snapshot(&before);
        sentinel();
        capture(&got, aioctx_set_release(s));
        is_int(got.rc, -EPERM, "aioctx_set_release(s) with a member released behind its back -> -EPERM");
        ok(got.err == EPERM && got.last == -EPERM, "  ... errno EPERM");
        like(got.msg, "aioctx_set_release:", "  ... message '%.160s'", got.msg);
        ok(aioctx_lock_depth(ctx_a) == 0 && aioctx_lock_depth(ctx_b) == 0 && aioctx_lock_depth(iot_ctx) == 0,
           "  ... and every other member was still released once (all depths 0)");
        atomic_fetch_add(&cases, 1);
    }

    /* Freeing a held set whose member was released behind its back: void, but records -EPERM. */
    is_int(aioctx_set_acquire(s), 0, "acquire the set again");
    is_int(aioctx_release(ctx_a), 0, "release ctx-a behind the set's back");
    {
        struct got got;
        char fn[64];
        sentinel();
        aioctx_set_free(s);
        capture(&got, 0);
        function_of("aioctx_set_free", fn, sizeof fn);
        atomic_fetch_add(&cases, 1);
        ok(got.err == EPERM && got.last == -EPERM, "aioctx_set_free(held set, a member released behind its back) "
                                                   "records -EPERM (errno %d, last %d)", got.err, got.last);
        like(got.msg, "aioctx_set_free:", "  ... message '%.160s'", got.msg);
        ok(aioctx_lock_depth(ctx_a) == 0 && aioctx_lock_depth(ctx_b) == 0 && aioctx_lock_depth(iot_ctx) == 0,
           "  ... the other members were released, nothing is held");
    }
    s = aioctx_set_new();
    aioctx_set_add(s, ctx_a);
    aioctx_set_add(s, ctx_b);

    /* A set holding a context the caller also holds: depth 2 while held, 1 after. */
    is_int(aioctx_acquire(ctx_a), 0, "acquire ctx-a by hand");
    is_int(aioctx_set_acquire(s), 0, "acquire the set");
    is_int(aioctx_lock_depth(ctx_a), 2, "  ctx-a at depth 2");
    aioctx_set_free(s);
    is_int(aioctx_lock_depth(ctx_a), 1, "set_free released the held set: back to depth 1");
    is_int(aioctx_lock_depth(ctx_b), 0, "  ctx-b free");
    is_int(aioctx_release(ctx_a), 0, "release ctx-a");
}

/* ---- waiting ------------------------------------------------------------------------------------- */

static void test_wait(void)
{
    diag("poll_while");
    MISUSE_INT(aioctx_poll_while(NULL, cond_false, NULL, 0, 0), EINVAL);
    MISUSE_INT(aioctx_poll_while(main_ctx, NULL, NULL, 0, 0), EINVAL);
    MISUSE_INT(aioctx_poll_while(main_ctx, cond_false, NULL, 0, 4), EINVAL);
    MISUSE_INT(aioctx_poll_while(main_ctx, cond_false, NULL, 0, 0x80000000u), EINVAL);
    MISUSE_INT(aioctx_poll_while(main_ctx, cond_false, NULL, -1, 0xffffffffu), EINVAL);
    NOERR(aioctx_poll_while(main_ctx, cond_false, NULL, -12345, 0), 0);  /* < 0: no timeout */
    MISUSE_INT(aioctx_poll_while(main_ctx, always, NULL, 0, 0), ETIMEDOUT);
    MISUSE_INT(aioctx_poll_while(main_ctx, always, NULL, 1 * MS, 0), ETIMEDOUT);
    like(aioctx_last_error(), "main", "  the timeout message has the dump (names the main context)");
    MISUSE_INT(aioctx_poll_while(iot_ctx, always, NULL, 1 * MS, 0), ETIMEDOUT);
    is_int(aioctx_acquire(iot_ctx), 0, "hold the IOThread's context once");
    MISUSE_INT(aioctx_poll_while(iot_ctx, always, NULL, 1 * MS, 0), ETIMEDOUT);
    is_int(aioctx_acquire(iot_ctx), 0, "hold it twice");
    int64_t t0 = tap_now_ns();
    MISUSE_INT(aioctx_poll_while(iot_ctx, always, NULL, 10 * SEC, 0), EDEADLK);
    ok(tap_now_ns() - t0 < 2 * SEC * tap_scale(), "  -EDEADLK at once, not after the timeout");
    like(aioctx_last_error(), "2 times", "  the message says how deep: '%.120s'", aioctx_last_error());
    MISUSE_INT(aioctx_poll_while(iot_ctx, always, NULL, -1, 0), EDEADLK);
    /* The documented escape hatch works, and restores the depth. */
    atomic_int flag = 0;
    aioctx_bh_schedule_oneshot(iot_ctx, set_flag, &flag);
    NOERR(aioctx_poll_while(iot_ctx, flag_clear, &flag, long_timeout(), AIOCTX_WAIT_RELEASE_ALL), 0);
    is_int(aioctx_lock_depth(iot_ctx), 2, "  AIOCTX_WAIT_RELEASE_ALL restored depth 2");
    aioctx_release(iot_ctx);
    aioctx_release(iot_ctx);
    NOERR_VOID(aioctx_wait_kick());
}

/* ---- diagnostics and library-wide calls ------------------------------------------------------------ */

static void test_diag(void)
{
    char buf[64];
    diag("diagnostics");
    MISUSE_VAL(aioctx_debug_dump(NULL, 10), 0, EINVAL);
    MISUSE_VAL(aioctx_debug_dump(NULL, SIZE_MAX), 0, EINVAL);
    NOERR(aioctx_debug_dump(NULL, 0) > 0, 1);
    NOERR(aioctx_debug_dump(buf, 0) > 0, 1);      /* buf untouched, length returned */
    NOERR(aioctx_debug_dump(buf, 1) > 0 && buf[0] == '\0', 1);
    MISUSE_INT(aioctx_debug_dump_lines(NULL, NULL), EINVAL);
    NOERR(aioctx_debug_dump_lines(line_cb, NULL) > 0, 1);
    NOERR_VOID(aioctx_set_log_handler(NULL, NULL));
    NOERR(aioctx_version() != NULL, 1);
    NOERR(aioctx_last_error() != NULL, 1);
    NOERR(aioctx_last_errno(), -ENOENT);          /* reads the sentinel's failure */
}

/* ---- graphs and nodes ------------------------------------------------------------------------------ */

struct handover_probe {
    int ran;
    struct rec start_other, pwrite_raw, pread_raw;
    int64_t ret;
};
static struct handover_probe hp;
static unsigned char hp_buf[512];

/* A driver flush that misuses the nodes while inactivate_all runs. */
static int probe_flush(AioctxNode *n, void *opaque)
{
    (void)n;
    (void)opaque;
    if (hp.ran++)
        return 0;
    RECORD(&hp.start_other, aioctx_node_start_request(c_main, false));
    RECORD(&hp.pwrite_raw, aioctx_node_pwrite(raw_rw, hp_buf, sizeof hp_buf, 0, io_cb, &hp.ret));
    RECORD(&hp.pread_raw, aioctx_node_pread(raw_rw, hp_buf, sizeof hp_buf, 0, io_cb, &hp.ret));
    return 0;
}

static int calls_on_c_io;

static int count_call(AioctxNode *n, void *opaque)
{
    (void)n;
    (void)opaque;
    calls_on_c_io++;
    return 0;
}

static void test_graph(void)
{
    struct snap s;
    diag("graphs: invalid arguments");
    AioctxGraph *tmp = NULL;
    NOERR((tmp = aioctx_graph_new(NULL)) != NULL, 1);
    aioctx_graph_free(tmp);
    NOERR((tmp = aioctx_graph_new(ctx_b)) != NULL, 1);
    aioctx_graph_free(tmp);
    NOERR_VOID(aioctx_graph_free(NULL));
    MISUSE_PTR(aioctx_graph_find(NULL, "c_main"), EINVAL);
    MISUSE_PTR(aioctx_graph_find(g, NULL), EINVAL);
    MISUSE_PTR(aioctx_graph_find(g, "no-such-node"), ENOENT);
    MISUSE_PTR(aioctx_graph_find(g, ""), ENOENT);
    MISUSE_INT(aioctx_graph_inactivate_all(NULL), EINVAL);
    MISUSE_INT(aioctx_graph_activate_all(NULL), EINVAL);
    NOERR(aioctx_graph_find(g, "c_main") == c_main, 1);

    diag("graphs: the caller holds a node's context");
    is_int(aioctx_acquire(iot_ctx), 0, "hold c_io's context (the IOThread's) once");
    snapshot(&s);
    MISUSE_INT(aioctx_graph_inactivate_all(g), EDEADLK);
    int none = 1;
    AioctxNode *all[] = { c_main, c_io, raw_rw, raw_ro };
    for (int i = 0; i < 4; i++)
        none &= !aioctx_node_is_inactive(all[i]);
    ok(none, "  nothing was inactivated");
    is_int(calls_on_c_io, 0, "  no driver callback ran");
    is_int(aioctx_node_start_request(c_io, true), 0, "  c_io still takes writes (not left quiesced)");
    aioctx_node_end_request(c_io);
    {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", aioctx_last_error());
        like(msg, "'misuse-iot'", "  the message names the held context");
        int names_culprit = strstr(msg, "'c_io'") || strstr(msg, "'raw_rw'");
        if (!ok(names_culprit, "  the -EDEADLK message names a node whose context the caller holds"))
            diag("%s", msg);
        ok(strstr(msg, "holds it 2 times") == NULL, "  the -EDEADLK message gives the caller's real depth (1)");
    }
    is_int(aioctx_release(iot_ctx), 0, "release it");

    /* activate_all with the context held: refused the same way (-EDEADLK). */
    is_int(aioctx_graph_inactivate_all(g_inactive), 0, "(g_inactive stays inactive)");
    AioctxGraph *g2 = aioctx_graph_new(NULL);
    AioctxDriver counting = { count_call, count_call, count_call, NULL };
    AioctxNode *x = aioctx_node_new(g2, "x-io", iot_ctx, &counting, NULL);
    is_int(aioctx_graph_inactivate_all(g2), 0, "a graph with one node on the IOThread, inactivated");
    is_int(aioctx_acquire(iot_ctx), 0, "hold the IOThread's context once");
    calls_on_c_io = 0;
    MISUSE_INT(aioctx_graph_activate_all(g2), EDEADLK);
    ok(aioctx_node_is_inactive(x), "  the node stays inactive");
    is_int(calls_on_c_io, 0, "  the driver's activate did not run");
    is_int(aioctx_release(iot_ctx), 0, "release it");
    NOERR(aioctx_graph_activate_all(g2), 0);
    ok(!aioctx_node_is_inactive(x), "  then activate_all works");
    aioctx_graph_free(g2);

    diag("nodes: invalid arguments");
    MISUSE_PTR(aioctx_node_new(NULL, "x", main_ctx, NULL, NULL), EINVAL);
    MISUSE_PTR(aioctx_node_new(g, NULL, main_ctx, NULL, NULL), EINVAL);
    MISUSE_PTR(aioctx_node_new(g, "", main_ctx, NULL, NULL), EINVAL);
    MISUSE_PTR(aioctx_node_new(g, "\xff", main_ctx, NULL, NULL), EINVAL);
    MISUSE_PTR(aioctx_node_new(g, "x", NULL, NULL, NULL), EINVAL);
    MISUSE_PTR(aioctx_node_new(g, "c_main", main_ctx, NULL, NULL), EEXIST);
    MISUSE_PTR(aioctx_node_new(g, "raw_rw", iot_ctx, NULL, NULL), EEXIST);
    ok(aioctx_graph_find(g, "x") == NULL, "  no node 'x' was added by the refused calls");
    MISUSE_PTR(aioctx_node_name(NULL), EINVAL);
    MISUSE_PTR(aioctx_node_context(NULL), EINVAL);
    MISUSE_INT(aioctx_node_in_flight(NULL), EINVAL);
    MISUSE_VAL(aioctx_node_is_inactive(NULL), 0, EINVAL);
    MISUSE_INT(aioctx_node_start_request(NULL, false), EINVAL);
    MISUSE_INT(aioctx_node_start_request(NULL, true), EINVAL);
    MISUSE_VOID(aioctx_node_end_request(NULL), EINVAL);
    MISUSE_INT(aioctx_node_drain(NULL), EINVAL);
    MISUSE_INT(aioctx_node_flush(NULL), EINVAL);

    diag("nodes: edges");
    AioctxNode *a = aioctx_node_new(g, "edge-a", main_ctx, NULL, NULL);
    AioctxNode *b = aioctx_node_new(g, "edge-b", main_ctx, NULL, NULL);
    AioctxNode *c = aioctx_node_new(g, "edge-c", iot_ctx, NULL, NULL);
    AioctxGraph *other = aioctx_graph_new(NULL);
    AioctxNode *foreign = aioctx_node_new(other, "edge-a", main_ctx, NULL, NULL);
    ok(a && b && c && foreign, "nodes edge-a, edge-b, edge-c, and edge-a in another graph");
    MISUSE_INT(aioctx_node_attach_child(NULL, a), EINVAL);
    MISUSE_INT(aioctx_node_attach_child(a, NULL), EINVAL);
    MISUSE_INT(aioctx_node_attach_child(NULL, NULL), EINVAL);
    MISUSE_INT(aioctx_node_attach_child(a, a), ELOOP);
    NOERR(aioctx_node_attach_child(a, b), 0);
    NOERR(aioctx_node_attach_child(b, c), 0);
    NOERR(aioctx_node_attach_child(a, b), 0);                 /* exists: 0 */
    MISUSE_INT(aioctx_node_attach_child(b, a), ELOOP);
    MISUSE_INT(aioctx_node_attach_child(c, a), ELOOP);
    MISUSE_INT(aioctx_node_attach_child(c, b), ELOOP);
    MISUSE_INT(aioctx_node_attach_child(c, c), ELOOP);
    MISUSE_INT(aioctx_node_attach_child(a, foreign), EINVAL);
    MISUSE_INT(aioctx_node_attach_child(foreign, a), EINVAL);
    NOERR(aioctx_node_attach_child(a, c), 0);                 /* a shortcut, not a cycle */
    aioctx_graph_free(other);

    diag("nodes: requests in the wrong state");
    MISUSE_VOID(aioctx_node_end_request(c_main), EINVAL);      /* none in flight */
    is_int(aioctx_node_in_flight(c_main), 0, "  in flight still 0");
    MISUSE_INT(aioctx_node_start_request(in_c, true), EPERM);  /* inactive */
    MISUSE_INT(aioctx_node_start_request(in_raw, true), EPERM);
    MISUSE_INT(aioctx_node_start_request(raw_ro, true), EPERM); /* read-only */
    is_int(aioctx_node_in_flight(in_c) + aioctx_node_in_flight(raw_ro), 0, "  the refused requests are not counted");
    NOERR(aioctx_node_start_request(in_c, false), 0);          /* reads are fine */
    NOERR_VOID(aioctx_node_end_request(in_c));
    NOERR(aioctx_node_start_request(raw_ro, false), 0);
    NOERR_VOID(aioctx_node_end_request(raw_ro));

    diag("nodes: drain and flush from a double hold");
    aioctx_acquire(iot_ctx);
    aioctx_acquire(iot_ctx);
    MISUSE_INT(aioctx_node_drain(c_io), EDEADLK);
    MISUSE_INT(aioctx_node_flush(c_io), EDEADLK);
    aioctx_release(iot_ctx);
    aioctx_release(iot_ctx);

    diag("nodes: I/O");
    unsigned char buf[512];
    int64_t ret = 1;
    MISUSE_INT(aioctx_node_pread(NULL, buf, sizeof buf, 0, io_cb, NULL), EINVAL);
    MISUSE_INT(aioctx_node_pwrite(NULL, buf, sizeof buf, 0, io_cb, NULL), EINVAL);
    MISUSE_INT(aioctx_node_pread(raw_rw, NULL, sizeof buf, 0, io_cb, NULL), EINVAL);
    MISUSE_INT(aioctx_node_pwrite(raw_rw, NULL, 1, 0, io_cb, NULL), EINVAL);
    MISUSE_INT(aioctx_node_pread(c_main, buf, sizeof buf, 0, io_cb, NULL), ENOTSUP);
    MISUSE_INT(aioctx_node_pwrite(c_main, buf, sizeof buf, 0, io_cb, NULL), ENOTSUP);
    MISUSE_INT(aioctx_node_pwrite(in_raw, buf, sizeof buf, 0, io_cb, NULL), EPERM);
    MISUSE_INT(aioctx_node_pwrite(in_c, buf, sizeof buf, 0, io_cb, NULL), EPERM);
    MISUSE_INT(aioctx_node_pwrite(raw_ro, buf, sizeof buf, 0, io_cb, NULL), EPERM);
    is_int(aioctx_node_in_flight(c_main) + aioctx_node_in_flight(in_raw) + aioctx_node_in_flight(raw_ro), 0,
           "  refused I/O leaves nothing in flight");
    NOERR(aioctx_node_pread(in_raw, buf, sizeof buf, 0, io_cb, &ret), 0);   /* reads of inactive nodes work */
    NOERR(aioctx_node_drain(in_raw), 0);
    is_int(ret, (long long)sizeof buf, "  the read of the inactive node completed");
    /* An offset past what off_t can address: refused, through the callback. */
    ret = 1;
    NOERR(aioctx_node_pread(raw_rw, buf, sizeof buf, UINT64_MAX - 8, io_cb, &ret), 0);
    NOERR(aioctx_node_drain(raw_rw), 0);
    is_int(ret, -EINVAL, "  an offset beyond off_t completes with -EINVAL");

    diag("nodes: requests while inactivate_all runs (-EBUSY), from a driver's flush");
    AioctxDriver probe = { probe_flush, NULL, NULL, NULL };
    AioctxNode *pn = aioctx_node_new(g, "probe", main_ctx, &probe, NULL);
    memset(&hp, 0, sizeof hp);
    is_int(aioctx_graph_inactivate_all(g), 0, "inactivate_all (the probe's flush misuses the graph)");
    is_int(hp.ran, 1, "  the probe's flush ran once");
    check_rec("aioctx_node_start_request(c_main) during inactivate_all", EBUSY, &hp.start_other, __LINE__);
    check_rec("aioctx_node_pwrite(raw_rw) during inactivate_all", EBUSY, &hp.pwrite_raw, __LINE__);
    check_rec("aioctx_node_pread(raw_rw) during inactivate_all", EBUSY, &hp.pread_raw, __LINE__);
    MISUSE_INT(aioctx_node_pwrite(raw_rw, buf, sizeof buf, 0, io_cb, NULL), EPERM);   /* inactive now */
    MISUSE_INT(aioctx_node_start_request(c_io, true), EPERM);
    NOERR(aioctx_graph_inactivate_all(g), 0);        /* second call: no-op */
    NOERR(aioctx_graph_activate_all(g), 0);
    NOERR(aioctx_graph_activate_all(g), 0);          /* second call: no-op */
    ok(!aioctx_node_is_inactive(pn) && !aioctx_node_is_inactive(raw_rw), "  active again");
}

/* ---- re-entering the handover from a driver callback ------------------------------------------------ */

static AioctxGraph *gr;
static AioctxNode *ra, *rb;
static int re_flushes, re_inactivates[2];
static struct rec re_nested, re_request;

static int re_flush(AioctxNode *n, void *opaque)
{
    (void)opaque;
    if (n == ra && re_flushes++ == 0) {
        RECORD(&re_nested, aioctx_graph_inactivate_all(gr));
        RECORD(&re_request, aioctx_node_start_request(rb, false));
    }
    return 0;
}

static int re_inactivate(AioctxNode *n, void *opaque)
{
    (void)opaque;
    re_inactivates[n == rb]++;
    return 0;
}

static void test_reentrancy(void)
{
    diag("graph-wide calls re-entered from a driver callback (the home thread, mid-handover)");
    AioctxDriver d = { re_flush, re_inactivate, NULL, NULL };
    gr = aioctx_graph_new(NULL);
    ra = aioctx_node_new(gr, "re-a", main_ctx, &d, NULL);
    rb = aioctx_node_new(gr, "re-b", main_ctx, &d, NULL);
    aioctx_node_attach_child(ra, rb);
    is_int(aioctx_graph_inactivate_all(gr), 0, "the outer inactivate_all (re-a's flush re-enters it)");
    atomic_fetch_add(&cases, 2);
    if (!ok(re_nested.g.rc == -EBUSY, "inactivate_all re-entered from a driver's flush -> -EBUSY (a handover is in progress)"))
        diag("got %lld: %s", re_nested.g.rc, re_nested.g.msg);
    if (!ok(re_request.g.rc == -EBUSY, "a request started during the outer handover, after the nested call -> -EBUSY"))
        diag("got %lld", re_request.g.rc);
    int64_t left = aioctx_node_in_flight(rb);
    if (!ok(left == 0, "nothing is in flight on an inactivated node when inactivate_all returns 0"))
        diag("re-b has %lld request(s) in flight", (long long)left);
    if (!ok(re_inactivates[0] == 1 && re_inactivates[1] == 1, "each node's driver inactivate ran once"))
        diag("inactivate calls: re-a %d, re-b %d", re_inactivates[0], re_inactivates[1]);
    while (aioctx_node_in_flight(rb) > 0)
        aioctx_node_end_request(rb);
    aioctx_graph_free(gr);
}

/* ---- image files ----------------------------------------------------------------------------------- */

static void test_open_file(void)
{
    diag("images: invalid arguments");
    MISUSE_PTR(aioctx_node_open_file(NULL, "f", main_ctx, img_rw, 0), EINVAL);
    MISUSE_PTR(aioctx_node_open_file(g, NULL, main_ctx, img_rw, 0), EINVAL);
    MISUSE_PTR(aioctx_node_open_file(g, "", main_ctx, img_rw, 0), EINVAL);
    MISUSE_PTR(aioctx_node_open_file(g, "f", NULL, img_rw, 0), EINVAL);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, NULL, 0), EINVAL);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, img_ro, 32), EINVAL);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, img_ro, AIOCTX_OPEN_AIO_THREADS | AIOCTX_OPEN_AIO_IO_URING),
               EINVAL);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, img_ro, 0xffffffffu), EINVAL);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, "\xff", 0), EINVAL);
    MISUSE_PTR(aioctx_node_open_file(g, "raw_ro", main_ctx, img_ro, 0), EEXIST);
    MISUSE_PTR(aioctx_node_open_file(g, "c_main", main_ctx, img_ro, AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE), EEXIST);

    diag("images: missing files, directories, special files");
    char p[256];
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, "", 0), ENOENT);
    snprintf(p, sizeof p, "%s/missing.img", dir);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, p, 0), ENOENT);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, p, AIOCTX_OPEN_RDWR), ENOENT);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, p, AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE), ENOENT);
    like(aioctx_last_error(), p, "  the message names the path");
    {
        static char longpath[5000];
        memset(longpath, 'a', sizeof longpath - 1);
        longpath[0] = '/';
        MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, longpath, 0), ENAMETOOLONG);
    }
    snprintf(p, sizeof p, "%s/symlink-loop", dir);
    if (symlink(p, p) == 0)       /* a link to itself */
        MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, p, 0), ELOOP);
    else
        skip("open_file on a symlink loop -> ELOOP", "symlink() failed");
    snprintf(p, sizeof p, "%s/no-dir/x.img", dir);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, p, 0), ENOENT);
    snprintf(p, sizeof p, "%s/x.img", regular);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, p, 0), ENOTDIR);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, sub_dir, 0), EISDIR);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, sub_dir, AIOCTX_OPEN_RDWR), EISDIR);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, sub_dir, AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE), EISDIR);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, "/", 0), EISDIR);
    like(aioctx_last_error(), "'/'", "  the message names the path");
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, sock, 0), ENXIO);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, sock, AIOCTX_OPEN_RDWR), ENXIO);

    diag("images: an image another open (here: this process) write-locks");
    AioctxGraph *g2 = aioctx_graph_new(NULL);
    AioctxNode *holder = aioctx_node_open_file(g2, "holder", main_ctx, img_locked, AIOCTX_OPEN_RDWR);
    ok(holder != NULL, "another graph opens %s RDWR (takes the write lock)", img_locked);
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, img_locked, AIOCTX_OPEN_RDWR), EAGAIN);
    like(aioctx_last_error(), "locked by another process", "  'locked by another process'");
    AioctxNode *inc = aioctx_node_open_file(g, "incoming", iot_ctx, img_locked, AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE);
    ok(inc != NULL, "RDWR|INACTIVE of the locked image works");
    MISUSE_INT(aioctx_graph_activate_all(g), EAGAIN);
    ok(aioctx_node_is_inactive(inc), "  the incoming node stays inactive");
    MISUSE_INT(aioctx_node_pwrite(inc, hp_buf, 16, 0, io_cb, NULL), EPERM);
    aioctx_graph_free(g2);
    NOERR(aioctx_graph_activate_all(g), 0);
    ok(!aioctx_node_is_inactive(inc), "  activate_all works once the holder is gone");
    ok(aioctx_graph_find(g, "f") == NULL, "no refused open added a node 'f'");
}

/* ---- run in children: a non-root user, a FIFO, a read-only mount ----------------------------------- */

/* One result a child sends back. */
struct child_result {
    char what[160];
    int null;
    int err;
    int last;
    char msg[240];
    int added;
};

static void child_open(int fd, AioctxGraph *cg, const char *what, const char *path, unsigned flags)
{
    struct child_result r;
    memset(&r, 0, sizeof r);
    snprintf(r.what, sizeof r.what, "%s", what);
    errno = 0;
    AioctxNode *n = aioctx_node_open_file(cg, "child", aioctx_main_context(), path, flags);
    r.err = errno;
    r.last = aioctx_last_errno();
    snprintf(r.msg, sizeof r.msg, "%s", aioctx_last_error());
    r.null = n == NULL;
    r.added = aioctx_graph_find(cg, "child") != NULL;
    ssize_t w = write(fd, &r, sizeof r);
    (void)w;
}

/* The unprivileged child: nobody:nogroup cannot write root's files. */
static int child_nobody(int fd)
{
    if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0 || geteuid() != 65534)
        return 2;
    AioctxGraph *cg = aioctx_graph_new(NULL);
    child_open(fd, cg, "RDWR on a read-only (0444) image", img_ro, AIOCTX_OPEN_RDWR);
    child_open(fd, cg, "RDWR|INACTIVE on a read-only (0444) image", img_ro, AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE);
    child_open(fd, cg, "RDWR on root's 0644 image", img_rw, AIOCTX_OPEN_RDWR);
    child_open(fd, cg, "read-only open of a 0600 image", root_only, 0);
    aioctx_graph_free(cg);
    return 0;
}

/* The FIFO child: the open must not block forever (a FIFO without writer). */
static int child_fifo(int fd)
{
    AioctxGraph *cg = aioctx_graph_new(NULL);
    child_open(fd, cg, "read-only open of a FIFO", fifo, 0);
    child_open(fd, cg, "RDWR open of a FIFO", fifo, AIOCTX_OPEN_RDWR);
    aioctx_graph_free(cg);
    return 0;
}

/* A plain thread claims a context and exits: the context's home is gone. */
static void *claim_and_exit(void *arg)
{
    aioctx_context_claim(arg);
    return NULL;
}

static void child_send(int fd, const char *what, long long rc)
{
    struct child_result r;
    memset(&r, 0, sizeof r);
    snprintf(r.what, sizeof r.what, "%s", what);
    r.err = errno;
    r.last = aioctx_last_errno();
    r.null = (int)rc;
    snprintf(r.msg, sizeof r.msg, "%s", aioctx_last_error());
    ssize_t w = write(fd, &r, sizeof r);
    (void)w;
}

static int wrap_home_exited(int fd, const char *arg)
{
    (void)arg;
    aioctx_context_claim(aioctx_main_context());
    AioctxContext *c = aioctx_context_new("home-exited");
    pthread_t t;
    pthread_create(&t, NULL, claim_and_exit, c);
    pthread_join(t, NULL);
    AioctxGraph *cg = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_new(cg, "orphan", c, NULL, NULL);
    child_send(fd, "node_flush", aioctx_node_flush(n));
    child_send(fd, "inactivate_all", aioctx_graph_inactivate_all(cg));
    return 0;
}

/* poll_while while holding a set {X, Y}, against a thread acquiring {X, Y}. */
static AioctxContext *abba_x, *abba_y;

static void *abba_other(void *arg)
{
    (void)arg;
    AioctxSet *s = aioctx_set_new();
    aioctx_set_add(s, abba_x);
    aioctx_set_add(s, abba_y);
    aioctx_set_acquire(s);
    aioctx_set_release(s);
    aioctx_set_free(s);
    return NULL;
}

/* Whether some thread sleeps in acquire of context `name` (from the dump). */
static int has_acquire_waiter(const char *name)
{
    static char dump[1 << 15];
    char key[64];
    aioctx_debug_dump(dump, sizeof dump);
    snprintf(key, sizeof key, "context '%s'", name);
    char *line = strstr(dump, key);
    char *end = line ? strchr(line, '\n') : NULL;
    if (end)
        *end = '\0';
    return line && strstr(line, ", 0 waiting to acquire") == NULL && strstr(line, "waiting to acquire");
}

static int wrap_abba(int fd, const char *arg)
{
    (void)arg;
    aioctx_context_claim(aioctx_main_context());
    AioctxIoThread *it = aioctx_iothread_new("abba-x");
    abba_x = aioctx_iothread_context(it);
    abba_y = aioctx_context_new("abba-y");
    AioctxSet *s = aioctx_set_new();
    aioctx_set_add(s, abba_x);
    aioctx_set_add(s, abba_y);
    aioctx_set_acquire(s);
    pthread_t t;
    pthread_create(&t, NULL, abba_other, NULL);
    while (!has_acquire_waiter("abba-x"))   /* the other thread now sleeps in acquire(X) */
        tap_sleep_ms(1);
    /* Releases X around its poll: the other thread takes X and waits for Y.
     * A correct wait returns -ETIMEDOUT after 200 ms. */
    int rc = aioctx_poll_while(abba_x, always, NULL, 200 * MS * tap_scale(), 0);
    child_send(fd, "poll_while(X) holding the set {X, Y}", rc);
    aioctx_set_release(s);
    pthread_join(t, NULL);
    return 0;
}

/* An IOThread freed while the main thread already waits in a drain of one of
 * its nodes: completions that arrive after the free need a new home. */
static AioctxIoThread *fdd_it;
static atomic_int fdd_draining;

static void *fdd_freer(void *arg)
{
    (void)arg;
    while (!atomic_load(&fdd_draining))
        tap_sleep_ns(100000);
    tap_sleep_ms(1);
    aioctx_iothread_free(fdd_it);
    return NULL;
}

static int wrap_free_during_drain(int fd, const char *path)
{
    setenv("AIOCTX_IO_WORKERS", "1", 1);   /* one worker: the 64 writes take a while */
    aioctx_context_claim(aioctx_main_context());
    fdd_it = aioctx_iothread_new("fdd-io");
    AioctxContext *c = aioctx_context_ref(aioctx_iothread_context(fdd_it));
    AioctxGraph *cg = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(cg, "fdd", c, path, AIOCTX_OPEN_RDWR);
    static unsigned char buf[1 << 20];
    memset(buf, 0x42, sizeof buf);
    for (int i = 0; n && i < 64; i++)
        aioctx_node_pwrite(n, buf, sizeof buf, (uint64_t)i << 20, NULL, NULL);
    pthread_t t;
    pthread_create(&t, NULL, fdd_freer, NULL);
    atomic_store(&fdd_draining, 1);
    int rc = aioctx_node_drain(n);
    child_send(fd, "node_drain while its IOThread is freed", rc);
    pthread_join(t, NULL);
    return 0;
}

struct child {
    pid_t pid;
    int rd;
};

/* When the children were forked: each gets until then + 4 s to report. */
static int64_t children_forked_ns;

static struct child fork_child(int (*fn)(int, const char *), const char *arg, unsigned alarm_s)
{
    struct child c = { -1, -1 };
    int p[2];
    if (pipe(p) != 0)
        return c;
    fflush(stdout);
    c.pid = fork();
    if (c.pid == 0) {
        close(p[0]);
        signal(SIGALRM, SIG_DFL);
        alarm(alarm_s);
        _exit(fn(p[1], arg));
    }
    close(p[1]);
    c.rd = p[0];
    return c;
}

static int wrap_nobody(int fd, const char *arg)
{
    (void)arg;
    return child_nobody(fd);
}

static int wrap_fifo(int fd, const char *arg)
{
    (void)arg;
    return child_fifo(fd);
}

/* Reads the child's results: checks each one failed with want_errno. */
static int collect(struct child c, int n, const int *want, int *status)
{
    struct child_result r;
    int got = 0;
    for (int i = 0; i < n; i++) {
        ssize_t k = read(c.rd, &r, sizeof r);
        if (k != (ssize_t)sizeof r)
            break;
        got++;
        atomic_fetch_add(&cases, 1);
        ok(r.null, "child: aioctx_node_open_file, %s -> NULL", r.what);
        ok(r.err == want[i] && r.last == -want[i], "  ... errno %d (%s), last_errno %d; want %s", r.err,
           strerror(r.err), r.last, strerror(want[i]));
        ok(strncmp(r.msg, "aioctx_node_open_file:", 22) == 0, "  ... message '%.150s'", r.msg);
        ok(!r.added, "  ... no node added");
    }
    close(c.rd);
    waitpid(c.pid, status, 0);
    return got;
}

static void test_children_nobody(struct child c)
{
    static const int want[] = { EACCES, EACCES, EACCES, EACCES };
    int status = 0;
    int got = collect(c, 4, want, &status);
    if (got == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 2) {
        skip("a non-root child (setuid 65534) opens read-only images RDWR", "setuid(65534) refused");
        return;
    }
    is_int(got, 4, "the non-root child reported 4 results");
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the non-root child exited 0 (status %#x)", status);
}

static void test_children_fifo(struct child c)
{
    static const int want[] = { ENXIO, ENXIO };
    int status = 0;
    struct child_result r;
    /* Read with a bound: a hang shows as no result. */
    int64_t left = children_forked_ns + 4 * SEC - tap_now_ns();
    if (left < 500 * MS)
        left = 500 * MS;
    struct timeval tv = { (time_t)(left / SEC), (suseconds_t)(left % SEC / 1000) };
    fd_set set;
    FD_ZERO(&set);
    FD_SET(c.rd, &set);
    int ready = select(c.rd + 1, &set, NULL, NULL, &tv);
    if (ready <= 0) {
        ok(0, "aioctx_node_open_file on a FIFO returns (an error) instead of blocking forever");
        kill(c.pid, SIGKILL);
        waitpid(c.pid, &status, 0);
        close(c.rd);
        atomic_fetch_add(&cases, 1);
        return;
    }
    (void)r;
    (void)want;
    int got = collect(c, 2, want, &status);
    is_int(got, 2, "the FIFO child reported 2 results");
}


/* Waits for a child's next result, until 4 s after the fork (at least 0.5 s
 * from now); 0 if it hangs. */
static int child_result_or_hang(struct child *c, struct child_result *r)
{
    int64_t left = children_forked_ns + 4 * SEC - tap_now_ns();
    if (left < 500 * MS)
        left = 500 * MS;
    struct timeval tv = { (time_t)(left / SEC), (suseconds_t)(left % SEC / 1000) };
    fd_set set;
    FD_ZERO(&set);
    FD_SET(c->rd, &set);
    if (select(c->rd + 1, &set, NULL, NULL, &tv) > 0 && read(c->rd, r, sizeof *r) == (ssize_t)sizeof *r)
        return 1;
    return 0;
}

static void finish_child(struct child *c)
{
    int status;
    kill(c->pid, SIGKILL);
    waitpid(c->pid, &status, 0);
    close(c->rd);
}

static void test_children_hangs(struct child home, struct child abba)
{
    struct child_result r;
    diag("a context whose home thread (a plain thread, not an IOThread) exited");
    atomic_fetch_add(&cases, 2);
    int got = child_result_or_hang(&home, &r);
    if (!ok(got, "aioctx_node_flush on a node whose context's home thread exited returns (an error)"))
        diag("child: node_flush did not return within the time limit");
    else
        diag("child: %s -> %d (%s)", r.what, r.null, r.msg);
    finish_child(&home);

    diag("poll_while while holding a set {X, Y}, another thread acquiring {X, Y}");
    atomic_fetch_add(&cases, 1);
    got = child_result_or_hang(&abba, &r);
    if (!ok(got, "poll_while(X, 200 ms timeout) by a thread that also holds Y returns (-ETIMEDOUT or -EDEADLK)"))
        diag("child: poll_while did not return within the time limit (deadlock)");
    else
        diag("child: %s -> %d (%s)", r.what, r.null, r.msg);
    finish_child(&abba);
}

static void test_child_free_during_drain(struct child c)
{
    struct child_result r;
    const char *name = "aioctx_node_drain returns when the node's IOThread is freed during the drain";
    if (c.pid < 0) {
        skip(name, "timing-based: not run under AIOCTX_TEST_TIMEOUT_SCALE > 1 (valgrind)");
        return;
    }
    diag("an IOThread freed while the main thread drains one of its nodes (64 MiB of writes in flight)");
    atomic_fetch_add(&cases, 1);
    int got = child_result_or_hang(&c, &r);
    if (!ok(got, "%s", name))
        diag("child: node_drain did not return within the time limit");
    else
        diag("child: %s -> %d (%s)", r.what, r.null, r.msg);
    finish_child(&c);
}

/* A read-only mount (tmpfs remounted read-only, in a private mount namespace). */
static int have_mntns;

static void test_erofs(void)
{
    char mnt[160], path[200];
    if (!have_mntns) {
        skip("RDWR open of an image on a read-only mount -> EROFS", "no private mount namespace (unshare refused)");
        return;
    }
    snprintf(mnt, sizeof mnt, "%s/ro-mnt", dir);
    snprintf(path, sizeof path, "%s/disk.img", mnt);
    if (mkdir(mnt, 0755) != 0 || mount("tmpfs", mnt, "tmpfs", 0, "size=64k") != 0) {
        skip("RDWR open of an image on a read-only mount -> EROFS", "mount -t tmpfs refused");
        return;
    }
    make_image(path, 8192, 0644);
    if (mount("tmpfs", mnt, "tmpfs", MS_REMOUNT | MS_RDONLY, "size=64k") != 0) {
        skip("RDWR open of an image on a read-only mount -> EROFS", "remount read-only refused");
        umount2(mnt, MNT_DETACH);
        return;
    }
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, path, AIOCTX_OPEN_RDWR), EROFS);
    like(aioctx_last_error(), path, "  the message names the path");
    MISUSE_PTR(aioctx_node_open_file(g, "f", main_ctx, path, AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE), EROFS);
    AioctxNode *ro = aioctx_node_open_file(g, "on-ro-mount", main_ctx, path, 0);
    ok(ro != NULL, "a read-only open on the read-only mount works");
    MISUSE_INT(aioctx_node_pwrite(ro, hp_buf, 16, 0, io_cb, NULL), EPERM);
    umount2(mnt, MNT_DETACH);
}

/* ---- main ----------------------------------------------------------------------------------------- */

static int make_socket(const char *path)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path)
        return -1;
    memcpy(sa.sun_path, path, len + 1);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) != 0)
        return -1;
    return s;
}

int main(void)
{
    skip_unless_backend();
    tap_watchdog(60);
    /* A private mount namespace, for the read-only mount (never seen by others). */
    have_mntns = unshare(CLONE_NEWNS) == 0 && mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) == 0;

    if (!ok(make_temp_dir(dir, sizeof dir, "misuse") != NULL, "mkdtemp"))
        return done_testing();
    chmod(dir, 0755);   /* the non-root child must reach the images */
    snprintf(img_rw, sizeof img_rw, "%s/rw.img", dir);
    snprintf(img_ro, sizeof img_ro, "%s/ro.img", dir);
    snprintf(img_in, sizeof img_in, "%s/incoming.img", dir);
    snprintf(img_locked, sizeof img_locked, "%s/locked.img", dir);
    snprintf(root_only, sizeof root_only, "%s/root-only.img", dir);
    snprintf(regular, sizeof regular, "%s/regular", dir);
    snprintf(sub_dir, sizeof sub_dir, "%s/a-directory", dir);
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    snprintf(sock, sizeof sock, "%s/sock", dir);
    snprintf(big_img, sizeof big_img, "%s/big.img", dir);
    int made = make_image(img_rw, 65536, 0644) == 0 && make_image(img_ro, 65536, 0444) == 0 &&
               make_image(img_in, 65536, 0644) == 0 && make_image(img_locked, 65536, 0644) == 0 &&
               make_image(root_only, 65536, 0600) == 0 && make_image(regular, 10, 0644) == 0 &&
               mkdir(sub_dir, 0755) == 0 && mkfifo(fifo, 0666) == 0 && make_image(big_img, 64 << 20, 0644) == 0;
    int sfd = make_socket(sock);
    ok(made && sfd >= 0, "images, a directory, a FIFO and a socket in %s", dir);

    /* Children first, before any aioctx call: each starts from a pristine library. */
    children_forked_ns = tap_now_ns();
    struct child nobody = fork_child(wrap_nobody, NULL, 30);
    struct child fif = fork_child(wrap_fifo, NULL, 30);
    struct child home = fork_child(wrap_home_exited, NULL, 30);
    struct child abba = fork_child(wrap_abba, NULL, 30);
    struct child fdd = { -1, -1 };
    if (tap_scale() == 1)
        fdd = fork_child(wrap_free_during_drain, big_img, 30);

    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main claims the main context");
    sentinel_graph = aioctx_graph_new(NULL);
    ctx_a = aioctx_context_new("misuse-ctx-a");
    ctx_b = aioctx_context_new("misuse-ctx-b");
    iot = aioctx_iothread_new("misuse-iot");
    if (!ok(ctx_a && ctx_b && iot, "two contexts and an IOThread"))
        return done_testing();
    iot_ctx = aioctx_iothread_context(iot);
    involve(main_ctx);
    involve(ctx_a);
    involve(ctx_b);
    involve(iot_ctx);

    AioctxDriver counting = { count_call, count_call, count_call, NULL };
    g = aioctx_graph_new(NULL);
    c_main = aioctx_node_new(g, "c_main", main_ctx, NULL, NULL);
    c_io = aioctx_node_new(g, "c_io", iot_ctx, &counting, NULL);
    raw_rw = aioctx_node_open_file(g, "raw_rw", iot_ctx, img_rw, AIOCTX_OPEN_RDWR);
    raw_ro = aioctx_node_open_file(g, "raw_ro", main_ctx, img_ro, 0);
    g_inactive = aioctx_graph_new(NULL);
    in_c = aioctx_node_new(g_inactive, "in_c", iot_ctx, NULL, NULL);
    in_raw = aioctx_node_open_file(g_inactive, "in_raw", main_ctx, img_in, AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE);
    if (!ok(c_main && c_io && raw_rw && raw_ro && in_c && in_raw, "graph fixtures"))
        return done_testing();
    is_int(aioctx_graph_inactivate_all(g_inactive), 0, "in_c and in_raw inactive");

    test_contexts();
    test_wrong_thread();
    test_iothread();
    test_bh_timer();
    test_sets();
    test_wait();
    test_diag();
    test_graph();
    test_reentrancy();
    test_open_file();
    test_erofs();
    test_children_nobody(nobody);
    test_children_fifo(fif);
    test_children_hangs(home, abba);
    test_child_free_during_drain(fdd);

    /* Every function of the header was exercised by at least one case. */
    int missing = 0;
    for (int i = 0; i < NAPI; i++)
        if (atomic_load(&exercised[i]) == 0) {
            diag("not exercised: %s", api[i]);
            missing++;
        }
    is_int(missing, 0, "every one of the %d functions of aioctx.h was exercised", NAPI);
    diag("%d misuse cases over %d functions", atomic_load(&cases), NAPI);

    aioctx_graph_free(g);
    aioctx_graph_free(g_inactive);
    aioctx_graph_free(sentinel_graph);
    uninvolve(iot_ctx);
    is_int(aioctx_iothread_free(iot), 0, "iothread_free");
    aioctx_context_unref(ctx_a);
    aioctx_context_unref(ctx_b);
    close(sfd);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ok(system(cmd) == 0, "temporary directory removed");
    return done_testing();
}
