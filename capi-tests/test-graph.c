/*
 * test-graph: the block graph's nodes and requests.
 *
 * Graphs (aioctx_graph_new(NULL) is the main context's), unique non-empty
 * node names, aioctx_graph_find, parent -> child edges without cycles
 * (-ELOOP, self-edges and longer cycles too), C drivers (optional callbacks
 * called with their opaque pointer and the node, the table copied, NULL
 * driver = no callbacks), aioctx_graph_free closing every node exactly once;
 * requests (writes refused on inactive nodes, reads allowed), end_request
 * from another thread waking waiters, drain waiting for in-flight 0, and
 * drain/flush with the node's IOThread context held once (works) or twice
 * (-EDEADLK at once, depth unchanged); driver callbacks run in the node's
 * home thread with its context held.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>

static AioctxContext *main_ctx;
static pthread_t main_thread;
static AioctxIoThread *iot;
static AioctxContext *iot_ctx;
static pthread_t iot_thread;

/* ---- a recording C driver ------------------------------------------------------- */

#define REC_MAGIC 0x5eed1e55u

struct rec {
    unsigned magic;
    struct rec *self;
    AioctxNode *node;           /* set once the node exists */
    pthread_t home;             /* where flush/inactivate/activate must run */
    atomic_int flush, inactivate, activate, close;
    atomic_int bad_opaque, bad_node, bad_thread, bad_depth;
    atomic_int close_bad_thread, close_bad_depth;
    int flush_rc;
    atomic_int *close_total;    /* optional: shared close counter */
};

static void rec_init(struct rec *r, pthread_t home)
{
    memset(r, 0, sizeof *r);
    r->magic = REC_MAGIC;
    r->self = r;
    r->home = home;
}

static void rec_check(struct rec *r, AioctxNode *node, int check_thread)
{
    if (r->magic != REC_MAGIC || r->self != r)
        atomic_fetch_add(&r->bad_opaque, 1);
    if (node != r->node)
        atomic_fetch_add(&r->bad_node, 1);
    if (check_thread && !pthread_equal(pthread_self(), r->home))
        atomic_fetch_add(&r->bad_thread, 1);
    if (aioctx_lock_depth(aioctx_node_context(node)) < 1)
        atomic_fetch_add(&r->bad_depth, 1);
}

static int rec_flush(AioctxNode *node, void *opaque)
{
    struct rec *r = opaque;
    rec_check(r, node, 1);
    atomic_fetch_add(&r->flush, 1);
    return r->flush_rc;
}

static int rec_inactivate(AioctxNode *node, void *opaque)
{
    struct rec *r = opaque;
    rec_check(r, node, 1);
    atomic_fetch_add(&r->inactivate, 1);
    return 0;
}

static int rec_activate(AioctxNode *node, void *opaque)
{
    struct rec *r = opaque;
    rec_check(r, node, 1);
    atomic_fetch_add(&r->activate, 1);
    return 0;
}

static void rec_close(AioctxNode *node, void *opaque)
{
    struct rec *r = opaque;
    if (r->magic != REC_MAGIC || r->self != r)
        atomic_fetch_add(&r->bad_opaque, 1);
    if (node != r->node)
        atomic_fetch_add(&r->bad_node, 1);
    /* close runs in the thread freeing the graph, with the node's context held */
    if (!pthread_equal(pthread_self(), main_thread))
        atomic_fetch_add(&r->close_bad_thread, 1);
    if (aioctx_lock_depth(aioctx_node_context(node)) < 1)
        atomic_fetch_add(&r->close_bad_depth, 1);
    atomic_fetch_add(&r->close, 1);
    if (r->close_total)
        atomic_fetch_add(r->close_total, 1);
}

static const AioctxDriver rec_driver = { rec_flush, rec_inactivate, rec_activate, rec_close };

static int wrong_flush(AioctxNode *node, void *opaque)
{
    (void)node;
    atomic_fetch_add(&((struct rec *)opaque)->bad_opaque, 100);
    return -EIO;
}

static void rec_no_misuse(struct rec *r, const char *what)
{
    is_int(atomic_load(&r->bad_opaque), 0, "%s: every callback got its opaque pointer", what);
    is_int(atomic_load(&r->bad_node), 0, "%s: every callback got its node", what);
    is_int(atomic_load(&r->bad_thread), 0, "%s: flush/inactivate/activate ran in the node's home thread", what);
    is_int(atomic_load(&r->bad_depth), 0, "%s: ... with the node's context held (depth >= 1)", what);
}

