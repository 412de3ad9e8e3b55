/*
 * aioctx/qemu-compat.h: QEMU's event-loop, IOThread and block-handover names
 * over the aioctx C API, so code written against them builds unchanged.
 *
 *     #include <aioctx/qemu-compat.h>     (pkg-config --cflags aioctx)
 *
 * Optional: everything here is a static inline wrapper or a type name over
 * <aioctx.h>; the library exports none of these names. docs/PORTING.md maps
 * every name to its aioctx call and lists where aioctx is stricter than QEMU.
 *
 * Behaviour is QEMU's where aioctx allows it, with these differences:
 *
 *  - A call that returns void in QEMU and that aioctx refuses (a programming
 *    error: releasing a context the thread does not hold, polling a context
 *    from a thread other than its home, destroying an IOThread from itself,
 *    a wait that could never end...) prints the function and
 *    aioctx_last_error() on stderr and calls abort(), where QEMU would assert,
 *    corrupt state or hang.
 *  - AIO_WAIT_WHILE refuses, instead of hanging, a wait for a context the
 *    caller holds more than once (QEMU's live-migration hang with two drives
 *    on one IOThread): it aborts with aioctx's -EDEADLK message. Use
 *    aio_wait_while_fn() to get -EDEADLK back as a value.
 *  - AIO_WAIT_WHILE is exact: it registers its waiter (aioctx_wait_begin)
 *    before it first evaluates the condition, so an aio_wait_kick() right
 *    after a change always wakes it. aio_wait_kick() kicks the waiters
 *    only, without QEMU's empty BH on the main context.
 *  - bdrv_inactivate_all() returns -EDEADLK when the caller already holds a
 *    node's context, instead of hanging.
 *
 * Globals: QEMU defines error_abort, error_fatal and the block graph in its
 * own sources. Here they are weak definitions with GCC and Clang, so the
 * header alone is enough. With another compiler (or with AIOCTX_COMPAT_ISO_C
 * defined), define AIOCTX_COMPAT_IMPLEMENTATION in exactly one source file
 * before including this header.
 *
 * AIO_WAIT_WHILE(ctx, cond) returns a value (bool: whether it waited) as in
 * QEMU, which needs a GNU C statement expression: that form is used with
 * GCC and Clang (it builds under -std=c11 -Wpedantic -Werror, marked
 * __extension__). With another compiler, or with AIOCTX_COMPAT_ISO_C
 * defined, AIO_WAIT_WHILE is an ISO C statement with no value.
 *
 * C only (QEMU is C): it uses <stdatomic.h>.
 */
#ifndef AIOCTX_QEMU_COMPAT_H
#define AIOCTX_QEMU_COMPAT_H

#ifdef __cplusplus
#error "aioctx/qemu-compat.h is C only (it uses <stdatomic.h>); from C++ use <aioctx.h>"
#endif

#include <aioctx.h>

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__GNUC__) && !defined(AIOCTX_COMPAT_ISO_C)
#define AIOCTX_COMPAT_GNUC 1
#else
#define AIOCTX_COMPAT_GNUC 0
#endif

/* ---- types ---------------------------------------------------------------- */

typedef struct AioctxContext AioContext;
typedef struct AioctxBh QEMUBH;
typedef struct AioctxIoThread IOThread;
typedef struct AioctxNode BlockDriverState;

typedef void QEMUBHFunc(void *opaque);
typedef void IOHandler(void *opaque);
typedef bool AioPollFn(void *opaque);
typedef void QEMUTimerCB(void *opaque);

typedef enum {
    QEMU_CLOCK_REALTIME = 0,   /* CLOCK_MONOTONIC, as in QEMU */
    QEMU_CLOCK_VIRTUAL = 1,    /* CLOCK_MONOTONIC: there is no VM to stop */
    QEMU_CLOCK_HOST = 2,       /* wall clock: qemu_clock_get_ns() only, no timers */
    QEMU_CLOCK_VIRTUAL_RT = 3, /* CLOCK_MONOTONIC */
    QEMU_CLOCK_MAX
} QEMUClockType;

