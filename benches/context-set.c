/* Collect and acquire the distinct contexts of N nodes, then release them:
 * an AioctxSet (aioctx_set_add per node, aioctx_set_acquire, _release,
 * _free) against the list-scan algorithm a C VMM writes by hand (for each
 * node, find its context in a singly linked list, prepend it if absent; then
 * lock each listed context's recursive pthread mutex, unlock each, free the
 * list). The list scan is O(nodes x contexts); the set is O(nodes log contexts).
 *
 *   context-set REPS NODES_LIST CONTEXTS_LIST [MIN_SAMPLE_MS]
 *   e.g. context-set 7 100,1000,10000,100000 1,16,256,1024,4096
 *
 * Nodes get their contexts pseudo-randomly (the same assignment for both
 * sides). Each sample repeats the whole operation until it took at least
 * MIN_SAMPLE_MS (default 20) and reports the time per node; the two sides
 * alternate, REPS samples each, and the medians and their ratio (aioctx /
 * list scan; below 1 is faster) go out as one JSON line. An untimed pass per
 * configuration checks both sides: the same distinct contexts, each held
 * exactly once while acquired and not at all afterwards.
 *
 * A second, idle thread runs throughout (as in lock-uncontended.c): glibc's
 * mutexes skip their atomics while a process is single-threaded, and a VMM
 * never is. */
#include "bench-common.h"

#include <pthread.h>
#include <string.h>
#include <unistd.h>

#define BENCH "context-set"

/* The baseline's context: what a C VMM's AioContext is, for locking. */
struct list_ctx {
    pthread_mutex_t mutex;
    int id;
};

struct list_entry {
    struct list_ctx *ctx;
    struct list_entry *next;
};

/* The baseline: collect, lock each, unlock each. Returns the distinct count. */
static long list_scan(struct list_ctx *const *nodes, long n, struct list_entry **out_list)
{
    struct list_entry *head = NULL;
    long distinct = 0;
    for (long i = 0; i < n; i++) {
        struct list_entry *e = head;
        while (e && e->ctx != nodes[i])
            e = e->next;
        if (!e) {
            e = malloc(sizeof(*e));
            if (!e)
                bench_fail(BENCH, 0, "out of memory");
            e->ctx = nodes[i];
            e->next = head;
            head = e;
            distinct++;
        }
    }
    for (struct list_entry *e = head; e; e = e->next)
        pthread_mutex_lock(&e->ctx->mutex);
    *out_list = head;
    return distinct;
}

static void list_unlock_free(struct list_entry *head)
{
    for (struct list_entry *e = head; e; e = e->next)
        pthread_mutex_unlock(&e->ctx->mutex);
    while (head) {
        struct list_entry *next = head->next;
        free(head);
        head = next;
    }
}

static long list_once(struct list_ctx *const *nodes, long n)
{
    struct list_entry *head;
    long distinct = list_scan(nodes, n, &head);
    list_unlock_free(head);
    return distinct;
}

/* AIOCTX_BENCH_SET_MODE=many: collect with one aioctx_set_add_many call
 * instead of an aioctx_set_add call per node. */
static int add_many;

/* aioctx: the same through a set. Returns the distinct count (set length). */
static long set_once(AioctxContext *const *nodes, long n)
{
    AioctxSet *set = aioctx_set_new();
    if (!set)
        bench_fail(BENCH, 1, "aioctx_set_new");
    if (add_many) {
        if (aioctx_set_add_many(set, nodes, (size_t)n) < 0)
            bench_fail(BENCH, 1, "aioctx_set_add_many");
    } else {
        for (long i = 0; i < n; i++)
            if (aioctx_set_add(set, nodes[i]) < 0)
                bench_fail(BENCH, 1, "aioctx_set_add");
    }
    long distinct = (long)aioctx_set_len(set);
    if (aioctx_set_acquire(set) != 0 || aioctx_set_release(set) != 0)
        bench_fail(BENCH, 1, "aioctx_set_acquire/release");
    aioctx_set_free(set);
    return distinct;
}

/* Runs one side `reps_inner` times; ns per node per run. */
static double time_set(AioctxContext *const *nodes, long n, long reps_inner, long want)
{
    int64_t t0 = bench_now_ns();
    for (long k = 0; k < reps_inner; k++)
        if (set_once(nodes, n) != want)
            bench_fail(BENCH, 0, "aioctx set: wrong number of distinct contexts");
    return (double)(bench_now_ns() - t0) / (double)reps_inner / (double)n;
}

