/*
 * test-file: the raw-file driver.
 *
 * aioctx_node_open_file with AIOCTX_OPEN_RDWR; pread/pwrite submitted from
 * any thread (main, plain threads, the IOThread itself) complete with
 * cb(opaque, ret) in the node's home thread with its context held (ret =
 * bytes or -errno), the data checked with plain pread(2); short reads at end
 * of file; I/O errors as -errno; open errors (missing file, directory,
 * read-only file, bad flags) naming the path; -EPERM for writes on inactive
 * or read-only nodes, -ENOTSUP on C-driver nodes; the image write lock
 * between two opens in one process (open file description locks conflict
 * there too), dropped by inactivate_all and by graph_free.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/types.h>

#define BLK 4096
#define IMG_SIZE (1024 * 1024)

static AioctxContext *main_ctx;
static pthread_t main_thread;
static AioctxIoThread *iot;
static AioctxContext *iot_ctx;
static pthread_t iot_thread;
static char dir[64];
static char img[128], img2[128], ro_img[128], missing[128];

/* A TAP skip: counts as a passing test with the SKIP directive. */
static void skip(const char *name, const char *why)
{
    tap_init_output();
    tap_st.run++;
    printf("ok %d - %s # SKIP %s\n", tap_st.run, name, why);
    fflush(stdout);
}

/* ---- I/O completion records ------------------------------------------------------ */

struct io {
    AioctxContext *ctx;         /* the node's context (for the depth check) */
    atomic_int done;
    atomic_int calls;
    int64_t ret;
    pthread_t thread;
    int depth;
};

static void io_init(struct io *io, AioctxNode *n)
{
    memset(io, 0, sizeof *io);
    io->ctx = aioctx_node_context(n);
}

static void io_cb(void *opaque, int64_t ret)
{
    struct io *io = opaque;
    io->ret = ret;
    io->thread = pthread_self();
    io->depth = aioctx_lock_depth(io->ctx);
    atomic_fetch_add(&io->calls, 1);
    atomic_store(&io->done, 1);
}

static int io_wait(struct io *io)
{
    return wait_count(io->ctx, &io->done, 1);
}

static void fill(unsigned char *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)((seed * 131u + i * 7u + (i >> 8)) & 0xff);
}

/* How many of this process's fds refer to a file under dir. */
static int fds_in_dir(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    char link[PATH_MAX + 32], target[PATH_MAX];
    int n = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t l = readlink(link, target, sizeof target - 1);
        if (l <= 0)
            continue;
        target[l] = '\0';
        n += strncmp(target, dir, strlen(dir)) == 0;
    }
    closedir(d);
    return n;
}

/* Waits (up to 1 s, scaled) until want fds of this process refer to an image:
 * a freed graph's files may be closed by a worker thread a moment later (see
 * test_reopen_after_free). Returns the last count. */
static int settle_fds_at(int want)
{
    int n = fds_in_dir();
    for (int i = 0; n != want && i < 100 * tap_scale(); i++) {
        tap_sleep_ms(10);
        n = fds_in_dir();
    }
    return n;
}

/* Waits until no fd refers to an image (what the previous test freed). */
static int settle_fds(void)
{
    return settle_fds_at(0);
}

/* ---- submitting from other threads ---------------------------------------------------- */

struct submit {
    AioctxNode *node;
    int write;
    void *buf;
    size_t len;
    uint64_t off;
    struct io *io;
    int rc;
};

static void *submit_thread(void *arg)
{
    struct submit *s = arg;
    s->rc = s->write ? aioctx_node_pwrite(s->node, s->buf, s->len, s->off, io_cb, s->io)
                     : aioctx_node_pread(s->node, s->buf, s->len, s->off, io_cb, s->io);
    return NULL;
}

static void submit_bh(void *arg)
{
    submit_thread(arg);
}

/* Submits a pwrite (write 1) or a pread from a plain thread, joined before it
 * returns; returns what the submission returned. */
static int submit_from_thread(AioctxNode *n, int write, void *buf, size_t len, uint64_t off, struct io *io)
{
    struct submit s = { n, write, buf, len, off, io, -99 };
    pthread_t th;
    pthread_create(&th, NULL, submit_thread, &s);
    pthread_join(th, NULL);
    return s.rc;
}