/* ---- graphs and names ------------------------------------------------------------ */

static void *other_thread_inactivate(void *arg)
{
    AioctxGraph *g = arg;
    intptr_t rc = aioctx_graph_inactivate_all(g);
    return (void *)rc;
}

struct other_flush {
    AioctxNode *node;
    int rc;
    char msg[512];
};

static void *other_thread_flush(void *arg)
{
    struct other_flush *o = arg;
    o->rc = aioctx_node_flush(o->node);
    snprintf(o->msg, sizeof o->msg, "%s", aioctx_last_error());
    return NULL;
}

static void test_graph_and_names(void)
{
    AioctxGraph *g = aioctx_graph_new(NULL);
    ok(g != NULL, "aioctx_graph_new(NULL)");

    AioctxNode *a = aioctx_node_new(g, "drive-a", main_ctx, NULL, NULL);
    ok(a != NULL, "node_new(\"drive-a\", main context, NULL driver)");
    is_str(aioctx_node_name(a), "drive-a", "node_name");
    ok(aioctx_node_context(a) == main_ctx, "node_context is the context it was created with");
    is_int(aioctx_node_in_flight(a), 0, "a new node has no request in flight");
    ok(!aioctx_node_is_inactive(a), "a new node is active");

    AioctxNode *dup = aioctx_node_new(g, "drive-a", iot_ctx, NULL, NULL);
    ok(dup == NULL, "a second node named \"drive-a\" -> NULL");
    like(aioctx_last_error(), "drive-a", "the message names the node: '%s'", aioctx_last_error());
    ok(aioctx_graph_find(g, "drive-a") == a, "the first \"drive-a\" is untouched");

    ok(aioctx_node_new(g, "", main_ctx, NULL, NULL) == NULL, "an empty name -> NULL");
    ok(aioctx_last_error()[0] != '\0', "  with a message: '%s'", aioctx_last_error());
    ok(aioctx_node_new(g, NULL, main_ctx, NULL, NULL) == NULL, "a NULL name -> NULL");
    ok(aioctx_last_error()[0] != '\0', "  with a message: '%s'", aioctx_last_error());
    ok(aioctx_node_new(g, "drive-x", NULL, NULL, NULL) == NULL, "a NULL context -> NULL");
    ok(aioctx_node_new(NULL, "drive-x", main_ctx, NULL, NULL) == NULL, "a NULL graph -> NULL");
    ok(aioctx_graph_find(g, "drive-x") == NULL, "none of the refused nodes was added");

    AioctxNode *b = aioctx_node_new(g, "drive-b", iot_ctx, NULL, NULL);
    ok(b != NULL && b != a, "node_new(\"drive-b\", IOThread context)");
    ok(aioctx_node_context(b) == iot_ctx, "its context is the IOThread's");

    ok(aioctx_graph_find(g, "drive-a") == a, "graph_find(\"drive-a\")");
    ok(aioctx_graph_find(g, "drive-b") == b, "graph_find(\"drive-b\")");
    ok(aioctx_graph_find(g, "drive-zz") == NULL, "graph_find of a missing name -> NULL");
    like(aioctx_last_error(), "drive-zz", "  the message names it: '%s'", aioctx_last_error());
    ok(aioctx_graph_find(g, NULL) == NULL, "graph_find(g, NULL) -> NULL");
    ok(aioctx_graph_find(NULL, "drive-a") == NULL, "graph_find(NULL, name) -> NULL");

    /* Names are per graph. */
    AioctxGraph *g2 = aioctx_graph_new(NULL);
    AioctxNode *a2 = aioctx_node_new(g2, "drive-a", main_ctx, NULL, NULL);
    ok(a2 != NULL && a2 != a, "another graph may have its own \"drive-a\"");
    ok(aioctx_graph_find(g2, "drive-a") == a2 && aioctx_graph_find(g, "drive-a") == a,
       "graph_find looks in its own graph");

    /* A node with no driver goes through the whole life cycle without callbacks. */
    is_int(aioctx_node_flush(a), 0, "node_flush on a NULL-driver node -> 0");
    is_int(aioctx_node_drain(a), 0, "node_drain on an idle node -> 0 at once");
    is_int(aioctx_graph_inactivate_all(g2), 0, "inactivate_all of a NULL-driver graph");
    ok(aioctx_node_is_inactive(a2), "  its node is inactive");
    is_int(aioctx_graph_activate_all(g2), 0, "activate_all of a NULL-driver graph");
    ok(!aioctx_node_is_inactive(a2), "  its node is active");

    /* graph_new(NULL) is the main context's: graph-wide calls from another
     * thread are refused (main already is the main context's home). */
    pthread_t th;
    void *ret;
    pthread_create(&th, NULL, other_thread_inactivate, g2);
    pthread_join(th, &ret);
    is_int((intptr_t)ret, -EPERM, "inactivate_all of a graph_new(NULL) graph from another thread -> -EPERM");
    ok(!aioctx_node_is_inactive(a2), "  and nothing was inactivated");

    struct rec r;
    rec_init(&r, main_thread);
    AioctxNode *c = aioctx_node_new(g2, "drive-c", iot_ctx, &rec_driver, &r);
    r.node = c;
    r.home = iot_thread;
    struct other_flush of = { c, -99, "" };
    pthread_create(&th, NULL, other_thread_flush, &of);
    pthread_join(th, NULL);
    is_int(of.rc, -EPERM, "node_flush from a thread that is not the main context's home -> -EPERM");
    ok(of.msg[0] != '\0', "  with a message: '%s'", of.msg);
    is_int(atomic_load(&r.flush), 0, "  the driver's flush did not run");

    /* A graph whose main context is the IOThread's: the main thread is not its home. */
    AioctxGraph *g3 = aioctx_graph_new(iot_ctx);
    ok(g3 != NULL, "aioctx_graph_new(IOThread context)");
    AioctxNode *d = aioctx_node_new(g3, "drive-d", iot_ctx, NULL, NULL);
    is_int(aioctx_node_drain(d), -EPERM, "graph-wide calls of that graph from the main thread -> -EPERM (drain)");
    is_int(aioctx_graph_inactivate_all(g3), -EPERM, "... (inactivate_all)");
    is_int(aioctx_graph_activate_all(g3), -EPERM, "... (activate_all)");
    ok(!aioctx_node_is_inactive(d), "  drive-d is still active");

    /* Edges across graphs are refused. */
    is_int(aioctx_node_attach_child(a, a2), -EINVAL, "attach_child across graphs -> -EINVAL");
    ok(aioctx_last_error()[0] != '\0', "  with a message: '%s'", aioctx_last_error());

    /* NULL arguments. */
    is_int(aioctx_node_attach_child(NULL, a), -EINVAL, "attach_child(NULL, child) -> -EINVAL");
    is_int(aioctx_node_attach_child(a, NULL), -EINVAL, "attach_child(parent, NULL) -> -EINVAL");
    is_int(aioctx_node_start_request(NULL, false), -EINVAL, "start_request(NULL) -> -EINVAL");
    aioctx_node_end_request(NULL);
    ok(aioctx_last_error()[0] != '\0', "end_request(NULL) is harmless and sets a message");
    is_int(aioctx_node_in_flight(NULL), -EINVAL, "in_flight(NULL) -> -EINVAL");
    ok(!aioctx_node_is_inactive(NULL), "is_inactive(NULL) -> false");
    is_int(aioctx_node_drain(NULL), -EINVAL, "drain(NULL) -> -EINVAL");
    is_int(aioctx_node_flush(NULL), -EINVAL, "flush(NULL) -> -EINVAL");
    is_int(aioctx_graph_inactivate_all(NULL), -EINVAL, "inactivate_all(NULL) -> -EINVAL");
    is_int(aioctx_graph_activate_all(NULL), -EINVAL, "activate_all(NULL) -> -EINVAL");
    ok(aioctx_node_name(NULL) == NULL, "node_name(NULL) -> NULL");
    ok(aioctx_node_context(NULL) == NULL, "node_context(NULL) -> NULL");
    aioctx_graph_free(NULL);
    ok(1, "graph_free(NULL) is a no-op");

    aioctx_graph_free(g3);
    aioctx_graph_free(g2);
    is_int(atomic_load(&r.close), 1, "freeing the graph closed drive-c once");
    aioctx_graph_free(g);
    ok(1, "graphs freed");
}

