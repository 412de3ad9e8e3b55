/*
 * test-crash-handover: the migration source is killed with SIGKILL; the
 * destination takes the images over and finds every acknowledged write.
 *
 * Each round forks a source process (all forked before this process makes any
 * aioctx call, so each starts from a pristine library). The source opens 3
 * images RDWR (two on an IOThread, one on the main context: the topology that
 * hung QEMU) and a guest-like thread keeps up to 8 writes in flight per drive.
 * Each completion that reports 4096 bytes is recorded in shared memory
 * (MAP_SHARED) before the guest learns of it: that is the acknowledgement.
 * The parent plays the destination: it opens the images RDWR|INACTIVE, is
 * refused activation (-EAGAIN) while the source lives, and kill -9's the
 * source at one of these moments:
 *   - "after": right after the source's inactivate_all returned (it writes
 *     one byte to a pipe as soon as the call returns; the parent kills on
 *     reading it);
 *   - "during": a few hundred microseconds into the source's inactivate_all;
 *   - "writes": while the guest writes, before any handover.
 * Then activate_all succeeds (the kernel drops a dead process's OFD locks),
 * and each block is checked against the shared-memory record: after a
 * completed handover it must hold exactly the last acknowledged write; after
 * a crash mid-flight, the last acknowledged write or a newer one of the same
 * block (never older, never torn). The destination then writes on, through
 * the block layer, and reads its writes back.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define TEST_LONG_TIMEOUT_S 10
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#define NDRIVES 3
#define BLK 4096
#define NBLOCKS 64                 /* per image: the guest wraps around */
#define QD 8                       /* writes in flight per drive */
#define NEVER (-1)

enum moment { AFTER, DURING, WRITES };
static const char *const moment_name[] = { "after inactivate_all", "during inactivate_all", "during writes" };
static const enum moment plan_of[] = { AFTER, AFTER, AFTER, AFTER, DURING, DURING, DURING, WRITES, WRITES, WRITES };
#define ROUNDS ((int)(sizeof plan_of / sizeof plan_of[0]))

/* Shared with the source processes. */
struct shared {
    atomic_llong acked[NDRIVES][NBLOCKS];   /* last acknowledged sequence number, or NEVER */
    atomic_llong submitted[NDRIVES];        /* writes submitted (and not refused) */
    atomic_llong acks[NDRIVES];             /* writes acknowledged */
    atomic_int inactivate_rc;               /* 1: not returned */
    atomic_int refusal;                     /* the submit error that stopped the guest */
};

static struct shared *shm;                  /* [ROUNDS] */
static char dir[64];

static void image_path(char *out, size_t len, int round, int d)
{
    snprintf(out, len, "%s/r%d-disk%d.img", dir, round, d);
}

/* Every 32-bit word names the round, drive, sequence number and position. */
static void stamp(unsigned char *buf, int round, int d, long long seq)
{
    for (int w = 0; w < BLK / 4; w++) {
        uint32_t v = (uint32_t)round << 28 | (uint32_t)d << 26 | (uint32_t)(seq & 0xffff) << 10 | (uint32_t)w;
        memcpy(buf + 4 * w, &v, 4);
    }
}

/* ---- the source -------------------------------------------------------------------------------- */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int round;
    AioctxNode *node[NDRIVES];
    long long next_seq[NDRIVES];
    int in_flight[NDRIVES];
    bool busy[NDRIVES][NBLOCKS];
    struct shared *sh;
} src = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, { 0 }, { 0 }, { 0 }, { { 0 } }, NULL };

struct req {
    int d;
    long long seq;
    unsigned char buf[BLK];
};

/* In the drive's home thread: record the acknowledgement, then tell the guest. */
static void src_done(void *opaque, int64_t ret)
{
    struct req *r = opaque;
    int b = (int)(r->seq % NBLOCKS);
    if (ret == BLK) {
        atomic_store(&src.sh->acked[r->d][b], r->seq);
        atomic_fetch_add(&src.sh->acks[r->d], 1);
    }
    pthread_mutex_lock(&src.lock);
    src.busy[r->d][b] = false;
    src.in_flight[r->d]--;
    pthread_cond_signal(&src.cond);
    pthread_mutex_unlock(&src.lock);
    free(r);
}

