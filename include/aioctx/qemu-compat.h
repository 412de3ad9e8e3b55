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
 *    node's context, instead of hanging; so do blk_pread()/blk_pwrite() with
 *    the node's context held twice.
 *  - An embedded timer (aio_timer_init) owns an aioctx timer: release it
 *    with timer_deinit().
 *  - is_external and io_poll arguments are ignored (there is no
 *    aio_disable_external(); drained sections quiesce the block layer).
 *  - qemu_bh_cancel(), qemu_bh_delete(), timer_del(), timer_free() and the
 *    removal of an fd handler wait while the callback runs in another
 *    thread, so what it uses may be freed right after; not when that wait
 *    could not end (the caller holds the callback's context, or the
 *    callback is blocked acquiring a context the caller holds): they then
 *    return at once, as QEMU's always do.
 * docs/PORTING.md lists every difference with its reason.
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
 * QEMU version: some names changed signature over QEMU's history. Define
 * AIOCTX_QEMU_VERSION before the #include to get the signatures of the QEMU
 * you port from, as major * 10000 + minor * 100 + micro (QEMU's own
 * numbering: 21100 for 2.11.0, 80100 for 8.1.0, 80150 for the 8.2
 * development tree). Without it, the newest signatures. What it selects:
 *
 *   aio_set_fd_handler      5 arguments before 2.5; 6 (is_external) 2.5-2.8;
 *                           7 (is_external, io_poll) 2.9-6.2; 8 (is_external,
 *                           io_poll, io_poll_ready) 7.0-8.0; 7 (io_poll,
 *                           io_poll_ready, no is_external) 8.1 and later
 *   aio_set_event_notifier  the same steps, without io_write and opaque
 *   AIO_WAIT_WHILE          (wait, ctx, cond) and aio_wait_kick(wait) before
 *                           4.0 (QEMU 2.11-3.1); (ctx, cond) and
 *                           aio_wait_kick(void) from 4.0
 *   aio_bh_new_full         (ctx, cb, opaque, name) before 8.1; with a
 *                           MemReentrancyGuard * from 8.1
 *   blk_pread, blk_pwrite   (blk, offset, buf, bytes[, flags]) returning the
 *                           byte count before 7.1; (blk, offset, bytes, buf,
 *                           flags) returning 0 from 7.1
 *
 * C only (QEMU is C): it uses <stdatomic.h>. It is C11 plus two POSIX/Linux
 * headers (<unistd.h>, <sys/eventfd.h>) for EventNotifier.
 */
#ifndef AIOCTX_QEMU_COMPAT_H
#define AIOCTX_QEMU_COMPAT_H

#ifdef __cplusplus
#error "aioctx/qemu-compat.h is C only (it uses <stdatomic.h>); from C++ use <aioctx.h>"
#endif

#include <aioctx.h>

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__) && !defined(AIOCTX_COMPAT_ISO_C)
#define AIOCTX_COMPAT_GNUC 1
#else
#define AIOCTX_COMPAT_GNUC 0
#endif

#if AIOCTX_COMPAT_GNUC
#define AIOCTX_COMPAT_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define AIOCTX_COMPAT_PRINTF(f, a)
#endif

/* ---- QEMU version ------------------------------------------------------------ */

#ifdef AIOCTX_QEMU_VERSION
#if AIOCTX_QEMU_VERSION < 10000
#error "AIOCTX_QEMU_VERSION is major * 10000 + minor * 100 + micro: 21100 for QEMU 2.11"
#elif AIOCTX_QEMU_VERSION % 100 >= 10 && AIOCTX_QEMU_VERSION % 100 < 50
/* 20110 would read as 2.1.10: no QEMU release or development tree has a
 * micro between 10 and 49, so this is a minor written with one digit too few. */
#error "AIOCTX_QEMU_VERSION: micro between 10 and 49 is no QEMU version; write major * 10000 + minor * 100 + micro (21100 for 2.11, not 20110)"
#endif
#define AIOCTX_COMPAT_QEMU AIOCTX_QEMU_VERSION
#else
#define AIOCTX_COMPAT_QEMU 999999 /* newest */
#endif