/* ---- edges and cycles ------------------------------------------------------------ */

static void test_edges(void)
{
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n[6];
    char name[32];
    for (int i = 0; i < 6; i++) {
        snprintf(name, sizeof name, "e%d", i);
        n[i] = aioctx_node_new(g, name, i % 2 ? iot_ctx : main_ctx, NULL, NULL);
    }
    ok(n[0] && n[1] && n[2] && n[3] && n[4] && n[5], "six nodes e0..e5");

    is_int(aioctx_node_attach_child(n[0], n[0]), -ELOOP, "a self-edge e0 -> e0 -> -ELOOP");
    like(aioctx_last_error(), "e0", "  the message names the node: '%s'", aioctx_last_error());

    is_int(aioctx_node_attach_child(n[0], n[1]), 0, "e0 -> e1");
    is_int(aioctx_node_attach_child(n[0], n[1]), 0, "e0 -> e1 again -> 0 (edge exists)");
    is_int(aioctx_node_attach_child(n[1], n[0]), -ELOOP, "e1 -> e0 (a 2-cycle) -> -ELOOP");
    like(aioctx_last_error(), "e1", "  the message names the child: '%s'", aioctx_last_error());
    like(aioctx_last_error(), "e0", "  ... and the parent");

    is_int(aioctx_node_attach_child(n[1], n[2]), 0, "e1 -> e2");
    is_int(aioctx_node_attach_child(n[2], n[3]), 0, "e2 -> e3");
    is_int(aioctx_node_attach_child(n[3], n[4]), 0, "e3 -> e4");
    is_int(aioctx_node_attach_child(n[4], n[0]), -ELOOP, "e4 -> e0 (a 5-cycle) -> -ELOOP");
    is_int(aioctx_node_attach_child(n[4], n[2]), -ELOOP, "e4 -> e2 (a 3-cycle) -> -ELOOP");
    is_int(aioctx_node_attach_child(n[3], n[1]), -ELOOP, "e3 -> e1 -> -ELOOP");
    is_int(aioctx_node_attach_child(n[4], n[4]), -ELOOP, "e4 -> e4 -> -ELOOP");

    /* DAG shortcuts and shared children are fine. */
    is_int(aioctx_node_attach_child(n[0], n[4]), 0, "e0 -> e4 (a shortcut, no cycle)");
    is_int(aioctx_node_attach_child(n[5], n[3]), 0, "e5 -> e3 (e3 shared by e2 and e5)");
    is_int(aioctx_node_attach_child(n[5], n[1]), 0, "e5 -> e1");
    is_int(aioctx_node_attach_child(n[4], n[5]), -ELOOP, "e4 -> e5 (e5 reaches e4 via e3) -> -ELOOP");
    is_int(aioctx_node_attach_child(n[2], n[5]), -ELOOP, "e2 -> e5 (e5 reaches e2 via e1) -> -ELOOP");

    /* The refused edges were not added: a handover still terminates. */
    is_int(aioctx_graph_inactivate_all(g), 0, "inactivate_all of the DAG");
    int all = 1;
    for (int i = 0; i < 6; i++)
        all &= aioctx_node_is_inactive(n[i]);
    ok(all, "every node inactive (no refused edge left a cycle)");
    is_int(aioctx_graph_activate_all(g), 0, "activate_all");
    aioctx_graph_free(g);
}