static void *guest(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&src.lock);
    for (int d = 0, full = 0;; d = (d + 1) % NDRIVES) {
        if (src.in_flight[d] == QD || src.busy[d][src.next_seq[d] % NBLOCKS]) {
            if (++full == NDRIVES) {
                pthread_cond_wait(&src.cond, &src.lock);
                full = 0;
            }
            continue;
        }
        full = 0;
        long long seq = src.next_seq[d]++;
        src.busy[d][seq % NBLOCKS] = true;
        src.in_flight[d]++;
        atomic_fetch_add(&src.sh->submitted[d], 1);
        pthread_mutex_unlock(&src.lock);
        struct req *r = malloc(sizeof *r);
        r->d = d;
        r->seq = seq;
        stamp(r->buf, src.round, d, seq);
        int rc = aioctx_node_pwrite(src.node[d], r->buf, BLK, seq % NBLOCKS * BLK, src_done, r);
        pthread_mutex_lock(&src.lock);
        if (rc != 0) {
            free(r);
            src.busy[d][seq % NBLOCKS] = false;
            src.in_flight[d]--;
            src.next_seq[d]--;
            atomic_fetch_sub(&src.sh->submitted[d], 1);
            atomic_store(&src.sh->refusal, rc);
            break;
        }
    }
    pthread_mutex_unlock(&src.lock);
    return NULL;
}


static bool forever(void *opaque)
{
    (void)opaque;
    return true;
}

/*
 * The source of round `round`: waits for 'G', opens the images, sends 'O',
 * lets the guest write for a while ('W' once it runs), then sends 'S' and
 * calls inactivate_all, and sends 'I' the moment it returns. Then it keeps
 * polling its loop until it is killed.
 */
static int source(int round, int cmd, int res)
{
    signal(SIGALRM, SIG_DFL);
    alarm(60 * (unsigned)tap_scale());
    if (pipe_recv(cmd) != 'G')
        return 0;
    src.round = round;
    src.sh = &shm[round];
    AioctxContext *main_ctx = aioctx_main_context();
    aioctx_context_claim(main_ctx);
    AioctxIoThread *io = aioctx_iothread_new("crash-src-io");
    AioctxGraph *g = aioctx_graph_new(NULL);
    for (int d = 0; d < NDRIVES; d++) {
        char path[128], name[16];
        image_path(path, sizeof path, round, d);
        snprintf(name, sizeof name, "disk%d", d);
        src.node[d] = aioctx_node_open_file(g, name, d < 2 ? aioctx_iothread_context(io) : main_ctx, path,
                                            AIOCTX_OPEN_RDWR);
        if (!src.node[d])
            return 3;
    }
    pipe_send(res, 'O');
    pthread_t th;
    pthread_create(&th, NULL, guest, NULL);
    pipe_send(res, 'W');
    /* The main loop runs (disk2 completes here) while the guest writes. */
    aioctx_poll_while(main_ctx, forever, NULL, (50 + 10 * (round % 5)) * MS * tap_scale(), 0);
    pipe_send(res, 'S');
    int rc = aioctx_graph_inactivate_all(g);
    pipe_send(res, 'I');
    atomic_store(&src.sh->inactivate_rc, rc);
    for (;;) {   /* a source that goes on living until SIGKILL */
        unsigned char late[BLK] = { 0 };
        aioctx_node_pwrite(src.node[2], late, BLK, 0, NULL, NULL);
        aioctx_poll_while(main_ctx, forever, NULL, 1 * MS, 0);
    }
    return 0;
}

/* ---- the destination --------------------------------------------------------------------------- */


static AioctxContext *main_ctx;

static int64_t io_wait(AioctxNode *n, int write, void *buf, size_t len, uint64_t off)
{
    struct io_wait io;
    atomic_store(&io.done, 0);
    atomic_store(&io.ret, 0);
    int rc = write ? aioctx_node_pwrite(n, buf, len, off, io_wait_cb, &io) : aioctx_node_pread(n, buf, len, off, io_wait_cb, &io);
    if (rc)
        return rc;
    if (aioctx_poll_while(main_ctx, io_wait_pending, &io, long_timeout(), 0))
        return INT64_MIN;
    return atomic_load(&io.ret);
}

struct child {
    pid_t pid;
    int cmd, res;
};

static struct child children[ROUNDS];
static long long total_acked, total_checked, total_submitted;