static void test_basic_io(void)
{
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(g, "disk0", iot_ctx, img, AIOCTX_OPEN_RDWR);
    if (!ok(n != NULL, "open_file(RDWR) on an IOThread context: %s", n ? "ok" : aioctx_last_error())) {
        aioctx_graph_free(g);
        return;
    }
    ok(!aioctx_node_is_inactive(n), "the node is active");
    ok(aioctx_node_context(n) == iot_ctx, "its context is the IOThread's");
    is_str(aioctx_node_name(n), "disk0", "its name");
    if (run_backend())
        is_str(aioctx_node_io_backend(n), run_backend(), "its requests run on AIOCTX_IO_BACKEND's backend");
    is_int((long long)aioctx_node_alignment(n), 1, "without O_DIRECT, no alignment is needed");

    static unsigned char w1[BLK], w2[BLK], w3[BLK], r1[BLK], r2[2 * BLK];
    fill(w1, BLK, 1);
    fill(w2, BLK, 2);
    fill(w3, BLK, 3);
    struct io io;

    /* From the main thread. */
    io_init(&io, n);
    is_int(aioctx_node_pwrite(n, w1, BLK, 2 * BLK, io_cb, &io), 0, "pwrite from the main thread -> 0 (submitted)");
    is_int(io_wait(&io), 0, "  its completion arrives");
    is_int(io.ret, BLK, "  cb ret = 4096 bytes");
    is_int(atomic_load(&io.calls), 1, "  cb called once");
    ok(pthread_equal(io.thread, iot_thread), "  cb ran in the IOThread (the node's home)");
    ok(io.depth >= 1, "  with the node's context held (depth %d)", io.depth);
    ok(file_has(img, 2 * BLK, w1, BLK), "  read(2) finds the data in the file");

    /* From a plain thread. */
    io_init(&io, n);
    is_int(submit_from_thread(n, 1, w2, BLK, 3 * BLK, &io), 0, "pwrite from another thread -> 0");
    is_int(io_wait(&io), 0, "  its completion arrives");
    is_int(io.ret, BLK, "  cb ret = 4096");
    ok(pthread_equal(io.thread, iot_thread), "  cb ran in the IOThread");
    ok(file_has(img, 3 * BLK, w2, BLK), "  data in the file");

    /* From the IOThread itself, inside a BH. */
    io_init(&io, n);
    struct submit sb = { n, 1, w3, BLK, 5 * BLK, &io, -99 };
    aioctx_bh_schedule_oneshot(iot_ctx, submit_bh, &sb);
    is_int(io_wait(&io), 0, "pwrite submitted from a BH on the IOThread completes");
    is_int(sb.rc, 0, "  submitted -> 0");
    is_int(io.ret, BLK, "  cb ret = 4096");
    ok(pthread_equal(io.thread, iot_thread), "  cb ran in the IOThread");
    ok(file_has(img, 5 * BLK, w3, BLK), "  data in the file");

    /* Reads from another thread. */
    io_init(&io, n);
    memset(r1, 0xee, BLK);
    is_int(submit_from_thread(n, 0, r1, BLK, 2 * BLK, &io), 0, "pread from another thread -> 0");
    is_int(io_wait(&io), 0, "  its completion arrives");
    is_int(io.ret, BLK, "  cb ret = 4096");
    ok(pthread_equal(io.thread, iot_thread), "  cb ran in the IOThread");
    ok(io.depth >= 1, "  with the context held");
    ok(memcmp(r1, w1, BLK) == 0, "  the buffer holds what was written");

    /* Short read at end of file, and a read past it. */
    io_init(&io, n);
    is_int(aioctx_node_pread(n, r2, 2 * BLK, IMG_SIZE - 1000, io_cb, &io), 0, "pread of 8 KiB 1000 bytes before EOF");
    io_wait(&io);
    is_int(io.ret, 1000, "  short read: 1000 bytes");
    io_init(&io, n);
    is_int(aioctx_node_pread(n, r2, BLK, (uint64_t)IMG_SIZE * 4, io_cb, &io), 0, "pread past EOF");
    io_wait(&io);
    is_int(io.ret, 0, "  0 bytes");

    /* I/O errors come back as -errno in the callback. */
    io_init(&io, n);
    is_int(aioctx_node_pwrite(n, w1, BLK, UINT64_MAX - 10, io_cb, &io), 0, "pwrite at offset 2^64-11 is submitted");
    io_wait(&io);
    is_int(io.ret, -EINVAL, "  cb ret = -EINVAL (offset beyond off_t)");
    io_init(&io, n);
    is_int(aioctx_node_pwrite(n, w1, BLK, (uint64_t)1 << 62, io_cb, &io), 0, "pwrite at offset 2^62 is submitted");
    io_wait(&io);
    ok(io.ret < 0, "  cb ret is a negative errno (%lld: %s)", (long long)io.ret,
       io.ret < 0 ? strerror((int)-io.ret) : "none");
    is_int(aioctx_node_in_flight(n), 0, "no request left in flight after errors");

    /* Invalid arguments: refused, no callback. */
    io_init(&io, n);
    is_int(aioctx_node_pwrite(n, NULL, BLK, 0, io_cb, &io), -EINVAL, "pwrite(NULL buf, 4096) -> -EINVAL");
    is_int(aioctx_node_pread(n, NULL, BLK, 0, io_cb, &io), -EINVAL, "pread(NULL buf, 4096) -> -EINVAL");
    is_int(aioctx_node_pwrite(NULL, w1, BLK, 0, io_cb, &io), -EINVAL, "pwrite(NULL node) -> -EINVAL");
    is_int(aioctx_node_pread(NULL, r1, BLK, 0, io_cb, &io), -EINVAL, "pread(NULL node) -> -EINVAL");
    is_int(atomic_load(&io.calls), 0, "  no callback for refused requests");

    /* No callback: drain is how to know it finished. */
    static unsigned char w4[BLK];
    fill(w4, BLK, 4);
    is_int(aioctx_node_pwrite(n, w4, BLK, 7 * BLK, NULL, NULL), 0, "pwrite with a NULL callback");
    is_int(aioctx_node_drain(n), 0, "drain");
    is_int(aioctx_node_in_flight(n), 0, "  in_flight 0");
    ok(file_has(img, 7 * BLK, w4, BLK), "  the data is in the file");

    is_int(aioctx_node_flush(n), 0, "node_flush (fdatasync on a worker)");

    aioctx_graph_free(g);
}

