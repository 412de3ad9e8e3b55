/*
 * test-handover-data: no acknowledged write is lost across the migration
 * handover.
 *
 * Three raw-file drives, two on one IOThread and one on the main context (the
 * shape of the shipped "inactivate all block nodes" migration hang). Each
 * round, another thread submits 300 writes of distinct 4 KiB patterns (and a
 * reader thread 100 reads) while the main thread calls
 * aioctx_graph_inactivate_all. It must complete; every write accepted before
 * the handover has completed (its callback reported 4096) before
 * inactivate_all returned and is in the file (checked with read(2)); writes
 * refused during the handover (-EBUSY) or after it (-EPERM) get no callback
 * and leave their blocks untouched; the image write locks were dropped;
 * activate_all makes the drives writable again. Several rounds with different
 * submission pacing.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define TEST_LONG_TIMEOUT_S 10
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>

#define BLK 4096
#define NDRIVES 3
#define NW 300          /* writes per round */
#define NR 100          /* reads per round */
#define GO_AT 100       /* writes submitted before the handover starts */
#define HOLD_AT 250     /* writes from here on wait until the handover is over */
#define ROUNDS 4
#define PER_ROUND (NW / NDRIVES)   /* blocks per drive per round */
#define IMG_BLOCKS (ROUNDS * PER_ROUND)

static AioctxContext *main_ctx;
static AioctxIoThread *iot;
static AioctxContext *iot_ctx;
static char dir[64];
static char img[NDRIVES][128];
static AioctxNode *drive[NDRIVES];

struct wreq {
    atomic_int submit_rc;   /* 1: not submitted yet */
    atomic_int calls;
    atomic_llong ret;
    unsigned char buf[BLK];
};

struct rreq {
    atomic_int submit_rc;
    atomic_int calls;
    atomic_llong ret;
    unsigned char buf[BLK];
};

static struct wreq wr[ROUNDS][NW];
static struct rreq rd[ROUNDS][NR];
static atomic_int completed;         /* write callbacks, all rounds */
static atomic_int read_completed;
static atomic_int go, handover_done;

static int drive_of(int i)
{
    return i % NDRIVES;
}

static uint64_t offset_of(int round, int i)
{
    return (uint64_t)(round * PER_ROUND + i / NDRIVES) * BLK;
}

/* Every 32-bit word names its round, write and position. */
static void pattern(unsigned char *buf, int round, int i)
{
    for (int w = 0; w < BLK / 4; w++) {
        uint32_t v = 0x80000000u | (uint32_t)round << 24 | (uint32_t)i << 12 | (uint32_t)w;
        memcpy(buf + 4 * w, &v, 4);
    }
}

static void write_cb(void *opaque, int64_t ret)
{
    struct wreq *w = opaque;
    atomic_store(&w->ret, ret);
    atomic_fetch_add(&w->calls, 1);
    atomic_fetch_add(&completed, 1);
}

static void read_cb(void *opaque, int64_t ret)
{
    struct rreq *r = opaque;
    atomic_store(&r->ret, ret);
    atomic_fetch_add(&r->calls, 1);
    atomic_fetch_add(&read_completed, 1);
}

struct submitter {
    int round;
    int pace_us;
};

static void *write_thread(void *arg)
{
    struct submitter *s = arg;
    for (int i = 0; i < NW; i++) {
        if (i == GO_AT)
            atomic_store(&go, 1);
        if (i == HOLD_AT)
            while (!atomic_load(&handover_done))
                tap_sleep_ns(100000);
        struct wreq *w = &wr[s->round][i];
        int rc = aioctx_node_pwrite(drive[drive_of(i)], w->buf, BLK, offset_of(s->round, i), write_cb, w);
        atomic_store(&w->submit_rc, rc);
        if (i >= GO_AT && s->pace_us)
            tap_sleep_ns((int64_t)s->pace_us * 1000);
    }
    return NULL;
}

static void *read_thread(void *arg)
{
    struct submitter *s = arg;
    while (!atomic_load(&go))
        tap_sleep_ns(20000);
    for (int i = 0; i < NR; i++) {
        struct rreq *r = &rd[s->round][i];
        int rc = aioctx_node_pread(drive[i % NDRIVES], r->buf, BLK, (uint64_t)(i % PER_ROUND) * BLK, read_cb, r);
        atomic_store(&r->submit_rc, rc);
        if (s->pace_us)
            tap_sleep_ns((int64_t)s->pace_us * 1000);
    }
    return NULL;
}