/* ---- drivers --------------------------------------------------------------------- */

static void test_driver_callbacks(void)
{
    AioctxGraph *g = aioctx_graph_new(NULL);
    struct rec rm, ri;
    rec_init(&rm, main_thread);
    rec_init(&ri, iot_thread);

    /* The table is copied: changing it afterwards has no effect. */
    AioctxDriver drv = rec_driver;
    AioctxNode *nm = aioctx_node_new(g, "cb-main", main_ctx, &drv, &rm);
    drv.flush = wrong_flush;
    AioctxNode *ni = aioctx_node_new(g, "cb-iot", iot_ctx, &rec_driver, &ri);
    rm.node = nm;
    ri.node = ni;
    ok(nm && ni, "nodes with a recording driver on the main and the IOThread context");
    is_int(atomic_load(&rm.flush) + atomic_load(&rm.inactivate) + atomic_load(&rm.activate) +
               atomic_load(&rm.close), 0, "no callback runs at creation");

    is_int(aioctx_node_flush(nm), 0, "node_flush on the main-context node");
    is_int(atomic_load(&rm.flush), 1, "  its flush ran once (the copied table, not the changed one)");
    is_int(aioctx_node_flush(ni), 0, "node_flush on the IOThread node");
    is_int(atomic_load(&ri.flush), 1, "  its flush ran once");

    rm.flush_rc = -EIO;
    is_int(aioctx_node_flush(nm), -EIO, "node_flush returns the driver's error (-EIO)");
    like(aioctx_last_error(), "cb-main", "  the message names the node: '%s'", aioctx_last_error());
    rm.flush_rc = 0;
    ri.flush_rc = -ENOSPC;
    is_int(aioctx_node_flush(ni), -ENOSPC, "node_flush on the IOThread node returns its error (-ENOSPC)");
    ri.flush_rc = 0;
    /* INT_MIN cannot be negated into an errno: -EIO, on either context. */
    rm.flush_rc = ri.flush_rc = INT_MIN;
    is_int(aioctx_node_flush(nm), -EIO, "a driver flush returning INT_MIN (no errno): node_flush -> -EIO");
    like(aioctx_last_error(), "not a negative errno", "  the message says why: '%s'", aioctx_last_error());
    is_int(aioctx_node_flush(ni), -EIO, "  the same on the IOThread node, which goes on running");
    rm.flush_rc = ri.flush_rc = 0;
    is_int(aioctx_node_flush(ni), 0, "  its next flush -> 0");

    /* Held once by the caller: the wait releases it so the IOThread can run flush. */
    is_int(aioctx_acquire(iot_ctx), 0, "main acquires the IOThread's context once");
    is_int(aioctx_node_flush(ni), 0, "node_flush with the node's context held once completes");
    is_int(aioctx_lock_depth(iot_ctx), 1, "  depth still 1");
    aioctx_release(iot_ctx);
    is_int(atomic_load(&ri.flush), 5, "  the IOThread node's flush ran 5 times in all");

    is_int(aioctx_graph_inactivate_all(g), 0, "inactivate_all");
    is_int(atomic_load(&rm.inactivate), 1, "main-context node: inactivate ran once");
    is_int(atomic_load(&ri.inactivate), 1, "IOThread node: inactivate ran once");
    is_int(atomic_load(&rm.flush), 4, "  main-context node flushed by inactivate_all");
    is_int(atomic_load(&ri.flush), 6, "  IOThread node flushed by inactivate_all");
    is_int(aioctx_graph_activate_all(g), 0, "activate_all");
    is_int(atomic_load(&rm.activate), 1, "main-context node: activate ran once");
    is_int(atomic_load(&ri.activate), 1, "IOThread node: activate ran once");

    /* A driver with only some callbacks: the others succeed doing nothing. */
    struct rec rp;
    rec_init(&rp, iot_thread);
    AioctxDriver partial = { NULL, rec_inactivate, NULL, NULL };
    AioctxNode *np = aioctx_node_new(g, "cb-partial", iot_ctx, &partial, &rp);
    rp.node = np;
    is_int(aioctx_node_flush(np), 0, "a driver without flush: node_flush -> 0");
    is_int(aioctx_graph_inactivate_all(g), 0, "inactivate_all with a partial driver");
    is_int(atomic_load(&rp.inactivate), 1, "  its inactivate ran");
    is_int(aioctx_graph_activate_all(g), 0, "activate_all with a partial driver (no activate callback)");
    ok(!aioctx_node_is_inactive(np), "  the node is active again");

    aioctx_graph_free(g);
    is_int(atomic_load(&rm.close), 1, "graph_free: main-context node closed once");
    is_int(atomic_load(&ri.close), 1, "graph_free: IOThread node closed once");
    is_int(atomic_load(&rp.close), 0, "graph_free: no close callback, nothing called");
    is_int(atomic_load(&rm.close_bad_thread) + atomic_load(&ri.close_bad_thread), 0,
           "close ran in the thread that freed the graph");
    is_int(atomic_load(&rm.close_bad_depth) + atomic_load(&ri.close_bad_depth), 0,
           "close ran with the node's context held");
    rec_no_misuse(&rm, "main-context node");
    rec_no_misuse(&ri, "IOThread node");
    rec_no_misuse(&rp, "partial driver");
}