#define SCALE_MS 1000000
#define SCALE_US 1000
#define SCALE_NS 1

/* A timer of aio_timer_new(): an aioctx timer plus QEMU's scale. Treat it
 * as opaque. */
typedef struct QEMUTimer {
    AioctxTimer *timer;
    QEMUTimerCB *cb;
    void *opaque;
    int scale;
    _Atomic int64_t expire_ns; /* -1: not pending */
} QEMUTimer;

/* QEMU's error object: what aioctx_last_error() said when the call failed. */
typedef struct Error {
    char *msg;
    int errnum; /* positive errno */
} Error;

/* ---- globals ----------------------------------------------------------------- */

#if defined(AIOCTX_COMPAT_IMPLEMENTATION)
#define AIOCTX_COMPAT_GLOBAL
#elif AIOCTX_COMPAT_GNUC
#define AIOCTX_COMPAT_GLOBAL __attribute__((weak))
#else
#define AIOCTX_COMPAT_GLOBAL extern
#endif

/* Pass &error_abort (abort on error) or &error_fatal (exit(1) on error) as
 * an Error ** argument, as in QEMU. Only their addresses are used. */
AIOCTX_COMPAT_GLOBAL Error *error_abort;
AIOCTX_COMPAT_GLOBAL Error *error_fatal;

/* The graph the bdrv_* names act on (QEMU has one implicit block graph).
 * bdrv_init() creates it on qemu_get_aio_context(); bdrv_close_all() frees
 * it. Add nodes to it with aioctx_node_new()/aioctx_node_open_file(): QEMU's
 * node creation (bdrv_open with QDict options, BlockDriver structs) has no
 * aioctx equivalent. */
AIOCTX_COMPAT_GLOBAL AioctxGraph *aioctx_compat_block_graph;

/* ---- internal helpers (not QEMU names) --------------------------------------- */

/* A call QEMU cannot fail was refused: say why and abort, as QEMU's
 * assertions would (instead of continuing with broken state). */
static inline void aioctx_compat_fatal(const char *what, int ret)
{
    fprintf(stderr, "%s failed (%s): %s\n", what, strerror(ret < 0 ? -ret : ret),
            aioctx_last_error());
    fflush(stderr);
    abort();
}

/* The calling thread's last aioctx failure as a negative errno (never 0). */
static inline int aioctx_compat_last_errno(void)
{
    int e = aioctx_last_errno();
    return e < 0 ? e : -EINVAL;
}

/* QEMU's error_setg() from the current aioctx_last_error(). */
static inline void aioctx_compat_error_set(Error **errp, const char *what, int ret)
{
    const char *msg = aioctx_last_error();
    if (errp == NULL)
        return;
    if (errp == &error_abort)
        aioctx_compat_fatal(what, ret);
    if (errp == &error_fatal) {
        fprintf(stderr, "%s: %s\n", what, msg);
        exit(1);
    }
    if (*errp != NULL) /* QEMU asserts this too */
        aioctx_compat_fatal("error_setg: the Error ** already holds an error", -EINVAL);
    {
        size_t len = strlen(msg);
        Error *err = malloc(sizeof *err);
        char *copy = malloc(len + 1);
        if (err == NULL || copy == NULL)
            aioctx_compat_fatal("error_setg: out of memory", -ENOMEM);
        memcpy(copy, msg, len + 1);
        err->msg = copy;
        err->errnum = ret < 0 ? -ret : ret;
        *errp = err;
    }
}

/* ---- errors -------------------------------------------------------------- */

static inline const char *error_get_pretty(const Error *err)
{
    return err ? err->msg : "";
}

static inline void error_free(Error *err)
{
    if (err) {
        free(err->msg);
        free(err);
    }
}

/* Prints the message on stderr and frees the error. */
static inline void error_report_err(Error *err)
{
    fprintf(stderr, "%s\n", error_get_pretty(err));
    error_free(err);
}

/* ---- contexts and their lock ----------------------------------------------- */

/* The main loop's context (aioctx_main_context()). */
static inline AioContext *qemu_get_aio_context(void)
{
    return aioctx_main_context();
}

