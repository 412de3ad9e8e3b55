/* Uncontended acquire+release through the C ABI vs a recursive pthread mutex.
 * Interleaved rounds, median of each, ratio reported (the machine is shared).
 *
 * A second, idle thread runs throughout: glibc takes a non-atomic fast path
 * while a process is single-threaded, and a VMM with IOThreads never is.
 * Both sides check every return value (a failure exits with status 1), and
 * the context must be free again at the end. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "aioctx.h"

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void *idle_thread(void *fd)
{
    char c;
    return (void *)(long)read(*(int *)fd, &c, 1);
}

/* ns per acquire+release pair, at whatever depth the caller already holds. */
static double time_aioctx(AioctxContext *ctx, long iters)
{
    int64_t t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        if (aioctx_acquire(ctx) != 0 || aioctx_release(ctx) != 0) {
            fprintf(stderr, "lock-uncontended: FAILED: %s\n", aioctx_last_error());
            exit(1);
        }
    }
    return (double)(now_ns() - t0) / iters;
}

static double time_pthread(pthread_mutex_t *mutex, long iters)
{
    int64_t t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        if (pthread_mutex_lock(mutex) != 0 || pthread_mutex_unlock(mutex) != 0) {
            fprintf(stderr, "lock-uncontended: FAILED: pthread mutex\n");
            exit(1);
        }
    }
    return (double)(now_ns() - t0) / iters;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 10000000;
    enum { ROUNDS = 9 };
    double ours[ROUNDS], base[ROUNDS], nested_ours[ROUNDS], nested_base[ROUNDS];
    AioctxContext *ctx = aioctx_context_new("bench");
    pthread_mutexattr_t attr;
    pthread_mutex_t mutex;

    int pipefd[2];
    pthread_t idle;
    if (pipe(pipefd) != 0 || pthread_create(&idle, NULL, idle_thread, &pipefd[0]) != 0) {
        perror("idle thread");
        return 1;
    }
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&mutex, &attr);
    for (int r = 0; r < ROUNDS; r++) {
        ours[r] = time_aioctx(ctx, iters);
        base[r] = time_pthread(&mutex, iters);
        /* The same one level deeper: both sides already hold their lock. */
        if (aioctx_acquire(ctx) != 0 || pthread_mutex_lock(&mutex) != 0) {
            fprintf(stderr, "lock-uncontended: FAILED: outer acquire\n");
            return 1;
        }
        nested_ours[r] = time_aioctx(ctx, iters);
        nested_base[r] = time_pthread(&mutex, iters);
        if (aioctx_lock_depth(ctx) != 1 || aioctx_release(ctx) != 0 || pthread_mutex_unlock(&mutex) != 0) {
            fprintf(stderr, "lock-uncontended: FAILED: outer release\n");
            return 1;
        }
    }
    if (aioctx_lock_depth(ctx) != 0 || aioctx_try_acquire(ctx) != 0 || aioctx_release(ctx) != 0) {
        fprintf(stderr, "lock-uncontended: FAILED: context not free after the loop\n");
        return 1;
    }
    qsort(ours, ROUNDS, sizeof(double), cmp);
    qsort(base, ROUNDS, sizeof(double), cmp);
    qsort(nested_ours, ROUNDS, sizeof(double), cmp);
    qsort(nested_base, ROUNDS, sizeof(double), cmp);
    double o = ours[ROUNDS / 2], b = base[ROUNDS / 2];
    double no = nested_ours[ROUNDS / 2], nb = nested_base[ROUNDS / 2];
    printf("{\"bench\": \"lock-uncontended\", \"iterations\": %ld, \"aioctx_ns\": %.2f, "
           "\"pthread_recursive_ns\": %.2f, \"ratio\": %.3f, \"nested_aioctx_ns\": %.2f, "
           "\"nested_pthread_recursive_ns\": %.2f, \"nested_ratio\": %.3f}\n",
           iters, o, b, o / b, no, nb, no / nb);
    close(pipefd[1]);
    pthread_join(idle, NULL);
    close(pipefd[0]);
    pthread_mutex_destroy(&mutex);
    aioctx_context_unref(ctx);
    return 0;
}
