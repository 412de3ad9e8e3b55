/*
 * test-drain: drained sections (QEMU's bdrv_drained_begin/end).
 *
 * A drain ends while every completion submits the next write, and the
 * writes submitted meanwhile run after it; requests submitted in a section
 * are queued (not in flight) and start in submission order after the last
 * end; sections nest; an end without a begin is -EINVAL;
 * aioctx_node_start_request in a section gives -EBUSY on the main loop
 * thread and waits on a plain thread; drain, drained_begin/end and flush
 * work from a BH on the node's IOThread (a C-driver node and a raw-file
 * node); drain_all from the main loop holds every node, and nodes added
 * during it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define BLK 512
#define IMG_SIZE (1024 * 1024)

static AioctxContext *main_ctx;
static AioctxIoThread *iot;
static AioctxContext *iot_ctx;
static pthread_t iot_thread;
static char dir[64];
static char img[3][128];

/* Polls the main loop for about ms milliseconds (it must stay responsive). */
static void poll_for_ms(int ms)
{
    int64_t end = tap_now_ns() + ms * MS;
    while (tap_now_ns() < end) {
        aioctx_poll(main_ctx, false);
        tap_sleep_ms(1);
    }
}

/* ---- a drain while completions resubmit ------------------------------------------------ */

struct chain {
    AioctxNode *node;
    unsigned char buf[BLK];
    atomic_int *done;
    atomic_int *stop;
};

static void chain_cb(void *opaque, int64_t ret)
{
    struct chain *c = opaque;
    (void)ret;
    atomic_fetch_add(c->done, 1);
    if (!atomic_load(c->stop))
        aioctx_node_pwrite(c->node, c->buf, BLK, 0, chain_cb, c);
}

static void drain_while_resubmitting(AioctxContext *ctx, const char *where)
{
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(g, "resubmit", ctx, img[0], AIOCTX_OPEN_RDWR);
    if (!ok(n != NULL, "%s: open_file %s", where, n ? "" : aioctx_last_error()))
        return;
    atomic_int done = 0, stop = 0;
    struct chain chains[4];
    for (int i = 0; i < 4; i++) {
        chains[i] = (struct chain){ .node = n, .done = &done, .stop = &stop };
        memset(chains[i].buf, 'a' + i, BLK);
        aioctx_node_pwrite(n, chains[i].buf, BLK, 0, chain_cb, &chains[i]);
    }
    is_int(wait_count(main_ctx, &done, 200), 0, "%s: 4 chains of writes, each completion submits the next", where);

    /* Before drains quiesced, this never returned (317k writes in 5 s). */
    is_int(aioctx_node_drain(n), 0, "%s: drain returns while completions resubmit", where);
    int at_drain = atomic_load(&done);
    is_int(wait_count(main_ctx, &done, at_drain + 200), 0,
           "%s: the writes submitted during the drain ran after it", where);

    is_int(aioctx_node_drained_begin(n), 0, "%s: drained_begin returns too", where);
    int in_section = atomic_load(&done);
    is_int(aioctx_node_in_flight(n), 0, "  nothing in flight in the section");
    poll_for_ms(20);
    is_int(atomic_load(&done), in_section, "  and nothing completes in it");
    is_int(aioctx_node_drained_end(n), 0, "%s: drained_end", where);
    is_int(wait_count(main_ctx, &done, in_section + 4), 0, "  the 4 queued writes started after it");

    atomic_store(&stop, 1);
    /* The second drain waits for writes queued by completions that had
     * already read stop == 0; none resubmits after that. */
    is_int(aioctx_node_drain(n), 0, "%s: stop the chains, drain", where);
    is_int(aioctx_node_drain(n), 0, "  and again");
    is_int(aioctx_node_in_flight(n), 0, "  nothing left in flight");
    aioctx_graph_free(g);
}

static void test_resubmit(void)
{
    diag("drain while every completion resubmits");
    drain_while_resubmitting(iot_ctx, "IOThread node");
    drain_while_resubmitting(main_ctx, "main-loop node");
}

/* ---- queueing, order, nesting, unmatched ends ------------------------------------------ */

struct ordered {
    atomic_int done;
    int order[8];
    unsigned char buf[8][BLK];
};

