/*
 * test-handover: aioctx_graph_inactivate_all / aioctx_graph_activate_all, the
 * migration handover, with C drivers on the main context and two IOThreads.
 *
 * Order: pass 1 top-down (parents before children, a shared child once),
 * flush then inactivate per node, each callback in the node's home thread
 * with its context held; every node inactive afterwards; a second call is a
 * no-op; activate_all bottom-up. A 100-node DAG with shared children. Drain
 * before pass 1, -EBUSY during the handover. Errors: a flush/inactivate that
 * fails on the k-th node (every k) stops it with the node named, leaves no
 * context held and the graph consistent, and activate_all recovers; a failing
 * activate; the caller already holding an IOThread context (no hang, depth
 * as before); the caller holding the main context twice.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <pthread.h>
#include <stdatomic.h>

static AioctxContext *main_ctx;
static pthread_t main_thread;
static AioctxIoThread *iot_a, *iot_b;
static AioctxContext *ctx_a, *ctx_b;
static pthread_t thread_a, thread_b;

/* Both IOThreads still run BHs (nothing left holding their contexts). */
static int iothreads_alive(void)
{
    atomic_int ran = 0;
    aioctx_bh_schedule_oneshot(ctx_a, inc_cb, &ran);
    aioctx_bh_schedule_oneshot(ctx_b, inc_cb, &ran);
    return wait_count(ctx_a, &ran, 2) == 0 && atomic_load(&ran) == 2;
}

static int depths_zero(void)
{
    return aioctx_lock_depth(main_ctx) == 0 && aioctx_lock_depth(ctx_a) == 0 &&
           aioctx_lock_depth(ctx_b) == 0;
}

/* ---- the recording driver: a global log of callbacks ------------------------------ */

#define MAXN 128
#define MAXLOG 1024

struct hnode {
    int id;
    AioctxNode *node;
    AioctxContext *ctx;
    pthread_t home;
};

struct event {
    char op;    /* 'F' flush, 'I' inactivate, 'A' activate, 'C' close */
    int id;
};

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static struct event log_ev[MAXLOG];
static int log_len;
static atomic_int bad_thread, bad_depth, bad_node;

/* Fault injection: the fail_at-th call of fail_op returns fail_rc (0: never). */
static char fail_op;
static int fail_at, fail_count, fail_rc;
static int failed_id = -1;

/* Probe: a node on which flush callbacks try start_request (expects -EBUSY). */
static AioctxNode *probe_node;
static atomic_int probe_busy, probe_other;

static int record(struct hnode *h, AioctxNode *node, char op)
{
    int rc = 0;
    if (node != h->node)
        atomic_fetch_add(&bad_node, 1);
    if (op != 'C' && !pthread_equal(pthread_self(), h->home))
        atomic_fetch_add(&bad_thread, 1);
    if (op == 'C' && !pthread_equal(pthread_self(), main_thread))
        atomic_fetch_add(&bad_thread, 1);
    if (aioctx_lock_depth(aioctx_node_context(node)) < 1)
        atomic_fetch_add(&bad_depth, 1);
    pthread_mutex_lock(&log_lock);
    if (op == fail_op && fail_at > 0 && ++fail_count == fail_at) {
        rc = fail_rc;
        failed_id = h->id;
    } else if (log_len < MAXLOG) {
        log_ev[log_len].op = op;
        log_ev[log_len].id = h->id;
        log_len++;
    }
    pthread_mutex_unlock(&log_lock);
    return rc;
}

static int h_flush(AioctxNode *node, void *opaque)
{
    if (probe_node) {
        int rc = aioctx_node_start_request(probe_node, false);
        if (rc == -EBUSY)
            atomic_fetch_add(&probe_busy, 1);
        else {
            atomic_fetch_add(&probe_other, 1);
            if (rc == 0)
                aioctx_node_end_request(probe_node);
        }
    }
    return record(opaque, node, 'F');
}

static int h_inactivate(AioctxNode *node, void *opaque)
{
    return record(opaque, node, 'I');
}

static int h_activate(AioctxNode *node, void *opaque)
{
    return record(opaque, node, 'A');
}

static void h_close(AioctxNode *node, void *opaque)
{
    record(opaque, node, 'C');
}

static const AioctxDriver h_driver = { h_flush, h_inactivate, h_activate, h_close };