/* Whether the selected QEMU is major.minor or later. */
#define AIOCTX_COMPAT_QEMU_AT_LEAST(major, minor) \
    (AIOCTX_COMPAT_QEMU >= (major) * 10000 + (minor) * 100)

/* ---- types ---------------------------------------------------------------- */

typedef struct AioctxContext AioContext;
typedef struct AioctxBh QEMUBH;
typedef struct AioctxIoThread IOThread;
typedef struct AioctxNode BlockDriverState;
/* A device's view of its top node: here the node itself. */
typedef struct AioctxNode BlockBackend;
/* Request flags of blk_pread/blk_pwrite: none is supported (non-zero:
 * -ENOTSUP). */
typedef unsigned BdrvRequestFlags;
/* QEMU's guard against a device's BH re-entering its MMIO handlers; aioctx
 * BHs run only from the loop, so it is accepted and ignored. */
typedef struct MemReentrancyGuard MemReentrancyGuard;

typedef void QEMUBHFunc(void *opaque);
typedef void IOHandler(void *opaque);
typedef bool AioPollFn(void *opaque);
typedef void QEMUTimerCB(void *opaque);

/* An eventfd (QEMU's EventNotifier on Linux). Embed it; initialise it with
 * event_notifier_init(). */
typedef struct EventNotifier EventNotifier;
typedef void EventNotifierHandler(EventNotifier *e);
struct EventNotifier {
    int rfd;
    int wfd; /* the same eventfd */
    bool initialized;
    /* aio_set_event_notifier's handler, called with the notifier. */
    _Atomic(EventNotifierHandler *) io_read;
};

#if !AIOCTX_COMPAT_QEMU_AT_LEAST(4, 0)
/* QEMU 2.11-3.1 kept one of these per waited-for object. aioctx tracks its
 * waiters itself, so it holds nothing that is used. */
typedef struct AioWait {
    unsigned num_waiters;
} AioWait;
#endif

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

/* A timer: an aioctx timer plus QEMU's scale and deadline. Allocate it with
 * aio_timer_new()/timer_new_*() (free with timer_free()) or embed it and
 * initialise it with aio_timer_init()/timer_init_*() (release with
 * timer_deinit()). Treat the fields as opaque. */
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

/* What QEMU does with an error given to &error_abort or &error_fatal. */
static inline void aioctx_compat_error_special(Error **errp, const char *msg)
{
    if (errp == &error_abort) {
        fprintf(stderr, "Unexpected error: %s\n", msg);
        fflush(stderr);
        abort();
    }
    if (errp == &error_fatal) {
        fprintf(stderr, "%s\n", msg);
        exit(1);
    }
}

/* Stores a new error with a copy of msg in *errp (NULL errp: dropped). An
 * errp that already holds an error aborts, as QEMU asserts. */
static inline void aioctx_compat_error_store(Error **errp, int errnum, const char *msg)
{
    size_t len = strlen(msg);
    Error *err;
    char *copy;
    if (errp == NULL)
        return;
    aioctx_compat_error_special(errp, msg);
    if (*errp != NULL)
        aioctx_compat_fatal("error_setg: the Error ** already holds an error", -EINVAL);
    err = malloc(sizeof *err);
    copy = malloc(len + 1);
    if (err == NULL || copy == NULL)
        aioctx_compat_fatal("error_setg: out of memory", -ENOMEM);
    memcpy(copy, msg, len + 1);
    err->msg = copy;
    err->errnum = errnum;
    *errp = err;
}

/* The error of a failed aioctx call: a copy of aioctx_last_error(). With
 * &error_abort, the abort message also names `what` and the errno. */
static inline void aioctx_compat_error_set(Error **errp, const char *what, int ret)
{
    if (errp == &error_abort)
        aioctx_compat_fatal(what, ret);
    aioctx_compat_error_store(errp, ret < 0 ? -ret : ret, aioctx_last_error());
}