/* Makes the calling thread the home of the main context (QEMU's main
 * thread). Returns 0, or a negative errno: another thread already is. */
static inline int qemu_init_main_loop(Error **errp)
{
    int ret = aioctx_context_claim(qemu_get_aio_context());
    if (ret < 0)
        aioctx_compat_error_set(errp, "qemu_init_main_loop", ret);
    return ret;
}

static inline AioContext *aio_context_new(Error **errp)
{
    AioContext *ctx = aioctx_context_new("aio-context");
    if (ctx == NULL)
        aioctx_compat_error_set(errp, "aio_context_new", aioctx_compat_last_errno());
    return ctx;
}

static inline void aio_context_ref(AioContext *ctx)
{
    (void)aioctx_context_ref(ctx);
}

static inline void aio_context_unref(AioContext *ctx)
{
    aioctx_context_unref(ctx);
}

static inline void aio_context_acquire(AioContext *ctx)
{
    int ret = aioctx_acquire(ctx);
    if (ret < 0)
        aioctx_compat_fatal("aio_context_acquire", ret);
}

/* Aborts when the calling thread does not hold ctx (-EPERM), as QEMU's
 * error-checking mutex does. */
static inline void aio_context_release(AioContext *ctx)
{
    int ret = aioctx_release(ctx);
    if (ret < 0)
        aioctx_compat_fatal("aio_context_release", ret);
}

/* ---- polling -------------------------------------------------------------- */

/* Returns whether a callback ran. Aborts when the caller is not ctx's home
 * thread (QEMU asserts that too). */
static inline bool aio_poll(AioContext *ctx, bool blocking)
{
    int ret = aioctx_poll(ctx, blocking);
    if (ret < 0)
        aioctx_compat_fatal("aio_poll", ret);
    return ret > 0;
}

static inline void aio_notify(AioContext *ctx)
{
    int ret = aioctx_notify(ctx);
    if (ret < 0)
        aioctx_compat_fatal("aio_notify", ret);
}

/* One iteration of the main loop (polls only the main context). */
static inline void main_loop_wait(int nonblocking)
{
    (void)aio_poll(qemu_get_aio_context(), !nonblocking);
}

/* ---- bottom halves ---------------------------------------------------------- */

static inline QEMUBH *aio_bh_new(AioContext *ctx, QEMUBHFunc *cb, void *opaque)
{
    QEMUBH *bh = aioctx_bh_new(ctx, cb, opaque);
    if (bh == NULL)
        aioctx_compat_fatal("aio_bh_new", aioctx_compat_last_errno());
    return bh;
}

static inline QEMUBH *qemu_bh_new(QEMUBHFunc *cb, void *opaque)
{
    return aio_bh_new(qemu_get_aio_context(), cb, opaque);
}

static inline void qemu_bh_schedule(QEMUBH *bh)
{
    int ret = aioctx_bh_schedule(bh);
    if (ret < 0)
        aioctx_compat_fatal("qemu_bh_schedule", ret);
}

static inline void qemu_bh_cancel(QEMUBH *bh)
{
    int ret = aioctx_bh_cancel(bh);
    if (ret < 0)
        aioctx_compat_fatal("qemu_bh_cancel", ret);
}

static inline void qemu_bh_delete(QEMUBH *bh)
{
    aioctx_bh_delete(bh);
}

static inline void aio_bh_schedule_oneshot(AioContext *ctx, QEMUBHFunc *cb, void *opaque)
{
    int ret = aioctx_bh_schedule_oneshot(ctx, cb, opaque);
    if (ret < 0)
        aioctx_compat_fatal("aio_bh_schedule_oneshot", ret);
}

/* ---- fd handlers ---------------------------------------------------------- */

/* QEMU 8.2+'s signature. io_poll and io_poll_ready (adaptive busy polling)
 * are accepted and ignored: the fd is always watched, as in QEMU with
 * poll-max-ns=0. Both io_read and io_write NULL removes the fd. Aborts for
 * an fd epoll cannot watch (a regular file: QEMU would fall back to ppoll). */
