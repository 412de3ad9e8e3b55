/*
 * test-util.h - helpers shared by the aioctx C API tests, on top of tap.h:
 * scaled timeouts, waits for a counter (polling a context or sleeping),
 * trivial BH callbacks and conditions, a thread that arms a timer, a thread
 * that ends requests, temporary directories and image files, and checks made
 * in a forked child.
 *
 * Usage (after tap.h's _GNU_SOURCE):
 *
 *     #define _GNU_SOURCE
 *     #define TEST_LONG_TIMEOUT_S 10     // optional: long_timeout() (default 5 s)
 *     #include "tap.h"
 *     #include "aioctx.h"
 *     #include "test-util.h"
 *
 * Everything is static inline, so a program uses what it needs.
 */
#ifndef AIOCTX_TEST_UTIL_H
#define AIOCTX_TEST_UTIL_H

#include "tap.h"
#include "aioctx.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MS 1000000LL
#define SEC 1000000000LL

/* ---- timeouts ------------------------------------------------------------------- */

#ifndef TEST_LONG_TIMEOUT_S
#define TEST_LONG_TIMEOUT_S 5
#endif

/* Bounds every wait that must succeed: TEST_LONG_TIMEOUT_S seconds, scaled by
 * AIOCTX_TEST_TIMEOUT_SCALE (see tap_scale()). */
static inline int64_t long_timeout(void)
{
    return TEST_LONG_TIMEOUT_S * SEC * tap_scale();
}

/* ---- waiting for a counter -------------------------------------------------------- */

struct count_wait {
    atomic_int *counter;
    int target;
};

static inline bool below_target(void *opaque)
{
    struct count_wait *w = opaque;
    return atomic_load(w->counter) < w->target;
}

/* Waits (polling ctx as aioctx_poll_while does) until *counter >= target;
 * returns aioctx_poll_while's result (0, or -ETIMEDOUT after long_timeout()). */
static inline int wait_count(AioctxContext *ctx, atomic_int *counter, int target)
{
    struct count_wait w = { counter, target };
    return aioctx_poll_while(ctx, below_target, &w, long_timeout(), 0);
}

/* Without polling anything: sleeps 1 ms at a time until *counter >= target,
 * for at most timeout_ns (scaled). Returns 1 if it got there, 0 on timeout. */
static inline int wait_at_least(atomic_int *counter, int target, int64_t timeout_ns)
{
    int64_t end = tap_now_ns() + timeout_ns * tap_scale();
    while (atomic_load(counter) < target) {
        if (tap_now_ns() > end)
            return 0;
        tap_sleep_ms(1);
    }
    return 1;
}

/* ---- trivial callbacks and conditions ----------------------------------------------- */

/* BH: stores the running thread in *(pthread_t *)opaque. */
static inline void save_thread_cb(void *opaque)
{
    *(pthread_t *)opaque = pthread_self();
}

/* BH: adds 1 to the counter, then kicks every waiter: the counter may be what
 * a wait on another context polls for (iothreads_alive() waits on one context
 * for both IOThreads' BHs), and only the waited context's own callbacks wake
 * its waiters by themselves. */
static inline void inc_cb(void *opaque)
{
    atomic_fetch_add((atomic_int *)opaque, 1);
    aioctx_wait_kick();
}

/* AioctxCond that never lets a wait finish (it ends by timeout or error). */
static inline bool always(void *opaque)
{
    (void)opaque;
    return true;
}

/* Stores in *thread the thread that runs ctx's BHs (an IOThread's pthread_t);
 * returns wait_count's result (0 once it is known). */
static inline int learn_thread(AioctxContext *ctx, pthread_t *thread)
{
    atomic_int ran = 0;
    aioctx_bh_schedule_oneshot(ctx, save_thread_cb, thread);
    aioctx_bh_schedule_oneshot(ctx, inc_cb, &ran);
    return wait_count(ctx, &ran, 1);
}

/* ---- helper threads --------------------------------------------------------------- */

/* Thread: 20 ms after it starts, arms t for `after` ns from then (expire). */
struct remote_arm {
    AioctxTimer *t;
    int64_t after;
    int64_t expire;
    int rc;
};