#define NCLOSE 12

static void test_free_closes_once(void)
{
    AioctxGraph *g = aioctx_graph_new(NULL);
    static struct rec r[NCLOSE];
    atomic_int total = 0;
    AioctxNode *n[NCLOSE];
    char name[32];
    for (int i = 0; i < NCLOSE; i++) {
        rec_init(&r[i], i % 3 ? iot_thread : main_thread);
        r[i].close_total = &total;
        snprintf(name, sizeof name, "close-%d", i);
        n[i] = aioctx_node_new(g, name, i % 3 ? iot_ctx : main_ctx, &rec_driver, &r[i]);
        r[i].node = n[i];
    }
    /* A NULL-driver node and edges, including a shared child. */
    AioctxNode *plain = aioctx_node_new(g, "close-plain", iot_ctx, NULL, NULL);
    for (int i = 1; i < NCLOSE; i++)
        aioctx_node_attach_child(n[i - 1], n[i]);
    aioctx_node_attach_child(n[0], n[NCLOSE - 1]);
    aioctx_node_attach_child(plain, n[5]);
    is_int(atomic_load(&total), 0, "no close before graph_free");
    aioctx_graph_free(g);
    is_int(atomic_load(&total), NCLOSE, "graph_free closed %d driver nodes", NCLOSE);
    int once = 1, bad = 0;
    for (int i = 0; i < NCLOSE; i++) {
        once &= atomic_load(&r[i].close) == 1;
        bad += atomic_load(&r[i].bad_opaque) + atomic_load(&r[i].bad_node) +
               atomic_load(&r[i].close_bad_thread) + atomic_load(&r[i].close_bad_depth);
    }
    ok(once, "each node exactly once (shared children too)");
    is_int(bad, 0, "each close with its opaque pointer and node, in the freeing thread, context held");

    /* The IOThread is unaffected. */
    atomic_int ran = 0;
    aioctx_bh_schedule_oneshot(iot_ctx, inc_cb, &ran);
    is_int(wait_count(iot_ctx, &ran, 1), 0, "the IOThread still runs BHs after graph_free");
}