static inline void aio_set_fd_handler(AioContext *ctx, int fd, IOHandler *io_read,
                                      IOHandler *io_write, AioPollFn *io_poll,
                                      IOHandler *io_poll_ready, void *opaque)
{
    int ret;
    (void)io_poll;
    (void)io_poll_ready;
    ret = aioctx_set_fd_handler(ctx, fd, io_read, io_write, opaque);
    if (ret < 0)
        aioctx_compat_fatal("aio_set_fd_handler", ret);
}

/* ---- clocks and timers ------------------------------------------------------- */

/* Nanoseconds on `type`: CLOCK_MONOTONIC (aioctx_clock_ns()) for every type
 * but QEMU_CLOCK_HOST, which is the wall clock. */
static inline int64_t qemu_clock_get_ns(QEMUClockType type)
{
    if (type == QEMU_CLOCK_HOST) {
        struct timespec ts;
        if (timespec_get(&ts, TIME_UTC) != TIME_UTC)
            return 0;
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    return aioctx_clock_ns();
}

static inline int64_t qemu_clock_get_us(QEMUClockType type)
{
    return qemu_clock_get_ns(type) / SCALE_US;
}

static inline int64_t qemu_clock_get_ms(QEMUClockType type)
{
    return qemu_clock_get_ns(type) / SCALE_MS;
}

static inline void aioctx_compat_timer_fire(void *opaque)
{
    QEMUTimer *ts = opaque;
    /* Not pending from here on; cb may re-arm or free ts. */
    atomic_store(&ts->expire_ns, -1);
    ts->cb(ts->opaque);
}

/*
 * QEMU's signature: a timer on ctx whose deadlines (timer_mod) are in units
 * of `scale` nanoseconds (SCALE_NS, SCALE_US, SCALE_MS) on `type`'s clock.
 * Every type except QEMU_CLOCK_HOST runs on CLOCK_MONOTONIC
 * (QEMU_CLOCK_VIRTUAL never stops: there is no VM run state); a
 * QEMU_CLOCK_HOST timer or a scale <= 0 aborts. The callback runs in ctx's
 * home thread with ctx held. Free with timer_free().
 */
static inline QEMUTimer *aio_timer_new(AioContext *ctx, QEMUClockType type, int scale,
                                       QEMUTimerCB *cb, void *opaque)
{
    QEMUTimer *ts;
    if (type == QEMU_CLOCK_HOST || (int)type < 0 || (int)type >= (int)QEMU_CLOCK_MAX) {
        fprintf(stderr, "aio_timer_new: clock type %d is not supported: aioctx timers run "
                "on CLOCK_MONOTONIC, use QEMU_CLOCK_REALTIME\n", (int)type);
        abort();
    }
    if (scale <= 0) {
        fprintf(stderr, "aio_timer_new: scale %d: use SCALE_NS, SCALE_US or SCALE_MS\n", scale);
        abort();
    }
    ts = malloc(sizeof *ts);
    if (ts == NULL)
        aioctx_compat_fatal("aio_timer_new: out of memory", -ENOMEM);
    ts->cb = cb;
    ts->opaque = opaque;
    ts->scale = scale;
    atomic_init(&ts->expire_ns, -1);
    ts->timer = cb ? aioctx_timer_new(ctx, aioctx_compat_timer_fire, ts) : NULL;
    if (ts->timer == NULL) {
        free(ts);
        aioctx_compat_fatal("aio_timer_new", cb ? aioctx_compat_last_errno() : -EINVAL);
    }
    return ts;
}

/* aioctx extension: aio_timer_new(ctx, QEMU_CLOCK_REALTIME, SCALE_NS, cb,
 * opaque), the native aioctx timer (absolute CLOCK_MONOTONIC nanoseconds,
 * the same clock as aioctx_clock_ns() and qemu_clock_get_ns()). */
static inline QEMUTimer *aio_timer_new_ns(AioContext *ctx, QEMUTimerCB *cb, void *opaque)
{
    return aio_timer_new(ctx, QEMU_CLOCK_REALTIME, SCALE_NS, cb, opaque);
}

/* Timers on the main loop's context. */
static inline QEMUTimer *timer_new_ns(QEMUClockType type, QEMUTimerCB *cb, void *opaque)
{
    return aio_timer_new(qemu_get_aio_context(), type, SCALE_NS, cb, opaque);
}

static inline QEMUTimer *timer_new_us(QEMUClockType type, QEMUTimerCB *cb, void *opaque)
{
    return aio_timer_new(qemu_get_aio_context(), type, SCALE_US, cb, opaque);
}

static inline QEMUTimer *timer_new_ms(QEMUClockType type, QEMUTimerCB *cb, void *opaque)
{
    return aio_timer_new(qemu_get_aio_context(), type, SCALE_MS, cb, opaque);
}

/* Arms ts for the absolute time expire_ns (nanoseconds, whatever the scale).
 * A time in the past (negative included) fires at the next poll. */
static inline void timer_mod_ns(QEMUTimer *ts, int64_t expire_ns)
{
    int ret;
    if (expire_ns < 0)
        expire_ns = 0;
    atomic_store(&ts->expire_ns, expire_ns);
    ret = aioctx_timer_mod(ts->timer, expire_ns);
    if (ret < 0)
        aioctx_compat_fatal("timer_mod", ret);
}

/* Arms ts for the absolute time expire_time, in units of the timer's scale. */
static inline void timer_mod(QEMUTimer *ts, int64_t expire_time)
{
    int64_t ns;
    if (expire_time <= 0)
        ns = 0;
    else if (expire_time > INT64_MAX / ts->scale)
        ns = INT64_MAX;
    else
        ns = expire_time * ts->scale;
    timer_mod_ns(ts, ns);
}

static inline void timer_del(QEMUTimer *ts)
{
    int ret;
    if (ts == NULL)
        return;
    atomic_store(&ts->expire_ns, -1);
    ret = aioctx_timer_del(ts->timer);
    if (ret < 0)
        aioctx_compat_fatal("timer_del", ret);
}

/* Disarms and frees ts (may be called from its own callback). NULL: no-op. */
static inline void timer_free(QEMUTimer *ts)
{
    if (ts == NULL)
        return;
    aioctx_timer_free(ts->timer);
    free(ts);
}

/* Whether ts is armed and has not fired yet. Exact in the timer's home
 * thread; from another thread it can race with the timer firing (as in
 * QEMU). */
static inline bool timer_pending(QEMUTimer *ts)
{
    return atomic_load(&ts->expire_ns) >= 0;
}

/* The deadline in nanoseconds, or -1 when not pending. */
static inline int64_t timer_expire_time_ns(QEMUTimer *ts)
{
    return atomic_load(&ts->expire_ns);
}

/* ---- IOThreads -------------------------------------------------------------- */

/* Starts an IOThread named `id` (the OS thread name; the kernel keeps 15
 * bytes). NULL with *errp set on failure. */
static inline IOThread *iothread_create(const char *id, Error **errp)
{
    IOThread *it = aioctx_iothread_new(id);
    if (it == NULL)
        aioctx_compat_error_set(errp, "iothread_create", aioctx_compat_last_errno());
    return it;
}

static inline AioContext *iothread_get_aio_context(IOThread *iothread)
{
    return aioctx_iothread_context(iothread);
}

/* Runs the BHs already scheduled, stops and joins the thread. Aborts when
 * called from the IOThread itself or while holding its context (-EDEADLK:
 * the join could never finish). */
static inline void iothread_destroy(IOThread *iothread)
{
    int ret = aioctx_iothread_free(iothread);
    if (ret < 0)
        aioctx_compat_fatal("iothread_destroy", ret);
}

/* ---- waiting: AIO_WAIT_WHILE ----------------------------------------------- */

static inline AioContext *aioctx_compat_wait_ctx(AioContext *ctx)
{
    return ctx ? ctx : qemu_get_aio_context();
}

/* Registers the calling thread as a waiter for ctx (aioctx_wait_begin, no
 * timeout), before AIO_WAIT_WHILE first evaluates its condition. NULL when
 * aioctx refuses the wait (-EDEADLK, -EPERM...): that is reported only if
 * the condition is true, i.e. if the macro would really wait, so errno is
 * left as it was. */
static inline AioctxWait *aioctx_compat_wait_begin(AioContext *ctx)
{
    int saved_errno = errno;
    AioctxWait *w = aioctx_wait_begin(ctx, -1, 0);
    if (w == NULL)
        errno = saved_errno;
    return w;
}

/* One wait step of AIO_WAIT_WHILE, called while its condition is true:
 * aioctx_wait_poll() releases ctx if the caller holds it once, polls the
 * caller's loop once (returning when a callback ran or the wait was
 * kicked), re-acquires ctx. Returns true if it polled. If
 * aioctx_compat_wait_begin() was refused, begins again for a current error
 * message and aborts with it (-EDEADLK: ctx held more than once); should
 * that begin succeed after all, returns false so that the condition is
 * evaluated again, now with the waiter registered. Aborts on any other
 * refusal. */
static inline bool aioctx_compat_wait_step(AioctxWait **w, AioContext *ctx, const char *what)
{
    int ret;
    if (*w == NULL) {
        *w = aioctx_wait_begin(ctx, -1, 0);
        if (*w == NULL)
            aioctx_compat_fatal(what, aioctx_compat_last_errno());
        return false;
    }
    ret = aioctx_wait_poll(*w);
    if (ret < 0)
        aioctx_compat_fatal(what, ret);
    return true;
}

/*
 * aioctx extension, the C11 function form of AIO_WAIT_WHILE: polls until
 * cond(opaque) is false (aioctx_poll_while with no timeout; ctx NULL: the
 * main context). Returns 0, or -EDEADLK when the caller holds ctx more than
 * once, or another negative errno (see aioctx_poll_while), instead of
 * aborting. Exact, like AIO_WAIT_WHILE.
 */
static inline int aio_wait_while_fn(AioContext *ctx, AioctxCond cond, void *opaque)
{
    return aioctx_poll_while(aioctx_compat_wait_ctx(ctx), cond, opaque, -1, 0);
}

/* Wakes threads waiting in AIO_WAIT_WHILE so they evaluate their condition
 * again. Call it after changing what a condition reads, as in QEMU (state
 * changed by an aioctx callback needs none: every poll that runs a callback
 * kicks). A waiter is registered before it first evaluates its condition,
 * so a kick right after it began is not lost. Any thread. */
static inline void aio_wait_kick(void)
{
    aioctx_wait_kick();
}

/* The body of AIO_WAIT_WHILE and the macros over it; `what` names the
 * caller's macro call in the abort message. */
#if AIOCTX_COMPAT_GNUC
#define AIOCTX_COMPAT_WAIT_WHILE(ctx, cond, what) __extension__({                      \
        bool aioctx_compat_waited_ = false;                                            \
        AioContext *aioctx_compat_ctx_ = aioctx_compat_wait_ctx(ctx);                  \
        AioctxWait *aioctx_compat_w_ = aioctx_compat_wait_begin(aioctx_compat_ctx_);   \
        while ((cond)) {                                                               \
            if (aioctx_compat_wait_step(&aioctx_compat_w_, aioctx_compat_ctx_, what))  \
                aioctx_compat_waited_ = true;                                          \
        }                                                                              \
        aioctx_wait_end(aioctx_compat_w_);                                             \
        aioctx_compat_waited_;                                                         \
    })