/* A node on the main context: its completions run in the main thread. */
static void test_main_ctx_node(void)
{
    settle_fds();
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(g, "disk-main", main_ctx, img2, AIOCTX_OPEN_RDWR);
    ok(n != NULL, "open_file on the main context");
    static unsigned char w[BLK];
    fill(w, BLK, 9);
    struct io io;
    io_init(&io, n);
    is_int(submit_from_thread(n, 1, w, BLK, BLK, &io), 0, "pwrite from another thread");
    is_int(io_wait(&io), 0, "the main thread's poll runs the completion");
    ok(pthread_equal(io.thread, main_thread), "  cb ran in the main thread");
    ok(io.depth >= 1, "  with the main context held");
    is_int(io.ret, BLK, "  ret 4096");
    ok(file_has(img2, BLK, w, BLK), "  data in the file");
    aioctx_graph_free(g);
}

/* Many writers at once, on two nodes with different homes. */
#define WRITERS 4
#define PER_WRITER 64

struct writer {
    AioctxNode *nodes[2];
    int id;
    unsigned char (*bufs)[BLK];
    struct io *ios;
    int refused;
};

static void *writer_thread(void *arg)
{
    struct writer *w = arg;
    for (int i = 0; i < PER_WRITER; i++) {
        int k = w->id * PER_WRITER + i;
        AioctxNode *n = w->nodes[k % 2];
        if (aioctx_node_pwrite(n, w->bufs[k], BLK, (uint64_t)(16 + k / 2) * BLK, io_cb, &w->ios[k]) != 0)
            w->refused++;
    }
    return NULL;
}

