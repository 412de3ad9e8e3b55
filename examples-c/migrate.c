/*
 * migrate: hand three drives over from one VMM process to another, the step
 * of live migration that hung QEMU (two drives on one IOThread).
 *
 *   migrate --incoming 127.0.0.1:PORT --images DIR   destination (start it first)
 *   migrate --images DIR [--port PORT]               source (default port 4444)
 *   migrate --demo                                   both, on temporary images
 * DIR holds disk0.img disk1.img disk2.img, 1 MiB each (truncate -s 1M ...).
 *
 * Source: disk0 and disk1 on IOThread "io-disk", disk2 on the main loop. A
 * guest-like thread keeps writes in flight on all three. The source shows the
 * wrong wait being refused (-EDEADLK, not a hang), hands the images over with
 * aioctx_graph_inactivate_all, and sends which writes the guest saw acknowledged.
 * Destination: opens the images inactive, is kept out by the source's image
 * lock (-EAGAIN), takes over with aioctx_graph_activate_all after the
 * handover, checks every acknowledged write is on disk, and writes on.
 * Each role exits 0 only if every step behaved as documented in aioctx.h, and
 * gives up after 30 s (a watchdog) rather than hang.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp, dprintf in strict C11 */
#endif
#include <aioctx.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define NDRIVES 3
#define BLOCK 4096
#define IMAGE_SIZE (1024 * 1024)
#define NBLOCKS (IMAGE_SIZE / BLOCK)
#define QUEUE_DEPTH 32 /* guest writes in flight per drive, at most */
#define RUN_MS 250     /* how long the guest writes before the handover */
#define NEW_WRITES 4   /* blocks per drive the destination writes after taking over */
#define MS 1000000LL
#define WAIT_S (20 * scale) /* for waits that take milliseconds; valgrind is slow */
#define FNV_INIT 0xcbf29ce484222325ull

static const char *role = "demo";
static int scale = 1; /* AIOCTX_TEST_TIMEOUT_SCALE, set by the valgrind test setup */

static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%-11s | ", role);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
}

static void expect(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "%s: FAILED: %s\n  aioctx_last_error(): %s\n", role, what,
                aioctx_last_error());
        exit(1);
    }
}

/* --demo's temporary images and destination process, cleaned up on any exit. */
static char demo_dir[64], demo_image[NDRIVES][128];
static pid_t demo_child;

/* Async-signal-safe: also called by the watchdog. */
static void demo_cleanup(void)
{
    if (demo_child > 0) { /* we failed: do not leave the destination waiting */
        kill(demo_child, SIGKILL);
        waitpid(demo_child, NULL, 0);
    }
    for (int i = 0; i < NDRIVES && demo_image[i][0]; i++)
        unlink(demo_image[i]);
    if (demo_dir[0])
        rmdir(demo_dir);
}

/* A migration that waits forever is the bug this program is about: whatever
 * goes wrong, never hang the demo. */
static void watchdog_fired(int sig)
{
    static const char msg[] = "migrate: watchdog expired: something hangs\n";
    (void)sig;
    if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
    }
    demo_cleanup();
    _exit(3);
}

/* ---- the guest's data ------------------------------------------------ */

/* Each block is one 64-byte line, repeated, naming its writer (run, drive,
 * sequence number): a lost, stale, torn or misplaced write cannot match,
 * and `hexdump -C disk0.img` shows what the guest wrote. Sequence number seq
 * goes to block seq % NBLOCKS: the guest wraps around its small disk. */
static void stamp(uint8_t *buf, uint64_t run, int drive, uint64_t seq)
{
    char line[96]; /* 64 used: drive < 10, seq < 10^17 */
    snprintf(line, sizeof line, "aioctx-migrate run %016" PRIx64 " disk%d seq %-17" PRIu64 "\n",
             run, drive, seq);
    for (int i = 0; i < BLOCK; i += 64)
        memcpy(buf + i, line, 64);
}

static uint64_t block_offset(uint64_t seq) { return seq % NBLOCKS * (uint64_t)BLOCK; }

