/*
 * test-faults: fault injection into the migration handover.
 *
 * Part 1 - driver faults at every position. A 23-node graph: 20 C-driver
 * nodes in three layers with shared children (4 tops, 8 middles, 8 leaves),
 * spread over two IOThreads and the main context, and under the leaves 3
 * raw-file nodes (two on one IOThread, one on the main context) with writes
 * in flight. For each driver operation (flush, inactivate, activate) and each
 * k = 1..20, the driver fails its k-th call of that operation with a distinct
 * errno while a thread keeps writing to the raw-file nodes:
 *   - the call returns that errno, and the message names the failing node;
 *   - every context is released exactly once: depth 0 in the main thread (or
 *     the caller's own hold of the main context, every other round, intact),
 *     each IOThread still runs BHs and holds nothing but its own context in
 *     them, and another thread can take every context;
 *   - the graph is consistent: exactly the nodes handed over (or taken back)
 *     are inactive (active), parents never behind their children, inactive
 *     nodes refuse writes, a raw node holds its image lock iff it is active;
 *   - no acknowledged write is lost (checked with pread(2)), no refused write
 *     reached a file;
 *   - activate_all brings the whole graph back: all active, writes land.
 * Driver callbacks run in the node's home thread with its context held, and
 * each node's callbacks run at most once per call.
 *
 * Part 2 - raw-file I/O failures, each in a private mount namespace:
 *   - ENOSPC: images on a small tmpfs that fills up while writes are in
 *     flight during inactivate_all;
 *   - a flush that fails in the kernel: /dev/full (fdatasync: EINVAL) and a
 *     loop device over a full tmpfs (writeback: EIO);
 * the error names the node, every context is released, activate_all (or
 * a successful retry) recovers; what was acknowledged is on disk.
 * Without mount or loop devices these parts are skipped (# SKIP).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define TEST_LONG_TIMEOUT_S 10
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#define BLK 4096
#define NC 20                 /* C-driver nodes (fault positions) */
#define NR 3                  /* raw-file nodes */
#define NN (NC + NR)
#define NW 30                 /* writes per round */
#define GO_AT 10              /* writes submitted before the handover starts */
#define MAX_ROUNDS 200
#define PER_ROUND (NW / NR)   /* blocks per raw image per round */
#define IMG_BLOCKS (MAX_ROUNDS * PER_ROUND + 64)

enum op { OP_FLUSH, OP_INACTIVATE, OP_ACTIVATE, NOPS };
static const char *const op_name[NOPS] = { "flush", "inactivate", "activate" };
static const int op_errno[NOPS] = { EIO, ENOSPC, EACCES };

/* ---- TAP extras ------------------------------------------------------------------------------- */

static void skip(const char *name, const char *why)
{
    tap_init_output();
    tap_st.run++;
    printf("ok %d - %s # SKIP %s\n", tap_st.run, name, why);
    fflush(stdout);
}

/* ---- the graph ------------------------------------------------------------------------------------ */

static AioctxContext *main_ctx;
static AioctxIoThread *iot[2];
static AioctxContext *iot_ctx[2];
static pthread_t main_thread, iot_thread[2];
static AioctxGraph *g;
static AioctxNode *node[NN];
static AioctxContext *node_ctx[NN];
static pthread_t node_thread[NN];
static char dir[64], img[NR][128];

/* Edges parent -> child, by index (C nodes 0..19, raw nodes 20..22). */
static const int edges[][2] = {
    /* tops 0..3 -> middles 4..11 (shared) */
    { 0, 4 }, { 0, 5 }, { 0, 6 }, { 1, 5 }, { 1, 7 }, { 1, 8 }, { 2, 8 }, { 2, 9 }, { 2, 10 },
    { 3, 10 }, { 3, 11 }, { 3, 4 }, { 0, 12 },
    /* middles 4..11 -> leaves 12..19 (shared) */
    { 4, 12 }, { 4, 13 }, { 5, 13 }, { 5, 14 }, { 6, 14 }, { 6, 15 }, { 7, 15 }, { 7, 16 },
    { 8, 16 }, { 8, 17 }, { 9, 17 }, { 9, 18 }, { 10, 18 }, { 10, 19 }, { 11, 19 }, { 11, 12 },
    /* leaves -> raw images 20..22 (shared) */
    { 12, 20 }, { 13, 20 }, { 14, 21 }, { 15, 21 }, { 16, 22 }, { 17, 22 }, { 19, 20 },
};
#define NEDGES ((int)(sizeof edges / sizeof edges[0]))

/* ---- the fault-injecting driver --------------------------------------------------------------------- */

struct call {
    int node;
    int op;
    int ok;
};

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static struct call calls[NOPS * NN * 4];
static int ncalls;
static int op_calls[NOPS];
static int fault_op = -1, fault_k;
static int failed_node = -1;
static atomic_int wrong_thread, not_held, total_faults;