static inline void *remote_arm_thread(void *arg)
{
    struct remote_arm *r = arg;
    tap_sleep_ms(20);
    r->expire = aioctx_clock_ns() + r->after;
    r->rc = aioctx_timer_mod(r->t, r->expire);
    return NULL;
}

/* Thread: ends one request on each of nodes[0..n-1] (a node may repeat),
 * sleeping delay_ms before each; last_end_ns is when it ended the last one. */
struct ender {
    AioctxNode *nodes[4];
    int n;
    int delay_ms;
    int64_t last_end_ns;
};

static inline void *ender_thread(void *arg)
{
    struct ender *e = arg;
    for (int i = 0; i < e->n; i++) {
        tap_sleep_ms(e->delay_ms);
        e->last_end_ns = tap_now_ns();
        aioctx_node_end_request(e->nodes[i]);
    }
    return NULL;
}

/* ---- the raw-file driver's I/O backend ------------------------------------------------ */

/* Whether this process can use an io_uring as the library does: it can
 * create one (the kernel has it, and no sysctl, seccomp policy or valgrind
 * refuses it), the kernel has IORING_FEAT_NODROP and IORING_REGISTER_PROBE
 * lists READ, WRITE and FSYNC (Linux 5.6). Raw structs: no liburing. */
static inline bool io_uring_usable(void)
{
#if defined(__NR_io_uring_setup) && defined(__NR_io_uring_register)
    uint32_t params[30] = { 0 }; /* struct io_uring_params; features: 6th u32 */
    long fd = syscall(__NR_io_uring_setup, 2, params);
    if (fd < 0)
        return false;
    /* struct io_uring_probe: a 16-byte header, then 8 bytes per op (op,
     * resv, u16 flags: 1 = supported, u32 resv2), 256 ops. */
    static unsigned char probe[16 + 256 * 8];
    memset(probe, 0, sizeof probe);
    bool usable = (params[5] & (1u << 1)) != 0 /* IORING_FEAT_NODROP */ &&
                  syscall(__NR_io_uring_register, (int)fd, 8 /* REGISTER_PROBE */, probe, 256) == 0;
    const int ops[] = { 22 /* READ */, 23 /* WRITE */, 3 /* FSYNC */ };
    for (size_t i = 0; usable && i < sizeof ops / sizeof ops[0]; i++)
        usable = ops[i] <= probe[0] /* last_op */ && (probe[16 + ops[i] * 8 + 2] & 1) != 0;
    close((int)fd);
    return usable;
#else
    return false;
#endif
}

/* The backend this run is for: AIOCTX_IO_BACKEND as meson's @io_uring and
 * @threads runs set it (NULL when unset). */
static inline const char *run_backend(void)
{
    return getenv("AIOCTX_IO_BACKEND");
}

/* Call first in main(): a run for io_uring where there is none skips as a
 * whole (its nodes would silently run on the worker pool instead). */
static inline void skip_unless_backend(void)
{
    const char *b = run_backend();
    if (b && strcmp(b, "io_uring") == 0 && !io_uring_usable()) {
        printf("1..0 # SKIP io_uring is not available to this process\n");
        exit(0);
    }
}

/* ---- temporary directories and image files ------------------------------------------ */

/* Creates a fresh directory /tmp/aioctx-<tag>-XXXXXX, its name in dir; returns
 * dir, or NULL (mkdtemp failed). */
static inline char *make_temp_dir(char *dir, size_t len, const char *tag)
{
    snprintf(dir, len, "/tmp/aioctx-%s-XXXXXX", tag);
    return mkdtemp(dir);
}

/* Creates (or truncates) path as a sparse file of size bytes with the
 * permissions mode (set with chmod, whatever the umask). 0, or -1. */
static inline int make_image(const char *path, off_t size, mode_t mode)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    int rc = ftruncate(fd, size);
    close(fd);
    if (rc == 0 && chmod(path, mode) != 0)
        rc = -1;
    return rc;
}