static uint64_t fnv(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Both sides: the topology that hung QEMU, two drives sharing one IOThread. */
static void open_drives(AioctxGraph *g, AioctxNode *node[], const char *dir,
                        AioctxContext *io_ctx, AioctxContext *main_ctx, unsigned flags)
{
    for (int i = 0; i < NDRIVES; i++) {
        char name[16], path[4096];
        snprintf(name, sizeof name, "disk%d", i);
        snprintf(path, sizeof path, "%s/disk%d.img", dir, i);
        node[i] = aioctx_node_open_file(g, name, i < 2 ? io_ctx : main_ctx, path, flags);
        expect(node[i] != NULL, "aioctx_node_open_file");
    }
}

/* ---- the migration stream: one text line per message over TCP -------- */

/* Read only while no I/O is pending on the main loop, so a blocking read
 * (bounded by SO_RCVTIMEO) delays no completion. */
static void read_line(FILE *in, char *line, int size, const char *want)
{
    if (fgets(line, size, in) == NULL) {
        fprintf(stderr, "%s: FAILED: no '%s' from the peer: %s\n", role, want,
                feof(in) ? "connection closed" : errno == EAGAIN ? "timed out" : strerror(errno));
        exit(1);
    }
    line[strcspn(line, "\n")] = '\0';
    if (strncmp(line, want, strlen(want)) != 0) {
        fprintf(stderr, "%s: FAILED: expected '%s', got '%s'\n", role, want, line);
        exit(1);
    }
}

static FILE *stream(int fd)
{
    struct timeval tv = {.tv_sec = WAIT_S};
    expect(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0, "SO_RCVTIMEO");
    FILE *in = fdopen(fd, "r");
    expect(in != NULL, "fdopen");
    return in;
}

/* ---- waiting for I/O ------------------------------------------------- */

struct batch {
    atomic_int pending, bad;
};
struct op {
    struct batch *b;
    int64_t want;
};

/* Runs in the node's home thread with its context held. */
static void op_done(void *opaque, int64_t ret)
{
    struct op *op = opaque;
    if (ret != op->want)
        atomic_fetch_add(&op->b->bad, 1);
    atomic_fetch_sub(&op->b->pending, 1);
}

static bool batch_busy(void *opaque) { return atomic_load(&((struct batch *)opaque)->pending); }

/* The main thread polls its loop until the batch is done: disk2 completes
 * here, io-disk's completions wake it (no lost wake-up). */
static void batch_wait(AioctxContext *main_ctx, struct batch *b, const char *what)
{
    expect(aioctx_poll_while(main_ctx, batch_busy, b, WAIT_S * 1000 * MS, 0) == 0, what);
    expect(atomic_load(&b->bad) == 0, what);
}

/* ---- source: a guest-like writer ------------------------------------- */

static struct writer { /* all under lock */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    AioctxNode *node[NDRIVES];
    uint64_t run;
    struct {
        uint64_t next_seq, acked;
        int in_flight;
        bool busy[NBLOCKS];          /* one write per block at a time: order is known */
        int64_t last_acked[NBLOCKS]; /* what the guest believes each block holds */
    } d[NDRIVES];
    int failed, refusal, refused_drive;
    char refusal_msg[400];
} w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

struct write_req {
    int drive;
    uint64_t seq;
    uint8_t buf[BLOCK]; /* lent to aioctx until write_done */
};

/* Runs in the drive's home thread (io-disk or main) with its context held. */
static void write_done(void *opaque, int64_t ret)
{
    struct write_req *r = opaque;
    pthread_mutex_lock(&w.lock);
    w.d[r->drive].busy[r->seq % NBLOCKS] = false;
    w.d[r->drive].in_flight--;
    if (ret == BLOCK) {
        w.d[r->drive].acked++;
        w.d[r->drive].last_acked[r->seq % NBLOCKS] = (int64_t)r->seq;
    } else {
        w.failed++;
    }
    pthread_cond_signal(&w.cond);
    pthread_mutex_unlock(&w.lock);
    free(r);
}

/* Like a guest's virtqueues: keep writes in flight on every drive until the
 * block layer refuses one (the VM is being stopped for the handover). */
static void *guest(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&w.lock);
    for (int i = 0, full = 0;; i = (i + 1) % NDRIVES) {
        if (w.d[i].in_flight == QUEUE_DEPTH || w.d[i].busy[w.d[i].next_seq % NBLOCKS]) {
            if (++full == NDRIVES) { /* every drive is busy: wait for a completion */
                pthread_cond_wait(&w.cond, &w.lock);
                full = 0;
            }
            continue;
        }
        full = 0;
        uint64_t seq = w.d[i].next_seq++;
        w.d[i].busy[seq % NBLOCKS] = true;
        w.d[i].in_flight++;
        pthread_mutex_unlock(&w.lock);

        struct write_req *r = malloc(sizeof *r);
        expect(r != NULL, "malloc");
        *r = (struct write_req){.drive = i, .seq = seq};
        stamp(r->buf, w.run, i, seq);
        int ret = aioctx_node_pwrite(w.node[i], r->buf, BLOCK, block_offset(seq), write_done, r);
        pthread_mutex_lock(&w.lock);
        if (ret != 0) { /* refused: write_done will not run; undo, and stop */
            free(r);
            w.d[i].next_seq--;
            w.d[i].busy[seq % NBLOCKS] = false;
            w.d[i].in_flight--;
            w.refusal = ret;
            w.refused_drive = i;
            snprintf(w.refusal_msg, sizeof w.refusal_msg, "%s", aioctx_last_error());
            break;
        }
    }
    pthread_mutex_unlock(&w.lock);
    return NULL;
}