static int drv_op(AioctxNode *n, void *opaque, int op)
{
    int i = (int)(intptr_t)opaque;
    if (n != node[i] || !pthread_equal(pthread_self(), node_thread[i]))
        atomic_fetch_add(&wrong_thread, 1);
    if (aioctx_lock_depth(node_ctx[i]) < 1)
        atomic_fetch_add(&not_held, 1);
    pthread_mutex_lock(&log_lock);
    int k = ++op_calls[op];
    int fail = op == fault_op && k == fault_k;
    if (fail)
        failed_node = i;
    if (ncalls < (int)(sizeof calls / sizeof calls[0]))
        calls[ncalls++] = (struct call){ i, op, !fail };
    pthread_mutex_unlock(&log_lock);
    if (fail)
        atomic_fetch_add(&total_faults, 1);
    return fail ? -op_errno[op] : 0;
}

static int drv_flush(AioctxNode *n, void *o) { return drv_op(n, o, OP_FLUSH); }
static int drv_inactivate(AioctxNode *n, void *o) { return drv_op(n, o, OP_INACTIVATE); }
static int drv_activate(AioctxNode *n, void *o) { return drv_op(n, o, OP_ACTIVATE); }

static void arm_fault(int op, int k)
{
    pthread_mutex_lock(&log_lock);
    fault_op = op;
    fault_k = k;
    failed_node = -1;
    ncalls = 0;
    memset(op_calls, 0, sizeof op_calls);
    pthread_mutex_unlock(&log_lock);
}

/* Stops injecting, keeping this round's log. */
static void disarm(void)
{
    pthread_mutex_lock(&log_lock);
    fault_op = -1;
    pthread_mutex_unlock(&log_lock);
}

/* Successful calls of op per node in this round (and any node called twice). */
static int succeeded(int i, int op)
{
    int n = 0;
    for (int c = 0; c < ncalls; c++)
        n += calls[c].node == i && calls[c].op == op && calls[c].ok;
    return n;
}

static int max_calls_per_node(void)
{
    int worst = 0;
    for (int i = 0; i < NC; i++)
        for (int op = 0; op < NOPS; op++) {
            int n = 0;
            for (int c = 0; c < ncalls; c++)
                n += calls[c].node == i && calls[c].op == op;
            if (n > worst)
                worst = n;
        }
    return worst;
}

/* Position of node i's first call of op in the log, or -1. */
static int call_pos(int i, int op)
{
    for (int c = 0; c < ncalls; c++)
        if (calls[c].node == i && calls[c].op == op)
            return c;
    return -1;
}

/* ---- writes in flight on the raw nodes ------------------------------------------------------------- */

struct wreq {
    atomic_int submit_rc;   /* 1: not submitted */
    atomic_int calls;
    atomic_llong ret;
    int raw;
    uint64_t off;
    unsigned char buf[BLK];
};

static struct wreq wr[NW];
static atomic_int w_completed, w_go;
static int round_no;
static int total_acked, total_writes;

static void pattern(unsigned char *buf, int round, int i)
{
    for (int w = 0; w < BLK / 4; w++) {
        uint32_t v = 0x80000000u | (uint32_t)round << 20 | (uint32_t)i << 12 | (uint32_t)w;
        memcpy(buf + 4 * w, &v, 4);
    }
}

static void write_cb(void *opaque, int64_t ret)
{
    struct wreq *w = opaque;
    atomic_store(&w->ret, ret);
    atomic_fetch_add(&w->calls, 1);
    atomic_fetch_add(&w_completed, 1);
}

static void *writer(void *arg)
{
    (void)arg;
    for (int i = 0; i < NW; i++) {
        if (i == GO_AT) {
            atomic_store(&w_go, 1);
            aioctx_wait_kick();   /* the main thread waits for it in poll_while */
        }
        struct wreq *w = &wr[i];
        int rc = aioctx_node_pwrite(node[NC + w->raw], w->buf, BLK, w->off, write_cb, w);
        atomic_store(&w->submit_rc, rc);
        tap_sleep_ns(20000);
    }
    atomic_store(&w_go, 1);
    aioctx_wait_kick();
    return NULL;
}

static bool go_unset(void *opaque)
{
    (void)opaque;
    return !atomic_load(&w_go);
}

static int accepted_count(void)
{
    int n = 0;
    for (int i = 0; i < NW; i++)
        n += atomic_load(&wr[i].submit_rc) == 0;
    return n;
}

static bool writes_pending(void *opaque)
{
    (void)opaque;
    return atomic_load(&w_completed) < accepted_count();
}

static pthread_t writer_thread;

static void start_writes(void)
{
    round_no++;
    atomic_store(&w_completed, 0);
    atomic_store(&w_go, 0);
    for (int i = 0; i < NW; i++) {
        struct wreq *w = &wr[i];
        atomic_store(&w->submit_rc, 1);
        atomic_store(&w->calls, 0);
        atomic_store(&w->ret, 0);
        w->raw = i % NR;
        w->off = (uint64_t)(round_no * PER_ROUND + i / NR) * BLK;
        pattern(w->buf, round_no, i);
    }
    pthread_create(&writer_thread, NULL, writer, NULL);
    aioctx_poll_while(main_ctx, go_unset, NULL, long_timeout(), 0);
}