/* ---- requests ------------------------------------------------------------------------ */

static bool has_in_flight(void *opaque)
{
    return aioctx_node_in_flight(opaque) > 0;
}

static void test_requests(void)
{
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *nm = aioctx_node_new(g, "rq-main", main_ctx, NULL, NULL);
    AioctxNode *ni = aioctx_node_new(g, "rq-iot", iot_ctx, NULL, NULL);

    is_int(aioctx_node_start_request(nm, true), 0, "start_request(write) on an active node");
    is_int(aioctx_node_start_request(nm, false), 0, "start_request(read) on an active node");
    is_int(aioctx_node_in_flight(nm), 2, "in_flight 2");
    aioctx_node_end_request(nm);
    aioctx_node_end_request(nm);
    is_int(aioctx_node_in_flight(nm), 0, "in_flight 0 after two end_request");
    aioctx_node_end_request(nm);
    ok(aioctx_last_error()[0] != '\0', "end_request without a request sets a message: '%s'",
       aioctx_last_error());
    is_int(aioctx_node_in_flight(nm), 0, "  and changes nothing (in_flight still 0)");

    /* Inactive: writes refused, reads allowed. */
    is_int(aioctx_graph_inactivate_all(g), 0, "inactivate_all");
    ok(aioctx_node_is_inactive(nm) && aioctx_node_is_inactive(ni), "both nodes inactive");
    is_int(aioctx_node_start_request(nm, true), -EPERM, "start_request(write) on an inactive node -> -EPERM");
    like(aioctx_last_error(), "rq-main", "  the message names the node: '%s'", aioctx_last_error());
    is_int(aioctx_node_in_flight(nm), 0, "  nothing counted");
    is_int(aioctx_node_start_request(ni, true), -EPERM, "start_request(write) on the inactive IOThread node -> -EPERM");
    is_int(aioctx_node_start_request(nm, false), 0, "start_request(read) on an inactive node -> 0");
    is_int(aioctx_node_in_flight(nm), 1, "  counted");
    aioctx_node_end_request(nm);
    is_int(aioctx_graph_activate_all(g), 0, "activate_all");
    is_int(aioctx_node_start_request(ni, true), 0, "start_request(write) accepted again");
    aioctx_node_end_request(ni);

    /* end_request from another thread wakes a waiter (a timeout, not the watchdog, on a lost kick). */
    for (int k = 0; k < 2; k++) {
        AioctxNode *n = k ? ni : nm;
        AioctxContext *c = k ? iot_ctx : main_ctx;
        aioctx_node_start_request(n, true);
        struct ender e = { { n }, 1, 20, 0 };
        pthread_t th;
        pthread_create(&th, NULL, ender_thread, &e);
        int rc = aioctx_poll_while(c, has_in_flight, n, long_timeout(), 0);
        int64_t woke = tap_now_ns();
        pthread_join(th, NULL);
        is_int(rc, 0, "%s: poll_while(in_flight > 0) ends when another thread calls end_request",
               k ? "IOThread node" : "main node");
        ok(woke - e.last_end_ns < 1 * SEC * tap_scale(), "  promptly (%lld us after the end)",
           (long long)((woke - e.last_end_ns) / 1000));
    }

    /* drain waits for in-flight 0, requests ended by another thread after delays. */
    for (int k = 0; k < 2; k++) {
        AioctxNode *n = k ? ni : nm;
        for (int i = 0; i < 3; i++)
            aioctx_node_start_request(n, i != 1);
        struct ender e = { { n, n, n }, 3, 25, 0 };
        pthread_t th;
        int64_t t0 = tap_now_ns();
        pthread_create(&th, NULL, ender_thread, &e);
        int rc = aioctx_node_drain(n);
        int64_t t1 = tap_now_ns();
        int64_t in_flight = aioctx_node_in_flight(n);
        pthread_join(th, NULL);
        is_int(rc, 0, "%s: drain with 3 requests ended by another thread -> 0", k ? "IOThread node" : "main node");
        is_int(in_flight, 0, "  in_flight 0 when drain returned");
        ok(t1 - t0 >= 70 * MS, "  drain waited for the last end (%lld ms)", (long long)((t1 - t0) / MS));
        ok(t1 - e.last_end_ns < 1 * SEC * tap_scale(), "  and returned promptly after it (%lld us)",
           (long long)((t1 - e.last_end_ns) / 1000));
    }

    /* drain with the node's IOThread context held once: completes. */
    is_int(aioctx_acquire(iot_ctx), 0, "main acquires the IOThread context once");
    aioctx_node_start_request(ni, true);
    aioctx_node_start_request(ni, true);
    {
        struct ender e = { { ni, ni }, 2, 20, 0 };
        pthread_t th;
        pthread_create(&th, NULL, ender_thread, &e);
        is_int(aioctx_node_drain(ni), 0, "drain with the node's context held once completes");
        pthread_join(th, NULL);
    }
    is_int(aioctx_node_in_flight(ni), 0, "  in_flight 0");
    is_int(aioctx_lock_depth(iot_ctx), 1, "  depth still 1");

    /* ... held twice: -EDEADLK at once, depth unchanged. */
    is_int(aioctx_acquire(iot_ctx), 0, "main acquires it a second time (two drives on one IOThread)");
    aioctx_node_start_request(ni, false);
    int64_t t0 = tap_now_ns();
    int rc = aioctx_node_drain(ni);
    int64_t dt = tap_now_ns() - t0;
    is_int(rc, -EDEADLK, "drain with the node's context held twice -> -EDEADLK");
    ok(dt < 500 * MS * tap_scale(), "  at once (%lld us)", (long long)(dt / 1000));
    const char *name = aioctx_context_name(iot_ctx);
    like(aioctx_last_error(), name, "  the message names the context: '%s'", aioctx_last_error());
    is_int(aioctx_lock_depth(iot_ctx), 2, "  depth still 2");
    is_int(aioctx_node_in_flight(ni), 1, "  the request is still in flight");
    t0 = tap_now_ns();
    rc = aioctx_node_flush(ni);
    dt = tap_now_ns() - t0;
    is_int(rc, -EDEADLK, "flush with the node's context held twice -> -EDEADLK");
    ok(dt < 500 * MS * tap_scale(), "  at once (%lld us)", (long long)(dt / 1000));
    is_int(aioctx_lock_depth(iot_ctx), 2, "  depth still 2");
    aioctx_release(iot_ctx);
    aioctx_release(iot_ctx);
    is_int(aioctx_lock_depth(iot_ctx), 0, "released twice: depth 0");
    aioctx_node_end_request(ni);
    is_int(aioctx_node_drain(ni), 0, "drain after releasing -> 0");

    aioctx_graph_free(g);
}