/* ---- source ---------------------------------------------------------- */

static void end_run(void *opaque) { *(bool *)opaque = true; }
static bool running(void *opaque) { return !*(bool *)opaque; }

static uint64_t total_acked(void)
{
    pthread_mutex_lock(&w.lock);
    uint64_t n = w.d[0].acked + w.d[1].acked + w.d[2].acked;
    pthread_mutex_unlock(&w.lock);
    return n;
}

static int64_t in_flight(int from, int to)
{
    int64_t n = 0;
    for (int i = from; i <= to; i++)
        n += aioctx_node_in_flight(w.node[i]);
    return n;
}

static int run_source(const char *dir, int port)
{
    role = "source";
    /* The main thread is the main loop's home: graph-wide calls run here. */
    AioctxContext *main_ctx = aioctx_main_context();
    expect(main_ctx && aioctx_context_claim(main_ctx) == 0, "claim the main context");
    AioctxIoThread *io = aioctx_iothread_new("io-disk");
    AioctxGraph *g = aioctx_graph_new(main_ctx);
    expect(io && g, "aioctx_iothread_new, aioctx_graph_new");
    open_drives(g, w.node, dir, aioctx_iothread_context(io), main_ctx, AIOCTX_OPEN_RDWR);
    say("disk0, disk1 on IOThread io-disk, disk2 on the main loop: images write-locked");

    /* The destination may still be starting: retry for a while. */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = -1;
    for (int tries = 0; fd < 0 && tries < 500 * scale; tries++) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        expect(fd >= 0, "socket");
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(fd);
            fd = -1;
            usleep(20000);
        }
    }
    expect(fd >= 0, "connect to the destination");
    FILE *in = stream(fd);
    w.run = (uint64_t)getpid() << 32 ^ (uint64_t)aioctx_clock_ns();
    expect(dprintf(fd, "hello run=%016" PRIx64 "\n", w.run) > 0, "send hello");
    char line[512];
    read_line(in, line, sizeof line, "ready");
    say("destination on port %d is ready; the guest starts writing", port);

    for (int i = 0; i < NDRIVES; i++)
        for (int b = 0; b < NBLOCKS; b++)
            w.d[i].last_acked[b] = -1;
    pthread_t guest_thread;
    expect(pthread_create(&guest_thread, NULL, guest, NULL) == 0, "pthread_create");
    /* The main loop runs (disk2 completes here) until a timer ends the run. */
    bool over = false;
    AioctxTimer *timer = aioctx_timer_new(main_ctx, end_run, &over);
    expect(timer && aioctx_timer_mod(timer, aioctx_clock_ns() + RUN_MS * MS) == 0, "timer");
    expect(aioctx_poll_while(main_ctx, running, &over, WAIT_S * 1000 * MS, 0) == 0,
           "aioctx_poll_while(main) while the guest runs");
    aioctx_timer_free(timer);
    pthread_mutex_lock(&w.lock);
    say("after %d ms: %" PRIu64 "/%" PRIu64 "/%" PRIu64 " writes acknowledged on disk0/1/2",
        RUN_MS, w.d[0].acked, w.d[1].acked, w.d[2].acked);
    pthread_mutex_unlock(&w.lock);

    /* The QEMU hang: each drive's code acquires "its" context, so the main
     * thread holds io-disk twice, then waits for io-disk to finish the I/O.
     * Releasing once would leave it held: io-disk could never complete. */
    say("WRONG: acquire io-disk once per drive (disk0, disk1), then drain disk0");
    AioctxContext *io_ctx = aioctx_node_context(w.node[0]);
    expect(aioctx_acquire(io_ctx) == 0 && aioctx_acquire(aioctx_node_context(w.node[1])) == 0,
           "aioctx_acquire");
    int ret = aioctx_node_drain(w.node[0]);
    say("  lock depth %d, %" PRId64 " writes in flight on io-disk; aioctx_node_drain -> %d (%s):",
        aioctx_lock_depth(io_ctx), in_flight(0, 1), ret, strerror(-ret));
    say("  %s", aioctx_last_error());
    expect(ret == -EDEADLK && aioctx_lock_depth(io_ctx) == 2, "drain refuses a double hold");
    expect(aioctx_release(io_ctx) == 0 && aioctx_release(io_ctx) == 0, "aioctx_release");

    /* The right way: inactivate_all acquires each context once (a set),
     * refuses new requests, drains the ones in flight, flushes, drops locks. */
    say("RIGHT: aioctx_graph_inactivate_all, %" PRId64 " writes in flight", in_flight(0, 2));
    int64_t t0 = aioctx_clock_ns();
    uint64_t acked0 = total_acked();
    ret = aioctx_graph_inactivate_all(g);
    expect(ret == 0, "aioctx_graph_inactivate_all");
    say("  -> 0 in %.1f ms: %" PRIu64 " more writes completed, flushed; image locks released",
        (double)(aioctx_clock_ns() - t0) / MS, total_acked() - acked0);
    expect(pthread_join(guest_thread, NULL) == 0, "pthread_join");
    say("  the guest stopped on its refused write: disk%d -> %d (%s)", w.refused_drive,
        w.refusal, strerror(-w.refusal));
    say("  %s", w.refusal_msg);
    expect(w.refusal == -EBUSY || w.refusal == -EPERM, "refused with EBUSY or EPERM");
    static uint8_t late[BLOCK]; /* then scratch space for the checksums */
    struct batch never = {0};
    struct op late_op = {&never, BLOCK};
    ret = aioctx_node_pwrite(w.node[2], late, BLOCK, 0, op_done, &late_op);
    say("  a write now: aioctx_node_pwrite(disk2) -> %d (%s)", ret, strerror(-ret));
    expect(ret == -EPERM && w.failed == 0, "writes refused with EPERM; all acked with 4096");

    /* What the guest saw acknowledged is what the destination must find. The
     * checksum covers each block's last acknowledged write. */
    int n = snprintf(line, sizeof line, "handover");
    for (int i = 0; i < NDRIVES; i++) {
        expect(w.d[i].in_flight == 0 && in_flight(i, i) == 0 && aioctx_node_is_inactive(w.node[i]),
               "every drive idle and inactive");
        uint64_t sum = FNV_INIT;
        for (int b = 0; b < NBLOCKS; b++) {
            if (w.d[i].last_acked[b] >= 0) {
                stamp(late, w.run, i, (uint64_t)w.d[i].last_acked[b]);
                sum = fnv(sum, late, BLOCK);
            }
        }
        n += snprintf(line + n, sizeof line - (size_t)n,
                      " disk%d:acked=%" PRIu64 ",highest=%" PRId64 ",sum=%016" PRIx64, i,
                      w.d[i].acked, (int64_t)w.d[i].next_seq - 1, sum);
    }
    say("sending: %s", line);
    expect(dprintf(fd, "%s\n", line) > 0, "send handover");
    read_line(in, line, sizeof line, "done ok");
    say("destination replied '%s'", line);

    fclose(in);
    aioctx_graph_free(g);
    expect(aioctx_iothread_free(io) == 0, "aioctx_iothread_free");
    say("shut down cleanly");
    return 0;
}

