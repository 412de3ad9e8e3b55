/* IOPS against queue depth: 4 KiB random reads and writes on one image file
 * through aioctx_node_pread/aioctx_node_pwrite, one node on one IOThread,
 * for each backend (the worker pool, io_uring) and each cache mode (O_DIRECT,
 * buffered: the page cache, warm), at each queue depth of QDLIST. fio runs on
 * the same files as the baseline (tools/bench.sh), so they are kept.
 *
 *   io-qd FILE FILE_MB OPS REPS QDLIST
 *
 * FILE (for O_DIRECT) and FILE.buffered are created (FILE_MB MiB, every block
 * tagged (bench-io.h), synced): one file each, because a direct read of a
 * range with dirty cached pages waits for their writeback first, and a direct
 * write drops the cached pages it covers. A buffered write variant is synced
 * after its timing, so that the next variant does not pay its writeback.
 * A sample is OPS operations at pseudo-random blocks (the same sequence for
 * every variant); the main thread submits QD requests and each completion
 * (run by the IOThread) submits the next. Variants run interleaved, REPS
 * samples each; every read is checked (the whole block, its tag). One JSON
 * line: per variant, the median thousands of operations per second and the
 * mean latency (QD / IOPS, microseconds).
 *
 * BENCH_ONLY=<substring> runs only the variants whose name contains it
 * (names like "io_uring_direct_read_qd32"), for profiling. */
#include "bench-io.h"

#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <string.h>
#include <unistd.h>

#define BENCH "io-qd"

enum { BLOCK = BENCH_IO_BLOCK, MAX_QD = BENCH_IO_MAX_QD, MAX_QDS = 16 };

struct variant {
    char name[64];
    const char *backend, *cache;
    unsigned flags;
    int write, qd;
    double *samples;
};