struct ordered_req {
    struct ordered *o;
    int seq;
};

static void ordered_cb(void *opaque, int64_t ret)
{
    struct ordered_req *r = opaque;
    int slot = atomic_fetch_add(&r->o->done, 1);
    r->o->order[slot] = ret == BLK ? r->seq : -1;
}

static void test_queue_order_nesting(void)
{
    diag("queued requests, their order, nesting, unmatched ends");
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(g, "queued", iot_ctx, img[1], AIOCTX_OPEN_RDWR);
    if (!ok(n != NULL, "open_file %s", n ? "" : aioctx_last_error()))
        return;
    static struct ordered o;
    struct ordered_req reqs[8];
    memset(&o, 0, sizeof o);

    is_int(aioctx_node_drained_begin(n), 0, "drained_begin");
    is_int(aioctx_node_drained_begin(n), 0, "drained_begin again (nested)");
    for (int i = 0; i < 8; i++) {
        reqs[i] = (struct ordered_req){ &o, i + 1 };
        memset(o.buf[i], i + 1, BLK);
        is_int(aioctx_node_pwrite(n, o.buf[i], BLK, 0, ordered_cb, &reqs[i]), 0,
               "pwrite %d in the section: accepted", i + 1);
    }
    is_int(aioctx_node_in_flight(n), 0, "queued writes are not in flight");
    poll_for_ms(20);
    is_int(atomic_load(&o.done), 0, "no queued write ran");
    is_int(aioctx_node_drained_end(n), 0, "inner drained_end");
    poll_for_ms(20);
    is_int(atomic_load(&o.done), 0, "still queued: the outer section is open");
    is_int(aioctx_node_drained_end(n), 0, "outer drained_end");
    is_int(wait_count(main_ctx, &o.done, 8), 0, "the 8 writes ran after the last end");
    int in_order = 1;
    for (int i = 0; i < 8; i++)
        in_order &= o.order[i] == i + 1;
    ok(in_order, "they completed in submission order (%d %d ... %d)", o.order[0], o.order[1], o.order[7]);
    ok(file_has(img[1], 0, o.buf[7], BLK), "the image holds the last write's data");

    is_int(aioctx_node_drained_end(n), -EINVAL, "drained_end without a section -> -EINVAL");
    like(aioctx_last_error(), "'queued'", "  naming the node");
    is_int(aioctx_node_drained_end(NULL), -EINVAL, "drained_end(NULL) -> -EINVAL");
    is_int(aioctx_node_drained_begin(NULL), -EINVAL, "drained_begin(NULL) -> -EINVAL");
    is_int(aioctx_graph_drain_all_end(g), -EINVAL, "drain_all_end without drain_all_begin -> -EINVAL");
    is_int(aioctx_graph_drain_all_begin(NULL), -EINVAL, "drain_all_begin(NULL) -> -EINVAL");
    is_int(aioctx_graph_drain_all_end(NULL), -EINVAL, "drain_all_end(NULL) -> -EINVAL");
    aioctx_graph_free(g);
}

/* ---- submitters racing with drains ------------------------------------------------------ */

#define RACE_THREADS 2
#define RACE_WRITES 10000

struct racer {
    AioctxNode *node;
    int id;
    atomic_int *calls;          /* per write: how many times its callback ran */
    atomic_int *done;
    atomic_int errors;
    unsigned char buf[BLK];
};

static atomic_int race_completions;

static void race_cb(void *opaque, int64_t ret)
{
    atomic_int *slot = opaque;
    atomic_fetch_add(slot, ret == BLK ? 1 : 1000);
    atomic_fetch_add(&race_completions, 1);
}

static void *racer_thread(void *arg)
{
    struct racer *r = arg;
    for (int i = 0; i < RACE_WRITES; i++) {
        atomic_int *slot = &r->calls[r->id * RACE_WRITES + i];
        uint64_t off = (uint64_t)(r->id * RACE_WRITES + i) % (IMG_SIZE / BLK) * BLK;
        if (aioctx_node_pwrite(r->node, r->buf, BLK, off, race_cb, slot) != 0)
            atomic_fetch_add(&r->errors, 1);
        /* Spread over ~150 ms, so the drains interleave with them. */
        if (i % 64 == 0)
            tap_sleep_ms(1);
        /* The counting API from a plain thread: waits out a section. */
        if (i % 16 == 0) {
            if (aioctx_node_start_request(r->node, false) == 0)
                aioctx_node_end_request(r->node);
            else
                atomic_fetch_add(&r->errors, 1);
        }
    }
    return NULL;
}