/* ---- destination ----------------------------------------------------- */

/* Every acknowledged write must be on disk: block b holds the last of the
 * acknowledged sequence numbers 0..acked-1 that map to it. */
static bool verify_drive(int i, const uint8_t *img, uint64_t run, uint64_t acked,
                         int64_t highest, uint64_t sum)
{
    if ((int64_t)acked != highest + 1) {
        say("disk%d: %" PRIu64 " acknowledged, highest seq %" PRId64 ": a gap", i, acked, highest);
        return false;
    }
    static uint8_t want[BLOCK];
    uint64_t got = FNV_INIT;
    for (uint64_t b = 0; b < NBLOCKS && b < acked; b++) {
        uint64_t seq = b + (acked - 1 - b) / NBLOCKS * NBLOCKS;
        stamp(want, run, i, seq);
        if (memcmp(img + b * BLOCK, want, BLOCK) != 0) {
            say("MISMATCH disk%d block %" PRIu64 ": want seq %" PRIu64 ", found '%.56s'", i, b,
                seq, (const char *)img + b * BLOCK);
            return false;
        }
        got = fnv(got, img + b * BLOCK, BLOCK);
    }
    if (got != sum)
        say("MISMATCH disk%d: checksum %016" PRIx64 ", source sent %016" PRIx64, i, got, sum);
    else
        say("disk%d: all %" PRIu64 " acknowledged writes are on disk (checksum matches)", i, acked);
    return got == sum;
}