/* ns per operation; 0 when the backend cannot open the file (no io_uring). */
static double run_one(struct bench_io_run *r, AioctxContext *ctx, const char *direct_path, const struct variant *v)
{
    char path[4096];
    snprintf(path, sizeof path, "%s%s", direct_path, v->flags & AIOCTX_OPEN_DIRECT ? "" : ".buffered");
    AioctxGraph *g = aioctx_graph_new(NULL);
    if (!g)
        bench_fail(BENCH, 1, "aioctx_graph_new");
    r->node[0] = aioctx_node_open_file(g, "disk", ctx, path, v->flags);
    if (!r->node[0]) {
        if (aioctx_last_errno() == -ENOTSUP) {
            aioctx_graph_free(g);
            return 0;
        }
        bench_fail(BENCH, 1, "aioctx_node_open_file %s", v->name);
    }
    r->nnodes = 1;
    double ns = bench_io_run_qd(r, v->write, v->qd, v->name);
    if (v->write && !(v->flags & AIOCTX_OPEN_DIRECT) && aioctx_node_flush(r->node[0]) != 0)
        bench_fail(BENCH, 1, "flush %s", v->name);
    aioctx_graph_free(g);
    return ns;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s FILE FILE_MB OPS REPS QDLIST\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    long file_mb = atol(argv[2]), ops = atol(argv[3]), qds[MAX_QDS];
    int reps = atoi(argv[4]), nqd = bench_parse_list(argv[5], qds, MAX_QDS);
    if (file_mb < 1 || ops < 1 || reps < 1 || reps > 1000 || nqd < 1)
        return 2;
    for (int i = 0; i < nqd; i++)
        if (qds[i] < 1 || qds[i] > MAX_QD)
            return 2;
    uint64_t nblocks = (uint64_t)file_mb * (1024 * 1024 / BLOCK);

    /* One block per write, as a guest writes: filled in 1 MiB writes, ext4
     * caches the file in large folios, and each later 4 KiB buffered write
     * walks a whole folio (ext4_block_write_begin: a quarter of the writer's
     * time in perf), which put buffered QD32 writes at 30-60k IOPS. */
    enum { CHUNK = 1 };
    unsigned char *fill = aligned_alloc(BLOCK, (size_t)CHUNK * BLOCK);
    memset(fill, 0x5a, (size_t)CHUNK * BLOCK);
    for (int f = 0; f < 2; f++) {
        char name[4096];
        snprintf(name, sizeof name, "%s%s", path, f ? ".buffered" : "");
        int fd = open(name, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
            bench_fail(BENCH, 0, "%s: %s", name, strerror(errno));
        for (uint64_t b = 0; b < nblocks; b += CHUNK) {
            uint64_t n = nblocks - b < CHUNK ? nblocks - b : CHUNK;
            for (uint64_t i = 0; i < n; i++) {
                uint64_t tag = bench_io_tag(0, b + i);
                memcpy(fill + i * BLOCK, &tag, sizeof(tag));
            }
            if (pwrite(fd, fill, n * BLOCK, (off_t)(b * BLOCK)) != (ssize_t)(n * BLOCK))
                bench_fail(BENCH, 0, "fill %s: %s", name, strerror(errno));
        }
        fsync(fd);
        /* The O_DIRECT file leaves the page cache, as fio drops it before
         * its run (invalidate=1): a direct write to a range with cached
         * pages cannot run inline (the kernel must drop them first), so
         * io_uring handed every write to a worker thread here and none
         * of fio's (QD1 writes 1.5x fio psync's latency). */
        if (!f)
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
    free(fill);

    uint64_t *blocks = bench_random_blocks(ops, nblocks);

    if (aioctx_context_claim(aioctx_main_context()) != 0)
        bench_fail(BENCH, 1, "claim the main context");
    AioctxIoThread *io = aioctx_iothread_new("bench-qd");
    if (!io)
        bench_fail(BENCH, 1, "aioctx_iothread_new");
    static struct bench_io_run run;
    bench_io_init(&run, BENCH, blocks);

    static const struct {
        const char *name;
        unsigned flag;
    } backends[] = {{"threads", AIOCTX_OPEN_AIO_THREADS}, {"io_uring", AIOCTX_OPEN_AIO_IO_URING}};
    static const char *caches[] = {"direct", "buffered"};
    int nv = 2 * 2 * 2 * nqd;
    struct variant *v = calloc((size_t)nv, sizeof(*v));
    int k = 0;
    for (int b = 0; b < 2; b++)
        for (int c = 0; c < 2; c++)
            for (int w = 0; w < 2; w++)
                for (int q = 0; q < nqd; q++, k++) {
                    v[k].backend = backends[b].name;
                    v[k].cache = caches[c];
                    v[k].flags = AIOCTX_OPEN_RDWR | backends[b].flag | (c == 0 ? AIOCTX_OPEN_DIRECT : 0);
                    v[k].write = w;
                    v[k].qd = (int)qds[q];
                    snprintf(v[k].name, sizeof v[k].name, "%s_%s_%s_qd%ld", backends[b].name, caches[c],
                             w ? "write" : "read", qds[q]);
                    v[k].samples = calloc((size_t)reps, sizeof(double));
                }
    const char *only = getenv("BENCH_ONLY");

    /* A short warm-up pass (starts the pool, the ring), then rotating order. */
    AioctxContext *ctx = aioctx_iothread_context(io);
    for (int r = -1; r < reps; r++) {
        run.ops = r < 0 ? (ops < 500 ? ops : 500) : ops;
        for (int j = 0; j < nv; j++) {
            struct variant *w = &v[(j + (r < 0 ? 0 : r)) % nv];
            if (only && !strstr(w->name, only))
                continue;
            double ns = run_one(&run, ctx, path, w);
            if (r >= 0)
                w->samples[r] = ns;
        }
    }

    printf("{\"bench\": \"io-qd\", \"file_mb\": %ld, \"block\": %d, \"ops\": %ld, \"reps\": %d, \"results\": [",
           file_mb, BLOCK, ops, reps);
    int first = 1;
    for (int j = 0; j < nv; j++) {
        if (only && !strstr(v[j].name, only))
            continue;
        double ns = bench_median(v[j].samples, reps);
        if (ns <= 0)
            continue; /* that backend is not available */
        printf("%s{\"backend\": \"%s\", \"cache\": \"%s\", \"op\": \"%s\", \"qd\": %d, \"kiops\": %.2f, "
               "\"lat_us\": %.2f}",
               first ? "" : ", ", v[j].backend, v[j].cache, v[j].write ? "write" : "read", v[j].qd, 1e6 / ns,
               ns * v[j].qd / 1000.0);
        first = 0;
    }
    printf("]}\n");

    aioctx_iothread_free(io);
    bench_io_fini(&run);
    for (int j = 0; j < nv; j++)
        free(v[j].samples);
    free(v);
    free(blocks);
    return 0;
}
