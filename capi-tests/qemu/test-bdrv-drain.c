/*
 * test-bdrv-drain: what QEMU's tests/unit/test-bdrv-drain.c checks in its
 * IOThread cases (/bdrv-drain/iothread/drain, .../drain_all), through
 * qemu-compat.h. A request runs on a node in IOThread A, and needs a BH in
 * IOThread B before it can complete; then it is drained:
 *
 *  - from the main loop, holding A's context once (bdrv_drained_begin), or
 *    holding nothing (bdrv_drain_all_begin);
 *  - from IOThread A itself (bdrv_drained_begin in a BH of A's context,
 *    which waits by polling that context). QEMU's drain_all is main-loop
 *    only, so that case has no IOThread variant.
 *
 * After the begin, nothing is in flight and the request's completion has
 * run; the section nests; a flush from IOThread A works inside it.
 * QEMU's subtree-drain variant is gone from QEMU (8.0) and has no aioctx
 * counterpart. The node is made with aioctx_node_new (QEMU's bdrv_test
 * driver: no aioctx equivalent) and its in-flight count read with
 * aioctx_node_in_flight (QEMU reads bs->in_flight).
 */
#define _GNU_SOURCE
#include "tap.h"
#include <aioctx/qemu-compat.h>

#include <pthread.h>
#include <stdatomic.h>

enum drain_type { BDRV_DRAIN, BDRV_DRAIN_ALL };

struct request {
    BlockDriverState *bs;
    AioContext *ctx_a, *ctx_b;
    atomic_int aio_ret; /* -EINPROGRESS until the completion ran */
};

static atomic_int flushes;

static int drv_flush(BlockDriverState *bs, void *opaque)
{
    (void)bs;
    (void)opaque;
    atomic_fetch_add(&flushes, 1);
    return 0;
}

/* The completion, in A (the node's context). */
static void complete_in_a(void *opaque)
{
    struct request *r = opaque;
    atomic_store(&r->aio_ret, 0);
    bdrv_dec_in_flight(r->bs);
}

/* QEMU's bh_indirection_ctx: the request passes through B first. */
static void indirection_in_b(void *opaque)
{
    struct request *r = opaque;
    aio_bh_schedule_oneshot(r->ctx_a, complete_in_a, r);
}

static void start_request(struct request *r)
{
    atomic_store(&r->aio_ret, -EINPROGRESS);
    bdrv_inc_in_flight(r->bs);
    aio_bh_schedule_oneshot(r->ctx_b, indirection_in_b, r);
}

struct in_iothread {
    struct request *r;
    int64_t in_flight;
    int aio_ret;
    int nested_in_flight;
    int flush_ret;
    bool in_home;
};

/* In IOThread A: drain the node from its own thread. */
static void drain_entry(void *opaque)
{
    struct in_iothread *d = opaque;
    AioContext *ctx = bdrv_get_aio_context(d->r->bs);
    d->in_home = in_aio_context_home_thread(ctx);
    aio_context_acquire(ctx);
    bdrv_drained_begin(d->r->bs);
    d->in_flight = aioctx_node_in_flight(d->r->bs);
    d->aio_ret = atomic_load(&d->r->aio_ret);
    bdrv_drained_begin(d->r->bs); /* sections nest */
    d->nested_in_flight = (int)aioctx_node_in_flight(d->r->bs);
    d->flush_ret = bdrv_flush(d->r->bs);
    bdrv_drained_end(d->r->bs);
    bdrv_drained_end(d->r->bs);
    aio_context_release(ctx);
}

static void test_iothread_common(enum drain_type drain_type, int drain_thread)
{
    static const AioctxDriver drv = { .flush = drv_flush };
    const char *name = drain_type == BDRV_DRAIN_ALL ? "/bdrv-drain/iothread/drain_all"
                                                    : "/bdrv-drain/iothread/drain";
    const char *from = drain_thread ? "from IOThread A" : "from the main loop";
    IOThread *a = iothread_create("drain-a", &error_abort);
    IOThread *b = iothread_create("drain-b", &error_abort);
    struct request r;
    struct in_iothread d;

    r.ctx_a = iothread_get_aio_context(a);
    r.ctx_b = iothread_get_aio_context(b);
    r.bs = aioctx_node_new(aioctx_compat_block_graph, "test-node", r.ctx_a, &drv, NULL);
    if (!ok(r.bs != NULL, "%s %s: a node on IOThread A", name, from))
        goto out;
    atomic_store(&flushes, 0);

    start_request(&r);
    if (drain_thread == 0) {
        if (drain_type == BDRV_DRAIN) {
            aio_context_acquire(r.ctx_a);
            bdrv_drained_begin(r.bs);
        } else {
            bdrv_drain_all_begin();
        }
        is_int(aioctx_node_in_flight(r.bs), 0, "%s %s: nothing in flight after the begin",
               name, from);
        is_int(atomic_load(&r.aio_ret), 0, "%s %s: the request completed (through B)",
               name, from);
        if (drain_type == BDRV_DRAIN) {
            bdrv_drained_end(r.bs);
            aio_context_release(r.ctx_a);
        } else {
            bdrv_drain_all_end();
        }
    } else {
        d.r = &r;
        d.in_flight = d.aio_ret = d.nested_in_flight = d.flush_ret = -1;
        d.in_home = false;
        aio_wait_bh_oneshot(r.ctx_a, drain_entry, &d);
        ok(d.in_home, "%s %s: the drain ran in A's home thread", name, from);
        is_int(d.in_flight, 0, "%s %s: nothing in flight after the begin", name, from);
        is_int(d.aio_ret, 0, "%s %s: the request completed (through B)", name, from);
        is_int(d.nested_in_flight, 0, "%s %s: a nested begin returns at once", name, from);
        is_int(d.flush_ret, 0, "%s %s: bdrv_flush in the section", name, from);
        is_int(atomic_load(&flushes), 1, "%s %s: the driver's flush ran", name, from);
    }

    /* After the section: requests run again. */
    start_request(&r);
    bdrv_drain(r.bs);
    is_int(atomic_load(&r.aio_ret), 0, "%s %s: a request after the section completes", name,
           from);
out:
    bdrv_close_all(); /* the node goes first, as QEMU's bdrv_unref */
    bdrv_init();
    iothread_destroy(a);
    iothread_destroy(b);
}

int main(void)
{
    tap_watchdog(30);
    bdrv_init();
    is_int(qemu_init_main_loop(&error_abort), 0, "qemu_init_main_loop");

    test_iothread_common(BDRV_DRAIN_ALL, 0);
    test_iothread_common(BDRV_DRAIN, 0);
    test_iothread_common(BDRV_DRAIN, 1);

    bdrv_close_all();
    return done_testing();
}