static int run_destination(const char *addr, const char *dir)
{
    role = "destination";
    AioctxContext *main_ctx = aioctx_main_context();
    expect(main_ctx && aioctx_context_claim(main_ctx) == 0, "claim the main context");
    AioctxIoThread *io = aioctx_iothread_new("io-disk");
    AioctxGraph *g = aioctx_graph_new(main_ctx);
    expect(io && g, "aioctx_iothread_new, aioctx_graph_new");
    /* Incoming: open the images now, but take no lock and write nothing
     * until the source hands them over. */
    AioctxNode *node[NDRIVES];
    open_drives(g, node, dir, aioctx_iothread_context(io), main_ctx,
                AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE);

    char host[64];
    const char *colon = strrchr(addr, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET};
    expect(colon && colon - addr < (int)sizeof host, "--incoming HOST:PORT");
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);
    expect(inet_pton(AF_INET, host, &sa.sin_addr) == 1 && lfd >= 0 &&
           setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
           bind(lfd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(lfd, 1) == 0,
           "listen on the --incoming address");
    say("images opened inactive (no lock yet); listening on %s", addr);
    int fd = accept(lfd, NULL, NULL); /* bounded by the watchdog */
    expect(fd >= 0 && close(lfd) == 0, "accept");
    FILE *in = stream(fd);
    char line[512];
    read_line(in, line, sizeof line, "hello run=");
    uint64_t run = strtoull(line + strlen("hello run="), NULL, 16);

    /* Taking over too early must fail: the source still writes the images. */
    int ret = aioctx_graph_activate_all(g);
    say("activate_all before the handover -> %d (%s):", ret, strerror(-ret));
    say("  %s", aioctx_last_error());
    expect(ret == -EAGAIN && strstr(aioctx_last_error(), "locked by another process"),
           "activate_all refused while the source holds the image lock");
    for (int i = 0; i < NDRIVES; i++)
        expect(aioctx_node_is_inactive(node[i]), "nodes stay inactive after a refused activate");
    expect(dprintf(fd, "ready\n") > 0, "send ready");

    read_line(in, line, sizeof line, "handover");
    ret = aioctx_graph_activate_all(g);
    say("handover received; activate_all -> %d: image locks taken, nodes active", ret);
    expect(ret == 0, "aioctx_graph_activate_all");

    /* Read each image back through the block layer and check it. */
    static uint8_t img[NDRIVES][IMAGE_SIZE];
    static struct op ops[NDRIVES][1 + NEW_WRITES];
    struct batch b = {0};
    for (int i = 0; i < NDRIVES; i++) {
        ops[i][0] = (struct op){&b, IMAGE_SIZE};
        atomic_fetch_add(&b.pending, 1);
        expect(aioctx_node_pread(node[i], img[i], IMAGE_SIZE, 0, op_done, &ops[i][0]) == 0,
               "aioctx_node_pread");
    }
    batch_wait(main_ctx, &b, "read the images back");
    bool ok = true;
    uint64_t next[NDRIVES];
    const char *p = line + strlen("handover");
    for (int i = 0, used = 0; i < NDRIVES; i++, p += used) {
        uint64_t sum;
        int64_t highest;
        int d = -1;
        expect(sscanf(p, " disk%d:acked=%" SCNu64 ",highest=%" SCNd64 ",sum=%" SCNx64 "%n", &d,
                      &next[i], &highest, &sum, &used) == 4 && d == i, "parse the handover");
        ok &= verify_drive(i, img[i], run, next[i], highest, sum);
    }

    /* The VM runs here now: its writes continue where the guest stopped. */
    for (int i = 0; i < NDRIVES; i++) {
        for (int k = 1; k <= NEW_WRITES; k++) {
            uint64_t seq = next[i] + (uint64_t)k - 1;
            stamp(img[i] + k * BLOCK, run, i, seq); /* img is free after the check */
            ops[i][k] = (struct op){&b, BLOCK};
            atomic_fetch_add(&b.pending, 1);
            expect(aioctx_node_pwrite(node[i], img[i] + k * BLOCK, BLOCK, block_offset(seq),
                                      op_done, &ops[i][k]) == 0, "aioctx_node_pwrite");
        }
    }
    batch_wait(main_ctx, &b, "write after taking over");
    say("wrote %d more blocks per drive: all acknowledged", NEW_WRITES);
    expect(dprintf(fd, "%s\n", ok ? "done ok" : "done FAILED: data mismatch") > 0, "send done");

    fclose(in);
    aioctx_graph_free(g); /* closes the images: their locks go */
    expect(aioctx_iothread_free(io) == 0, "aioctx_iothread_free");
    say(ok ? "shut down cleanly" : "acknowledged writes are missing: exit 1");
    return ok ? 0 : 1;
}