/* Reads len bytes at off back from path with plain pread(2): 1 if they are
 * want (all zero bytes when want is NULL), 0 if not or the read fell short. */
static inline int file_has(const char *path, uint64_t off, const void *want, size_t len)
{
    unsigned char *got = malloc(len);
    int fd = got ? open(path, O_RDONLY) : -1;
    ssize_t r = fd >= 0 ? pread(fd, got, len, (off_t)off) : -1;
    int same = r == (ssize_t)len;
    if (same && want)
        same = memcmp(got, want, len) == 0;
    for (size_t i = 0; same && !want && i < len; i++)
        same = got[i] == 0;
    if (fd >= 0)
        close(fd);
    free(got);
    return same;
}

/* ---- an I/O completion waited for with poll_while --------------------------------------------- */

struct io_wait {
    atomic_int done;
    atomic_llong ret;
};

/* AioctxIoDone for a struct io_wait. */
static inline void io_wait_cb(void *opaque, int64_t ret)
{
    struct io_wait *io = opaque;
    atomic_store(&io->ret, ret);
    atomic_store(&io->done, 1);
}

/* AioctxCond: the completion has not run yet. */
static inline bool io_wait_pending(void *opaque)
{
    return !atomic_load(&((struct io_wait *)opaque)->done);
}

/* ---- one-byte commands between processes over a pipe ------------------------------------------ */

static inline void pipe_send(int fd, char c)
{
    ssize_t r = write(fd, &c, 1);
    (void)r;
}

/* The next byte, or 0 at end of file. */
static inline char pipe_recv(int fd)
{
    char c;
    ssize_t r;
    do
        r = read(fd, &c, 1);
    while (r < 0 && errno == EINTR);
    return r == 1 ? c : 0;
}

/* ---- checks made in a child process ------------------------------------------------ */

/* A child (see run_in_child) reports each check as one line on a pipe,
 * "P label" or "F label: detail", so a child that aborts or hangs is a
 * failure of the parent's TAP stream instead of a lost one. */
static int child_report_fd = -1;

static inline void child_report(int pass, const char *label, long long got, long long want)
{
    char line[512];
    int n = pass ? snprintf(line, sizeof line, "P %s\n", label)
                 : snprintf(line, sizeof line, "F %s (got %lld, want %lld)\n", label, got, want);
    ssize_t r = write(child_report_fd, line, (size_t)n);
    (void)r;
}

#define child_is_int(got, want, label) \
    do { long long g_ = (got), w_ = (want); child_report(g_ == w_, (label), g_, w_); } while (0)
#define child_ok(cond, label) child_report(!!(cond), (label), 0, 1)

/* Forks; the child arms its own watchdog (timeout_s, scaled), runs scenario()
 * and exits with its result; the parent runs in_parent() (if not NULL) right
 * after the fork. Every line the child reports becomes a TAP result here,
 * then two more: that `expect` lines came, and that the child exited with 0. */
static inline void run_in_child(const char *name, int (*scenario)(void), void (*in_parent)(void),
                                int expect, unsigned timeout_s)
{
    int fds[2];
    if (pipe(fds) != 0) {
        ok(0, "%s: pipe", name);
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        child_report_fd = fds[1];
        alarm(timeout_s * (unsigned)tap_scale());
        exit(scenario());
    }
    close(fds[1]);
    if (in_parent)
        in_parent();
    FILE *in = fdopen(fds[0], "r");
    char line[600];
    int lines = 0;
    while (in && fgets(line, sizeof line, in)) {
        line[strcspn(line, "\n")] = 0;
        ok(line[0] == 'P', "%s: %s", name, line + 2);
        lines++;
    }
    if (in)
        fclose(in);
    int status = 0;
    waitpid(pid, &status, 0);
    is_int(lines, expect, "%s: every check reported", name);
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: the process exits with 0 (status %#x%s)",
       name, status, !WIFSIGNALED(status) ? "" : WTERMSIG(status) == SIGALRM ? ", SIGALRM: it hung"
                                                : ", killed by a signal");
}

#endif /* AIOCTX_TEST_UTIL_H */