static bool race_pending(void *opaque)
{
    atomic_int *calls = opaque;
    for (int i = 0; i < RACE_THREADS * RACE_WRITES; i++)
        if (atomic_load(&calls[i]) == 0)
            return true;
    return false;
}

static void test_race(void)
{
    diag("%d plain threads submit while the main loop drains over and over", RACE_THREADS);
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(g, "race", iot_ctx, img[0], AIOCTX_OPEN_RDWR);
    if (!ok(n != NULL, "open_file %s", n ? "" : aioctx_last_error()))
        return;
    static atomic_int calls[RACE_THREADS * RACE_WRITES];
    static struct racer racers[RACE_THREADS];
    pthread_t th[RACE_THREADS];
    for (int i = 0; i < RACE_THREADS * RACE_WRITES; i++)
        atomic_store(&calls[i], 0);
    for (int t = 0; t < RACE_THREADS; t++) {
        racers[t] = (struct racer){ .node = n, .id = t, .calls = calls };
        memset(racers[t].buf, t + 1, BLK);
        pthread_create(&th[t], NULL, racer_thread, &racers[t]);
    }
    int drains = 0, failed = 0, busy_in_section = 0, ran_in_section = 0;
    while (race_pending(calls) && drains < 100000) {
        failed += aioctx_node_drained_begin(n) != 0;
        /* Every completion ran before drained_begin returned, and no request
         * starts until drained_end: nothing may complete in between. (The
         * in-flight count may show a request being turned away for a moment.) */
        int before = atomic_load(&race_completions);
        busy_in_section += aioctx_node_start_request(n, false) == -EBUSY;
        if (drains % 64 == 0)
            poll_for_ms(1);
        ran_in_section += atomic_load(&race_completions) != before;
        failed += aioctx_node_drained_end(n) != 0;
        failed += aioctx_node_drain(n) != 0;
        drains++;
        aioctx_poll(main_ctx, false);
        if (drains % 64 == 0)
            tap_sleep_ms(1);
    }
    for (int t = 0; t < RACE_THREADS; t++)
        pthread_join(th[t], NULL);
    is_int(aioctx_poll_while(main_ctx, race_pending, calls, long_timeout(), 0), 0,
           "every write completed (%d drained sections meanwhile)", drains);
    is_int(failed, 0, "every drained_begin, drained_end and drain returned 0");
    is_int(ran_in_section, 0, "no request completed inside a drained section");
    is_int(busy_in_section, drains, "start_request on the main loop in each section -> -EBUSY");
    int wrong = 0;
    for (int i = 0; i < RACE_THREADS * RACE_WRITES; i++)
        wrong += atomic_load(&calls[i]) != 1;
    is_int(wrong, 0, "each callback ran exactly once, with all its bytes");
    is_int(atomic_load(&racers[0].errors) + atomic_load(&racers[1].errors), 0,
           "no submission or counted request was refused");
    is_int(aioctx_node_drain(n), 0, "final drain");
    is_int(aioctx_node_in_flight(n), 0, "nothing in flight");
    aioctx_graph_free(g);
}

/* ---- the counting API in a section ------------------------------------------------------ */

struct starter {
    AioctxNode *node;
    atomic_int returned;
    int rc;
};

static void *starter_thread(void *arg)
{
    struct starter *s = arg;
    s->rc = aioctx_node_start_request(s->node, true);
    atomic_store(&s->returned, 1);
    return NULL;
}