AIOCTX_COMPAT_PRINTF(2, 3)
static inline void aioctx_compat_error_setg(Error **errp, const char *fmt, ...)
{
    char small[256];
    char *msg = small;
    va_list ap;
    int len;
    va_start(ap, fmt);
    len = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (len < 0) {
        small[0] = '\0';
    } else if ((size_t)len >= sizeof small) {
        msg = malloc((size_t)len + 1);
        if (msg == NULL)
            aioctx_compat_fatal("error_setg: out of memory", -ENOMEM);
        va_start(ap, fmt);
        vsnprintf(msg, (size_t)len + 1, fmt, ap);
        va_end(ap);
    }
    aioctx_compat_error_store(errp, 0, msg);
    if (msg != small)
        free(msg);
}

/* error_setg(errp, fmt, ...): sets *errp to a new error with the
 * printf-formatted message. &error_abort aborts, &error_fatal prints and
 * exits, NULL ignores it; *errp must not hold an error yet (aborts). */
#define error_setg(errp, ...) aioctx_compat_error_setg((errp), __VA_ARGS__)

/* Moves local_err (may be NULL: nothing to do) into *dst_errp. As in QEMU:
 * &error_abort aborts, &error_fatal prints and exits, and when dst_errp is
 * NULL or already holds an error, local_err is freed (the first error
 * wins). */