/* Joins the writer, waits for every accepted write, checks the files. */
static void finish_writes(const char *what)
{
    pthread_join(writer_thread, NULL);
    int rc = aioctx_poll_while(main_ctx, writes_pending, NULL, long_timeout(), 0);
    int acked = 0, lost = 0, leaked = 0, bad = 0, other = 0;
    for (int i = 0; i < NW; i++) {
        struct wreq *w = &wr[i];
        int src = atomic_load(&w->submit_rc);
        if (src == 0) {
            if (atomic_load(&w->calls) != 1)
                bad++;
            if (atomic_load(&w->ret) == BLK) {
                acked++;
                if (!file_has(img[w->raw], w->off, w->buf, BLK))
                    lost++;
            }
        } else {
            if (src != -EBUSY && src != -EPERM)
                other++;
            if (!file_has(img[w->raw], w->off, NULL, BLK))
                leaked++;
        }
    }
    total_acked += acked;
    total_writes += NW;
    if (rc || bad || lost || leaked || other) {
        ok(0, "%s: writes: %d acked, %d lost, %d refused writes reached a file, %d callbacks not once, %d "
              "odd refusals, wait %d",
           what, acked, lost, leaked, bad, other, rc);
    } else {
        ok(1, "%s: %d of %d writes acknowledged, all in their files; refused ones untouched", what, acked, NW);
    }
}

/* ---- checks after each round -------------------------------------------------------------------------- */

struct iot_probe {
    atomic_int done;
    int depth_own, depth_other, depth_main;
};

static void probe_bh(void *opaque)
{
    struct iot_probe *p = opaque;
    int me = pthread_equal(pthread_self(), iot_thread[1]);
    p->depth_own = aioctx_lock_depth(iot_ctx[me]);
    p->depth_other = aioctx_lock_depth(iot_ctx[!me]);
    p->depth_main = aioctx_lock_depth(main_ctx);
    atomic_store(&p->done, 1);
}

static bool probe_pending(void *opaque)
{
    return !atomic_load(&((struct iot_probe *)opaque)->done);
}

struct taker {
    int took;
};

/* Another thread can take every context (within 1 s: IOThreads dispatch briefly). */
static void *take_all(void *arg)
{
    struct taker *t = arg;
    AioctxContext *all[3] = { main_ctx, iot_ctx[0], iot_ctx[1] };
    t->took = 0;
    for (int i = 0; i < 3; i++) {
        int64_t end = tap_now_ns() + 1 * SEC * tap_scale();
        while (aioctx_try_acquire(all[i]) != 0 && tap_now_ns() < end)
            tap_sleep_ns(100000);
        if (aioctx_lock_depth(all[i]) == 1) {
            t->took++;
            aioctx_release(all[i]);
        }
    }
    return NULL;
}

/* Every context released exactly once; the IOThreads still run BHs. */
static int contexts_released(char *why, size_t len)
{
    AioctxContext *all[3] = { main_ctx, iot_ctx[0], iot_ctx[1] };
    for (int i = 0; i < 3; i++)
        if (aioctx_lock_depth(all[i]) != 0) {
            snprintf(why, len, "main thread holds '%s' at depth %d", aioctx_context_name(all[i]),
                     aioctx_lock_depth(all[i]));
            return 0;
        }
    for (int t = 0; t < 2; t++) {
        struct iot_probe p;
        memset(&p, 0, sizeof p);
        aioctx_bh_schedule_oneshot(iot_ctx[t], probe_bh, &p);
        if (aioctx_poll_while(iot_ctx[t], probe_pending, &p, long_timeout(), 0) != 0) {
            snprintf(why, len, "IOThread %d runs no BH: %s", t, aioctx_last_error());
            return 0;
        }
        if (p.depth_own != 1 || p.depth_other != 0 || p.depth_main != 0) {
            snprintf(why, len, "in IOThread %d's BH: own depth %d, other %d, main %d", t, p.depth_own,
                     p.depth_other, p.depth_main);
            return 0;
        }
    }
    struct taker tk;
    pthread_t th;
    pthread_create(&th, NULL, take_all, &tk);
    pthread_join(th, NULL);
    if (tk.took != 3) {
        snprintf(why, len, "another thread could take only %d of the 3 contexts", tk.took);
        return 0;
    }
    return 1;
}

/* Whether raw node r's image write lock is free (another RDWR open works). */
static int raw_lock_free(int r)
{
    AioctxGraph *probe = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(probe, "lock-probe", main_ctx, img[r], AIOCTX_OPEN_RDWR);
    aioctx_graph_free(probe);
    return n != NULL;
}

/* inactive <=> writes refused; a raw node holds its lock iff active; edges respect the order. */
static int graph_consistent(int after_inactivate, char *why, size_t len)
{
    for (int i = 0; i < NN; i++) {
        int inactive = aioctx_node_is_inactive(node[i]);
        int rc = aioctx_node_start_request(node[i], true);
        if (rc == 0)
            aioctx_node_end_request(node[i]);
        if (inactive ? rc != -EPERM : rc != 0) {
            snprintf(why, len, "node '%s' is %s but a write request -> %d", aioctx_node_name(node[i]),
                     inactive ? "inactive" : "active", rc);
            return 0;
        }
        if (i >= NC && raw_lock_free(i - NC) != inactive) {
            snprintf(why, len, "raw node '%s' is %s but its image lock is %s", aioctx_node_name(node[i]),
                     inactive ? "inactive" : "active", inactive ? "held" : "free");
            return 0;
        }
    }
    for (int e = 0; e < NEDGES; e++) {
        int p = aioctx_node_is_inactive(node[edges[e][0]]);
        int c = aioctx_node_is_inactive(node[edges[e][1]]);
        /* top-down hand-over: an inactive child has inactive parents;
         * bottom-up take-over: an active parent has active children. */
        if (after_inactivate ? (c && !p) : (!p && c)) {
            snprintf(why, len, "edge '%s' -> '%s': parent %s, child %s", aioctx_node_name(node[edges[e][0]]),
                     aioctx_node_name(node[edges[e][1]]), p ? "inactive" : "active", c ? "inactive" : "active");
            return 0;
        }
    }
    return 1;
}