static void test_start_request(void)
{
    diag("aioctx_node_start_request in a drained section");
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_new(g, "counted", iot_ctx, NULL, NULL);
    is_int(aioctx_node_drained_begin(n), 0, "drained_begin");
    is_int(aioctx_node_start_request(n, false), -EBUSY, "start_request from the main loop thread -> -EBUSY");
    like(aioctx_last_error(), "drained section", "  saying why: '%s'", aioctx_last_error());
    is_int(aioctx_node_in_flight(n), 0, "  not counted");
    char byte;
    is_int(aioctx_node_pread(n, &byte, 1, 0, NULL, NULL), -ENOTSUP,
           "pread on a node without I/O in a section -> -ENOTSUP at once, not queued");

    struct starter s = { .node = n };
    pthread_t th;
    pthread_create(&th, NULL, starter_thread, &s);
    tap_sleep_ms(50);
    ok(!atomic_load(&s.returned), "start_request from a plain thread waits for the section to end");
    is_int(aioctx_node_drained_end(n), 0, "drained_end");
    pthread_join(th, NULL);
    is_int(s.rc, 0, "  then the plain thread's request starts");
    is_int(aioctx_node_in_flight(n), 1, "  and is counted");
    aioctx_node_end_request(n);
    aioctx_graph_free(g);

    /* The graph freed while a plain thread waits in start_request. */
    g = aioctx_graph_new(NULL);
    n = aioctx_node_new(g, "counted-freed", iot_ctx, NULL, NULL);
    is_int(aioctx_node_drained_begin(n), 0, "drained_begin, never ended");
    struct starter f = { .node = n };
    pthread_create(&th, NULL, starter_thread, &f);
    tap_sleep_ms(50);
    ok(!atomic_load(&f.returned), "a plain thread waits in start_request");
    aioctx_graph_free(g);
    pthread_join(th, NULL);
    is_int(f.rc, -ENODEV, "graph_free ends its wait: -ENODEV");
}

/* ---- drain and flush from the node's IOThread -------------------------------------------- */

struct flush_rec {
    atomic_int flushes;
    pthread_t thread;
};

static int rec_flush(AioctxNode *node, void *opaque)
{
    struct flush_rec *r = opaque;
    (void)node;
    r->thread = pthread_self();
    atomic_fetch_add(&r->flushes, 1);
    return 0;
}

struct home_calls {
    AioctxNode *node;
    AioctxNode *foreign;        /* a node on the main context */
    struct io_wait *io;         /* raw-file: the write submitted before */
    atomic_int done;
    int drain, in_flight_after, io_done_at_drain, begin, end, flush, foreign_drain;
    int depth;
};

static void home_bh(void *opaque)
{
    struct home_calls *h = opaque;
    h->depth = aioctx_lock_depth(iot_ctx);
    h->drain = aioctx_node_drain(h->node);
    h->in_flight_after = (int)aioctx_node_in_flight(h->node);
    h->io_done_at_drain = h->io ? atomic_load(&h->io->done) : -1;
    h->begin = aioctx_node_drained_begin(h->node);
    h->end = aioctx_node_drained_end(h->node);
    h->flush = aioctx_node_flush(h->node);
    h->foreign_drain = aioctx_node_drain(h->foreign);
    atomic_store(&h->done, 1);
}

static void check_home_calls(struct home_calls *h, const char *what)
{
    is_int(wait_count(main_ctx, &h->done, 1), 0, "%s: the IOThread ran the BH", what);
    is_int(h->depth, 1, "  (which holds its context once)");
    is_int(h->drain, 0, "%s: aioctx_node_drain from the IOThread -> 0", what);
    is_int(h->in_flight_after, 0, "  nothing in flight after it");
    is_int(h->begin, 0, "%s: drained_begin from the IOThread -> 0", what);
    is_int(h->end, 0, "%s: drained_end from the IOThread -> 0", what);
    is_int(h->flush, 0, "%s: aioctx_node_flush from the IOThread -> 0", what);
    is_int(h->foreign_drain, -EPERM, "%s: draining a main-loop node from the IOThread -> -EPERM", what);
}

struct in_cb {
    AioctxNode *node;
    atomic_int *ran;
    int drain, flush;
};

static void drain_in_cb(void *opaque, int64_t ret)
{
    struct in_cb *c = opaque;
    (void)ret;
    c->drain = aioctx_node_drain(c->node);
    c->flush = aioctx_node_flush(c->node);
    atomic_fetch_add(c->ran, 1);
}

static void sleep_50ms(void *opaque)
{
    atomic_store((atomic_int *)opaque, 1);
    tap_sleep_ms(50);
}