static void test_concurrent(void)
{
    settle_fds();
    enum { TOTAL = WRITERS * PER_WRITER };
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n0 = aioctx_node_open_file(g, "cc-iot", iot_ctx, img, AIOCTX_OPEN_RDWR);
    AioctxNode *n1 = aioctx_node_open_file(g, "cc-main", main_ctx, img2, AIOCTX_OPEN_RDWR);
    ok(n0 && n1, "two RDWR nodes (IOThread, main) on two images");
    unsigned char (*bufs)[BLK] = malloc(sizeof(*bufs) * TOTAL);
    struct io *ios = calloc(TOTAL, sizeof *ios);
    for (int k = 0; k < TOTAL; k++) {
        fill(bufs[k], BLK, 1000u + (unsigned)k);
        io_init(&ios[k], k % 2 ? n1 : n0);
    }
    struct writer w[WRITERS];
    pthread_t th[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (struct writer){ { n0, n1 }, i, bufs, ios, 0 };
        pthread_create(&th[i], NULL, writer_thread, &w[i]);
    }
    int refused = 0;
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(th[i], NULL);
        refused += w[i].refused;
    }
    is_int(refused, 0, "%d writes from %d threads all submitted", TOTAL, WRITERS);
    is_int(aioctx_node_drain(n0), 0, "drain the IOThread node");
    is_int(aioctx_node_drain(n1), 0, "drain the main node");
    int all_done = 1, all_ret = 1, all_thread = 1, all_once = 1, all_data = 1;
    for (int k = 0; k < TOTAL; k++) {
        all_done &= atomic_load(&ios[k].done);
        all_once &= atomic_load(&ios[k].calls) == 1;
        all_ret &= ios[k].ret == BLK;
        all_thread &= pthread_equal(ios[k].thread, k % 2 ? main_thread : iot_thread) && ios[k].depth >= 1;
        all_data &= file_has(k % 2 ? img2 : img, (uint64_t)(16 + k / 2) * BLK, bufs[k], BLK);
    }
    ok(all_done, "every callback ran before drain returned");
    ok(all_once, "each exactly once");
    ok(all_ret, "each reported 4096 bytes");
    ok(all_thread, "each in its node's home thread with the context held");
    ok(all_data, "every write is in its file");
    free(bufs);
    free(ios);
    aioctx_graph_free(g);
}

/* ---- open errors ------------------------------------------------------------------------------ */

static void test_open_errors(void)
{
    AioctxGraph *g = aioctx_graph_new(NULL);

    ok(aioctx_node_open_file(g, "missing", iot_ctx, missing, AIOCTX_OPEN_RDWR) == NULL,
       "open_file of a missing file -> NULL");
    like(aioctx_last_error(), missing, "  the message names the path: '%s'", aioctx_last_error());
    like(aioctx_last_error(), strerror(ENOENT), "  and says '%s'", strerror(ENOENT));
    ok(aioctx_node_open_file(g, "missing", iot_ctx, missing, 0) == NULL, "read-only too -> NULL");
    ok(aioctx_graph_find(g, "missing") == NULL, "no node was added");

    ok(aioctx_node_open_file(g, "dir", iot_ctx, dir, 0) == NULL, "open_file of a directory -> NULL");
    like(aioctx_last_error(), dir, "  the message names the path: '%s'", aioctx_last_error());
    like(aioctx_last_error(), "directory", "  and says it is a directory");
    ok(aioctx_node_open_file(g, "dir", iot_ctx, dir, AIOCTX_OPEN_RDWR) == NULL, "a directory with RDWR -> NULL");
    like(aioctx_last_error(), "directory", "  says it is a directory: '%s'", aioctx_last_error());

    /* A read-only file (root bypasses the mode bits). */
    if (geteuid() == 0 || access(ro_img, W_OK) == 0) {
        AioctxNode *n = aioctx_node_open_file(g, "ro-rw", iot_ctx, ro_img, AIOCTX_OPEN_RDWR);
        skip("open_file(RDWR) of a 0444 file -> NULL with EACCES", "running as root: the mode does not stop the open");
        skip("  the message names the path", "running as root");
        skip("  and says EACCES", "running as root");
        diag("as root, open_file(RDWR) of the 0444 file gave %s", n ? "a node" : aioctx_last_error());
    } else {
        ok(aioctx_node_open_file(g, "ro-rw", iot_ctx, ro_img, AIOCTX_OPEN_RDWR) == NULL,
           "open_file(RDWR) of a 0444 file -> NULL");
        like(aioctx_last_error(), ro_img, "  the message names the path: '%s'", aioctx_last_error());
        like(aioctx_last_error(), strerror(EACCES), "  and says '%s'", strerror(EACCES));
    }
    AioctxNode *ro = aioctx_node_open_file(g, "ro", iot_ctx, ro_img, 0);
    ok(ro != NULL, "open_file of the 0444 file without RDWR works");
    struct io io;
    static unsigned char b[BLK];
    fill(b, BLK, 5);
    io_init(&io, ro);
    is_int(aioctx_node_pwrite(ro, b, BLK, 0, io_cb, &io), -EPERM, "  pwrite on it -> -EPERM");
    like(aioctx_last_error(), "ro", "  the message names the node: '%s'", aioctx_last_error());
    is_int(aioctx_node_pread(ro, b, BLK, 0, io_cb, &io), 0, "  pread works");
    io_wait(&io);
    is_int(io.ret, BLK, "  read 4096 bytes");
    is_int(atomic_load(&io.calls), 1, "  one callback (none for the refused write)");

    ok(aioctx_node_open_file(g, "bad", iot_ctx, img, 0x80) == NULL, "unknown flags -> NULL");
    ok(aioctx_last_error()[0] != '\0', "  with a message: '%s'", aioctx_last_error());
    ok(aioctx_node_open_file(g, "bad", iot_ctx, NULL, 0) == NULL, "NULL path -> NULL");
    ok(aioctx_node_open_file(g, "bad", NULL, img, 0) == NULL, "NULL context -> NULL");
    ok(aioctx_node_open_file(NULL, "bad", iot_ctx, img, 0) == NULL, "NULL graph -> NULL");
    ok(aioctx_node_open_file(g, "", iot_ctx, img, 0) == NULL, "empty name -> NULL");
    ok(aioctx_node_open_file(g, "ro", iot_ctx, img, 0) == NULL, "a taken name -> NULL");
    like(aioctx_last_error(), "ro", "  the message names it: '%s'", aioctx_last_error());
    aioctx_graph_free(g);
}