static void log_reset(void)
{
    pthread_mutex_lock(&log_lock);
    log_len = 0;
    fail_op = 0;
    fail_at = fail_count = fail_rc = 0;
    failed_id = -1;
    pthread_mutex_unlock(&log_lock);
    atomic_store(&bad_thread, 0);
    atomic_store(&bad_depth, 0);
    atomic_store(&bad_node, 0);
}

/* Index of the first event (op, id) in the log, or -1. */
static int log_find(char op, int id)
{
    for (int i = 0; i < log_len; i++)
        if (log_ev[i].op == op && log_ev[i].id == id)
            return i;
    return -1;
}

static int log_count(char op, int id)
{
    int n = 0;
    for (int i = 0; i < log_len; i++)
        n += log_ev[i].op == op && log_ev[i].id == id;
    return n;
}

static void log_dump(void)
{
    char buf[4096];
    size_t off = 0;
    for (int i = 0; i < log_len && off + 16 < sizeof buf; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%c%d ", log_ev[i].op, log_ev[i].id);
    buf[off] = '\0';
    diag("log: %s", buf);
}

/* A graph with recorded edges. */
struct hgraph {
    AioctxGraph *g;
    int n;
    struct hnode nodes[MAXN];
    int nedges;
    int edge[MAXN * 8][2];
};

static AioctxContext *ctx_of(int which)
{
    return which == 0 ? main_ctx : which == 1 ? ctx_a : ctx_b;
}

static pthread_t thread_of(int which)
{
    return which == 0 ? main_thread : which == 1 ? thread_a : thread_b;
}

static struct hnode *hg_add(struct hgraph *hg, int id, const char *name, int which)
{
    struct hnode *h = &hg->nodes[id];
    h->id = id;
    h->ctx = ctx_of(which);
    h->home = thread_of(which);
    h->node = aioctx_node_new(hg->g, name, h->ctx, &h_driver, h);
    if (id >= hg->n)
        hg->n = id + 1;
    return h;
}

static int hg_edge(struct hgraph *hg, int p, int c)
{
    int rc = aioctx_node_attach_child(hg->nodes[p].node, hg->nodes[c].node);
    if (rc == 0) {
        for (int i = 0; i < hg->nedges; i++)
            if (hg->edge[i][0] == p && hg->edge[i][1] == c)
                return 0;
        hg->edge[hg->nedges][0] = p;
        hg->edge[hg->nedges][1] = c;
        hg->nedges++;
    }
    return rc;
}

static int hg_count_inactive(struct hgraph *hg)
{
    int n = 0;
    for (int i = 0; i < hg->n; i++)
        n += aioctx_node_is_inactive(hg->nodes[i].node);
    return n;
}

/* Checks the log of a full inactivate_all: per node F then I, each once, and
 * for every edge the parent's I before the child's F. Returns 1 if all good. */
static int check_inactivate_log(struct hgraph *hg, const char *what)
{
    int good = 1;
    int pairs = 1;
    for (int i = 0; i + 1 < log_len; i += 2)
        pairs &= log_ev[i].op == 'F' && log_ev[i + 1].op == 'I' && log_ev[i].id == log_ev[i + 1].id;
    good &= is_int(log_len, 2 * hg->n, "%s: %d callbacks (flush + inactivate per node)", what, 2 * hg->n);
    good &= ok(pairs && log_len % 2 == 0, "%s: each node's flush directly followed by its inactivate", what);
    int once = 1;
    for (int i = 0; i < hg->n; i++)
        once &= log_count('F', i) == 1 && log_count('I', i) == 1;
    good &= ok(once, "%s: every node flushed and inactivated exactly once", what);
    int order = 1, bad_edge = -1;
    for (int e = 0; e < hg->nedges; e++) {
        int p = hg->edge[e][0], c = hg->edge[e][1];
        int ip = log_find('I', p), fc = log_find('F', c);
        if (ip < 0 || fc < 0 || ip > fc) {
            order = 0;
            bad_edge = e;
        }
    }
    good &= ok(order, "%s: top-down: every parent inactivated before each of its children is flushed", what);
    if (!order)
        diag("edge %d -> %d out of order", hg->edge[bad_edge][0], hg->edge[bad_edge][1]);
    good &= is_int(atomic_load(&bad_thread), 0, "%s: every callback in its node's home thread", what);
    good &= is_int(atomic_load(&bad_depth), 0, "%s: ... with the node's context held", what);
    good &= is_int(atomic_load(&bad_node), 0, "%s: ... given its own node", what);
    if (!good)
        log_dump();
    return good;
}

static int check_activate_log(struct hgraph *hg, const char *what)
{
    int good = 1;
    good &= is_int(log_len, hg->n, "%s: %d activate callbacks", what, hg->n);
    int once = 1;
    for (int i = 0; i < hg->n; i++)
        once &= log_count('A', i) == 1;
    good &= ok(once, "%s: every node activated exactly once", what);
    int order = 1;
    for (int e = 0; e < hg->nedges; e++) {
        int ap = log_find('A', hg->edge[e][0]), ac = log_find('A', hg->edge[e][1]);
        if (ap < 0 || ac < 0 || ac > ap)
            order = 0;
    }
    good &= ok(order, "%s: bottom-up: every child activated before its parents", what);
    good &= is_int(atomic_load(&bad_thread) + atomic_load(&bad_depth) + atomic_load(&bad_node), 0,
                   "%s: in the home threads, contexts held, own node", what);
    if (!good)
        log_dump();
    return good;
}

/* ---- order with two IOThreads and the main context --------------------------------- */

static void test_order(void)
{
    static struct hgraph hg;
    memset(&hg, 0, sizeof hg);
    hg.g = aioctx_graph_new(NULL);
    log_reset();

    /* Created children first, so creation order is not a valid handover order. */
    hg_add(&hg, 5, "leaf", 2);      /* B */
    hg_add(&hg, 3, "mid1", 1);      /* A */
    hg_add(&hg, 4, "mid2", 0);      /* main */
    hg_add(&hg, 1, "root1", 1);     /* A */
    hg_add(&hg, 2, "root2", 2);     /* B */
    hg_add(&hg, 0, "solo", 0);      /* main, no edges */
    hg_add(&hg, 6, "mid3", 2);      /* B */
    int rc = 0;
    rc |= hg_edge(&hg, 1, 3);
    rc |= hg_edge(&hg, 1, 4);
    rc |= hg_edge(&hg, 2, 4);
    rc |= hg_edge(&hg, 3, 5);
    rc |= hg_edge(&hg, 4, 5);
    rc |= hg_edge(&hg, 2, 5);       /* shortcut to the shared leaf */
    rc |= hg_edge(&hg, 4, 6);
    rc |= hg_edge(&hg, 6, 5);
    is_int(rc, 0, "a 7-node DAG over main + 2 IOThreads, with a shared child");

    is_int(aioctx_graph_inactivate_all(hg.g), 0, "inactivate_all");
    check_inactivate_log(&hg, "7 nodes");
    is_int(hg_count_inactive(&hg), hg.n, "every node inactive");
    ok(depths_zero(), "main holds no context afterwards");
    ok(iothreads_alive(), "both IOThreads still run BHs");

    is_int(aioctx_node_start_request(hg.nodes[5].node, true), -EPERM, "a write on an inactive node -> -EPERM");

    log_reset();
    is_int(aioctx_graph_inactivate_all(hg.g), 0, "a second inactivate_all -> 0");
    is_int(log_len, 0, "  no callback ran (a no-op)");
    is_int(hg_count_inactive(&hg), hg.n, "  every node still inactive");

    is_int(aioctx_graph_activate_all(hg.g), 0, "activate_all");
    check_activate_log(&hg, "7 nodes");
    is_int(hg_count_inactive(&hg), 0, "every node active again");
    int w = 1;
    for (int i = 0; i < hg.n; i++) {
        w &= aioctx_node_start_request(hg.nodes[i].node, true) == 0;
        aioctx_node_end_request(hg.nodes[i].node);
    }
    ok(w, "writes accepted on every node");

    log_reset();
    is_int(aioctx_graph_activate_all(hg.g), 0, "a second activate_all -> 0");
    is_int(log_len, 0, "  no callback ran");

    /* A node added after a handover joins the next one. */
    log_reset();
    is_int(aioctx_graph_inactivate_all(hg.g), 0, "inactivate_all again");
    hg_add(&hg, 7, "late", 1);
    ok(!aioctx_node_is_inactive(hg.nodes[7].node), "a node added afterwards is active");
    log_reset();
    is_int(aioctx_graph_inactivate_all(hg.g), 0, "inactivate_all with only the new node active");
    ok(log_len == 2 && log_count('F', 7) == 1 && log_count('I', 7) == 1,
       "  only the new node was flushed and inactivated (the others are skipped)");
    log_reset();
    is_int(aioctx_graph_activate_all(hg.g), 0, "activate_all");
    is_int(log_len, hg.n, "  all %d nodes activated", hg.n);

    log_reset();
    aioctx_graph_free(hg.g);
    int closes = 1;
    for (int i = 0; i < hg.n; i++)
        closes &= log_count('C', i) == 1;
    ok(closes && log_len == hg.n, "graph_free closed every node once (%d closes)", log_len);
    is_int(atomic_load(&bad_thread) + atomic_load(&bad_depth), 0,
           "  in the freeing thread with each node's context held");
}

/* ---- a 100-node DAG ----------------------------------------------------------------------- */

static uint32_t rng_state;

static uint32_t rng(void)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return (rng_state >> 8) & 0xffffff;
}