static double time_list(struct list_ctx *const *nodes, long n, long reps_inner, long want)
{
    int64_t t0 = bench_now_ns();
    for (long k = 0; k < reps_inner; k++)
        if (list_once(nodes, n) != want)
            bench_fail(BENCH, 0, "list scan: wrong number of distinct contexts");
    return (double)(bench_now_ns() - t0) / (double)reps_inner / (double)n;
}

/* Untimed: both sides find exactly the distinct contexts, and hold each
 * exactly once while acquired. */
static void verify(AioctxContext *const *anodes, struct list_ctx *const *lnodes, long n,
                   AioctxContext **actx, long contexts, const char *used, long distinct)
{
    AioctxSet *set = aioctx_set_new();
    for (long i = 0; i < n; i++)
        if (aioctx_set_add(set, anodes[i]) < 0)
            bench_fail(BENCH, 1, "verify: aioctx_set_add");
    if ((long)aioctx_set_len(set) != distinct)
        bench_fail(BENCH, 0, "verify: set has %zu contexts, expected %ld", aioctx_set_len(set), distinct);
    if (aioctx_set_acquire(set) != 0)
        bench_fail(BENCH, 1, "verify: aioctx_set_acquire");
    for (long c = 0; c < contexts; c++)
        if (aioctx_lock_depth(actx[c]) != (used[c] ? 1 : 0))
            bench_fail(BENCH, 0, "verify: context %ld held %d times while the set is held", c,
                       aioctx_lock_depth(actx[c]));
    if (aioctx_set_release(set) != 0)
        bench_fail(BENCH, 1, "verify: aioctx_set_release");
    for (long c = 0; c < contexts; c++)
        if (aioctx_lock_depth(actx[c]) != 0)
            bench_fail(BENCH, 0, "verify: context %ld still held after release", c);
    aioctx_set_free(set);

    struct list_entry *head;
    char *seen = calloc((size_t)contexts, 1);
    if (list_scan(lnodes, n, &head) != distinct)
        bench_fail(BENCH, 0, "verify: list scan found the wrong number of contexts");
    for (struct list_entry *e = head; e; e = e->next) {
        if (!used[e->ctx->id] || seen[e->ctx->id]++)
            bench_fail(BENCH, 0, "verify: list scan listed context %d wrongly", e->ctx->id);
        /* Held by us: a recursive trylock by the owner succeeds. */
        if (pthread_mutex_trylock(&e->ctx->mutex) != 0)
            bench_fail(BENCH, 0, "verify: list scan did not lock context %d", e->ctx->id);
        pthread_mutex_unlock(&e->ctx->mutex);
    }
    list_unlock_free(head);
    free(seen);
}

static void *idle_thread(void *fd)
{
    char c;
    return (void *)(long)read(*(int *)fd, &c, 1);
}