static inline void error_propagate(Error **dst_errp, Error *local_err)
{
    if (local_err == NULL)
        return;
    aioctx_compat_error_special(dst_errp, local_err->msg);
    if (dst_errp == NULL || *dst_errp != NULL) {
        error_free(local_err);
        return;
    }
    *dst_errp = local_err;
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

/*
 * Adaptive polling (QEMU's IOThread properties poll-max-ns, poll-grow,
 * poll-shrink): aioctx_context_set_poll_params(), with its semantics (QEMU's
 * grow/shrink; max_ns 0 turns polling off; IOThreads poll by default).
 * Negative values fail with *errp set (the message names the context and
 * the value) and change nothing.
 */
static inline void aio_context_set_poll_params(AioContext *ctx, int64_t max_ns, int64_t grow,
                                               int64_t shrink, Error **errp)
{
    int ret = aioctx_context_set_poll_params(ctx, max_ns, grow, shrink);
    if (ret < 0)
        aioctx_compat_error_set(errp, "aio_context_set_poll_params", ret);
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

/* aio_bh_new() with QEMU's debug name, which aioctx does not keep. From
 * QEMU 8.1 also a MemReentrancyGuard, accepted and ignored (aioctx BHs run
 * only from their loop, never re-entered from a device's MMIO handler). */
#if AIOCTX_COMPAT_QEMU_AT_LEAST(8, 1)
static inline QEMUBH *aio_bh_new_full(AioContext *ctx, QEMUBHFunc *cb, void *opaque,
                                      const char *name, MemReentrancyGuard *reentrancy_guard)
{
    (void)name;
    (void)reentrancy_guard;
    return aio_bh_new(ctx, cb, opaque);
}
#else
static inline QEMUBH *aio_bh_new_full(AioContext *ctx, QEMUBHFunc *cb, void *opaque,
                                      const char *name)
{
    (void)name;
    return aio_bh_new(ctx, cb, opaque);
}
#endif

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

static inline void aioctx_compat_set_fd_handler(AioContext *ctx, int fd, IOHandler *io_read,
                                                IOHandler *io_write, AioPollFn *io_poll,
                                                void *opaque)
{
    /* aioctx's io_poll triggers io_read: without one it has nothing to run. */
    int ret = aioctx_set_fd_handler_full(ctx, fd, io_read, io_write, io_read ? io_poll : NULL,
                                         opaque);
    if (ret < 0)
        aioctx_compat_fatal("aio_set_fd_handler", ret);
}

/*
 * aio_set_fd_handler(): io_read(opaque) runs when fd is readable, io_write
 * when it is writable, in ctx's home thread with ctx held; both NULL
 * removes the fd. Any thread. The signature is the selected QEMU's (see
 * AIOCTX_QEMU_VERSION at the top). io_poll is passed through
 * (aioctx_set_fd_handler_full): while ctx busy-polls it is called without
 * the context held, and when it returns true io_read runs (QEMU 7.0+ runs
 * io_poll_ready instead, which aioctx ignores: io_read must handle the work
 * too, as it does for a readable fd; before 7.0 io_poll did the work itself,
 * and the io_read after it finds none). io_poll without io_read is dropped.
 * The fd is always watched as well. is_external is accepted and ignored: aioctx has no
 * aio_disable_external() (QEMU 8.1 removed it too). Aborts for an fd epoll
 * cannot watch (a regular file: QEMU would fall back to ppoll).
 */
#if AIOCTX_COMPAT_QEMU_AT_LEAST(8, 1)
static inline void aio_set_fd_handler(AioContext *ctx, int fd, IOHandler *io_read,
                                      IOHandler *io_write, AioPollFn *io_poll,
                                      IOHandler *io_poll_ready, void *opaque)
{
    (void)io_poll_ready;
    aioctx_compat_set_fd_handler(ctx, fd, io_read, io_write, io_poll, opaque);
}
#elif AIOCTX_COMPAT_QEMU_AT_LEAST(7, 0)
static inline void aio_set_fd_handler(AioContext *ctx, int fd, bool is_external,
                                      IOHandler *io_read, IOHandler *io_write,
                                      AioPollFn *io_poll, IOHandler *io_poll_ready,
                                      void *opaque)
{
    (void)is_external;
    (void)io_poll_ready;
    aioctx_compat_set_fd_handler(ctx, fd, io_read, io_write, io_poll, opaque);
}
#elif AIOCTX_COMPAT_QEMU_AT_LEAST(2, 9)
static inline void aio_set_fd_handler(AioContext *ctx, int fd, bool is_external,
                                      IOHandler *io_read, IOHandler *io_write,
                                      AioPollFn *io_poll, void *opaque)
{
    (void)is_external;
    aioctx_compat_set_fd_handler(ctx, fd, io_read, io_write, io_poll, opaque);
}
#elif AIOCTX_COMPAT_QEMU_AT_LEAST(2, 5)
static inline void aio_set_fd_handler(AioContext *ctx, int fd, bool is_external,
                                      IOHandler *io_read, IOHandler *io_write, void *opaque)
{
    (void)is_external;
    aioctx_compat_set_fd_handler(ctx, fd, io_read, io_write, NULL, opaque);
}
#else
static inline void aio_set_fd_handler(AioContext *ctx, int fd, IOHandler *io_read,
                                      IOHandler *io_write, void *opaque)
{
    aioctx_compat_set_fd_handler(ctx, fd, io_read, io_write, NULL, opaque);
}
#endif

/* ---- event notifiers -------------------------------------------------------- */

/* Makes the notifier readable until event_notifier_test_and_clear().
 * Any thread. Returns 0 or -errno. */
static inline int event_notifier_set(EventNotifier *e)
{
    const uint64_t one = 1;
    ssize_t ret;
    do
        ret = write(e->wfd, &one, sizeof one);
    while (ret < 0 && errno == EINTR);
    /* EAGAIN: the counter is at its maximum, so it is set already. */
    return ret < 0 && errno != EAGAIN ? -errno : 0;
}

/* Opens e's eventfd (non-blocking, close-on-exec), set if `active`.
 * Returns 0 or -errno. */
static inline int event_notifier_init(EventNotifier *e, int active)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    e->rfd = e->wfd = fd;
    e->initialized = true;
    atomic_init(&e->io_read, NULL);
    if (active)
        (void)event_notifier_set(e);
    return 0;
}

/* Closes the eventfd; remove it from its context first
 * (aio_set_event_notifier with a NULL handler). Twice is a no-op. */
static inline void event_notifier_cleanup(EventNotifier *e)
{
    if (!e->initialized)
        return;
    close(e->rfd);
    e->rfd = e->wfd = -1;
    e->initialized = false;
}

static inline int event_notifier_get_fd(const EventNotifier *e)
{
    return e->rfd;
}

/* Clears the notifier; returns whether it was set. */
static inline int event_notifier_test_and_clear(EventNotifier *e)
{
    uint64_t value = 0;
    ssize_t ret;
    do
        ret = read(e->rfd, &value, sizeof value);
    while (ret < 0 && errno == EINTR);
    return ret == (ssize_t)sizeof value && value != 0;
}

static inline void aioctx_compat_event_notifier_read(void *opaque)
{
    EventNotifier *e = opaque;
    EventNotifierHandler *io_read = atomic_load(&e->io_read);
    if (io_read)
        io_read(e);
}

/* The handler is stored in e before the fd is watched (and cleared before
 * it is removed), so a callback racing with the change sees either the old
 * handler, the new one or none. */
static inline void aioctx_compat_set_event_notifier(AioContext *ctx, EventNotifier *e,
                                                    EventNotifierHandler *io_read,
                                                    AioPollFn *io_poll)
{
    int ret;
    atomic_store(&e->io_read, io_read);
    ret = aioctx_set_fd_handler_full(ctx, event_notifier_get_fd(e),
                                     io_read ? aioctx_compat_event_notifier_read : NULL, NULL,
                                     io_read ? io_poll : NULL, e);
    if (ret < 0)
        aioctx_compat_fatal("aio_set_event_notifier", ret);
}

/*
 * aio_set_event_notifier(): io_read(e) runs in ctx's home thread, with ctx
 * held, whenever e is set (it must clear it: event_notifier_test_and_clear);
 * a NULL io_read removes e. Any thread. The signature is the selected
 * QEMU's; io_poll(e) is passed through and io_poll_ready and is_external
 * are ignored, as for aio_set_fd_handler(). e must stay valid (and
 * initialised) until it is removed.
 */
#if AIOCTX_COMPAT_QEMU_AT_LEAST(8, 1)
static inline void aio_set_event_notifier(AioContext *ctx, EventNotifier *e,
                                          EventNotifierHandler *io_read, AioPollFn *io_poll,
                                          EventNotifierHandler *io_poll_ready)
{
    (void)io_poll_ready;
    aioctx_compat_set_event_notifier(ctx, e, io_read, io_poll);
}
#elif AIOCTX_COMPAT_QEMU_AT_LEAST(7, 0)
static inline void aio_set_event_notifier(AioContext *ctx, EventNotifier *e, bool is_external,
                                          EventNotifierHandler *io_read, AioPollFn *io_poll,
                                          EventNotifierHandler *io_poll_ready)
{
    (void)is_external;
    (void)io_poll_ready;
    aioctx_compat_set_event_notifier(ctx, e, io_read, io_poll);
}
#elif AIOCTX_COMPAT_QEMU_AT_LEAST(2, 9)
static inline void aio_set_event_notifier(AioContext *ctx, EventNotifier *e, bool is_external,
                                          EventNotifierHandler *io_read, AioPollFn *io_poll)
{
    (void)is_external;
    aioctx_compat_set_event_notifier(ctx, e, io_read, io_poll);
}
#elif AIOCTX_COMPAT_QEMU_AT_LEAST(2, 5)
static inline void aio_set_event_notifier(AioContext *ctx, EventNotifier *e, bool is_external,
                                          EventNotifierHandler *io_read)
{
    (void)is_external;
    aioctx_compat_set_event_notifier(ctx, e, io_read, NULL);
}
#else
static inline void aio_set_event_notifier(AioContext *ctx, EventNotifier *e,
                                          EventNotifierHandler *io_read)
{
    aioctx_compat_set_event_notifier(ctx, e, io_read, NULL);
}
#endif

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
 * aio_timer_init(): makes the (embedded, caller-owned) ts a timer on ctx
 * whose deadlines (timer_mod) are in units of `scale` nanoseconds
 * (SCALE_NS, SCALE_US, SCALE_MS) on `type`'s clock. Every type except
 * QEMU_CLOCK_HOST runs on CLOCK_MONOTONIC (QEMU_CLOCK_VIRTUAL never stops:
 * there is no VM run state); a QEMU_CLOCK_HOST timer, a scale <= 0 or a NULL
 * cb aborts. The callback runs in ctx's home thread with ctx held.
 * Stricter than QEMU: ts holds an aioctx timer, so release it with
 * timer_deinit() (QEMU's initialised timers own nothing).
 */
static inline void aio_timer_init(AioContext *ctx, QEMUTimer *ts, QEMUClockType type,
                                  int scale, QEMUTimerCB *cb, void *opaque)
{
    if (type == QEMU_CLOCK_HOST || (int)type < 0 || (int)type >= (int)QEMU_CLOCK_MAX) {
        fprintf(stderr, "aio_timer_init: clock type %d is not supported: aioctx timers run "
                "on CLOCK_MONOTONIC, use QEMU_CLOCK_REALTIME\n", (int)type);
        abort();
    }
    if (scale <= 0) {
        fprintf(stderr, "aio_timer_init: scale %d: use SCALE_NS, SCALE_US or SCALE_MS\n", scale);
        abort();
    }
    ts->cb = cb;
    ts->opaque = opaque;
    ts->scale = scale;
    atomic_init(&ts->expire_ns, -1);
    ts->timer = cb ? aioctx_timer_new(ctx, aioctx_compat_timer_fire, ts) : NULL;
    if (ts->timer == NULL)
        aioctx_compat_fatal("aio_timer_init", cb ? aioctx_compat_last_errno() : -EINVAL);
}

/* Embedded timers on the main loop's context. */
static inline void timer_init_ns(QEMUTimer *ts, QEMUClockType type, QEMUTimerCB *cb,
                                 void *opaque)
{
    aio_timer_init(qemu_get_aio_context(), ts, type, SCALE_NS, cb, opaque);
}

static inline void timer_init_us(QEMUTimer *ts, QEMUClockType type, QEMUTimerCB *cb,
                                 void *opaque)
{
    aio_timer_init(qemu_get_aio_context(), ts, type, SCALE_US, cb, opaque);
}

static inline void timer_init_ms(QEMUTimer *ts, QEMUClockType type, QEMUTimerCB *cb,
                                 void *opaque)
{
    aio_timer_init(qemu_get_aio_context(), ts, type, SCALE_MS, cb, opaque);
}

/* Disarms ts and releases what aio_timer_init() took (not ts itself). The
 * timer may be initialised again afterwards. May be called from its own
 * callback. */
static inline void timer_deinit(QEMUTimer *ts)
{
    atomic_store(&ts->expire_ns, -1);
    aioctx_timer_free(ts->timer);
    ts->timer = NULL;
}

/* aio_timer_init() on a new heap timer; free it with timer_free(). */
static inline QEMUTimer *aio_timer_new(AioContext *ctx, QEMUClockType type, int scale,
                                       QEMUTimerCB *cb, void *opaque)
{
    QEMUTimer *ts = malloc(sizeof *ts);
    if (ts == NULL)
        aioctx_compat_fatal("aio_timer_new: out of memory", -ENOMEM);
    aio_timer_init(ctx, ts, type, scale, cb, opaque);
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

/* Units of ts's scale to nanoseconds, saturating. */
static inline int64_t aioctx_compat_timer_ns(const QEMUTimer *ts, int64_t time)
{
    if (time <= 0)
        return time < INT64_MIN / ts->scale ? INT64_MIN : time * ts->scale;
    return time > INT64_MAX / ts->scale ? INT64_MAX : time * ts->scale;
}

/* Arms ts for the absolute time expire_time, in units of the timer's scale. */
static inline void timer_mod(QEMUTimer *ts, int64_t expire_time)
{
    timer_mod_ns(ts, aioctx_compat_timer_ns(ts, expire_time));
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

/* Disarms and frees a timer of aio_timer_new()/timer_new_*() (may be
 * called from its own callback). NULL: no-op. */
static inline void timer_free(QEMUTimer *ts)
{
    if (ts == NULL)
        return;
    timer_deinit(ts);
    free(ts);
}

/* Arms ts for expire_ns unless it is already pending for an earlier time
 * (a deadline is only ever brought forward). */
static inline void timer_mod_anticipate_ns(QEMUTimer *ts, int64_t expire_ns)
{
    int64_t pending = atomic_load(&ts->expire_ns);
    if (expire_ns < 0)
        expire_ns = 0;
    if (pending < 0 || expire_ns < pending)
        timer_mod_ns(ts, expire_ns);
}

/* timer_mod_anticipate_ns() in units of the timer's scale. */
static inline void timer_mod_anticipate(QEMUTimer *ts, int64_t expire_time)
{
    timer_mod_anticipate_ns(ts, aioctx_compat_timer_ns(ts, expire_time));
}

/* Whether ts's deadline is at or before current_time (in units of its
 * scale). As in QEMU, a timer that is not pending (never armed, deleted or
 * fired) counts as expired. */
static inline bool timer_expired(QEMUTimer *ts, int64_t current_time)
{
    return atomic_load(&ts->expire_ns) <= aioctx_compat_timer_ns(ts, current_time);
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
 * changed by a callback of the waited-for context, or a request of a node on
 * it ending, needs none: those wake its waiters). A waiter is registered before it first evaluates its condition,
 * so a kick right after it began is not lost. Any thread. Before QEMU 4.0
 * it takes the AioWait of the waited-for object; every waiter is woken
 * whichever it names. */
#if AIOCTX_COMPAT_QEMU_AT_LEAST(4, 0)
static inline void aio_wait_kick(void)
{
    aioctx_wait_kick();
}
#else
static inline void aio_wait_kick(AioWait *wait)
{
    (void)wait;
    aioctx_wait_kick();
}
#endif

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
#if AIOCTX_COMPAT_QEMU_AT_LEAST(4, 0)
#define AIO_WAIT_WHILE(ctx, cond)                                                      \
    AIOCTX_COMPAT_WAIT_WHILE(ctx, cond, "AIO_WAIT_WHILE(" #ctx ", " #cond ")")
#else
/* QEMU 2.11-3.1: the AioWait of the waited-for object first (not
 * evaluated: aioctx keeps its own waiter list). */
#define AIO_WAIT_WHILE(wait, ctx, cond)                                                \
    AIOCTX_COMPAT_WAIT_WHILE(ctx, cond, "AIO_WAIT_WHILE(" #wait ", " #ctx ", " #cond ")")
#endif

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

/* bdrv_activate_all()'s name before QEMU 7.1. */
static inline void bdrv_invalidate_cache_all(Error **errp)
{
    bdrv_activate_all(errp);
}

/* ---- drained sections --------------------------------------------------------- */

/* Quiesces bs: waits until it has no request in flight, and keeps new
 * requests from starting until bdrv_drained_end(). Nests. From the main
 * loop (holding bs's context at most once) or from bs's IOThread; aborts
 * on a refusal (-EDEADLK: the wait could never end). */
static inline void bdrv_drained_begin(BlockDriverState *bs)
{
    int ret = aioctx_node_drained_begin(bs);
    if (ret < 0)
        aioctx_compat_fatal("bdrv_drained_begin", ret);
}

/* Ends the section bdrv_drained_begin() opened (the last end lets requests
 * start again). Aborts without a matching begin. */
static inline void bdrv_drained_end(BlockDriverState *bs)
{
    int ret = aioctx_node_drained_end(bs);
    if (ret < 0)
        aioctx_compat_fatal("bdrv_drained_end", ret);
}

/* bdrv_drained_begin() on every node of the graph, from the main loop
 * (without holding the nodes' contexts). No graph: nothing to do. */
static inline void bdrv_drain_all_begin(void)
{
    int ret;
    if (aioctx_compat_block_graph == NULL)
        return;
    ret = aioctx_graph_drain_all_begin(aioctx_compat_block_graph);
    if (ret < 0)
        aioctx_compat_fatal("bdrv_drain_all_begin", ret);
}

static inline void bdrv_drain_all_end(void)
{
    int ret;
    if (aioctx_compat_block_graph == NULL)
        return;
    ret = aioctx_graph_drain_all_end(aioctx_compat_block_graph);
    if (ret < 0)
        aioctx_compat_fatal("bdrv_drain_all_end", ret);
}

/* Waits until no node has a request in flight. */
static inline void bdrv_drain_all(void)
{
    bdrv_drain_all_begin();
    bdrv_drain_all_end();
}

/* ---- synchronous I/O ---------------------------------------------------------- */

static inline BlockDriverState *blk_bs(BlockBackend *blk)
{
    return blk;
}

static inline AioContext *blk_get_aio_context(BlockBackend *blk)
{
    return aioctx_node_context(blk);
}

struct aioctx_compat_sync_io {
    atomic_bool done;
    _Atomic int64_t ret;
};

static inline void aioctx_compat_sync_io_done(void *opaque, int64_t ret)
{
    struct aioctx_compat_sync_io *io = opaque;
    atomic_store(&io->ret, ret);
    atomic_store(&io->done, true); /* the poll that ran us kicks the waiter */
}

/*
 * One raw-file read or write, waited for as BDRV_POLL_WHILE waits: from the
 * main loop (blk's context held at most once, released while waiting) or
 * from blk's home thread. Returns the byte count or -errno; -EIO for a
 * negative offset or length (QEMU's early check), -ENOTSUP for flags.
 * The wait is registered before the request is submitted, so a refused
 * wait (-EDEADLK: blk's context held twice) submits nothing.
 */
static inline int64_t aioctx_compat_sync_io(BlockBackend *blk, bool write, void *buf,
                                            int64_t bytes, int64_t offset,
                                            BdrvRequestFlags flags, const char *what)
{
    struct aioctx_compat_sync_io io;
    AioctxWait *w;
    int ret;
    if (offset < 0 || bytes < 0)
        return -EIO;
    if (flags != 0)
        return -ENOTSUP;
    atomic_init(&io.done, false);
    atomic_init(&io.ret, 0);
    w = aioctx_wait_begin(bdrv_get_aio_context(blk), -1, 0);
    if (w == NULL)
        return aioctx_compat_last_errno();
    if (write)
        ret = aioctx_node_pwrite(blk, buf, (size_t)bytes, (uint64_t)offset,
                                 aioctx_compat_sync_io_done, &io);
    else
        ret = aioctx_node_pread(blk, buf, (size_t)bytes, (uint64_t)offset,
                                aioctx_compat_sync_io_done, &io);
    while (ret == 0 && !atomic_load(&io.done)) {
        ret = aioctx_wait_poll(w);
        /* The request still points at io: returning now would let it
         * write into a dead frame. */
        if (ret < 0)
            aioctx_compat_fatal(what, ret);
    }
    aioctx_wait_end(w);
    return ret < 0 ? ret : atomic_load(&io.ret);
}

/* A byte count to QEMU's int result: the whole request or -EIO (a short
 * read past the end of the image). */
static inline int aioctx_compat_sync_io_result(int64_t ret, int64_t bytes)
{
    if (ret < 0)
        return (int)ret;
    return ret == bytes ? 0 : -EIO;
}

#if AIOCTX_COMPAT_QEMU_AT_LEAST(7, 1)
/* Reads bytes at offset into buf and waits for it (see
 * aioctx_compat_sync_io). 0 or -errno. */
static inline int blk_pread(BlockBackend *blk, int64_t offset, int64_t bytes, void *buf,
                            BdrvRequestFlags flags)
{
    return aioctx_compat_sync_io_result(
        aioctx_compat_sync_io(blk, false, buf, bytes, offset, flags, "blk_pread"), bytes);
}

static inline int blk_pwrite(BlockBackend *blk, int64_t offset, int64_t bytes, const void *buf,
                             BdrvRequestFlags flags)
{
    return aioctx_compat_sync_io_result(
        aioctx_compat_sync_io(blk, true, (void *)(uintptr_t)buf, bytes, offset, flags,
                              "blk_pwrite"), bytes);
}
#else
/* Before QEMU 7.1: buffer before length, and the byte count on success. */
static inline int blk_pread(BlockBackend *blk, int64_t offset, void *buf, int bytes)
{
    int ret = aioctx_compat_sync_io_result(
        aioctx_compat_sync_io(blk, false, buf, bytes, offset, 0, "blk_pread"), bytes);
    return ret < 0 ? ret : bytes;
}

static inline int blk_pwrite(BlockBackend *blk, int64_t offset, const void *buf, int bytes,
                             BdrvRequestFlags flags)
{
    int ret = aioctx_compat_sync_io_result(
        aioctx_compat_sync_io(blk, true, (void *)(uintptr_t)buf, bytes, offset, flags,
                              "blk_pwrite"), bytes);
    return ret < 0 ? ret : bytes;
}
#endif

/* bdrv_flush() of blk's node: 0 or -errno. */
static inline int blk_flush(BlockBackend *blk)
{
    return bdrv_flush(blk);
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