/* ---- -EPERM and -ENOTSUP ----------------------------------------------------------------------- */

static void test_refusals(void)
{
    settle_fds();
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *rdonly = aioctx_node_open_file(g, "rdonly", iot_ctx, img, 0);
    AioctxNode *rw = aioctx_node_open_file(g, "rw", iot_ctx, img2, AIOCTX_OPEN_RDWR);
    AioctxNode *cdrv = aioctx_node_new(g, "cdrv", iot_ctx, NULL, NULL);
    ok(rdonly && rw && cdrv, "a read-only file node, a RDWR file node and a C-driver node");
    static unsigned char b[BLK], r[BLK];
    fill(b, BLK, 11);
    struct io io;

    io_init(&io, rdonly);
    is_int(aioctx_node_pwrite(rdonly, b, BLK, 0, io_cb, &io), -EPERM, "pwrite on a node opened without RDWR -> -EPERM");
    like(aioctx_last_error(), "rdonly", "  names the node: '%s'", aioctx_last_error());
    is_int(aioctx_node_in_flight(rdonly), 0, "  nothing in flight");
    is_int(aioctx_node_start_request(rdonly, true), -EPERM, "start_request(write) on it -> -EPERM");

    is_int(aioctx_graph_inactivate_all(g), 0, "inactivate_all");
    ok(aioctx_node_is_inactive(rw), "the RDWR node is inactive");
    is_int(aioctx_node_pwrite(rw, b, BLK, 0, io_cb, &io), -EPERM, "pwrite on an inactive node -> -EPERM");
    like(aioctx_last_error(), "inactive", "  says it is inactive: '%s'", aioctx_last_error());
    is_int(aioctx_node_pread(rw, r, BLK, 0, io_cb, &io), 0, "pread on an inactive node -> 0");
    io_wait(&io);
    is_int(io.ret, BLK, "  read 4096 bytes");
    is_int(atomic_load(&io.calls), 1, "  one callback (none for the refused write)");
    is_int(aioctx_graph_activate_all(g), 0, "activate_all");
    io_init(&io, rw);
    is_int(aioctx_node_pwrite(rw, b, BLK, 0, io_cb, &io), 0, "pwrite accepted again");
    io_wait(&io);
    is_int(io.ret, BLK, "  wrote 4096 bytes");
    ok(file_has(img2, 0, b, BLK), "  data in the file");
    io_init(&io, rdonly);
    is_int(aioctx_node_pwrite(rdonly, b, BLK, 0, io_cb, &io), -EPERM,
           "the read-only node is still read-only after activate_all");

    io_init(&io, cdrv);
    is_int(aioctx_node_pread(cdrv, r, BLK, 0, io_cb, &io), -ENOTSUP, "pread on a C-driver node -> -ENOTSUP");
    like(aioctx_last_error(), "cdrv", "  names the node: '%s'", aioctx_last_error());
    is_int(aioctx_node_pwrite(cdrv, b, BLK, 0, io_cb, &io), -ENOTSUP, "pwrite on a C-driver node -> -ENOTSUP");
    is_int(aioctx_node_in_flight(cdrv), 0, "  nothing left in flight");
    tap_sleep_ms(10);
    is_int(atomic_load(&io.calls), 0, "  no callback");
    aioctx_graph_free(g);
}