static int count_inactive(void)
{
    int n = 0;
    for (int i = 0; i < NN; i++)
        n += aioctx_node_is_inactive(node[i]);
    return n;
}

/* One write per raw node after recovery, waited for and checked. */
static int writes_land(void)
{
    struct wreq *w = wr;
    start_writes();               /* reuses the round machinery: all must be accepted now */
    pthread_join(writer_thread, NULL);
    aioctx_poll_while(main_ctx, writes_pending, NULL, long_timeout(), 0);
    int good = 0;
    for (int i = 0; i < NW; i++, w++)
        good += atomic_load(&w->submit_rc) == 0 && atomic_load(&w->ret) == BLK &&
                file_has(img[w->raw], w->off, w->buf, BLK);
    total_acked += good;
    total_writes += NW;
    return good == NW;
}

/* ---- part 1: the rounds ------------------------------------------------------------------------------------ */

static void check_released(const char *what)
{
    char why[256];
    if (!ok(contexts_released(why, sizeof why), "%s: every context released once; IOThreads run BHs", what))
        diag("%s", why);
}

static void check_order_and_threads(const char *what)
{
    is_int(max_calls_per_node(), 1, "%s: each node's driver callbacks ran at most once", what);
}

static void inactivate_round(int op, int k)
{
    char what[64], why[256];
    snprintf(what, sizeof what, "%s fault at call %d", op_name[op], k);
    arm_fault(op, k);
    start_writes();
    /* Every other round the caller holds the main context (its own loop, where
     * nodes live too): allowed, and the hold must survive the failure. */
    int hold = k % 2;
    if (hold)
        aioctx_acquire(main_ctx);
    int rc = aioctx_graph_inactivate_all(g);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", aioctx_last_error());
    int depth = aioctx_lock_depth(main_ctx);
    if (hold)
        aioctx_release(main_ctx);
    disarm();
    int failed = failed_node;
    is_int(depth, hold, "%s: the caller's own hold of the main context (%d) is intact", what, hold);
    finish_writes(what);
    if (k <= NC) {
        is_int(rc, -op_errno[op], "%s: inactivate_all -> -%s", what, strerror(op_errno[op]));
        char name[64];
        snprintf(name, sizeof name, "node '%s'", failed >= 0 ? aioctx_node_name(node[failed]) : "?");
        like(msg, name, "%s: the message names %s", what, name);
        like(msg, op_name[op], "%s: ... and the step (%s)", what, op_name[op]);
    } else {
        is_int(rc, 0, "%s (past the last call): inactivate_all -> 0", what);
    }
    check_released(what);
    check_order_and_threads(what);
    /* Exactly the C nodes whose inactivate succeeded are inactive. */
    int mismatch = 0;
    for (int i = 0; i < NC; i++)
        mismatch += aioctx_node_is_inactive(node[i]) != (succeeded(i, OP_INACTIVATE) == 1);
    is_int(mismatch, 0, "%s: exactly the %d handed-over nodes are inactive", what, count_inactive());
    if (!ok(graph_consistent(1, why, sizeof why), "%s: consistent graph (writes, image locks, order)", what))
        diag("%s", why);
    /* Recovery. */
    int before = count_inactive();
    arm_fault(-1, 0);
    is_int(aioctx_graph_activate_all(g), 0, "%s: activate_all recovers (%d inactive nodes)", what, before);
    int reactivated = 0;
    for (int i = 0; i < NC; i++)
        reactivated += succeeded(i, OP_ACTIVATE);
    is_int(count_inactive(), 0, "%s: all nodes active", what);
    /* children's activate before their parents' */
    int order_bad = 0;
    for (int e = 0; e < NEDGES; e++) {
        int p = call_pos(edges[e][0], OP_ACTIVATE), c = call_pos(edges[e][1], OP_ACTIVATE);
        if (p >= 0 && c >= 0 && c > p)
            order_bad++;
    }
    is_int(order_bad, 0, "%s: activate ran bottom-up (%d driver activates)", what, reactivated);
    check_released(what);
    ok(writes_land(), "%s: after recovery every raw node takes writes and they land", what);
}