int main(int argc, char **argv)
{
    long node_counts[16], ctx_counts[16];
    if (argc < 4) {
        fprintf(stderr, "usage: %s REPS NODES_LIST CONTEXTS_LIST [MIN_SAMPLE_MS]\n", argv[0]);
        return 2;
    }
    int reps = atoi(argv[1]);
    int n_nodes = bench_parse_list(argv[2], node_counts, 16);
    int n_ctxs = bench_parse_list(argv[3], ctx_counts, 16);
    double min_sample_ns = (argc > 4 ? atof(argv[4]) : 20.0) * 1e6;
    if (reps < 1 || reps > 1000 || !n_nodes || !n_ctxs) {
        fprintf(stderr, "%s: bad arguments\n", argv[0]);
        return 2;
    }
    bench_raise_nofile();
    const char *mode = getenv("AIOCTX_BENCH_SET_MODE");
    add_many = mode && strcmp(mode, "many") == 0;

    long max_nodes = 0, max_ctxs = 0;
    for (int i = 0; i < n_nodes; i++)
        max_nodes = node_counts[i] > max_nodes ? node_counts[i] : max_nodes;
    for (int i = 0; i < n_ctxs; i++)
        max_ctxs = ctx_counts[i] > max_ctxs ? ctx_counts[i] : max_ctxs;

    int pipefd[2];
    pthread_t idle;
    if (pipe(pipefd) != 0 || pthread_create(&idle, NULL, idle_thread, &pipefd[0]) != 0)
        bench_fail(BENCH, 0, "idle thread");

    /* Contexts, each allocated on its own as a VMM's would be. */
    AioctxContext **actx = calloc((size_t)max_ctxs, sizeof(*actx));
    struct list_ctx **lctx = calloc((size_t)max_ctxs, sizeof(*lctx));
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    for (long c = 0; c < max_ctxs; c++) {
        char name[32];
        snprintf(name, sizeof(name), "ctx%ld", c);
        if (!(actx[c] = aioctx_context_new(name)))
            bench_fail(BENCH, 1, "aioctx_context_new #%ld", c);
        if (!(lctx[c] = malloc(sizeof(**lctx))))
            bench_fail(BENCH, 0, "out of memory");
        pthread_mutex_init(&lctx[c]->mutex, &attr);
        lctx[c]->id = (int)c;
    }
    AioctxContext **anodes = calloc((size_t)max_nodes, sizeof(*anodes));
    struct list_ctx **lnodes = calloc((size_t)max_nodes, sizeof(*lnodes));
    char *used = calloc((size_t)max_ctxs, 1);
    double *ours = calloc((size_t)reps, sizeof(double)), *base = calloc((size_t)reps, sizeof(double));
    if (!anodes || !lnodes || !used || !ours || !base)
        bench_fail(BENCH, 0, "out of memory");

    printf("{\"bench\": \"context-set\", \"mode\": \"%s\", \"reps\": %d, \"min_sample_ms\": %.1f, \"results\": [",
           add_many ? "add_many" : "add", reps, min_sample_ns / 1e6);
    int first = 1;
    for (int ni = 0; ni < n_nodes; ni++) {
        for (int ci = 0; ci < n_ctxs; ci++) {
            long n = node_counts[ni], contexts = ctx_counts[ci];
            uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)(n * 131 + contexts);
            memset(used, 0, (size_t)max_ctxs);
            long distinct = 0;
            for (long i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                long c = (long)(x % (uint64_t)contexts);
                anodes[i] = actx[c];
                lnodes[i] = lctx[c];
                distinct += !used[c];
                used[c] = 1;
            }
            verify(anodes, lnodes, n, actx, contexts, used, distinct);

            /* Calibrate (and warm up): repeat each side to min_sample_ns. */
            double a1 = time_set(anodes, n, 1, distinct) * (double)n;
            double l1 = time_list(lnodes, n, 1, distinct) * (double)n;
            long ka = (long)(min_sample_ns / (a1 > 1 ? a1 : 1)) + 1;
            long kl = (long)(min_sample_ns / (l1 > 1 ? l1 : 1)) + 1;
            for (int r = 0; r < reps; r++) {
                if (r % 2 == 0) {
                    ours[r] = time_set(anodes, n, ka, distinct);
                    base[r] = time_list(lnodes, n, kl, distinct);
                } else {
                    base[r] = time_list(lnodes, n, kl, distinct);
                    ours[r] = time_set(anodes, n, ka, distinct);
                }
            }
            double mo = bench_median(ours, reps), mb = bench_median(base, reps);
            printf("%s{\"nodes\": %ld, \"contexts\": %ld, \"distinct\": %ld, "
                   "\"aioctx_ns_per_node\": %.3f, \"list_scan_ns_per_node\": %.3f, "
                   "\"aioctx_min\": %.3f, \"aioctx_max\": %.3f, \"list_scan_min\": %.3f, "
                   "\"list_scan_max\": %.3f, \"ratio\": %.4f, \"speedup\": %.2f}",
                   first ? "" : ", ", n, contexts, distinct, mo, mb, ours[0], ours[reps - 1], base[0],
                   base[reps - 1], mo / mb, mb / mo);
            first = 0;
            fflush(stdout);
        }
    }
    printf("]}\n");

    for (long c = 0; c < max_ctxs; c++) {
        aioctx_context_unref(actx[c]);
        pthread_mutex_destroy(&lctx[c]->mutex);
        free(lctx[c]);
    }
    pthread_mutexattr_destroy(&attr);
    close(pipefd[1]);
    pthread_join(idle, NULL);
    close(pipefd[0]);
    free(actx);
    free(lctx);
    free(anodes);
    free(lnodes);
    free(used);
    free(ours);
    free(base);
    return 0;
}