static bool go_unset(void *opaque)
{
    (void)opaque;
    return !atomic_load(&go);
}

/* Block off of drive d's image holds want (zeros if NULL), read with read(2). */
static int file_block_is(int d, uint64_t off, const unsigned char *want)
{
    return file_has(img[d], off, want, BLK);
}

static void run_round(AioctxGraph *g, int round, int pace_us)
{
    struct submitter s = { round, pace_us };
    pthread_t wt, rt;
    atomic_store(&go, 0);
    atomic_store(&handover_done, 0);
    for (int i = 0; i < NW; i++) {
        atomic_store(&wr[round][i].submit_rc, 1);
        pattern(wr[round][i].buf, round, i);
    }
    for (int i = 0; i < NR; i++)
        atomic_store(&rd[round][i].submit_rc, 1);
    int completed_before = atomic_load(&completed);

    pthread_create(&wt, NULL, write_thread, &s);
    pthread_create(&rt, NULL, read_thread, &s);
    aioctx_poll_while(main_ctx, go_unset, NULL, long_timeout(), 0);

    int64_t t0 = tap_now_ns();
    int rc = aioctx_graph_inactivate_all(g);
    int64_t dt = tap_now_ns() - t0;
    int done_at_return = atomic_load(&completed) - completed_before;
    atomic_store(&handover_done, 1);
    pthread_join(wt, NULL);
    pthread_join(rt, NULL);

    is_int(rc, 0, "round %d (pace %d us): inactivate_all with writes in flight -> 0", round, pace_us);
    if (rc)
        diag("%s", aioctx_last_error());
    int inactive = 1;
    for (int d = 0; d < NDRIVES; d++)
        inactive &= aioctx_node_is_inactive(drive[d]);
    ok(inactive, "round %d: all three drives inactive", round);

    int accepted = 0, busy = 0, perm = 0, other = 0, bad_cb = 0, cb_refused = 0, short_ack = 0;
    for (int i = 0; i < NW; i++) {
        struct wreq *w = &wr[round][i];
        int src = atomic_load(&w->submit_rc);
        if (src == 0) {
            accepted++;
            if (atomic_load(&w->calls) != 1)
                bad_cb++;
            else if (atomic_load(&w->ret) != BLK)
                short_ack++;
        } else {
            if (src == -EBUSY)
                busy++;
            else if (src == -EPERM)
                perm++;
            else
                other++;
            cb_refused += atomic_load(&w->calls);
        }
    }
    diag("round %d: inactivate_all took %lld us; %d accepted, %d -EBUSY, %d -EPERM, %d completed by its return",
         round, (long long)(dt / 1000), accepted, busy, perm, done_at_return);
    ok(accepted >= GO_AT, "round %d: the %d writes submitted before the handover were accepted (%d in all)",
       round, GO_AT, accepted);
    is_int(other, 0, "round %d: refusals are only -EBUSY (during) or -EPERM (after)", round);
    ok(perm >= NW - HOLD_AT, "round %d: the writes submitted after it -> -EPERM (%d)", round, perm);
    is_int(done_at_return, accepted, "round %d: every accepted write had completed when inactivate_all returned", round);
    is_int(bad_cb, 0, "round %d: every accepted write's callback ran exactly once", round);
    is_int(short_ack, 0, "round %d: ... and reported 4096 bytes", round);
    is_int(cb_refused, 0, "round %d: no callback for a refused write", round);

    int lost = 0, leaked = 0;
    for (int i = 0; i < NW; i++) {
        struct wreq *w = &wr[round][i];
        int acked = atomic_load(&w->submit_rc) == 0 && atomic_load(&w->ret) == BLK;
        if (acked && !file_block_is(drive_of(i), offset_of(round, i), w->buf)) {
            if (lost++ < 5)
                diag("round %d: acknowledged write %d (drive %d, block %llu) is not in the file", round, i,
                     drive_of(i), (unsigned long long)(offset_of(round, i) / BLK));
        }
        if (atomic_load(&w->submit_rc) != 0 && !file_block_is(drive_of(i), offset_of(round, i), NULL)) {
            if (leaked++ < 5)
                diag("round %d: refused write %d reached the file", round, i);
        }
    }
    is_int(lost, 0, "round %d: every acknowledged write is in its file (read(2))", round);
    is_int(leaked, 0, "round %d: no refused write reached a file", round);

    /* Reads: accepted or -EBUSY, never -EPERM; wait for the accepted ones. */
    int r_acc = 0, r_other = 0;
    for (int i = 0; i < NR; i++) {
        int src = atomic_load(&rd[round][i].submit_rc);
        r_acc += src == 0;
        r_other += src != 0 && src != -EBUSY;
    }
    is_int(r_other, 0, "round %d: concurrent reads are accepted or -EBUSY (%d accepted)", round, r_acc);
    for (int d = 0; d < NDRIVES; d++)
        aioctx_node_drain(drive[d]);
    int r_bad = 0;
    for (int i = 0; i < NR; i++)
        if (atomic_load(&rd[round][i].submit_rc) == 0)
            r_bad += atomic_load(&rd[round][i].calls) != 1 || atomic_load(&rd[round][i].ret) != BLK;
    is_int(r_bad, 0, "round %d: every accepted read completed with 4096 bytes", round);

    /* The image write locks were dropped: another active RDWR open succeeds. */
    AioctxGraph *probe = aioctx_graph_new(NULL);
    int opened = 0;
    for (int d = 0; d < NDRIVES; d++) {
        char name[16];
        snprintf(name, sizeof name, "probe%d", d);
        opened += aioctx_node_open_file(probe, name, main_ctx, img[d], AIOCTX_OPEN_RDWR) != NULL;
    }
    is_int(opened, NDRIVES, "round %d: the write locks were dropped (another RDWR open works)", round);
    aioctx_graph_free(probe);

    is_int(aioctx_graph_activate_all(g), 0, "round %d: activate_all", round);
    int writable = 1;
    for (int d = 0; d < NDRIVES; d++)
        writable &= aioctx_node_start_request(drive[d], true) == 0 && (aioctx_node_end_request(drive[d]), 1);
    ok(writable, "round %d: writes accepted again", round);
}