/* ---- demo: both roles on temporary images ---------------------------- */

static int run_demo(void)
{
    char path[4096], incoming[32];
    strcpy(demo_dir, "/tmp/aioctx-migrate-XXXXXX");
    expect(mkdtemp(demo_dir) && atexit(demo_cleanup) == 0, "mkdtemp");
    for (int i = 0; i < NDRIVES; i++) {
        snprintf(demo_image[i], sizeof demo_image[i], "%s/disk%d.img", demo_dir, i);
        FILE *f = fopen(demo_image[i], "w");
        expect(f && ftruncate(fileno(f), IMAGE_SIZE) == 0 && fclose(f) == 0, "create image");
    }
    /* A free port: bind port 0, read back what the kernel chose, close. */
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    expect(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
           getsockname(fd, (struct sockaddr *)&sa, &len) == 0 && close(fd) == 0, "free port");
    snprintf(incoming, sizeof incoming, "127.0.0.1:%d", ntohs(sa.sin_port));
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    expect(n > 0, "readlink /proc/self/exe");
    path[n] = '\0';
    say("images in %s; starting the destination with --incoming %s", demo_dir, incoming);
    fflush(stdout);

    /* Fork before any aioctx call: no thread is lost in the child, which execs. */
    demo_child = fork();
    expect(demo_child >= 0, "fork");
    if (demo_child == 0) {
        execl(path, path, "--incoming", incoming, "--images", demo_dir, (char *)NULL);
        _exit(127);
    }
    int status, ret = run_source(demo_dir, ntohs(sa.sin_port));
    role = "demo";
    expect(waitpid(demo_child, &status, 0) == demo_child, "waitpid");
    demo_child = 0;
    bool dst_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    say("source %s, destination %s", ret ? "FAILED" : "ok", dst_ok ? "ok" : "FAILED");
    return ret == 0 && dst_ok ? 0 : 1;
}

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s --demo\n"
            "       %s --incoming 127.0.0.1:PORT --images DIR   (destination, first)\n"
            "       %s --images DIR [--port PORT]               (source)\n",
            argv0, argv0, argv0);
    return 2;
}

int main(int argc, char **argv)
{
    const char *images = NULL, *incoming = NULL, *env = getenv("AIOCTX_TEST_TIMEOUT_SCALE");
    int port = 4444;
    bool demo = false;
    for (int i = 1; i < argc; i++) {
        bool has_value = i + 1 < argc;
        if (strcmp(argv[i], "--demo") == 0)
            demo = true;
        else if (strcmp(argv[i], "--images") == 0 && has_value)
            images = argv[++i];
        else if (strcmp(argv[i], "--incoming") == 0 && has_value)
            incoming = argv[++i];
        else if (strcmp(argv[i], "--port") == 0 && has_value)
            port = atoi(argv[++i]);
        else
            return usage(argv[0]);
    }
    if (demo ? images || incoming : !images)
        return usage(argv[0]);
    setvbuf(stdout, NULL, _IOLBF, 0); /* two processes share stdout: whole lines */
    if (env && atoi(env) > 1)
        scale = atoi(env);
    signal(SIGPIPE, SIG_IGN);   /* a peer that died: send fails, we report it */
    signal(SIGALRM, watchdog_fired);
    alarm((unsigned)(30 * scale)); /* last resort: every wait times out sooner */
    if (demo)
        return run_demo();
    return incoming ? run_destination(incoming, images) : run_source(images, port);
}