#else
#define AIOCTX_COMPAT_WAIT_WHILE(ctx, cond, what)                                      \
    do {                                                                               \
        AioContext *aioctx_compat_ctx_ = aioctx_compat_wait_ctx(ctx);                  \
        AioctxWait *aioctx_compat_w_ = aioctx_compat_wait_begin(aioctx_compat_ctx_);   \
        while ((cond))                                                                 \
            (void)aioctx_compat_wait_step(&aioctx_compat_w_, aioctx_compat_ctx_, what);\
        aioctx_wait_end(aioctx_compat_w_);                                             \
    } while (0)
#endif

/*
 * AIO_WAIT_WHILE(ctx, cond): wait while the expression cond is true.
 * From ctx's home thread it polls ctx; from another thread (QEMU: the main
 * loop, with ctx held once) it releases ctx, polls its own loop, and
 * re-acquires ctx before each evaluation of cond. ctx NULL: the main
 * context, nothing released. Evaluates to true if it waited (GNU C form).
 *
 * Exact: the waiter is registered (aioctx_wait_begin) before cond is first
 * evaluated, so a change followed by aio_wait_kick() wakes it whenever it
 * happens. As in QEMU, whatever changes what cond reads must call
 * aio_wait_kick() afterwards, unless it is an aioctx callback (a BH, timer
 * or fd handler of any context: the poll that runs it kicks).
 *
 * Stricter than QEMU: holding ctx more than once aborts with aioctx's
 * -EDEADLK message naming the context and the fix, instead of hanging
 * (only when cond is true: a wait that does not wait is not refused).
 * aio_wait_while_fn() returns the error instead.
 */