int main(void)
{
    skip_unless_backend();
    tap_watchdog(120);
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main claims the main context");
    if (!ok(make_temp_dir(dir, sizeof dir, "hdata") != NULL, "mkdtemp"))
        return done_testing();
    int made = 1;
    for (int d = 0; d < NDRIVES; d++) {
        snprintf(img[d], sizeof img[d], "%s/drive%d.img", dir, d);
        made &= make_image(img[d], (off_t)IMG_BLOCKS * BLK, 0644) == 0;
    }
    ok(made, "three images of %d KiB", IMG_BLOCKS * BLK / 1024);

    iot = aioctx_iothread_new("hdata-iot");
    if (!ok(iot != NULL, "an IOThread"))
        return done_testing();
    iot_ctx = aioctx_iothread_context(iot);

    AioctxGraph *g = aioctx_graph_new(NULL);
    drive[0] = aioctx_node_open_file(g, "drive0", iot_ctx, img[0], AIOCTX_OPEN_RDWR);
    drive[1] = aioctx_node_open_file(g, "drive1", iot_ctx, img[1], AIOCTX_OPEN_RDWR);
    drive[2] = aioctx_node_open_file(g, "drive2", main_ctx, img[2], AIOCTX_OPEN_RDWR);
    if (!ok(drive[0] && drive[1] && drive[2], "drives 0 and 1 on the IOThread, drive 2 on the main context"))
        return done_testing();

    static const int pace[ROUNDS] = { 0, 10, 50, 200 };
    for (int r = 0; r < ROUNDS; r++)
        run_round(g, r, pace[r]);

    /* After all rounds, every acknowledged write of every round is still there. */
    int lost = 0;
    for (int r = 0; r < ROUNDS; r++)
        for (int i = 0; i < NW; i++)
            if (atomic_load(&wr[r][i].submit_rc) == 0 && atomic_load(&wr[r][i].ret) == BLK &&
                !file_block_is(drive_of(i), offset_of(r, i), wr[r][i].buf))
                lost++;
    is_int(lost, 0, "after %d rounds, no acknowledged write lost", ROUNDS);

    aioctx_graph_free(g);
    is_int(aioctx_iothread_free(iot), 0, "iothread_free");
    for (int d = 0; d < NDRIVES; d++)
        unlink(img[d]);
    ok(rmdir(dir) == 0, "temporary directory removed");
    return done_testing();
}