/* Driver callbacks of a node on an IOThread run there with the context held,
 * also during a flush with the context held by the caller. */
static void test_home_thread(void)
{
    AioctxGraph *g = aioctx_graph_new(NULL);
    struct rec r;
    rec_init(&r, iot_thread);
    AioctxNode *n = aioctx_node_new(g, "home-iot", iot_ctx, &rec_driver, &r);
    r.node = n;
    for (int i = 0; i < 20; i++) {
        aioctx_node_flush(n);
        aioctx_graph_inactivate_all(g);
        aioctx_graph_activate_all(g);
    }
    is_int(atomic_load(&r.flush), 40, "20 rounds: 40 flushes");
    is_int(atomic_load(&r.inactivate), 20, "20 inactivates");
    is_int(atomic_load(&r.activate), 20, "20 activates");
    is_int(atomic_load(&r.bad_thread), 0, "every flush/inactivate/activate ran in the IOThread");
    is_int(atomic_load(&r.bad_depth), 0, "with aioctx_lock_depth(aioctx_node_context(node)) >= 1");
    is_int(aioctx_lock_depth(iot_ctx), 0, "main holds nothing afterwards");
    aioctx_graph_free(g);
}

/* Nodes keep their context alive; a context with no home is run by the caller. */
static void test_context_lifetime(void)
{
    AioctxContext *c = aioctx_context_new("graph-short-lived");
    AioctxGraph *g = aioctx_graph_new(NULL);
    struct rec r;
    rec_init(&r, main_thread);
    AioctxNode *n = aioctx_node_new(g, "lifetime", c, &rec_driver, &r);
    r.node = n;
    aioctx_context_unref(c);
    ok(n != NULL && aioctx_node_context(n) == c, "the node's context after the caller dropped its reference");
    is_str(aioctx_context_name(aioctx_node_context(n)), "graph-short-lived", "  still valid (the node holds one)");
    int64_t t0 = tap_now_ns();
    is_int(aioctx_node_flush(n), 0, "node_flush on a node whose context has no home yet -> 0 (no hang)");
    ok(tap_now_ns() - t0 < 2 * SEC * tap_scale(), "  promptly");
    is_int(atomic_load(&r.flush), 1, "  the flush ran once");
    is_int(aioctx_graph_inactivate_all(g), 0, "inactivate_all -> 0");
    is_int(aioctx_graph_activate_all(g), 0, "activate_all -> 0");
    is_int(aioctx_lock_depth(c), 0, "the caller holds nothing afterwards");
    aioctx_graph_free(g);
    is_int(atomic_load(&r.close), 1, "closed once (then the context went with the graph)");
    is_int(atomic_load(&r.bad_opaque) + atomic_load(&r.bad_node) + atomic_load(&r.bad_depth), 0,
           "callbacks with opaque, node, context held");
}

