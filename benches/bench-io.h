/* The queue-depth driver of the raw-file benchmarks (file-io, io-qd).
 *
 * At depth Q the main thread submits Q requests, and each completion (run by
 * its node's IOThread) submits the next, until `ops` are done. Operation i
 * goes to node i % nnodes at block blocks[i]. Every block of every file
 * carries bench_io_tag(node, block) in its first 8 bytes (writes write the
 * same tag back), and every request is checked: the whole block transferred,
 * and a read found its tag. */
#ifndef AIOCTX_BENCH_IO_H
#define AIOCTX_BENCH_IO_H

#include "bench-common.h"

#include <errno.h>
#include <semaphore.h>
#include <string.h>

enum { BENCH_IO_BLOCK = 4096, BENCH_IO_MAX_QD = 256, BENCH_IO_MAX_NODES = 2 };

static inline uint64_t bench_io_tag(int node, uint64_t block)
{
    return 0xa10c7000000000ull ^ ((uint64_t)node << 40) ^ block;
}

struct bench_io_run;

struct bench_io_slot {
    struct bench_io_run *run;
    unsigned char *buf;
    long op;
};

struct bench_io_run {
    const char *bench;
    AioctxNode *node[BENCH_IO_MAX_NODES];
    int nnodes;
    const uint64_t *blocks;
    long ops;
    int write;
    long next, completed, errors;
    sem_t done;
    struct bench_io_slot slots[BENCH_IO_MAX_QD];
};

static inline void bench_io_init(struct bench_io_run *r, const char *bench, const uint64_t *blocks)
{
    memset(r, 0, sizeof(*r));
    r->bench = bench;
    r->blocks = blocks;
    sem_init(&r->done, 0, 0);
    for (int i = 0; i < BENCH_IO_MAX_QD; i++) {
        r->slots[i].run = r;
        r->slots[i].buf = aligned_alloc(BENCH_IO_BLOCK, BENCH_IO_BLOCK);
        if (!r->slots[i].buf)
            bench_fail(bench, 0, "out of memory for I/O buffers");
    }
}

static inline void bench_io_fini(struct bench_io_run *r)
{
    for (int i = 0; i < BENCH_IO_MAX_QD; i++)
        free(r->slots[i].buf);
    sem_destroy(&r->done);
}

static void bench_io_done(void *opaque, int64_t ret);

static inline void bench_io_submit(struct bench_io_slot *s, long op)
{
    struct bench_io_run *r = s->run;
    int node = (int)(op % r->nnodes);
    uint64_t block = r->blocks[op];
    s->op = op;
    int rc;
    if (r->write) {
        memcpy(s->buf, &(uint64_t){bench_io_tag(node, block)}, sizeof(uint64_t));
        rc = aioctx_node_pwrite(r->node[node], s->buf, BENCH_IO_BLOCK, block * BENCH_IO_BLOCK, bench_io_done, s);
    } else {
        memset(s->buf, 0, sizeof(uint64_t));
        rc = aioctx_node_pread(r->node[node], s->buf, BENCH_IO_BLOCK, block * BENCH_IO_BLOCK, bench_io_done, s);
    }
    if (rc != 0)
        bench_fail(r->bench, 1, "submit %s", r->write ? "aioctx_node_pwrite" : "aioctx_node_pread");
}

static void bench_io_done(void *opaque, int64_t ret)
{
    struct bench_io_slot *s = opaque;
    struct bench_io_run *r = s->run;
    uint64_t tag;
    memcpy(&tag, s->buf, sizeof(tag));
    int node = (int)(s->op % r->nnodes);
    if (ret != BENCH_IO_BLOCK || (!r->write && tag != bench_io_tag(node, r->blocks[s->op])))
        __atomic_add_fetch(&r->errors, 1, __ATOMIC_RELAXED);
    long op = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED);
    if (op < r->ops)
        bench_io_submit(s, op);
    if (__atomic_add_fetch(&r->completed, 1, __ATOMIC_ACQ_REL) == r->ops)
        sem_post(&r->done);
}

/* Runs r->ops operations (reads, or writes if `write`) at depth qd on the
 * nodes already in r->node; returns ns per operation. A request that failed
 * or read the wrong block fails the benchmark, naming `what`. */
static inline double bench_io_run_qd(struct bench_io_run *r, int write, int qd, const char *what)
{
    r->write = write;
    r->completed = r->errors = 0;
    long first = qd < r->ops ? qd : r->ops;
    /* Set before submitting: completions take the next op from here. */
    r->next = first;
    int64_t t0 = bench_now_ns();
    for (long op = 0; op < first; op++)
        bench_io_submit(&r->slots[op], op);
    while (sem_wait(&r->done) != 0 && errno == EINTR) {
    }
    int64_t t1 = bench_now_ns();
    if (r->completed != r->ops || r->errors)
        bench_fail(r->bench, 0, "%s: %ld of %ld completed, %ld failed or wrong", what, r->completed, r->ops,
                   r->errors);
    return (double)(t1 - t0) / (double)r->ops;
}

#endif