/* Which sequence number a block holds: -1 zero block, -2 not one of ours / torn. */
static long long block_seq(const unsigned char *buf, int round, int d, int b)
{
    static const unsigned char zero[BLK];
    if (memcmp(buf, zero, BLK) == 0)
        return -1;
    uint32_t v;
    memcpy(&v, buf, 4);
    long long low = (long long)(v >> 10 & 0xffff);
    unsigned char want[BLK];
    /* The sequence number's low 16 bits are in the block; NBLOCKS divides 2^16. */
    stamp(want, round, d, low);
    if (memcmp(buf, want, BLK) != 0 || low % NBLOCKS != b)
        return -2;
    return low;
}

static void run_round(int r, AioctxIoThread *iot)
{
    enum moment m = plan_of[r];
    struct child *c = &children[r];
    struct shared *sh = &shm[r];
    char what[80];
    snprintf(what, sizeof what, "round %d (kill %s)", r, moment_name[m]);

    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *node[NDRIVES];
    for (int d = 0; d < NDRIVES; d++) {
        char path[128], name[16];
        image_path(path, sizeof path, r, d);
        snprintf(name, sizeof name, "disk%d", d);
        node[d] = aioctx_node_open_file(g, name, d == 1 ? main_ctx : aioctx_iothread_context(iot), path,
                                        AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE);
    }
    ok(node[0] && node[1] && node[2], "%s: the destination opens the 3 images RDWR|INACTIVE", what);

    pipe_send(c->cmd, 'G');
    char ev = pipe_recv(c->res);
    if (!is_int(ev, 'O', "%s: the source opened its images", what)) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        aioctx_graph_free(g);
        return;
    }
    is_int(aioctx_graph_activate_all(g), -EAGAIN, "%s: activate_all while the source lives -> -EAGAIN", what);
    is_int(pipe_recv(c->res), 'W', "%s: the guest writes", what);

    int64_t t_sent = 0;
    if (m == WRITES) {
        /* once the guest has acknowledged writes, a little later (it writes for 50 ms or more) */
        int64_t end = tap_now_ns() + long_timeout();
        while (atomic_load(&sh->acks[0]) + atomic_load(&sh->acks[1]) + atomic_load(&sh->acks[2]) < 8 &&
               tap_now_ns() < end)
            tap_sleep_ns(200000);
        tap_sleep_ms((1 + 5 * (r % 3)) * tap_scale());
    } else {
        is_int(pipe_recv(c->res), 'S', "%s: the source starts inactivate_all", what);
        if (m == DURING)
            tap_sleep_ns(100000 * (r % 4 + 1));
        else
            is_int(pipe_recv(c->res), 'I', "%s: ... and it returned", what);
        t_sent = tap_now_ns();
    }
    kill(c->pid, SIGKILL);
    int status = 0;
    waitpid(c->pid, &status, 0);
    ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "%s: the source died of SIGKILL (status %#x)", what,
       status);
    if (m == AFTER) {
        is_int(atomic_load(&sh->inactivate_rc) == 1 ? 0 : atomic_load(&sh->inactivate_rc), 0,
               "%s: the source's inactivate_all had returned 0", what);
        diag("%s: killed and reaped %lld us after the source reported inactivate_all returned", what, (long long)((tap_now_ns() - t_sent) / 1000));
    }
    close(c->cmd);
    close(c->res);

    int rc = aioctx_graph_activate_all(g);
    if (!is_int(rc, 0, "%s: activate_all after the kill -> 0 (the dead source's locks are gone)", what))
        diag("%s", aioctx_last_error());
    ok(!aioctx_node_is_inactive(node[0]) && !aioctx_node_is_inactive(node[1]) && !aioctx_node_is_inactive(node[2]),
       "%s: all three drives active", what);

    /* Every block against the acknowledgement record, read through the block layer. */
    static unsigned char image[NBLOCKS * BLK];
    int lost = 0, stale = 0, torn = 0, newer = 0;
    long long acked = 0, submitted = 0;
    for (int d = 0; d < NDRIVES; d++) {
        int64_t got = io_wait(node[d], 0, image, sizeof image, 0);
        if (!is_int(got, (long long)sizeof image, "%s: disk%d read back", what, d))
            continue;
        acked += atomic_load(&sh->acks[d]);
        submitted += atomic_load(&sh->submitted[d]);
        for (int b = 0; b < NBLOCKS; b++) {
            long long want = atomic_load(&sh->acked[d][b]);
            long long have = block_seq(image + (size_t)b * BLK, r, d, b);
            long long want_low = want == NEVER ? -1 : want & 0xffff;
            if (have == -2) {
                torn++;
            } else if (want == NEVER) {
                newer += have != -1;       /* a write never acknowledged landed: allowed mid-flight */
            } else if (have == -1) {
                lost++;
            } else if (have != want_low) {
                /* a newer write of the same block, or an older one (lost update) */
                if (((have - want_low) & 0xffff) <= 0x7fff)
                    newer++;
                else
                    stale++;
            }
            total_checked++;
        }
    }
    total_acked += acked;
    total_submitted += submitted;
    diag("%s: %lld writes submitted, %lld acknowledged; %d blocks hold a newer unacknowledged write", what,
         submitted, acked, newer);
    ok(acked > 0, "%s: the source had acknowledged writes (%lld)", what, acked);
    is_int(lost, 0, "%s: no acknowledged block is missing", what);
    is_int(stale, 0, "%s: no block holds an older write than its last acknowledged one", what);
    is_int(torn, 0, "%s: no block is torn or foreign", what);
    if (m == AFTER)
        is_int(newer, 0, "%s: after a completed handover, every block holds exactly its last acknowledged write", what);

    /* The destination writes on. */
    unsigned char buf[BLK];
    int landed = 0;
    for (int d = 0; d < NDRIVES; d++) {
        stamp(buf, r, d, 0x7777);
        landed += io_wait(node[d], 1, buf, BLK, 3 * BLK) == BLK;
        char path[128];
        image_path(path, sizeof path, r, d);
        landed += file_has(path, 3 * BLK, buf, BLK);
    }
    is_int(landed, 2 * NDRIVES, "%s: the destination's own writes are acknowledged and in the files", what);
    aioctx_graph_free(g);
}