static void activate_round(int k)
{
    char what[64], why[256];
    snprintf(what, sizeof what, "activate fault at call %d", k);
    arm_fault(-1, 0);
    start_writes();
    int rc = aioctx_graph_inactivate_all(g);
    finish_writes(what);
    is_int(rc, 0, "%s: inactivate_all first -> 0", what);
    is_int(count_inactive(), NN, "%s: all %d nodes inactive", what, NN);
    arm_fault(OP_ACTIVATE, k);
    int hold = k % 2;
    if (hold)
        aioctx_acquire(main_ctx);
    rc = aioctx_graph_activate_all(g);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", aioctx_last_error());
    int depth = aioctx_lock_depth(main_ctx);
    if (hold)
        aioctx_release(main_ctx);
    int failed = failed_node;
    disarm();
    is_int(depth, hold, "%s: the caller's own hold of the main context (%d) is intact", what, hold);
    if (k <= NC) {
        is_int(rc, -op_errno[OP_ACTIVATE], "%s: activate_all -> -%s", what, strerror(op_errno[OP_ACTIVATE]));
        char name[64];
        snprintf(name, sizeof name, "node '%s'", failed >= 0 ? aioctx_node_name(node[failed]) : "?");
        like(msg, name, "%s: the message names %s", what, name);
    } else {
        is_int(rc, 0, "%s (past the last call): activate_all -> 0", what);
    }
    check_released(what);
    check_order_and_threads(what);
    if (!ok(graph_consistent(0, why, sizeof why), "%s: consistent graph (%d still inactive)", what, count_inactive()))
        diag("%s", why);
    is_int(aioctx_graph_activate_all(g), 0, "%s: activate_all again -> 0", what);
    is_int(count_inactive(), 0, "%s: all nodes active", what);
    check_released(what);
    ok(writes_land(), "%s: writes land", what);
}

static void save_thread(void *opaque)
{
    *(pthread_t *)opaque = pthread_self();
}

static void part1(void)
{
    for (int t = 0; t < 2; t++) {
        char name[16];
        snprintf(name, sizeof name, "faults-io%d", t);
        iot[t] = aioctx_iothread_new(name);
        iot_ctx[t] = aioctx_iothread_context(iot[t]);
        atomic_int ran = 0;
        aioctx_bh_schedule_oneshot(iot_ctx[t], save_thread, &iot_thread[t]);
        aioctx_bh_schedule_oneshot(iot_ctx[t], inc_cb, &ran);
        wait_count(iot_ctx[t], &ran, 1);
    }
    AioctxDriver drv = { drv_flush, drv_inactivate, drv_activate, NULL };
    g = aioctx_graph_new(NULL);
    int made = 1;
    for (int i = 0; i < NN; i++) {
        char name[16];
        int where = i % 3;   /* 0: main, 1: io0, 2: io1 */
        if (i >= NC)
            where = i == NC + 2 ? 0 : 1;   /* raw0, raw1 on io0; raw2 on main */
        node_ctx[i] = where == 0 ? main_ctx : iot_ctx[where - 1];
        node_thread[i] = where == 0 ? main_thread : iot_thread[where - 1];
        if (i < NC) {
            snprintf(name, sizeof name, "n%02d", i);
            node[i] = aioctx_node_new(g, name, node_ctx[i], &drv, (void *)(intptr_t)i);
        } else {
            snprintf(name, sizeof name, "raw%d", i - NC);
            node[i] = aioctx_node_open_file(g, name, node_ctx[i], img[i - NC], AIOCTX_OPEN_RDWR);
        }
        made &= node[i] != NULL;
    }
    for (int e = 0; e < NEDGES; e++)
        made &= aioctx_node_attach_child(node[edges[e][0]], node[edges[e][1]]) == 0;
    if (!ok(made, "%d C-driver nodes and %d raw-file nodes over 2 IOThreads and main, %d edges", NC, NR, NEDGES))
        return;

    /* A clean run first: every node's callbacks once, top-down then bottom-up. */
    arm_fault(-1, 0);
    start_writes();
    is_int(aioctx_graph_inactivate_all(g), 0, "clean inactivate_all");
    finish_writes("clean run");
    is_int(op_calls[OP_FLUSH], NC, "  %d driver flushes", NC);
    is_int(op_calls[OP_INACTIVATE], NC, "  %d driver inactivates", NC);
    int order_bad = 0;
    for (int e = 0; e < NEDGES; e++) {
        if (edges[e][1] >= NC)
            continue;
        if (call_pos(edges[e][0], OP_INACTIVATE) > call_pos(edges[e][1], OP_FLUSH))
            order_bad++;
        if (call_pos(edges[e][0], OP_FLUSH) > call_pos(edges[e][0], OP_INACTIVATE))
            order_bad++;
    }
    is_int(order_bad, 0, "  top-down: a parent's flush and inactivate before its children's flush");
    is_int(aioctx_graph_activate_all(g), 0, "clean activate_all");
    is_int(op_calls[OP_ACTIVATE], NC, "  %d driver activates", NC);
    check_released("clean run");

    for (int op = OP_FLUSH; op <= OP_INACTIVATE; op++)
        for (int k = 1; k <= NC + 1; k++)
            inactivate_round(op, k);
    for (int k = 1; k <= NC + 1; k++)
        activate_round(k);

    is_int(atomic_load(&wrong_thread), 0, "every driver callback ran in its node's home thread");
    is_int(atomic_load(&not_held), 0, "every driver callback ran with its node's context held");
    diag("part 1: %d driver faults injected; %d of %d writes acknowledged and verified", atomic_load(&total_faults),
         total_acked, total_writes);
    aioctx_graph_free(g);
    g = NULL;
}

/* ---- part 2: raw-file I/O failures ------------------------------------------------------------------------ */

static int have_mntns;
static int part2_faults;


