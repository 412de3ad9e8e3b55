/*
 * tap.h - a tiny header-only TAP (Test Anything Protocol) producer for the
 * aioctx C API tests, plus a watchdog so that a hang is a test failure with a
 * clear message instead of a silent CI timeout.
 *
 * Usage (every test program):
 *
 *     #define _GNU_SOURCE
 *     #include "tap.h"
 *     #include "aioctx.h"
 *
 *     int main(void) {
 *         tap_watchdog(10);              // first thing: arm the watchdog
 *         ok(1 + 1 == 2, "arithmetic");
 *         is_int(aioctx_poll(NULL, false), -EINVAL, "poll(NULL)");
 *         return done_testing();         // prints the plan, returns exit code
 *     }
 *
 * Output goes to stdout (line buffered so nothing is lost if the watchdog
 * fires); diagnostics are lines starting with "# ".
 *
 * AIOCTX_TEST_TIMEOUT_SCALE=<n> in the environment multiplies the watchdog
 * period and every timing tolerance obtained through tap_scale() (valgrind
 * runs set 20).
 */
#ifndef AIOCTX_TAP_H
#define AIOCTX_TAP_H

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__)
#define TAP_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define TAP_PRINTF(f, a)
#endif

struct tap_state {
    int run;
    int failed;
    int planned;           /* -1: no plan printed yet */
    const char *prog;
    char watchdog_msg[256];
    size_t watchdog_len;
};

static struct tap_state tap_st = { 0, 0, -1, "test", { 0 }, 0 };

static inline void tap_init_output(void)
{
    static int done;
    if (!done) {
        done = 1;
        setvbuf(stdout, NULL, _IOLBF, 0);
    }
}

/* Multiplier for timeouts and timing tolerances (>= 1). */
static inline int tap_scale(void)
{
    const char *s = getenv("AIOCTX_TEST_TIMEOUT_SCALE");
    int v = s ? atoi(s) : 1;
    return v >= 1 ? v : 1;
}

/* Prints text as TAP comment lines: "# " before every line of it. */
static inline void tap_comment(const char *prefix, const char *text)
{
    const char *p = text;
    tap_init_output();
    do {
        const char *nl = strchr(p, '\n');
        int len = nl ? (int)(nl - p) : (int)strlen(p);
        printf("# %s%.*s\n", prefix, len, p);
        p = nl ? nl + 1 : NULL;
    } while (p && *p);
    fflush(stdout);
}

/* Prints a "# " diagnostic line (each line of a multi-line text is prefixed). */
TAP_PRINTF(1, 2)
static inline void diag(const char *fmt, ...)
{
    va_list ap;
    char buf[4096];
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    tap_comment("", buf);
}

/* Optional: announce the number of tests up front. */
static inline void plan(int n)
{
    tap_init_output();
    tap_st.planned = n;
    printf("1..%d\n", n);
}

TAP_PRINTF(4, 5)
static inline int tap_ok(int cond, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    char name[1024];
    tap_init_output();
    tap_st.run++;
    if (!cond)
        tap_st.failed++;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    for (char *c = name; *c; c++)
        if (*c == '\n' || *c == '#')
            *c = *c == '#' ? '_' : ' ';
    printf("%sok %d - %s\n", cond ? "" : "not ", tap_st.run, name);
    if (!cond)
        printf("#   Failed test at %s line %d.\n", file, line);
    fflush(stdout);
    return cond;
}

/* ok(cond, fmt, ...): one assertion; the name is a printf format. */
#define ok(cond, ...) tap_ok(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

/* " (-EINVAL)" for the negative errno values the tests meet, else "". */
static inline const char *tap_errname(long long v)
{
    switch (v) {
    case -EPERM: return " (-EPERM)";
    case -ENOENT: return " (-ENOENT)";
    case -EBADF: return " (-EBADF)";
    case -EAGAIN: return " (-EAGAIN)";
    case -ENOMEM: return " (-ENOMEM)";
    case -EBUSY: return " (-EBUSY)";
    case -EEXIST: return " (-EEXIST)";
    case -EINVAL: return " (-EINVAL)";
    case -ENOSYS: return " (-ENOSYS)";
    case -EDEADLK: return " (-EDEADLK)";
    case -ELOOP: return " (-ELOOP)";
    case -ETIMEDOUT: return " (-ETIMEDOUT)";
    case -ENOTSUP: return " (-ENOTSUP)";
    default: return "";
    }
}

