/* The raw-file I/O path: 4 KiB random reads and writes through
 * aioctx_node_pread/aioctx_node_pwrite, at queue depth 1 and 32, with the two
 * image files' nodes on one IOThread or on two, against a plain synchronous
 * pread/pwrite loop over the same files and the same offsets. The files are
 * in the page cache (written and synced before timing), so this measures the
 * path's overhead, not the disk.
 *
 *   file-io [--one-cpu] FILE_MB OPS REPS [DIR]
 *
 * Two files of FILE_MB MiB each; a sample is OPS operations (op i goes to
 * file i % 2 at a pseudo-random block, the same sequence for every variant).
 * At queue depth Q the main thread submits Q requests and each completion
 * (run by the node's IOThread) submits the next. Variants run interleaved
 * (rotating order), REPS samples each. Every request is checked: the full
 * 4 KiB transferred, and every block read carries the tag of its file and
 * block (writes write the same tags back). One JSON line: median thousands of
 * operations per second of each variant, and its throughput relative to the
 * plain loop (aioctx / plain: 1 is as fast, above 1 faster).
 *
 * By default the scheduler places the threads (IOThreads, the library's I/O
 * workers): on a VM, a wake-up across vCPUs costs tens of microseconds, so
 * results depend on where threads land. --one-cpu pins the whole process to
 * one CPU first (every thread inherits it): wake-ups are then context
 * switches, which shows the software cost of the path.
 *
 * For profiling, BENCH_ONLY=<substring> runs only the variants whose name
 * contains it (plus nothing else): e.g. BENCH_ONLY=read_qd32_2iot perf record ... */
#include "bench-io.h"

#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <string.h>
#include <unistd.h>

#define BENCH "file-io"

enum { BLOCK = BENCH_IO_BLOCK };

/* ns per operation through aioctx; *backend gets the nodes' backend. */
static double run_aioctx(struct bench_io_run *r, AioctxContext *ctx0, AioctxContext *ctx1, const char *dir,
                         int write, int qd, const char **backend)
{
    char path[2][512];
    AioctxGraph *g = aioctx_graph_new(NULL);
    if (!g)
        bench_fail(BENCH, 1, "aioctx_graph_new");
    for (int f = 0; f < 2; f++) {
        snprintf(path[f], sizeof(path[f]), "%s/image%d.raw", dir, f);
        r->node[f] = aioctx_node_open_file(g, f ? "disk1" : "disk0", f ? ctx1 : ctx0, path[f],
                                           AIOCTX_OPEN_RDWR);
        if (!r->node[f])
            bench_fail(BENCH, 1, "aioctx_node_open_file");
    }
    r->nnodes = 2;
    *backend = aioctx_node_io_backend(r->node[0]);
    char what[64];
    snprintf(what, sizeof what, "aioctx %s qd%d", write ? "write" : "read", qd);
    double ns = bench_io_run_qd(r, write, qd, what);
    aioctx_graph_free(g);
    return ns;
}

static double run_plain(const int *fds, const uint64_t *blocks, long ops, int write, unsigned char *buf)
{
    int64_t t0 = bench_now_ns();
    for (long op = 0; op < ops; op++) {
        int file = (int)(op & 1);
        uint64_t tag = bench_io_tag(file, blocks[op]);
        ssize_t n;
        if (write) {
            memcpy(buf, &tag, sizeof(tag));
            n = pwrite(fds[file], buf, BLOCK, (off_t)(blocks[op] * BLOCK));
        } else {
            n = pread(fds[file], buf, BLOCK, (off_t)(blocks[op] * BLOCK));
        }
        if (n != BLOCK || memcmp(buf, &tag, sizeof(tag)) != 0)
            bench_fail(BENCH, 0, "plain %s: op %ld returned %zd or wrong data", write ? "write" : "read", op, n);
    }
    return (double)(bench_now_ns() - t0) / (double)ops;
}

/* The variants, in the order of the JSON. */
struct variant {
    const char *name;
    int plain, write, qd, iothreads;
    double *samples;
};

