/* Time of aioctx_graph_inactivate_all (and of activate_all) for N raw-file
 * nodes spread over C IOThread contexts, with W writes of 4 KiB in flight per
 * node when the handover starts: it drains them, flushes (fdatasync) and
 * inactivates every node, and drops every image lock.
 *
 *   inactivate NODES CONTEXTS WRITES_PER_NODE ROUNDS [DIR]
 *
 * Prints one JSON line with the median and range over ROUNDS. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aioctx.h"
#include "bench-common.h"

enum { BLOCK = 4096 };

static long acked, failed;

static void write_done(void *opaque, int64_t ret)
{
    (void)opaque;
    if (ret == BLOCK)
        __atomic_add_fetch(&acked, 1, __ATOMIC_RELAXED);
    else
        __atomic_add_fetch(&failed, 1, __ATOMIC_RELAXED);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int die(const char *what)
{
    fprintf(stderr, "inactivate: %s: %s\n", what, aioctx_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s NODES CONTEXTS WRITES_PER_NODE ROUNDS [DIR]\n", argv[0]);
        return 2;
    }
    int nodes = atoi(argv[1]), contexts = atoi(argv[2]), writes = atoi(argv[3]), rounds = atoi(argv[4]);
    char dir[] = "/tmp/aioctx-bench-XXXXXX";
    const char *base = argc > 5 ? argv[5] : mkdtemp(dir);
    if (nodes < 1 || contexts < 1 || writes < 0 || rounds < 1 || !base)
        return 2;

    /* An image fd per node, an epoll fd and an eventfd per context. */
    bench_raise_nofile();
    static char block[BLOCK];
    memset(block, 0xab, sizeof(block));
    aioctx_context_claim(aioctx_main_context());
    AioctxIoThread **threads = calloc((size_t)contexts, sizeof(*threads));
    for (int c = 0; c < contexts; c++) {
        char name[32];
        snprintf(name, sizeof(name), "bench-io%d", c);
        if (!(threads[c] = aioctx_iothread_new(name)))
            return die("iothread_new");
    }
    double *inact = calloc((size_t)rounds, sizeof(double)), *act = calloc((size_t)rounds, sizeof(double));
    char path[512];
    for (int n = 0; n < nodes; n++) {
        snprintf(path, sizeof(path), "%s/disk%d.img", base, n);
        int fd = open(path, O_CREAT | O_RDWR, 0600);
        if (fd < 0 || ftruncate(fd, (off_t)writes * BLOCK + BLOCK) != 0)
            return perror(path), 1;
        close(fd);
    }

    for (int r = 0; r < rounds; r++) {
        AioctxGraph *g = aioctx_graph_new(NULL);
        AioctxNode **ns = calloc((size_t)nodes, sizeof(*ns));
        for (int n = 0; n < nodes; n++) {
            char name[32];
            snprintf(name, sizeof(name), "disk%d", n);
            snprintf(path, sizeof(path), "%s/disk%d.img", base, n);
            ns[n] = aioctx_node_open_file(g, name, aioctx_iothread_context(threads[n % contexts]), path,
                                          AIOCTX_OPEN_RDWR);
            if (!ns[n])
                return die("open_file");
        }
        acked = failed = 0;
        for (int w = 0; w < writes; w++)
            for (int n = 0; n < nodes; n++)
                if (aioctx_node_pwrite(ns[n], block, BLOCK, (uint64_t)w * BLOCK, write_done, NULL) != 0)
                    return die("pwrite");
        int64_t t0 = aioctx_clock_ns();
        if (aioctx_graph_inactivate_all(g) != 0)
            return die("inactivate_all");
        int64_t t1 = aioctx_clock_ns();
        if (aioctx_graph_activate_all(g) != 0)
            return die("activate_all");
        int64_t t2 = aioctx_clock_ns();
        if (acked + failed != (long)nodes * writes || failed != 0) {
            fprintf(stderr, "inactivate: %ld acknowledged, %ld failed of %ld writes\n", acked, failed,
                    (long)nodes * writes);
            return 1;
        }
        inact[r] = (double)(t1 - t0) / 1e6;
        act[r] = (double)(t2 - t1) / 1e6;
        aioctx_graph_free(g);
        free(ns);
    }
    qsort(inact, (size_t)rounds, sizeof(double), cmp_double);
    qsort(act, (size_t)rounds, sizeof(double), cmp_double);
    printf("{\"bench\": \"inactivate_all\", \"nodes\": %d, \"contexts\": %d, \"writes_in_flight_per_node\": %d, "
           "\"rounds\": %d, \"inactivate_ms_median\": %.2f, \"inactivate_ms_min\": %.2f, "
           "\"inactivate_ms_max\": %.2f, \"activate_ms_median\": %.2f}\n",
           nodes, contexts, writes, rounds, inact[rounds / 2], inact[0], inact[rounds - 1], act[rounds / 2]);

    for (int c = 0; c < contexts; c++)
        aioctx_iothread_free(threads[c]);
    for (int n = 0; n < nodes; n++) {
        snprintf(path, sizeof(path), "%s/disk%d.img", base, n);
        unlink(path);
    }
    if (argc <= 5)
        rmdir(base);
    free(threads);
    free(inact);
    free(act);
    return 0;
}