/* ---- the image write lock within one process ---------------------------------------------------- */

static void test_lock_in_process(void)
{
    int fds0 = settle_fds();
    AioctxGraph *g1 = aioctx_graph_new(NULL);
    AioctxGraph *g2 = aioctx_graph_new(NULL);
    AioctxNode *a = aioctx_node_open_file(g1, "lk-a", iot_ctx, img, AIOCTX_OPEN_RDWR);
    ok(a != NULL, "first active RDWR open of the image");

    ok(aioctx_node_open_file(g2, "lk-b", main_ctx, img, AIOCTX_OPEN_RDWR) == NULL,
       "a second active RDWR open of the same image (another graph) -> NULL");
    like(aioctx_last_error(), "locked by another process", "  EAGAIN: '%s'", aioctx_last_error());
    like(aioctx_last_error(), img, "  names the path");
    ok(aioctx_node_open_file(g1, "lk-b", main_ctx, img, AIOCTX_OPEN_RDWR) == NULL,
       "... also in the same graph -> NULL");
    like(aioctx_last_error(), "locked by another process", "  EAGAIN");
    ok(aioctx_graph_find(g1, "lk-b") == NULL && aioctx_graph_find(g2, "lk-b") == NULL, "  no node added");

    AioctxNode *reader = aioctx_node_open_file(g2, "lk-reader", main_ctx, img, 0);
    ok(reader != NULL, "a read-only open of the locked image works");
    AioctxNode *b = aioctx_node_open_file(g2, "lk-b", main_ctx, img, AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE);
    ok(b != NULL, "RDWR|INACTIVE open of the locked image works (incoming migration)");
    ok(b && aioctx_node_is_inactive(b), "  the node is inactive");

    is_int(aioctx_graph_activate_all(g2), -EAGAIN, "activate_all while the other node holds the lock -> -EAGAIN");
    like(aioctx_last_error(), "locked by another process", "  '%s'", aioctx_last_error());
    ok(aioctx_node_is_inactive(b), "  the node stays inactive");
    static unsigned char w[BLK];
    fill(w, BLK, 21);
    struct io io;
    io_init(&io, b);
    is_int(aioctx_node_pwrite(b, w, BLK, 9 * BLK, io_cb, &io), -EPERM, "  writes refused (-EPERM)");

    is_int(aioctx_graph_inactivate_all(g1), 0, "the holder inactivates (drops the lock)");
    is_int(aioctx_graph_activate_all(g2), 0, "now activate_all of the second graph -> 0");
    ok(!aioctx_node_is_inactive(b), "  the node is active");
    io_init(&io, b);
    is_int(aioctx_node_pwrite(b, w, BLK, 9 * BLK, io_cb, &io), 0, "  pwrite accepted");
    io_wait(&io);
    is_int(io.ret, BLK, "  wrote 4096 bytes");
    ok(file_has(img, 9 * BLK, w, BLK), "  data in the file");

    is_int(aioctx_graph_activate_all(g1), -EAGAIN, "the first graph cannot take it back now -> -EAGAIN");
    ok(aioctx_node_is_inactive(a), "  its node stays inactive");
    is_int(aioctx_graph_inactivate_all(g2), 0, "the second graph hands back");
    is_int(aioctx_graph_activate_all(g1), 0, "the first graph activates -> 0");
    ok(!aioctx_node_is_inactive(a), "  active");

    /* graph_free closes the files, releasing the lock (eventually: see
     * test_reopen_after_free for "at once"). */
    aioctx_graph_free(g1);
    /* On io_uring a node has a second open file of the image, the ring's. */
    int per_node = b && strcmp(aioctx_node_io_backend(b), "io_uring") == 0 ? 2 : 1;
    ok(settle_fds() <= 3 * per_node, "the holder's graph freed: its image fd is closed");
    AioctxGraph *g3 = aioctx_graph_new(NULL);
    ok(aioctx_node_open_file(g3, "lk-c", iot_ctx, img, AIOCTX_OPEN_RDWR) != NULL,
       "after graph_free of the holder, an active RDWR open works");
    aioctx_graph_free(g3);
    aioctx_graph_free(g2);
    is_int(settle_fds(), fds0, "every image fd closed after graph_free (%d before)", fds0);
}

