/*
 * test-block-iothread: what QEMU's tests/unit/test-block-iothread.c checks
 * in its /sync-op/pread, /sync-op/pwrite and /sync-op/flush cases, through
 * qemu-compat.h: a synchronous operation on a node that runs in an
 * IOThread, made from the main loop while holding the IOThread's context
 * once, has to poll for the request's completion there. Success is 0 and a
 * negative offset is QEMU's early -EIO; flush succeeds. The node is the
 * raw-file driver on a temporary image (QEMU's test uses a null driver), so
 * the data is also checked on disk. The same operations are made from the
 * IOThread itself (QEMU allows both).
 *
 * Built for QEMU 7.1+ (blk_pread/blk_pwrite(blk, offset, bytes, buf, flags)
 * returning 0) and for QEMU 7.0 (blk_pread(blk, offset, buf, bytes) and
 * blk_pwrite(blk, offset, buf, bytes, flags) returning the byte count).
 */
#define _GNU_SOURCE
#include "tap.h"
#include <aioctx/qemu-compat.h>
#include "test-util.h"

#include <stdatomic.h>

#if !defined(AIOCTX_QEMU_VERSION) || AIOCTX_QEMU_VERSION >= 70100
#define PREAD(blk, off, buf, n) blk_pread(blk, off, n, buf, 0)
#define PWRITE(blk, off, buf, n) blk_pwrite(blk, off, n, buf, 0)
#define DONE(n) 0 /* success value of a whole request of n bytes */
#else
#define PREAD(blk, off, buf, n) blk_pread(blk, off, buf, n)
#define PWRITE(blk, off, buf, n) blk_pwrite(blk, off, buf, n, 0)
#define DONE(n) (n)
#endif

#define IMAGE_SIZE 65536

struct results {
    int pwrite, pwrite_neg, pread, pread_neg, flush, bdrv_flush;
    bool same;
};

/* QEMU's test_sync_op_{blk_,}pwrite/pread/flush, at offset `off`, with
 * `fill` as the data. */
static void sync_ops(BlockBackend *blk, int64_t off, unsigned char fill, struct results *r)
{
    unsigned char out[512], in[512];
    memset(out, fill, sizeof out);
    memset(in, 0, sizeof in);
    r->pwrite = PWRITE(blk, off, out, (int)sizeof out);
    r->pwrite_neg = PWRITE(blk, -2, out, (int)sizeof out);
    r->pread = PREAD(blk, off, in, (int)sizeof in);
    r->pread_neg = PREAD(blk, -2, in, (int)sizeof in);
    r->same = memcmp(in, out, sizeof in) == 0;
    r->flush = blk_flush(blk);
    r->bdrv_flush = bdrv_flush(blk_bs(blk));
}

static void check(const struct results *r, const char *from)
{
    is_int(r->pwrite, DONE(512), "/sync-op/pwrite %s: success", from);
    is_int(r->pwrite_neg, -EIO, "/sync-op/pwrite %s: negative offset: -EIO", from);
    is_int(r->pread, DONE(512), "/sync-op/pread %s: success", from);
    is_int(r->pread_neg, -EIO, "/sync-op/pread %s: negative offset: -EIO", from);
    ok(r->same, "/sync-op/pread %s: reads back what was written", from);
    is_int(r->flush, 0, "/sync-op/flush %s: blk_flush", from);
    is_int(r->bdrv_flush, 0, "/sync-op/flush %s: bdrv_flush", from);
}

struct in_iothread {
    BlockBackend *blk;
    struct results r;
    bool in_home;
};

static void sync_ops_bh(void *opaque)
{
    struct in_iothread *d = opaque;
    d->in_home = in_aio_context_home_thread(blk_get_aio_context(d->blk));
    sync_ops(d->blk, 1024, 0x5b, &d->r);
}

int main(void)
{
    char dir[64], path[128];
    unsigned char want[512];
    IOThread *iothread;
    AioContext *ctx;
    BlockBackend *blk;
    struct results r;
    struct in_iothread d;

    tap_watchdog(30);
    is_int(qemu_init_main_loop(&error_abort), 0, "qemu_init_main_loop");
    bdrv_init();
    if (!ok(make_temp_dir(dir, sizeof dir, "qemu-sync") != NULL, "temporary directory"))
        return done_testing();
    snprintf(path, sizeof path, "%s/base.img", dir);
    ok(make_image(path, IMAGE_SIZE, 0644) == 0, "a 64 KiB image");

    iothread = iothread_create("sync-io", &error_abort);
    ctx = iothread_get_aio_context(iothread);
    blk = aioctx_node_open_file(aioctx_compat_block_graph, "base", ctx, path, AIOCTX_OPEN_RDWR);
    if (!ok(blk != NULL, "the raw-file node in the IOThread"))
        return done_testing();
    ok(blk_get_aio_context(blk) == ctx, "blk_get_aio_context: the IOThread's");

    /* QEMU's test_sync_op: from the main loop, holding the context once. */
    aio_context_acquire(ctx);
    sync_ops(blk, 0, 0xa5, &r);
    aio_context_release(ctx);
    check(&r, "from the main loop");
    memset(want, 0xa5, sizeof want);
    ok(file_has(path, 0, want, sizeof want), "the write is in the image");

    /* Holding nothing works too. */
    sync_ops(blk, 512, 0x3c, &r);
    check(&r, "from the main loop, not holding the context");

    /* From the IOThread itself: the wait polls the IOThread's own loop. */
    d.blk = blk;
    d.in_home = false;
    aio_wait_bh_oneshot(ctx, sync_ops_bh, &d);
    ok(d.in_home, "the IOThread case ran in the IOThread");
    check(&d.r, "from the IOThread");
    memset(want, 0x5b, sizeof want);
    ok(file_has(path, 1024, want, sizeof want), "the IOThread's write is in the image");

    /* Held twice, the wait could never end: refused, nothing submitted. */
    aio_context_acquire(ctx);
    aio_context_acquire(ctx);
    is_int(PREAD(blk, 0, want, (int)sizeof want), -EDEADLK,
           "a sync read holding the context twice: -EDEADLK, not a hang");
    like(aioctx_last_error(), "2 times", "the message names the double hold");
    aio_context_release(ctx);
    aio_context_release(ctx);

    bdrv_close_all();
    iothread_destroy(iothread);
    unlink(path);
    rmdir(dir);
    return done_testing();
}
