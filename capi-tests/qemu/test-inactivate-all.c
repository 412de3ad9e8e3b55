/*
 * test-inactivate-all: QEMU's bdrv_inactivate_all() loops, written with
 * qemu-compat.h names only, run on two raw-file drives in two topologies:
 * both drives on one IOThread (the live-migration hang), and one IOThread
 * per drive.
 *
 * Built for QEMU 2.10 it runs 2.10's loop: acquire each node's context,
 * once per node; two passes over the nodes (pass 0: the driver's
 * inactivate, which flushed caches and so waited for the IOThread; pass 1:
 * set the inactive flag); release once per node. With both drives on one
 * IOThread the caller holds that context twice when pass 0 waits: QEMU
 * hangs there. aioctx must refuse the wait, loudly (-EDEADLK and the
 * message), and the loop must come back with nothing held.
 *
 * Built for QEMU 2.11 it runs 2.11's fix: acquire each distinct context
 * once (the unique-context list), the same passes, release each once. That
 * must succeed in both topologies.
 *
 * The per-node steps are what the compat names offer: pass 0 is
 * bdrv_flush() (the wait; on 2.11 also an AIO_WAIT_WHILE(wait, ctx, cond)
 * for a write-back BH in the IOThread, with 2.11's AioWait), pass 1 a flag
 * kept here (QEMU's BDRV_O_INACTIVE has no per-node compat setter).
 * QEMU iterates with bdrv_first/bdrv_next; here the nodes are in an array.
 */
#define _GNU_SOURCE
#include "tap.h"
#include <aioctx/qemu-compat.h>
#include "test-util.h"

#include <stdatomic.h>

#if !defined(AIOCTX_QEMU_VERSION) || AIOCTX_QEMU_VERSION < 21000 || AIOCTX_QEMU_VERSION >= 21200
#error "build with AIOCTX_QEMU_VERSION=21000 (QEMU 2.10's loop) or 21100 (2.11's)"
#endif
#define QEMU_2_11 (AIOCTX_QEMU_VERSION >= 21100)

#define NDRIVES 2

static BlockDriverState *drives[NDRIVES];
static bool inactive[NDRIVES];

#if QEMU_2_11
static AioWait writeback_wait; /* 2.11: bs->wait, one per waited-for object */

static void writeback_bh(void *opaque)
{
    atomic_store((atomic_bool *)opaque, true);
    aio_wait_kick(&writeback_wait);
}
#endif

/* QEMU's bdrv_inactivate_recurse(bs, setting_flag), reduced to the compat
 * names. */
static int inactivate_one(int i, int pass)
{
    int ret;
    if (pass == 1) {
        inactive[i] = true;
        return 0;
    }
    ret = bdrv_flush(drives[i]);
    if (ret < 0)
        return ret;
#if QEMU_2_11
    {
        atomic_bool written;
        atomic_init(&written, false);
        aio_bh_schedule_oneshot(bdrv_get_aio_context(drives[i]), writeback_bh, &written);
        AIO_WAIT_WHILE(&writeback_wait, bdrv_get_aio_context(drives[i]), !atomic_load(&written));
    }
#endif
    return 0;
}

#if !QEMU_2_11
/* QEMU 2.10's bdrv_inactivate_all(). */
static int inactivate_all(void)
{
    int ret = 0, pass, i;

    for (i = 0; i < NDRIVES; i++)
        aio_context_acquire(bdrv_get_aio_context(drives[i]));

    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < NDRIVES; i++) {
            ret = inactivate_one(i, pass);
            if (ret < 0)
                goto out;
        }
    }

out:
    for (i = 0; i < NDRIVES; i++)
        aio_context_release(bdrv_get_aio_context(drives[i]));
    return ret;
}
#else
/* QEMU 2.11's bdrv_inactivate_all(): each distinct context once (QEMU
 * keeps them in a GSList). */