/* After a write completed and the node was drained, graph_free must release
 * the image (fd and write lock) before it returns: a VMM that removes a drive
 * and adds it back, or hands the image to another process, must not get a
 * spurious EAGAIN. */
static void test_reopen_after_free(void)
{
    enum { ITER = 200 };
    static unsigned char b[BLK];
    fill(b, BLK, 77);
    settle_fds();
    int fails = 0, first_fail = -1, open_fds = 0, fail_ctx = -1;
    char msg[512] = "";
    for (int i = 0; i < ITER; i++) {
        AioctxContext *c = i % 2 ? main_ctx : iot_ctx;
        AioctxGraph *g = aioctx_graph_new(NULL);
        AioctxNode *n = aioctx_node_open_file(g, "reopen", c, img, AIOCTX_OPEN_RDWR);
        if (!n) {
            if (first_fail < 0) {
                first_fail = i;
                fail_ctx = (i - 1) % 2;     /* the freed node's context */
                snprintf(msg, sizeof msg, "%s", aioctx_last_error());
            }
            fails++;
            aioctx_graph_free(g);
            settle_fds();
            continue;
        }
        struct io io;
        io_init(&io, n);
        aioctx_node_pwrite(n, b, BLK, 0, io_cb, &io);
        io_wait(&io);
        aioctx_node_drain(n);
        aioctx_graph_free(g);
        open_fds += fds_in_dir() != 0;
    }
    is_int(fails, 0, "%d x (open RDWR, pwrite, completion, drain, graph_free): the next open never fails", ITER);
    if (fails)
        diag("first failure at iteration %d (the node freed just before was on the %s context): %s",
             first_fail, fail_ctx ? "main" : "IOThread", msg);
    is_int(open_fds, 0, "  and no image fd is still open when graph_free returned");
    settle_fds();
}

/* graph_free with requests in flight: they complete later, then the file is closed. */
static void test_free_in_flight(void)
{
    int fds0 = settle_fds();
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *ni = aioctx_node_open_file(g, "fif-iot", iot_ctx, img, AIOCTX_OPEN_RDWR);
    AioctxNode *nm = aioctx_node_open_file(g, "fif-main", main_ctx, img2, AIOCTX_OPEN_RDWR);
    ok(ni && nm, "two RDWR nodes");
    enum { N = 16 };
    static unsigned char bufs[2 * N][BLK];
    static struct io ios[2 * N];
    int submitted = 0;
    for (int k = 0; k < 2 * N; k++) {
        AioctxNode *n = k % 2 ? nm : ni;
        fill(bufs[k], BLK, 500u + (unsigned)k);
        io_init(&ios[k], n);
        submitted += aioctx_node_pwrite(n, bufs[k], BLK, (uint64_t)(200 + k / 2) * BLK, io_cb, &ios[k]) == 0;
    }
    is_int(submitted, 2 * N, "%d writes submitted", 2 * N);
    aioctx_graph_free(g);
    ok(1, "graph_free with the writes in flight returns");
    int waited = 1, rets = 1, data = 1;
    for (int k = 0; k < 2 * N; k++) {
        waited &= io_wait(&ios[k]) == 0;
        rets &= ios[k].ret == BLK && atomic_load(&ios[k].calls) == 1;
        data &= file_has(k % 2 ? img2 : img, (uint64_t)(200 + k / 2) * BLK, bufs[k], BLK);
    }
    ok(waited, "every callback still runs after graph_free");
    ok(rets, "  each once, with 4096");
    ok(data, "  the data is in the files");
    /* The last reference to each file goes with its last completion. */
    is_int(settle_fds_at(fds0), fds0, "the image fds are closed once the requests completed");
    AioctxGraph *g2 = aioctx_graph_new(NULL);
    ok(aioctx_node_open_file(g2, "fif-again", iot_ctx, img, AIOCTX_OPEN_RDWR) != NULL,
       "  and the write lock is gone (a new active RDWR open works)");
    aioctx_graph_free(g2);
}