TAP_PRINTF(5, 6)
static inline int tap_is_int(long long got, long long want, const char *file, int line,
                             const char *fmt, ...)
{
    va_list ap;
    char name[512];
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (!tap_ok(got == want, file, line, "%s", name)) {
        printf("#          got: %lld%s\n", got, tap_errname(got));
        printf("#     expected: %lld%s\n", want, tap_errname(want));
        fflush(stdout);
        return 0;
    }
    return 1;
}

/* is_int(got, want, fmt, ...): integer equality, prints both on failure. */
#define is_int(got, want, ...) \
    tap_is_int((long long)(got), (long long)(want), __FILE__, __LINE__, __VA_ARGS__)

TAP_PRINTF(5, 6)
static inline int tap_is_str(const char *got, const char *want, const char *file, int line,
                             const char *fmt, ...)
{
    va_list ap;
    char name[512];
    int same = (got == NULL && want == NULL) ||
               (got != NULL && want != NULL && strcmp(got, want) == 0);
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (!tap_ok(same, file, line, "%s", name)) {
        tap_comment("         got: ", got ? got : "(NULL)");
        tap_comment("    expected: ", want ? want : "(NULL)");
        return 0;
    }
    return 1;
}

/* is_str(got, want, fmt, ...): string equality (NULL-safe). */
#define is_str(got, want, ...) tap_is_str((got), (want), __FILE__, __LINE__, __VA_ARGS__)

TAP_PRINTF(5, 6)
static inline int tap_like(const char *got, const char *needle, const char *file, int line,
                           const char *fmt, ...)
{
    va_list ap;
    char name[512];
    int found = got != NULL && needle != NULL && strstr(got, needle) != NULL;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (!tap_ok(found, file, line, "%s", name)) {
        tap_comment("    got: ", got ? got : "(NULL)");
        tap_comment("    does not contain: ", needle ? needle : "(NULL)");
        return 0;
    }
    return 1;
}

/* like(got, needle, fmt, ...): got contains the substring needle. */
#define like(got, needle, ...) tap_like((got), (needle), __FILE__, __LINE__, __VA_ARGS__)

/* Prints the trailing plan if none was given; returns the process exit code. */
static inline int done_testing(void)
{
    tap_init_output();
    if (tap_st.planned < 0)
        printf("1..%d\n", tap_st.run);
    else if (tap_st.planned != tap_st.run)
        printf("# planned %d tests but ran %d\n", tap_st.planned, tap_st.run);
    if (tap_st.failed)
        printf("# failed %d of %d tests\n", tap_st.failed, tap_st.run);
    fflush(stdout);
    if (tap_st.failed)
        return 1;
    if (tap_st.planned >= 0 && tap_st.planned != tap_st.run)
        return 1;
    return 0;
}

static void tap_watchdog_fire(int sig)
{
    ssize_t r;
    (void)sig;
    r = write(STDOUT_FILENO, tap_st.watchdog_msg, tap_st.watchdog_len);
    (void)r;
    _exit(1);
}

/*
 * Arms the watchdog: after seconds * AIOCTX_TEST_TIMEOUT_SCALE seconds the
 * process prints "Bail out! watchdog: <test> hung after N s" and _exit(1)s.
 * SIGALRM is process-directed, so the handler runs in whichever thread does
 * not block it; it only uses write() and _exit(). Call it first in main().
 */
#define tap_watchdog(seconds) tap_watchdog_arm((seconds), __FILE__)

static inline void tap_watchdog_arm(unsigned seconds, const char *file)
{
    struct sigaction sa;
    const char *base = strrchr(file, '/');
    unsigned total = seconds * (unsigned)tap_scale();
    char name[128];
    size_t n;

    tap_init_output();
    snprintf(name, sizeof name, "%s", base ? base + 1 : file);
    n = strlen(name);
    if (n > 2 && strcmp(name + n - 2, ".c") == 0)
        name[n - 2] = '\0';
    tap_st.prog = file;
    snprintf(tap_st.watchdog_msg, sizeof tap_st.watchdog_msg,
             "\nBail out! watchdog: %s hung after %u s\n", name, total);
    tap_st.watchdog_len = strlen(tap_st.watchdog_msg);

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = tap_watchdog_fire;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    alarm(total);
}

/* ---- small helpers shared by the tests ---------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds (the clock aioctx uses). */
static inline int64_t tap_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void tap_sleep_ns(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static inline void tap_sleep_ms(int ms)
{
    tap_sleep_ns((int64_t)ms * 1000000);
}

#endif /* AIOCTX_TAP_H */