static void test_dag100(void)
{
    enum { LAYERS = 10, WIDTH = 10, N = LAYERS * WIDTH };
    static struct hgraph hg;
    memset(&hg, 0, sizeof hg);
    hg.g = aioctx_graph_new(NULL);
    log_reset();
    rng_state = 20240601u;

    /* Node id = layer * WIDTH + j, layer 0 on top. Create in a shuffled order. */
    int order[N];
    for (int i = 0; i < N; i++)
        order[i] = N - 1 - i;
    for (int i = N - 1; i > 0; i--) {
        int j = (int)(rng() % (uint32_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    int created = 1;
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "dag-%02d", order[i]);
        created &= hg_add(&hg, order[i], name, order[i] % 3)->node != NULL;
    }
    ok(created, "100 nodes over main + 2 IOThreads, created in a shuffled order");

    int bad = 0;
    for (int id = 0; id < (LAYERS - 1) * WIDTH; id++) {
        int layer = id / WIDTH;
        int nchildren = 1 + (int)(rng() % 4);
        for (int k = 0; k < nchildren; k++) {
            int cl = layer + 1 + (int)(rng() % (uint32_t)(LAYERS - 1 - layer));
            int c = cl * WIDTH + (int)(rng() % WIDTH);
            bad |= hg_edge(&hg, id, c);
        }
    }
    is_int(bad, 0, "random edges to lower layers (fixed seed): all accepted");
    int shared = 0;
    for (int c = 0; c < N; c++) {
        int parents = 0;
        for (int e = 0; e < hg.nedges; e++)
            parents += hg.edge[e][1] == c;
        shared += parents > 1;
    }
    diag("%d edges, %d nodes with more than one parent", hg.nedges, shared);
    ok(shared > 10, "many shared children (%d)", shared);
    /* An edge back up is a cycle. */
    is_int(aioctx_node_attach_child(hg.nodes[hg.edge[0][1]].node, hg.nodes[hg.edge[0][0]].node), -ELOOP,
           "an edge from a child back to its parent -> -ELOOP");

    int64_t t0 = tap_now_ns();
    is_int(aioctx_graph_inactivate_all(hg.g), 0, "inactivate_all of 100 nodes");
    diag("inactivate_all of 100 nodes took %lld us", (long long)((tap_now_ns() - t0) / 1000));
    check_inactivate_log(&hg, "100 nodes");
    is_int(hg_count_inactive(&hg), N, "all 100 inactive");
    ok(depths_zero(), "no context left held");

    log_reset();
    is_int(aioctx_graph_activate_all(hg.g), 0, "activate_all of 100 nodes");
    check_activate_log(&hg, "100 nodes");
    is_int(hg_count_inactive(&hg), 0, "all 100 active");

    log_reset();
    aioctx_graph_free(hg.g);
    is_int(log_len, N, "graph_free: 100 closes");
}

/* ---- drain and -EBUSY during the handover -------------------------------------------------- */

static _Atomic int64_t first_flush_ns;

static int timed_flush(AioctxNode *node, void *opaque)
{
    (void)node;
    (void)opaque;
    if (first_flush_ns == 0)
        first_flush_ns = tap_now_ns();
    return 0;
}

static void test_drain_and_busy(void)
{
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxDriver d = { timed_flush, NULL, NULL, NULL };
    AioctxNode *n0 = aioctx_node_new(g, "drain-main", main_ctx, &d, NULL);
    AioctxNode *n1 = aioctx_node_new(g, "drain-a", ctx_a, &d, NULL);
    AioctxNode *n2 = aioctx_node_new(g, "drain-b", ctx_b, &d, NULL);
    aioctx_node_attach_child(n0, n1);
    aioctx_node_start_request(n0, true);
    aioctx_node_start_request(n1, true);
    aioctx_node_start_request(n2, false);
    struct ender e = { { n2, n0, n1, NULL }, 3, 25, 0 };
    pthread_t th;
    first_flush_ns = 0;
    int64_t t0 = tap_now_ns();
    pthread_create(&th, NULL, ender_thread, &e);
    int rc = aioctx_graph_inactivate_all(g);
    int64_t t1 = tap_now_ns();
    pthread_join(th, NULL);
    is_int(rc, 0, "inactivate_all with 3 requests in flight (ended by another thread)");
    ok(t1 - t0 >= 70 * MS, "  waited for them (%lld ms)", (long long)((t1 - t0) / MS));
    ok(first_flush_ns >= e.last_end_ns, "  drained every node before the first flush");
    ok(aioctx_node_in_flight(n0) == 0 && aioctx_node_in_flight(n1) == 0 && aioctx_node_in_flight(n2) == 0,
       "  in_flight 0 everywhere");
    ok(aioctx_node_is_inactive(n0) && aioctx_node_is_inactive(n1) && aioctx_node_is_inactive(n2),
       "  all inactive");
    is_int(aioctx_graph_activate_all(g), 0, "activate_all");
    aioctx_graph_free(g);

    /* During the handover every request is refused with -EBUSY (reads too). */
    static struct hgraph hg;
    memset(&hg, 0, sizeof hg);
    hg.g = aioctx_graph_new(NULL);
    log_reset();
    hg_add(&hg, 0, "busy-0", 0);
    hg_add(&hg, 1, "busy-1", 1);
    hg_add(&hg, 2, "busy-2", 2);
    hg_edge(&hg, 0, 1);
    atomic_store(&probe_busy, 0);
    atomic_store(&probe_other, 0);
    probe_node = hg.nodes[2].node;
    is_int(aioctx_graph_inactivate_all(hg.g), 0, "inactivate_all with flush callbacks probing start_request");
    probe_node = NULL;
    is_int(atomic_load(&probe_busy), 3, "  start_request(read) during the handover -> -EBUSY (each flush)");
    is_int(atomic_load(&probe_other), 0, "  never anything else");
    is_int(aioctx_node_start_request(hg.nodes[2].node, false), 0, "after it, reads are accepted again");
    aioctx_node_end_request(hg.nodes[2].node);
    is_int(aioctx_graph_activate_all(hg.g), 0, "activate_all");
    aioctx_graph_free(hg.g);
}

/* ---- errors ------------------------------------------------------------------------------------ */

static void build_err_graph(struct hgraph *hg)
{
    memset(hg, 0, sizeof *hg);
    hg->g = aioctx_graph_new(NULL);
    static const char *names[] = { "err-r0", "err-r1", "err-m2", "err-m3", "err-m4", "err-l5", "err-l6" };
    for (int i = 0; i < 7; i++)
        hg_add(hg, i, names[i], (i + 1) % 3);
    hg_edge(hg, 0, 2);
    hg_edge(hg, 0, 3);
    hg_edge(hg, 1, 3);
    hg_edge(hg, 1, 4);
    hg_edge(hg, 2, 5);
    hg_edge(hg, 3, 5);
    hg_edge(hg, 4, 6);
    hg_edge(hg, 3, 6);
}

static void test_flush_failure(char op, const char *opname)
{
    static struct hgraph hg;
    build_err_graph(&hg);
    int all_rc = 1, all_named = 1, all_step = 1, all_depth = 1, all_alive = 1, all_consistent = 1;
    int all_recovered = 1, all_writes = 1, all_again = 1, all_ordered = 1;
    for (int k = 1; k <= hg.n; k++) {
        log_reset();
        pthread_mutex_lock(&log_lock);
        fail_op = op;
        fail_at = k;
        fail_rc = -EIO;
        pthread_mutex_unlock(&log_lock);
        int rc = aioctx_graph_inactivate_all(hg.g);
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", aioctx_last_error());
        int fid = failed_id;
        pthread_mutex_lock(&log_lock);
        fail_at = 0;
        pthread_mutex_unlock(&log_lock);
        if (rc != -EIO) {
            all_rc = 0;
            diag("k=%d: inactivate_all returned %d, not -EIO", k, rc);
        }
        const char *fname = fid >= 0 ? aioctx_node_name(hg.nodes[fid].node) : "?";
        if (fid < 0 || !strstr(msg, fname)) {
            all_named = 0;
            diag("k=%d: message does not name '%s': %s", k, fname, msg);
        }
        if (!strstr(msg, opname)) {
            all_step = 0;
            diag("k=%d: message does not name the step '%s': %s", k, opname, msg);
        }
        if (k == 1)
            diag("message: %s", msg);
        if (!depths_zero()) {
            all_depth = 0;
            diag("k=%d: depths main %d A %d B %d", k, aioctx_lock_depth(main_ctx),
                 aioctx_lock_depth(ctx_a), aioctx_lock_depth(ctx_b));
        }
        if (!iothreads_alive())
            all_alive = 0;
        /* Handed over (inactivate callback logged) <=> inactive; the failed one active. */
        for (int i = 0; i < hg.n; i++) {
            int handed = log_count('I', i) == 1;
            if (aioctx_node_is_inactive(hg.nodes[i].node) != handed) {
                all_consistent = 0;
                diag("k=%d: node %d inactive=%d but handed over=%d", k, i,
                     aioctx_node_is_inactive(hg.nodes[i].node), handed);
            }
        }
        if (fid >= 0 && aioctx_node_is_inactive(hg.nodes[fid].node))
            all_consistent = 0;
        /* What ran before the failure was in top-down order. */
        for (int e = 0; e < hg.nedges; e++) {
            int ip = log_find('I', hg.edge[e][0]), fc = log_find('F', hg.edge[e][1]);
            if (fc >= 0 && (ip < 0 || ip > fc))
                all_ordered = 0;
        }
        log_reset();
        if (aioctx_graph_activate_all(hg.g) != 0 || hg_count_inactive(&hg) != 0) {
            all_recovered = 0;
            diag("k=%d: activate_all did not recover: %s", k, aioctx_last_error());
        }
        for (int i = 0; i < hg.n; i++) {
            if (aioctx_node_start_request(hg.nodes[i].node, true) != 0)
                all_writes = 0;
            else
                aioctx_node_end_request(hg.nodes[i].node);
        }
        /* And a clean handover works after the recovery. */
        log_reset();
        if (aioctx_graph_inactivate_all(hg.g) != 0 || hg_count_inactive(&hg) != hg.n ||
            aioctx_graph_activate_all(hg.g) != 0 || hg_count_inactive(&hg) != 0)
            all_again = 0;
    }
    is_int(all_rc, 1, "%s fails (-EIO) on the k-th node, k = 1..%d: inactivate_all -> -EIO", opname, hg.n);
    ok(all_named, "  the message names the failing node");
    ok(all_step, "  the message names the step (%s)", opname);
    ok(all_depth, "  afterwards main holds no context (depth 0 on main, A and B)");
    ok(all_alive, "  both IOThreads still run BHs");
    ok(all_consistent, "  nodes handed over are inactive, the failed one and the rest active");
    ok(all_ordered, "  the part done before the failure was top-down");
    ok(all_recovered, "  activate_all recovers: every node active");
    ok(all_writes, "  writes accepted again on every node");
    ok(all_again, "  a clean inactivate_all / activate_all works afterwards");
    log_reset();
    aioctx_graph_free(hg.g);
}

static void test_activate_failure(void)
{
    static struct hgraph hg;
    build_err_graph(&hg);
    log_reset();
    is_int(aioctx_graph_inactivate_all(hg.g), 0, "inactivate_all");
    log_reset();
    pthread_mutex_lock(&log_lock);
    fail_op = 'A';
    fail_at = 2;
    fail_rc = -ENOSPC;
    pthread_mutex_unlock(&log_lock);
    int rc = aioctx_graph_activate_all(hg.g);
    int fid = failed_id;
    is_int(rc, -ENOSPC, "activate_all with the 2nd activate failing -> its error (-ENOSPC)");
    ok(fid >= 0 && strstr(aioctx_last_error(), aioctx_node_name(hg.nodes[fid].node)) != NULL,
       "  the message names the node: '%s'", aioctx_last_error());
    ok(fid >= 0 && aioctx_node_is_inactive(hg.nodes[fid].node), "  the failed node stays inactive");
    int consistent = 1;
    for (int i = 0; i < hg.n; i++)
        consistent &= aioctx_node_is_inactive(hg.nodes[i].node) == (log_count('A', i) == 0);
    ok(consistent, "  exactly the nodes activated before the failure are active");
    ok(depths_zero(), "  no context left held");
    ok(iothreads_alive(), "  IOThreads still run BHs");
    pthread_mutex_lock(&log_lock);
    fail_at = 0;
    pthread_mutex_unlock(&log_lock);
    log_reset();
    is_int(aioctx_graph_activate_all(hg.g), 0, "a retry of activate_all -> 0");
    is_int(log_len, hg.n - 1, "  activated only the %d nodes still inactive", hg.n - 1);
    is_int(hg_count_inactive(&hg), 0, "  every node active");
    log_reset();
    aioctx_graph_free(hg.g);
}

/* A handover with `ctx` held twice by the caller, which must go ahead. */
static void handover_holding_twice(struct hgraph *hg, AioctxContext *ctx, const char *what)
{
    aioctx_acquire(ctx);
    aioctx_acquire(ctx);
    log_reset();
    is_int(aioctx_graph_inactivate_all(hg->g), 0, "inactivate_all with %s held twice -> 0", what);
    is_int(hg_count_inactive(hg), hg->n, "  every node inactive");
    is_int(aioctx_graph_activate_all(hg->g), 0, "  activate_all likewise -> 0");
    is_int(aioctx_lock_depth(ctx), 2, "  its depth still 2");
    aioctx_release(ctx);
    aioctx_release(ctx);
}

/* The caller already holds an IOThread context: must not hang. */
static void test_caller_holds(void)
{
    static struct hgraph hg;
    build_err_graph(&hg);
    log_reset();

    is_int(aioctx_acquire(ctx_a), 0, "main acquires IOThread A's context once");
    int64_t t0 = tap_now_ns();
    int rc = aioctx_graph_inactivate_all(hg.g);
    int64_t dt = tap_now_ns() - t0;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", aioctx_last_error());
    ok(rc == 0 || rc == -EDEADLK, "inactivate_all with A's context held -> 0 or -EDEADLK, no hang (got %d)", rc);
    diag("rc %d after %lld us; message: %s", rc, (long long)(dt / 1000), rc ? msg : "");
    is_int(aioctx_lock_depth(ctx_a), 1, "  the caller's depth on A is as before (1)");
    is_int(aioctx_lock_depth(main_ctx) + aioctx_lock_depth(ctx_b), 0, "  and 0 on main and B");
    if (rc == -EDEADLK) {
        is_int(hg_count_inactive(&hg), 0, "  -EDEADLK: nothing changed (every node still active)");
        is_int(log_len, 0, "  -EDEADLK: no driver callback ran");
        like(msg, aioctx_context_name(ctx_a), "  -EDEADLK: the message names the context");
    } else {
        is_int(hg_count_inactive(&hg), hg.n, "  0: every node inactive");
        ok(1, "  (0: nothing more to check)");
        ok(1, "  (0: nothing more to check)");
    }
    int64_t in_b = 0;
    for (int i = 0; i < hg.n; i++)
        in_b += aioctx_node_in_flight(hg.nodes[i].node);
    is_int(in_b, 0, "  no request left counted");
    is_int(aioctx_node_start_request(hg.nodes[1].node, false), 0, "  requests not refused (not left quiesced)");
    aioctx_node_end_request(hg.nodes[1].node);
    is_int(aioctx_release(ctx_a), 0, "release A");
    ok(iothreads_alive(), "IOThreads still run BHs");

    log_reset();
    is_int(aioctx_graph_inactivate_all(hg.g), 0, "inactivate_all after releasing -> 0");
    check_inactivate_log(&hg, "after the refused call");
    is_int(hg_count_inactive(&hg), hg.n, "every node inactive");

    /* activate_all with B's context held once: no hang either. */
    is_int(aioctx_acquire(ctx_b), 0, "main acquires IOThread B's context once");
    log_reset();
    rc = aioctx_graph_activate_all(hg.g);
    snprintf(msg, sizeof msg, "%s", aioctx_last_error());
    ok(rc == 0 || rc == -EDEADLK, "activate_all with B's context held -> 0 or -EDEADLK, no hang (got %d)", rc);
    if (rc)
        diag("message: %s", msg);
    is_int(aioctx_lock_depth(ctx_b), 1, "  the caller's depth on B is as before (1)");
    aioctx_release(ctx_b);
    is_int(aioctx_graph_activate_all(hg.g), 0, "activate_all after releasing -> 0");
    is_int(hg_count_inactive(&hg), 0, "every node active");

    /* The main context is the caller's own: holding it twice is fine. */
    handover_holding_twice(&hg, main_ctx, "the main context (the caller's own)");

    /* A context nobody runs, held twice: releasing one level in the waits
     * keeps no thread from running it, so the handover goes ahead. */
    AioctxContext *idle = aioctx_context_new("handover-idle");
    AioctxDriver idle_driver = { 0 };
    AioctxNode *idle_node = aioctx_node_new(hg.g, "idle-node", idle, &idle_driver, NULL);
    ok(idle_node != NULL, "a node on a context nobody runs");
    is_int(aioctx_node_attach_child(hg.nodes[0].node, idle_node), 0, "  under the top node");
    handover_holding_twice(&hg, idle, "a context nobody runs");

    /* The caller holding both IOThread contexts, A twice. */
    aioctx_acquire(ctx_a);
    aioctx_acquire(ctx_a);
    aioctx_acquire(ctx_b);
    log_reset();
    t0 = tap_now_ns();
    rc = aioctx_graph_inactivate_all(hg.g);
    dt = tap_now_ns() - t0;
    ok(rc == 0 || rc == -EDEADLK, "inactivate_all with A held twice and B once -> 0 or -EDEADLK (got %d)", rc);
    ok(dt < 2 * SEC * tap_scale(), "  at once (%lld us)", (long long)(dt / 1000));
    ok(aioctx_lock_depth(ctx_a) == 2 && aioctx_lock_depth(ctx_b) == 1, "  depths as before (A 2, B 1)");
    if (rc == -EDEADLK)
        is_int(hg_count_inactive(&hg), 0, "  -EDEADLK: nothing changed");
    else
        is_int(hg_count_inactive(&hg), hg.n, "  0: every node inactive");
    aioctx_release(ctx_b);
    aioctx_release(ctx_a);
    aioctx_release(ctx_a);
    is_int(aioctx_graph_activate_all(hg.g), 0, "activate_all (recovers either way)");
    ok(iothreads_alive(), "IOThreads still run BHs");

    log_reset();
    aioctx_graph_free(hg.g);
    aioctx_context_unref(idle);
}

struct other_call {
    AioctxGraph *g;
    int inact, act;
};

static void *other_thread(void *arg)
{
    struct other_call *o = arg;
    o->inact = aioctx_graph_inactivate_all(o->g);
    o->act = aioctx_graph_activate_all(o->g);
    return NULL;
}

static void test_wrong_thread(void)
{
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_new(g, "wt", ctx_a, NULL, NULL);
    struct other_call o = { g, 0, 0 };
    pthread_t th;
    pthread_create(&th, NULL, other_thread, &o);
    pthread_join(th, NULL);
    is_int(o.inact, -EPERM, "inactivate_all from a thread other than the main context's home -> -EPERM");
    is_int(o.act, -EPERM, "activate_all from it -> -EPERM");
    ok(!aioctx_node_is_inactive(n), "  the node is untouched");
    aioctx_graph_free(g);
}

int main(void)
{
    tap_watchdog(60);
    main_thread = pthread_self();
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main claims the main context");
    iot_a = aioctx_iothread_new("handover-a");
    iot_b = aioctx_iothread_new("handover-b");
    if (!ok(iot_a && iot_b, "two IOThreads"))
        return done_testing();
    ctx_a = aioctx_iothread_context(iot_a);
    ctx_b = aioctx_iothread_context(iot_b);
    atomic_int ran = 0;
    aioctx_bh_schedule_oneshot(ctx_a, save_thread_cb, &thread_a);
    aioctx_bh_schedule_oneshot(ctx_b, save_thread_cb, &thread_b);
    aioctx_bh_schedule_oneshot(ctx_a, inc_cb, &ran);
    aioctx_bh_schedule_oneshot(ctx_b, inc_cb, &ran);
    is_int(wait_count(ctx_a, &ran, 2), 0, "learned both IOThreads' pthread_t");

    test_order();
    test_dag100();
    test_drain_and_busy();
    test_flush_failure('F', "flush");
    test_flush_failure('I', "inactivate");
    test_activate_failure();
    test_caller_holds();
    test_wrong_thread();

    is_int(aioctx_iothread_free(iot_a), 0, "free IOThread A");
    is_int(aioctx_iothread_free(iot_b), 0, "free IOThread B");
    return done_testing();
}