int main(int argc, char **argv)
{
    int one_cpu = argc > 1 && strcmp(argv[1], "--one-cpu") == 0;
    if (one_cpu) {
        argv++;
        argc--;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: %s [--one-cpu] FILE_MB OPS REPS [DIR]\n", argv[0]);
        return 2;
    }
    if (one_cpu) {
        int cpu = bench_cpu(0);
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (cpu < 0 || sched_setaffinity(0, sizeof(set), &set) != 0)
            bench_fail(BENCH, 0, "cannot pin to one CPU");
    }
    long file_mb = atol(argv[1]), ops = atol(argv[2]);
    int reps = atoi(argv[3]);
    char tmpl[] = "/tmp/aioctx-bench-io-XXXXXX";
    const char *dir = argc > 4 ? argv[4] : mkdtemp(tmpl);
    if (file_mb < 1 || ops < 1 || reps < 1 || reps > 1000 || !dir)
        return 2;
    uint64_t nblocks = (uint64_t)file_mb * (1024 * 1024 / BLOCK);

    /* The files, every block tagged, synced so writeback stays out of the way. */
    int fds[2];
    unsigned char *buf = aligned_alloc(BLOCK, BLOCK);
    memset(buf, 0x5a, BLOCK);
    for (int f = 0; f < 2; f++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/image%d.raw", dir, f);
        fds[f] = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
        if (fds[f] < 0)
            bench_fail(BENCH, 0, "%s: %s", path, strerror(errno));
        for (uint64_t b = 0; b < nblocks; b++) {
            uint64_t tag = bench_io_tag(f, b);
            memcpy(buf, &tag, sizeof(tag));
            if (pwrite(fds[f], buf, BLOCK, (off_t)(b * BLOCK)) != BLOCK)
                bench_fail(BENCH, 0, "fill %s: %s", path, strerror(errno));
        }
        fsync(fds[f]);
    }
    uint64_t *blocks = bench_random_blocks(ops, nblocks);

    if (aioctx_context_claim(aioctx_main_context()) != 0)
        bench_fail(BENCH, 1, "claim the main context");
    AioctxIoThread *io[2] = {aioctx_iothread_new("bench-io0"), aioctx_iothread_new("bench-io1")};
    if (!io[0] || !io[1])
        bench_fail(BENCH, 1, "aioctx_iothread_new");
    AioctxContext *ctx[2] = {aioctx_iothread_context(io[0]), aioctx_iothread_context(io[1])};
    static struct bench_io_run run;
    bench_io_init(&run, BENCH, blocks);
    const char *backend = NULL;

    struct variant v[] = {
        {"plain_read", 1, 0, 1, 0, NULL},       {"plain_write", 1, 1, 1, 0, NULL},
        {"aioctx_read_qd1_1iot", 0, 0, 1, 1, NULL}, {"aioctx_read_qd1_2iot", 0, 0, 1, 2, NULL},
        {"aioctx_read_qd32_1iot", 0, 0, 32, 1, NULL}, {"aioctx_read_qd32_2iot", 0, 0, 32, 2, NULL},
        {"aioctx_write_qd1_1iot", 0, 1, 1, 1, NULL}, {"aioctx_write_qd1_2iot", 0, 1, 1, 2, NULL},
        {"aioctx_write_qd32_1iot", 0, 1, 32, 1, NULL}, {"aioctx_write_qd32_2iot", 0, 1, 32, 2, NULL},
    };
    enum { NV = sizeof(v) / sizeof(v[0]) };
    for (int i = 0; i < NV; i++)
        v[i].samples = calloc((size_t)reps, sizeof(double));

    const char *only = getenv("BENCH_ONLY");
    int active[NV];
    for (int i = 0; i < NV; i++)
        active[i] = !only || strstr(v[i].name, only) != NULL;

    /* One short warm-up pass (starts the worker pool), then rotating order. */
    long full_ops = ops;
    for (int r = -1; r < reps; r++) {
        run.ops = r < 0 ? (ops < 2000 ? ops : 2000) : full_ops;
        for (int k = 0; k < NV; k++) {
            int vi = (k + (r < 0 ? 0 : r)) % NV;
            struct variant *w = &v[vi];
            if (!active[vi])
                continue;
            double ns = w->plain ? run_plain(fds, blocks, run.ops, w->write, buf)
                                 : run_aioctx(&run, ctx[0], ctx[w->iothreads == 2], dir, w->write, w->qd, &backend);
            if (r >= 0)
                w->samples[r] = ns;
        }
    }

    double med[NV];
    /* The backend nodes get without a backend flag (AIOCTX_IO_BACKEND). */
    printf("{\"bench\": \"file-io\", \"placement\": \"%s\", \"backend\": \"%s\", \"file_mb\": %ld, "
           "\"files\": 2, \"block\": %d, \"ops\": %ld, \"reps\": %d",
           one_cpu ? "one_cpu" : "any_cpu", backend ? backend : "none", file_mb, BLOCK, ops, reps);
    for (int i = 0; i < NV; i++) {
        med[i] = active[i] ? bench_median(v[i].samples, reps) : 0;
        if (active[i])
            printf(", \"%s_kiops\": %.1f", v[i].name, 1e6 / med[i]);
    }
    for (int i = 2; i < NV; i++)
        if (active[i] && active[v[i].write])
            printf(", \"%s_vs_plain\": %.3f", v[i].name, med[v[i].write] / med[i]);
    printf("}\n");

    aioctx_iothread_free(io[0]);
    aioctx_iothread_free(io[1]);
    for (int f = 0; f < 2; f++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/image%d.raw", dir, f);
        close(fds[f]);
        unlink(path);
    }
    if (argc <= 4)
        rmdir(dir);
    bench_io_fini(&run);
    for (int i = 0; i < NV; i++)
        free(v[i].samples);
    free(blocks);
    free(buf);
    return 0;
}