static void test_from_iothread(void)
{
    diag("drain and flush from a BH on the node's IOThread");
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *foreign = aioctx_node_new(g, "on-main", main_ctx, NULL, NULL);

    struct flush_rec fr = { 0 };
    AioctxDriver drv = { .flush = rec_flush };
    AioctxNode *c = aioctx_node_new(g, "c-driver", iot_ctx, &drv, &fr);
    is_int(aioctx_node_start_request(c, false), 0, "C-driver node: a request in flight");
    struct ender e = { .nodes = { c }, .n = 1, .delay_ms = 50 };
    pthread_t th;
    pthread_create(&th, NULL, ender_thread, &e);
    struct home_calls h = { .node = c, .foreign = foreign };
    aioctx_bh_schedule_oneshot(iot_ctx, home_bh, &h);
    check_home_calls(&h, "C-driver node");
    pthread_join(th, NULL);
    is_int(atomic_load(&fr.flushes), 1, "  the driver's flush ran once");
    ok(pthread_equal(fr.thread, iot_thread), "  in the IOThread");
    is_int(aioctx_node_flush(c), 0, "flush from the main loop thread still works");
    ok(pthread_equal(fr.thread, iot_thread), "  and runs in the IOThread");
    is_int(aioctx_node_drain(c), 0, "drain from the main loop thread still works");

    AioctxNode *f = aioctx_node_open_file(g, "raw", iot_ctx, img[2], AIOCTX_OPEN_RDWR);
    if (!ok(f != NULL, "raw-file node: open_file %s", f ? "" : aioctx_last_error()))
        return;
    static unsigned char buf[BLK];
    memset(buf, 0x5a, BLK);
    struct io_wait io = { 0 };
    struct home_calls hf = { .node = f, .foreign = foreign, .io = &io };
    /* The IOThread sleeps while the write completes, so its next poll takes
     * the draining BH and the completion behind it together: the drain's
     * own polls must run that completion. */
    atomic_int sleeping = 0;
    aioctx_bh_schedule_oneshot(iot_ctx, sleep_50ms, &sleeping);
    wait_at_least(&sleeping, 1, 5 * SEC);
    aioctx_bh_schedule_oneshot(iot_ctx, home_bh, &hf);
    is_int(aioctx_node_pwrite(f, buf, BLK, BLK, io_wait_cb, &io), 0, "raw-file node: a write submitted");
    check_home_calls(&hf, "raw-file node");
    is_int(hf.io_done_at_drain, 1, "  the write's completion had run when the drain returned");
    is_int((int)atomic_load(&io.ret), BLK, "  and wrote %d bytes", BLK);
    ok(file_has(img[2], BLK, buf, BLK), "  the data is in the image");
    is_int(aioctx_node_flush(f), 0, "raw-file flush from the main loop thread still works");

    /* From completion callbacks: writes queued together complete in one BH,
     * and a drain in one must not wait for those behind it. */
    static struct in_cb cbs[16];
    atomic_int ran = 0;
    for (int i = 0; i < 16; i++) {
        cbs[i] = (struct in_cb){ .node = f, .ran = &ran, .drain = -99, .flush = -99 };
        aioctx_node_pwrite(f, buf, BLK, (uint64_t)i * BLK, drain_in_cb, &cbs[i]);
    }
    is_int(wait_count(main_ctx, &ran, 16), 0, "16 completions each drained and flushed their node");
    int all_ok = 1;
    for (int i = 0; i < 16; i++)
        all_ok &= cbs[i].drain == 0 && cbs[i].flush == 0;
    ok(all_ok, "  every drain and flush returned 0 (first: %d, %d)", cbs[0].drain, cbs[0].flush);
    aioctx_graph_free(g);
}

/* ---- drain_all from the main loop ----------------------------------------------------- */

static void *drain_all_elsewhere(void *arg)
{
    return (void *)(intptr_t)aioctx_graph_drain_all_begin(arg);
}