#define AIO_WAIT_WHILE(ctx, cond)                                                      \
    AIOCTX_COMPAT_WAIT_WHILE(ctx, cond, "AIO_WAIT_WHILE(" #ctx ", " #cond ")")

/* The caller does not hold ctx: nothing to release, otherwise the same
 * wait (holding it once still works; twice aborts). */
#define AIO_WAIT_WHILE_UNLOCKED(ctx, cond)                                             \
    AIOCTX_COMPAT_WAIT_WHILE(ctx, cond, "AIO_WAIT_WHILE_UNLOCKED(" #ctx ", " #cond ")")

/* ---- threads and their contexts ---------------------------------------------- */

/* Whether the calling thread is ctx's home thread: the one that polls it
 * and runs its callbacks (an IOThread for its context; for the main context,
 * the thread that called qemu_init_main_loop() or polled it first). False
 * for NULL. Unlike QEMU, holding the main context from another thread does
 * not count (aioctx has no BQL). */
static inline bool in_aio_context_home_thread(AioContext *ctx)
{
    return ctx != NULL && aioctx_context_is_home(ctx);
}

/* The calling thread's context: the first context it became the home of
 * (aioctx_current_context()). In an IOThread its context; in the thread
 * that called qemu_init_main_loop() (before polling any other context),
 * qemu_get_aio_context(). NULL in a thread that is the home of no context
 * (QEMU: a thread without the BQL). errno is left as it was. */
static inline AioContext *qemu_get_current_aio_context(void)
{
    int saved_errno = errno;
    AioContext *ctx = aioctx_current_context();
    errno = saved_errno;
    return ctx;
}

struct aioctx_compat_bh_wait {
    QEMUBHFunc *cb;
    void *opaque;
    atomic_bool done;
};

static inline void aioctx_compat_bh_wait_run(void *opaque)
{
    struct aioctx_compat_bh_wait *w = opaque;
    w->cb(w->opaque);
    atomic_store(&w->done, true); /* the poll that ran us kicks the waiter */
}

static inline bool aioctx_compat_bh_wait_pending(void *opaque)
{
    struct aioctx_compat_bh_wait *w = opaque;
    return !atomic_load(&w->done);
}

/* Runs cb(opaque) as a BH in ctx and waits for it to finish. From the main
 * loop with ctx held once (or from ctx's home thread); aborts on -EDEADLK. */
static inline void aio_wait_bh_oneshot(AioContext *ctx, QEMUBHFunc *cb, void *opaque)
{
    struct aioctx_compat_bh_wait w;
    int ret;
    w.cb = cb;
    w.opaque = opaque;
    atomic_init(&w.done, false);
    aio_bh_schedule_oneshot(ctx, aioctx_compat_bh_wait_run, &w);
    ret = aio_wait_while_fn(ctx, aioctx_compat_bh_wait_pending, &w);
    if (ret < 0)
        aioctx_compat_fatal("aio_wait_bh_oneshot", ret);
}

/* ---- block layer ------------------------------------------------------------ */

/* Creates the block graph (aioctx_compat_block_graph) on the main context,
 * if there is none yet. */
static inline void bdrv_init(void)
{
    if (aioctx_compat_block_graph == NULL) {
        aioctx_compat_block_graph = aioctx_graph_new(qemu_get_aio_context());
        if (aioctx_compat_block_graph == NULL)
            aioctx_compat_fatal("bdrv_init", aioctx_compat_last_errno());
    }
}

/* Closes every node and frees the graph. */
static inline void bdrv_close_all(void)
{
    aioctx_graph_free(aioctx_compat_block_graph);
    aioctx_compat_block_graph = NULL;
}

static inline BlockDriverState *bdrv_find_node(const char *node_name)
{
    if (aioctx_compat_block_graph == NULL)
        return NULL;
    return aioctx_graph_find(aioctx_compat_block_graph, node_name);
}

static inline const char *bdrv_get_node_name(const BlockDriverState *bs)
{
    return aioctx_node_name(bs);
}

static inline AioContext *bdrv_get_aio_context(BlockDriverState *bs)
{
    return aioctx_node_context(bs);
}

static inline bool bdrv_is_inactive(BlockDriverState *bs)
{
    return aioctx_node_is_inactive(bs);
}

/* A request in flight (a read: refused only while bdrv_inactivate_all()
 * runs, which aborts here). */
static inline void bdrv_inc_in_flight(BlockDriverState *bs)
{
    int ret = aioctx_node_start_request(bs, false);
    if (ret < 0)
        aioctx_compat_fatal("bdrv_inc_in_flight", ret);
}

/* Ends it, from any thread, and kicks waiters (bdrv_drain). */
static inline void bdrv_dec_in_flight(BlockDriverState *bs)
{
    aioctx_node_end_request(bs);
}

/* Waits until bs has no request in flight. From the main loop; aborts on
 * -EDEADLK (bs's context held more than once). */
static inline void bdrv_drain(BlockDriverState *bs)
{
    int ret = aioctx_node_drain(bs);
    if (ret < 0)
        aioctx_compat_fatal("bdrv_drain", ret);
}

static inline int bdrv_flush(BlockDriverState *bs)
{
    return aioctx_node_flush(bs);
}

/* AIO_WAIT_WHILE on bs's context. */
#define BDRV_POLL_WHILE(bs, cond)                                                      \
    AIOCTX_COMPAT_WAIT_WHILE(bdrv_get_aio_context(bs), cond,                           \
                             "BDRV_POLL_WHILE(" #bs ", " #cond ")")

/* Hands every node over (migration source): 0 or a negative errno, with
 * the reason in aioctx_last_error(). -EDEADLK, nothing changed, when the
 * caller holds a node's context (QEMU would hang). No graph: 0. */
static inline int bdrv_inactivate_all(void)
{
    if (aioctx_compat_block_graph == NULL)
        return 0;
    return aioctx_graph_inactivate_all(aioctx_compat_block_graph);
}

/* Takes every inactive node over (migration destination, or recovery). */
static inline void bdrv_activate_all(Error **errp)
{
    int ret;
    if (aioctx_compat_block_graph == NULL)
        return;
    ret = aioctx_graph_activate_all(aioctx_compat_block_graph);
    if (ret < 0)
        aioctx_compat_error_set(errp, "bdrv_activate_all", ret);
}

#endif /* AIOCTX_QEMU_COMPAT_H */

/* aio_get_g_source, when <aioctx-glib.h> (libaioctx-glib) was included
 * before this header. Unlike QEMU, each call makes a new GSource (holding a
 * reference to ctx): attach one per context, and g_source_unref it. */
#if defined(AIOCTX_GLIB_H) && !defined(AIOCTX_QEMU_COMPAT_GLIB)
#define AIOCTX_QEMU_COMPAT_GLIB
static inline GSource *aio_get_g_source(AioContext *ctx)
{
    return aioctx_glib_source_new(ctx);
}
#endif