static int64_t write_wait(AioctxNode *n, const void *buf, size_t len, uint64_t off)
{
    struct io_wait io;
    atomic_store(&io.done, 0);
    atomic_store(&io.ret, 0);
    int rc = aioctx_node_pwrite(n, buf, len, off, io_wait_cb, &io);
    if (rc)
        return rc;
    if (aioctx_poll_while(main_ctx, io_wait_pending, &io, long_timeout(), 0))
        return INT64_MIN;
    return atomic_load(&io.ret);
}

static int mount_tmpfs(const char *where, const char *size)
{
    char opts[64];
    snprintf(opts, sizeof opts, "size=%s", size);
    if (mkdir(where, 0755) != 0 && errno != EEXIST)
        return -1;
    return mount("tmpfs", where, "tmpfs", 0, opts);
}

/* Fills the file system of path's directory: returns the filler's path. */
static void fill_up(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    static unsigned char junk[65536];
    memset(junk, 0x5a, sizeof junk);
    while (fd >= 0 && write(fd, junk, sizeof junk) > 0)
        ;
    while (fd >= 0 && write(fd, junk, BLK) > 0)
        ;
    if (fd >= 0)
        close(fd);
}

/* ENOSPC: writes in flight during inactivate_all on a filling tmpfs. */
#define SP_NODES 2
#define SP_WRITES 128
#define SP_GO_AT 90     /* 360 KiB submitted before the handover: more than fits */
static struct {
    atomic_int submit_rc;
    atomic_llong ret;
    atomic_int calls;
    int n;
    uint64_t off;
    unsigned char buf[BLK];
} sp[SP_WRITES];
static AioctxNode *sp_node[SP_NODES];
static atomic_int sp_done, sp_go;

static void sp_cb(void *opaque, int64_t ret)
{
    int i = (int)(intptr_t)opaque;
    atomic_store(&sp[i].ret, ret);
    atomic_fetch_add(&sp[i].calls, 1);
    atomic_fetch_add(&sp_done, 1);
}

static void *sp_writer(void *arg)
{
    (void)arg;
    for (int i = 0; i < SP_WRITES; i++) {
        if (i == SP_GO_AT) {
            atomic_store(&sp_go, 1);
            aioctx_wait_kick();
        }
        int rc = aioctx_node_pwrite(sp_node[sp[i].n], sp[i].buf, BLK, sp[i].off, sp_cb, (void *)(intptr_t)i);
        atomic_store(&sp[i].submit_rc, rc);
        if (i > SP_GO_AT)
            tap_sleep_ns(20000);
    }
    atomic_store(&sp_go, 1);
    aioctx_wait_kick();
    return NULL;
}

static bool sp_go_unset(void *opaque)
{
    (void)opaque;
    return !atomic_load(&sp_go);
}

static bool sp_pending(void *opaque)
{
    (void)opaque;
    int accepted = 0;
    for (int i = 0; i < SP_WRITES; i++)
        accepted += atomic_load(&sp[i].submit_rc) == 0;
    return atomic_load(&sp_done) < accepted;
}