static int inactivate_all(void)
{
    AioContext *ctxs[NDRIVES];
    int nctxs = 0, ret = 0, pass, i, j;

    for (i = 0; i < NDRIVES; i++) {
        AioContext *aio_context = bdrv_get_aio_context(drives[i]);
        bool found = false;
        for (j = 0; j < nctxs; j++)
            found |= ctxs[j] == aio_context;
        if (!found) {
            ctxs[nctxs++] = aio_context;
            aio_context_acquire(aio_context);
        }
    }

    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < NDRIVES; i++) {
            ret = inactivate_one(i, pass);
            if (ret < 0)
                goto out;
        }
    }

out:
    for (j = 0; j < nctxs; j++)
        aio_context_release(ctxs[j]);
    return ret;
}
#endif

static void run(const char *topology, bool one_iothread, const char *dir)
{
    IOThread *its[NDRIVES] = { NULL, NULL };
    char path[NDRIVES][128], name[16];
    unsigned char data[512];
    int i, ret, held = 0, n_inactive = 0;

    bdrv_init();
    its[0] = iothread_create("drives-0", &error_abort);
    if (!one_iothread)
        its[1] = iothread_create("drives-1", &error_abort);
    memset(data, 0x42, sizeof data);
    for (i = 0; i < NDRIVES; i++) {
        AioContext *ctx = iothread_get_aio_context(its[one_iothread ? 0 : i]);
        snprintf(path[i], sizeof path[i], "%s/drive%d.img", dir, i);
        snprintf(name, sizeof name, "drive%d", i);
        make_image(path[i], 65536, 0644);
        drives[i] = aioctx_node_open_file(aioctx_compat_block_graph, name, ctx, path[i],
                                          AIOCTX_OPEN_RDWR);
        if (!ok(drives[i] != NULL, "%s: drive%d opened", topology, i))
            return;
        is_int(blk_pwrite(drives[i], 0, data, (int)sizeof data, 0), (int)sizeof data,
               "%s: drive%d written (the data a flush must keep)", topology, i);
        inactive[i] = false;
    }

    ret = inactivate_all();
    for (i = 0; i < NDRIVES; i++) {
        held += aioctx_lock_depth(bdrv_get_aio_context(drives[i]));
        n_inactive += inactive[i];
    }

#if !QEMU_2_11
    if (one_iothread) {
        is_int(ret, -EDEADLK,
               "%s, QEMU 2.10's loop: the wait holding the context twice is refused, not a hang",
               topology);
        like(aioctx_last_error(), "2 times", "%s: the message names the double hold", topology);
        like(aioctx_last_error(), "AioctxSet", "%s: and the fix", topology);
        is_int(n_inactive, 0, "%s: the loop stopped before setting any flag", topology);
        /* The graph is intact: aioctx's own handover works now. */
        is_int(bdrv_inactivate_all(), 0, "%s: bdrv_inactivate_all afterwards", topology);
        bdrv_activate_all(&error_abort);
    } else {
        is_int(ret, 0, "%s, QEMU 2.10's loop: each context is held once: it completes", topology);
        is_int(n_inactive, NDRIVES, "%s: every drive passed both passes", topology);
        if (ret < 0)
            diag("%s", aioctx_last_error());
    }
#else
    is_int(ret, 0, "%s, QEMU 2.11's loop (each context once): it completes", topology);
    is_int(n_inactive, NDRIVES, "%s: every drive passed both passes", topology);
    if (ret < 0)
        diag("%s", aioctx_last_error());
#endif
    is_int(held, 0, "%s: the loop left no context held", topology);
    for (i = 0; i < NDRIVES; i++)
        ok(file_has(path[i], 0, data, sizeof data), "%s: drive%d's data is on disk", topology, i);

    bdrv_close_all();
    for (i = 0; i < NDRIVES; i++) {
        if (its[i])
            iothread_destroy(its[i]);
        unlink(path[i]);
    }
}

int main(void)
{
    char dir[64];
    tap_watchdog(30);
    is_int(qemu_init_main_loop(&error_abort), 0, "qemu_init_main_loop");
    if (!ok(make_temp_dir(dir, sizeof dir, "qemu-inactivate") != NULL, "temporary directory"))
        return done_testing();
    run("two drives on one IOThread", true, dir);
    run("one IOThread per drive", false, dir);
    rmdir(dir);
    return done_testing();
}