/* A node opened by a relative path reads and writes that file even after the
 * process changed directory, on either backend (the io_uring backend opens
 * a second file for its ring on first use: from the node's open file, not by
 * the path again, which now names another image). */
static void test_relative_path_after_chdir(void)
{
    char other[96], cwd[PATH_MAX];
    snprintf(other, sizeof other, "%s/elsewhere", dir);
    static unsigned char w[BLK], r[BLK], theirs[BLK];
    fill(w, BLK, 41);
    fill(theirs, BLK, 42);
    int fd = -1;
    if (!ok(getcwd(cwd, sizeof cwd) && mkdir(other, 0755) == 0 && chdir(dir) == 0, "chdir into the image's directory"))
        return;
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(g, "relative", main_ctx, "disk.img", AIOCTX_OPEN_RDWR);
    ok(n != NULL, "open_file(\"disk.img\", RDWR): %s", n ? "ok" : aioctx_last_error());
    /* Another image of that name, where the process goes next. */
    if (n && chdir(other) == 0 && (fd = open("disk.img", O_RDWR | O_CREAT | O_TRUNC, 0644)) >= 0 &&
        pwrite(fd, theirs, BLK, 5 * BLK) == BLK) {
        struct io io;
        io_init(&io, n);
        is_int(aioctx_node_pwrite(n, w, BLK, 5 * BLK, io_cb, &io), 0, "after chdir: pwrite -> 0");
        is_int(io_wait(&io) == 0 ? io.ret : -1, BLK, "  completes with 4096");
        ok(file_has(img, 5 * BLK, w, BLK), "  the data is in the node's image");
        ok(file_has("disk.img", 5 * BLK, theirs, BLK), "  and not in the file the path names now");
        /* Out of the page cache (where the file system allows): the read
         * then goes to the backend, not to the inline page-cache path. */
        is_int(aioctx_node_flush(n), 0, "flush -> 0");
        int own = open(img, O_RDONLY);
        ok(own >= 0 && fsync(own) == 0 && posix_fadvise(own, 0, 0, POSIX_FADV_DONTNEED) == 0,
           "image dropped from the page cache");
        if (own >= 0)
            close(own);
        io_init(&io, n);
        is_int(aioctx_node_pread(n, r, BLK, 5 * BLK, io_cb, &io), 0, "pread -> 0");
        is_int(io_wait(&io) == 0 ? io.ret : -1, BLK, "  completes with 4096");
        ok(memcmp(r, w, BLK) == 0, "  and reads the node's image");
    } else {
        ok(0, "set up a second disk.img in another directory");
    }
    aioctx_graph_free(g);
    if (fd >= 0) {
        close(fd);
        unlink("disk.img");
    }
    ok(chdir(cwd) == 0 && rmdir(other) == 0, "back to the first directory");
}

int main(void)
{
    skip_unless_backend();
    tap_watchdog(30);
    main_thread = pthread_self();
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main claims the main context");

    if (!ok(make_temp_dir(dir, sizeof dir, "file") != NULL, "mkdtemp %s", dir))
        return done_testing();
    snprintf(img, sizeof img, "%s/disk.img", dir);
    snprintf(img2, sizeof img2, "%s/disk2.img", dir);
    snprintf(ro_img, sizeof ro_img, "%s/ro.img", dir);
    snprintf(missing, sizeof missing, "%s/missing.img", dir);
    ok(make_image(img, IMG_SIZE, 0644) == 0 && make_image(img2, IMG_SIZE, 0644) == 0 &&
           make_image(ro_img, IMG_SIZE, 0444) == 0,
       "1 MiB images created");

    iot = aioctx_iothread_new("file-iot");
    if (!ok(iot != NULL, "iothread_new"))
        return done_testing();
    iot_ctx = aioctx_iothread_context(iot);
    is_int(learn_thread(iot_ctx, &iot_thread), 0, "learned the IOThread's pthread_t");

    test_basic_io();
    test_main_ctx_node();
    test_concurrent();
    test_open_errors();
    test_refusals();
    test_lock_in_process();
    test_free_in_flight();
    test_reopen_after_free();
    test_relative_path_after_chdir();

    is_int(aioctx_iothread_free(iot), 0, "iothread_free");
    unlink(img);
    unlink(img2);
    unlink(ro_img);
    ok(rmdir(dir) == 0, "temporary directory removed");
    return done_testing();
}