static void test_enospc(void)
{
    char mnt[128], path[SP_NODES][160], filler[160];
    const char *name = "ENOSPC: writes fail while inactivate_all drains";
    if (!have_mntns) {
        skip(name, "no private mount namespace (unshare(CLONE_NEWNS) refused)");
        return;
    }
    snprintf(mnt, sizeof mnt, "%s/full-fs", dir);
    if (mount_tmpfs(mnt, "256k") != 0) {
        skip(name, "mount -t tmpfs refused");
        return;
    }
    diag("ENOSPC: two raw images on a 256 KiB tmpfs, %d writes of 4 KiB in flight", SP_WRITES);
    for (int n = 0; n < SP_NODES; n++) {
        snprintf(path[n], sizeof path[n], "%s/disk%d.img", mnt, n);
        make_image(path[n], 1024 * 1024, 0644);     /* sparse: far bigger than the fs */
    }
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    fill_up(filler);
    unlink(filler);                                  /* now exactly the fs is free: 256 KiB */

    AioctxGraph *sg = aioctx_graph_new(NULL);
    sp_node[0] = aioctx_node_open_file(sg, "spc0", iot_ctx[0], path[0], AIOCTX_OPEN_RDWR);
    sp_node[1] = aioctx_node_open_file(sg, "spc1", main_ctx, path[1], AIOCTX_OPEN_RDWR);
    AioctxDriver drv = { NULL, NULL, NULL, NULL };
    AioctxNode *top = aioctx_node_new(sg, "spc-top", iot_ctx[1], &drv, NULL);
    aioctx_node_attach_child(top, sp_node[0]);
    aioctx_node_attach_child(top, sp_node[1]);
    if (!ok(sp_node[0] && sp_node[1] && top, "two raw nodes (IOThread, main) under a top node")) {
        aioctx_graph_free(sg);
        umount2(mnt, MNT_DETACH);
        return;
    }
    for (int i = 0; i < SP_WRITES; i++) {
        atomic_store(&sp[i].submit_rc, 1);
        sp[i].n = i % SP_NODES;
        sp[i].off = (uint64_t)(i / SP_NODES) * BLK;
        pattern(sp[i].buf, 99, i);
    }
    pthread_t th;
    pthread_create(&th, NULL, sp_writer, NULL);
    aioctx_poll_while(main_ctx, sp_go_unset, NULL, long_timeout(), 0);
    int rc = aioctx_graph_inactivate_all(sg);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", aioctx_last_error());
    pthread_join(th, NULL);
    aioctx_poll_while(main_ctx, sp_pending, NULL, long_timeout(), 0);

    int acked = 0, nospc = 0, lost = 0, other = 0, refused = 0, twice = 0;
    for (int i = 0; i < SP_WRITES; i++) {
        if (atomic_load(&sp[i].submit_rc) != 0) {
            refused++;
            continue;
        }
        long long r = atomic_load(&sp[i].ret);
        twice += atomic_load(&sp[i].calls) != 1;
        if (r == BLK) {
            acked++;
            lost += !file_has(path[sp[i].n], sp[i].off, sp[i].buf, BLK);
        } else if (r == -ENOSPC) {
            nospc++;
        } else {
            other++;
        }
    }
    part2_faults += nospc;
    diag("ENOSPC: inactivate_all -> %d; %d acked, %d failed with -ENOSPC, %d refused", rc, acked, nospc, refused);
    ok(nospc > 0, "some writes failed with -ENOSPC (%d)", nospc);
    is_int(other, 0, "failed writes report exactly -ENOSPC");
    is_int(twice, 0, "every accepted write's callback ran once");
    is_int(lost, 0, "every acknowledged write (%d) is in its file", acked);
    if (rc != 0) {
        ok(strstr(msg, "node 'spc") != NULL, "inactivate_all failed (%d): the message names the node: %s", rc, msg);
    } else {
        ok(aioctx_node_is_inactive(sp_node[0]) && aioctx_node_is_inactive(sp_node[1]) &&
               aioctx_node_is_inactive(top),
           "inactivate_all -> 0: every node inactive");
    }
    check_released("ENOSPC");
    is_int(aioctx_graph_activate_all(sg), 0, "activate_all");
    ok(!aioctx_node_is_inactive(sp_node[0]) && !aioctx_node_is_inactive(sp_node[1]), "both raw nodes active");
    /* Space back: the next writes land. */
    unsigned char buf[BLK];
    pattern(buf, 98, 0);
    for (int n = 0; n < SP_NODES; n++) {
        /* overwrite an acknowledged block: needs no new space */
        int i = n;
        while (i < SP_WRITES && atomic_load(&sp[i].ret) != BLK)
            i += SP_NODES;
        if (i >= SP_WRITES) {
            ok(0, "spc%d: no acknowledged block to overwrite", n);
            continue;
        }
        is_int(write_wait(sp_node[n], buf, BLK, sp[i].off), BLK, "spc%d: a write into allocated space -> 4096", n);
        ok(file_has(path[n], sp[i].off, buf, BLK), "  and it is in the file");
    }
    aioctx_graph_free(sg);
    umount2(mnt, MNT_DETACH);
}

/* /dev/full: writes fail with ENOSPC, fdatasync with EINVAL. */
static void test_dev_full(void)
{
    diag("/dev/full as an image: every flush fails in the kernel");
    AioctxGraph *fg = aioctx_graph_new(NULL);
    AioctxDriver drv = { NULL, NULL, NULL, NULL };
    AioctxNode *top = aioctx_node_new(fg, "full-top", iot_ctx[0], &drv, NULL);
    /* Our own device node for /dev/full (1, 7): its own inode, so its image
     * lock is not shared with other processes using /dev/full. */
    char full[128];
    snprintf(full, sizeof full, "%s/full", dir);
    if (mknod(full, S_IFCHR | 0666, makedev(1, 7)) != 0)
        snprintf(full, sizeof full, "/dev/full");
    AioctxNode *f = aioctx_node_open_file(fg, "full", iot_ctx[1], full, AIOCTX_OPEN_RDWR);
    if (!f) {
        skip("/dev/full as an image", aioctx_last_error());
        aioctx_graph_free(fg);
        return;
    }
    aioctx_node_attach_child(top, f);
    unsigned char buf[BLK];
    memset(buf, 1, sizeof buf);
    is_int(write_wait(f, buf, BLK, 0), -ENOSPC, "a write to /dev/full completes with -ENOSPC");
    int rc = aioctx_graph_inactivate_all(fg);
    part2_faults++;
    ok(rc < 0, "inactivate_all fails (%d: %s)", rc, strerror(-rc));
    like(aioctx_last_error(), "node 'full'", "  the message names the node: '%s'", aioctx_last_error());
    like(aioctx_last_error(), "flush", "  ... and the step");
    check_released("/dev/full");
    ok(aioctx_node_is_inactive(top) && !aioctx_node_is_inactive(f), "  the top node was handed over, 'full' was not");
    is_int(aioctx_graph_activate_all(fg), 0, "activate_all recovers");
    ok(!aioctx_node_is_inactive(top) && !aioctx_node_is_inactive(f), "  both active");
    aioctx_graph_free(fg);
}

/* A loop device over a file on a full tmpfs: written data sits in the
 * device's page cache (the write is acknowledged), writeback fails: EIO. */