/* A close callback that adds a node to the graph being freed: refused
 * (-ENODEV), since no close would ever run for it. */
struct adder {
    AioctxGraph *g;
    AioctxNode *added;
    int err, closes;
};

static void adding_close(AioctxNode *node, void *opaque)
{
    (void)node;
    struct adder *a = opaque;
    a->closes++;
    a->added = aioctx_node_new(a->g, "added-in-close", main_ctx, NULL, NULL);
    a->err = aioctx_last_errno();
}

static void test_add_from_close(void)
{
    struct adder a = { aioctx_graph_new(NULL), NULL, 0, 0 };
    AioctxDriver drv = { NULL, NULL, NULL, adding_close };
    ok(aioctx_node_new(a.g, "adder", main_ctx, &drv, &a) != NULL, "a node whose close adds a node");
    aioctx_graph_free(a.g);
    is_int(a.closes, 1, "graph_free closed it once");
    ok(a.added == NULL, "  node_new from its close -> NULL");
    is_int(a.err, -ENODEV, "  with -ENODEV (the graph is being freed)");
}

int main(void)
{
    tap_watchdog(30);
    main_thread = pthread_self();
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main claims the main context");
    iot = aioctx_iothread_new("graph-iot");
    if (!ok(iot != NULL, "iothread_new(\"graph-iot\")"))
        return done_testing();
    iot_ctx = aioctx_iothread_context(iot);
    is_int(learn_thread(iot_ctx, &iot_thread), 0, "learned the IOThread's pthread_t from a BH");

    test_graph_and_names();
    test_edges();
    test_driver_callbacks();
    test_free_closes_once();
    test_add_from_close();
    test_requests();
    test_home_thread();
    test_context_lifetime();

    is_int(aioctx_iothread_free(iot), 0, "iothread_free");
    return done_testing();
}