static void test_drain_all(void)
{
    diag("drain_all from the main loop");
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *a = aioctx_node_new(g, "all-main", main_ctx, NULL, NULL);
    AioctxNode *b = aioctx_node_new(g, "all-io", iot_ctx, NULL, NULL);
    AioctxNode *f = aioctx_node_open_file(g, "all-raw", iot_ctx, img[0], AIOCTX_OPEN_RDWR);
    if (!ok(f != NULL, "open_file %s", f ? "" : aioctx_last_error()))
        return;
    aioctx_node_start_request(a, false);
    aioctx_node_start_request(b, true);
    aioctx_node_start_request(b, false);
    struct ender e = { .nodes = { b, a, b }, .n = 3, .delay_ms = 20 };
    pthread_t th;
    pthread_create(&th, NULL, ender_thread, &e);
    int64_t t0 = tap_now_ns();
    is_int(aioctx_graph_drain_all_begin(g), 0, "drain_all_begin with 3 requests ended by another thread");
    int64_t t1 = tap_now_ns();
    pthread_join(th, NULL);
    ok(t1 >= e.last_end_ns, "  returned after the last end (%lld ms)", (long long)((t1 - t0) / MS));
    is_int(aioctx_node_in_flight(a) + aioctx_node_in_flight(b), 0, "  nothing in flight");

    static unsigned char buf[BLK];
    memset(buf, 0x33, BLK);
    struct io_wait w1 = { 0 }, w2 = { 0 };
    is_int(aioctx_node_pwrite(f, buf, BLK, 0, io_wait_cb, &w1), 0, "pwrite during drain_all: accepted");
    AioctxNode *late = aioctx_node_open_file(g, "all-late", main_ctx, img[1], AIOCTX_OPEN_RDWR);
    ok(late != NULL, "a node added during drain_all");
    is_int(aioctx_node_pwrite(late, buf, BLK, 0, io_wait_cb, &w2), 0, "  pwrite on it: accepted");
    is_int(aioctx_node_start_request(b, false), -EBUSY, "start_request on the main loop -> -EBUSY");
    poll_for_ms(20);
    ok(!atomic_load(&w1.done) && !atomic_load(&w2.done), "both writes wait for the end");

    pthread_t other;
    void *rc;
    pthread_create(&other, NULL, drain_all_elsewhere, g);
    pthread_join(other, &rc);
    is_int((intptr_t)rc, -EPERM, "drain_all_begin from another thread -> -EPERM");

    is_int(aioctx_graph_drain_all_end(g), 0, "drain_all_end");
    is_int(aioctx_poll_while(main_ctx, io_wait_pending, &w1, long_timeout(), 0), 0, "  the write on the IOThread node ran");
    is_int(aioctx_poll_while(main_ctx, io_wait_pending, &w2, long_timeout(), 0), 0, "  the write on the late node ran");
    is_int((int)(atomic_load(&w1.ret) + atomic_load(&w2.ret)), 2 * BLK, "  both wrote %d bytes", BLK);
    is_int(aioctx_graph_drain_all_end(g), -EINVAL, "a second drain_all_end -> -EINVAL");
    is_int(aioctx_node_start_request(b, false), 0, "requests start again");
    aioctx_node_end_request(b);
    aioctx_graph_free(g);
}

int main(void)
{
    skip_unless_backend();
    tap_watchdog(60);
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main claims the main context");
    if (!ok(make_temp_dir(dir, sizeof dir, "drain") != NULL, "mkdtemp %s", dir))
        return done_testing();
    for (int i = 0; i < 3; i++) {
        snprintf(img[i], sizeof img[i], "%s/disk%d.img", dir, i);
        ok(make_image(img[i], IMG_SIZE, 0644) == 0, "image %d created", i);
    }
    iot = aioctx_iothread_new("drain-iot");
    if (!ok(iot != NULL, "iothread_new"))
        return done_testing();
    iot_ctx = aioctx_iothread_context(iot);
    is_int(learn_thread(iot_ctx, &iot_thread), 0, "learned the IOThread's pthread_t");

    test_resubmit();
    test_queue_order_nesting();
    test_start_request();
    test_race();
    test_from_iothread();
    test_drain_all();

    is_int(aioctx_iothread_free(iot), 0, "iothread_free");
    for (int i = 0; i < 3; i++)
        unlink(img[i]);
    ok(rmdir(dir) == 0, "temporary directory removed");
    return done_testing();
}