static int loop_attach(const char *backing, char *dev, size_t len)
{
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (ctl < 0)
        return -1;
    int bfd = open(backing, O_RDWR | O_CLOEXEC);
    for (int tries = 0; bfd >= 0 && tries < 10; tries++) {
        int nr = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (nr < 0)
            break;
        snprintf(dev, len, "/dev/loop%d", nr);
        int lfd = open(dev, O_RDWR | O_CLOEXEC);
        if (lfd < 0)
            break;
        if (ioctl(lfd, LOOP_SET_FD, bfd) == 0) {
            struct loop_info64 li;
            memset(&li, 0, sizeof li);
            li.lo_flags = LO_FLAGS_AUTOCLEAR;   /* detached when the last user closes it */
            ioctl(lfd, LOOP_SET_STATUS64, &li);
            close(bfd);
            close(ctl);
            return lfd;
        }
        close(lfd);
    }
    if (bfd >= 0)
        close(bfd);
    close(ctl);
    return -1;
}

static void test_loop_eio(void)
{
    char mnt[128], backing[160], filler[160], dev[64];
    const char *name = "EIO: flush of a raw image on a loop device over a full tmpfs";
    if (!have_mntns) {
        skip(name, "no private mount namespace");
        return;
    }
    snprintf(mnt, sizeof mnt, "%s/loop-fs", dir);
    if (mount_tmpfs(mnt, "128k") != 0) {
        skip(name, "mount -t tmpfs refused");
        return;
    }
    snprintf(backing, sizeof backing, "%s/backing.img", mnt);
    make_image(backing, 4 * 1024 * 1024, 0644);
    int lfd = loop_attach(backing, dev, sizeof dev);
    if (lfd < 0) {
        skip(name, "no loop device (LOOP_CTL_GET_FREE / LOOP_SET_FD failed)");
        umount2(mnt, MNT_DETACH);
        return;
    }
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    fill_up(filler);                                   /* the backing file cannot grow */

    AioctxGraph *lg = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(lg, "loopdisk", iot_ctx[0], dev, AIOCTX_OPEN_RDWR);
    close(lfd);                                        /* the node keeps the device open */
    if (!ok(n != NULL, "a raw node on %s (backing file on a full 128 KiB tmpfs)", dev)) {
        diag("%s", aioctx_last_error());
        aioctx_graph_free(lg);
        umount2(mnt, MNT_DETACH);
        return;
    }
    /* 64 KiB of acknowledged writes at 1 MiB: in the page cache only. */
    static unsigned char data[16][BLK];
    int acked = 0;
    for (int i = 0; i < 16; i++) {
        pattern(data[i], 77, i);
        acked += write_wait(n, data[i], BLK, 1024 * 1024 + (uint64_t)i * BLK) == BLK;
    }
    is_int(acked, 16, "16 writes of 4 KiB acknowledged (page cache)");
    int rc = aioctx_graph_inactivate_all(lg);
    part2_faults++;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", aioctx_last_error());
    ok(rc == -EIO || rc == -ENOSPC, "inactivate_all -> %d (%s): the flush fails", rc, strerror(-rc));
    like(msg, "node 'loopdisk'", "  the message names the node: '%s'", msg);
    check_released("loop EIO");
    ok(!aioctx_node_is_inactive(n), "  the node stays active (it was not handed over)");

    /* What the destination would read: the backing file, not this page cache. */
    int on_disk = 0;
    for (int i = 0; i < 16; i++)
        on_disk += file_has(backing, 1024 * 1024 + (uint64_t)i * BLK, data[i], BLK);
    diag("%d of the 16 acknowledged blocks reached the backing file", on_disk);

    /* A retry must not pretend the lost writes are durable: the kernel reports
     * a writeback error to fdatasync once, so a driver that only passes
     * fdatasync's result on hands over an image missing acknowledged writes
     * (QEMU's file-posix makes such an error sticky for this reason). */
    rc = aioctx_graph_inactivate_all(lg);
    snprintf(msg, sizeof msg, "%s", aioctx_last_error());
    if (!ok(rc < 0 || on_disk == 16, "a retried inactivate_all does not report success while acknowledged writes never reached the disk"))
        diag("retry -> %d; node inactive: %d; acknowledged blocks on disk: %d of 16", rc, aioctx_node_is_inactive(n),
             on_disk);
    check_released("loop EIO retry");
    is_int(aioctx_graph_activate_all(lg), 0, "activate_all");
    ok(!aioctx_node_is_inactive(n), "  the node is active");
    aioctx_graph_free(lg);
    unlink(filler);
    umount2(mnt, MNT_DETACH);
}

int main(void)
{
    skip_unless_backend();
    tap_watchdog(120);
    have_mntns = unshare(CLONE_NEWNS) == 0 && mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) == 0;
    main_thread = pthread_self();
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main claims the main context");
    if (!ok(make_temp_dir(dir, sizeof dir, "faults") != NULL, "mkdtemp"))
        return done_testing();
    int made = 1;
    for (int r = 0; r < NR; r++) {
        snprintf(img[r], sizeof img[r], "%s/raw%d.img", dir, r);
        made &= make_image(img[r], (off_t)IMG_BLOCKS * BLK, 0644) == 0;
    }
    ok(made, "%d images", NR);

    part1();
    test_enospc();
    test_dev_full();
    test_loop_eio();
    diag("faults injected: %d driver faults, %d raw-file I/O faults", atomic_load(&total_faults), part2_faults);

    for (int t = 0; t < 2; t++)
        is_int(aioctx_iothread_free(iot[t]), 0, "iothread_free(%d)", t);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ok(system(cmd) == 0, "temporary directory removed");
    return done_testing();
}