int main(void)
{
    skip_unless_backend();
    tap_watchdog(90);
    if (!ok(make_temp_dir(dir, sizeof dir, "crash") != NULL, "mkdtemp"))
        return done_testing();
    int made = 1;
    for (int r = 0; r < ROUNDS; r++)
        for (int d = 0; d < NDRIVES; d++) {
            char path[128];
            image_path(path, sizeof path, r, d);
            made &= make_image(path, NBLOCKS * BLK, 0644) == 0;
        }
    ok(made, "%d rounds x %d images of %d KiB", ROUNDS, NDRIVES, NBLOCKS * BLK / 1024);
    shm = mmap(NULL, sizeof *shm * ROUNDS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!ok(shm != MAP_FAILED, "shared memory for the acknowledgements"))
        return done_testing();
    for (int r = 0; r < ROUNDS; r++) {
        for (int d = 0; d < NDRIVES; d++)
            for (int b = 0; b < NBLOCKS; b++)
                atomic_store(&shm[r].acked[d][b], NEVER);
        atomic_store(&shm[r].inactivate_rc, 1);
    }

    /* Every source before any aioctx call here. */
    signal(SIGPIPE, SIG_IGN);
    for (int r = 0; r < ROUNDS; r++) {
        int cmd[2], res[2];
        if (pipe(cmd) || pipe(res))
            return done_testing();
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            close(cmd[1]);
            close(res[0]);
            for (int k = 0; k < r; k++) {
                close(children[k].cmd);
                close(children[k].res);
            }
            _exit(source(r, cmd[0], res[1]));
        }
        close(cmd[0]);
        close(res[1]);
        children[r] = (struct child){ pid, cmd[1], res[0] };
    }
    ok(1, "forked %d source processes", ROUNDS);

    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "the destination claims its main context");
    AioctxIoThread *iot = aioctx_iothread_new("crash-dst-io");
    for (int r = 0; r < ROUNDS; r++)
        run_round(r, iot);
    diag("%d kill -9 handovers: %lld writes submitted, %lld acknowledged, %lld blocks checked", ROUNDS,
         total_submitted, total_acked, total_checked);

    is_int(aioctx_iothread_free(iot), 0, "iothread_free");
    munmap(shm, sizeof *shm * ROUNDS);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ok(system(cmd) == 0, "temporary directory removed");
    return done_testing();
}
