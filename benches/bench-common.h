/* Helpers shared by the benchmarks: a monotonic clock, medians, a hard
 * failure that names the check, and a raised descriptor limit.
 *
 * Every benchmark interleaves aioctx and its baseline in one process, repeats
 * them, and prints one JSON line with medians and ratios (ratio = aioctx cost
 * / baseline cost: below 1 is faster). A check that fails exits with status 1,
 * so a broken run never produces numbers. */
#ifndef AIOCTX_BENCH_COMMON_H
#define AIOCTX_BENCH_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "aioctx.h"

static inline int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v). */
static inline double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Prints "bench: <message>" (plus aioctx's last error when asked) and exits 1. */
#if defined(__GNUC__)
__attribute__((noreturn, format(printf, 3, 4)))
#endif
static inline void bench_fail(const char *bench, int with_aioctx_error, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: FAILED: ", bench);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (with_aioctx_error)
        fprintf(stderr, " (%s)", aioctx_last_error());
    fputc('\n', stderr);
    exit(1);
}

/* Each context owns an epoll fd and an eventfd, each raw-file node an image
 * fd: raise the soft descriptor limit to the hard one. */
static inline void bench_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* The i-th CPU this process may run on (-1 if there are not that many). */
static inline int bench_cpu(int i)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0)
        return -1;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &set) && i-- == 0)
            return cpu;
    return -1;
}

/* Pins the calling thread to `cpu`. Wake-up latencies depend mostly on
 * whether the two threads share a CPU (a wake-up is then a context switch)
 * or not (an inter-processor interrupt, which a VM's idle vCPU makes slow),
 * so the wake-up benchmarks pin their threads and measure both placements. */
static inline void bench_pin_self(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0) {
        fprintf(stderr, "cannot pin a thread to CPU %d\n", cpu);
        exit(1);
    }
}

struct bench_pin_request {
    int cpu;
    sem_t done;
};

static inline void bench_pin_bh(void *opaque)
{
    struct bench_pin_request *p = opaque;
    bench_pin_self(p->cpu);
    sem_post(&p->done);
}

/* Pins the IOThread whose context is ctx to cpu, from inside it. */
static inline void bench_pin_iothread(const char *bench, AioctxContext *ctx, int cpu)
{
    struct bench_pin_request p = {.cpu = cpu};
    sem_init(&p.done, 0, 0);
    if (aioctx_bh_schedule_oneshot(ctx, bench_pin_bh, &p) != 0)
        bench_fail(bench, 1, "aioctx_bh_schedule_oneshot");
    while (sem_wait(&p.done) != 0 && errno == EINTR) {
    }
    sem_destroy(&p.done);
}

/* Parses "a,b,c" into at most max longs; returns the count (0: bad list). */
static inline int bench_parse_list(const char *s, long *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0)
            return 0;
        out[n++] = v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return 0;
    }
    return *s ? 0 : n;
}

/* `ops` block numbers below `nblocks`, the same every run (xorshift64 from a
 * fixed seed), so aioctx and its baseline read and write the same blocks.
 * The caller frees the array. */
static inline uint64_t *bench_random_blocks(long ops, uint64_t nblocks)
{
    uint64_t *blocks = malloc((size_t)ops * sizeof(*blocks));
    if (!blocks)
        bench_fail("bench-common", 0, "out of memory for %ld block numbers", ops);
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (long i = 0; i < ops; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        blocks[i] = x % nblocks;
    }
    return blocks;
}

#endif
