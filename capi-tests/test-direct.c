/*
 * test-direct: O_DIRECT raw-file nodes and the choice of I/O backend.
 *
 * AIOCTX_OPEN_DIRECT: aioctx_node_alignment gives the alignment (a power of
 * two, at least 512; 1 on other nodes); a request whose buffer address,
 * offset or length is not a multiple of it fails at once with -EINVAL
 * naming the alignment, with nothing in flight; aligned writes, reads
 * (32 at once, from the IOThread), a short read at end of file, flush and
 * drain work, the data checked with plain pread(2); a completion that
 * submits another read and drains the node returns with that read done
 * (on io_uring, requests from completions are submitted after them, so
 * the drain's poll must hand them to the kernel first). The backend flags:
 * AIOCTX_OPEN_AIO_THREADS and AIOCTX_OPEN_AIO_IO_URING pick "threads" or
 * "io_uring" (-ENOTSUP where io_uring is unavailable), both at once is
 * -EINVAL, and aioctx_node_io_backend is NULL (-ENOTSUP) on a C-driver
 * node. Reads in flight when their IOThread is freed all complete with
 * their data (the IOThread waits for its ring before it exits). Runs once
 * per backend (meson's direct@io_uring, direct@threads).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define IMG_SIZE (1024 * 1024)
#define QD 32

static AioctxContext *main_ctx;
static AioctxIoThread *iot;
static char dir[64], img[128];

/* A completion counted in the IOThread; the last one's result kept. */
struct batch {
    atomic_int done;
    atomic_int bad;
    int64_t want;
};

static void batch_cb(void *opaque, int64_t ret)
{
    struct batch *b = opaque;
    if (ret != b->want)
        atomic_fetch_add(&b->bad, 1);
    atomic_fetch_add(&b->done, 1);
}

static int64_t wait_io(struct io_wait *w)
{
    if (aioctx_poll_while(main_ctx, io_wait_pending, w, long_timeout(), 0) != 0)
        return -ETIMEDOUT;
    return atomic_load(&w->ret);
}

static unsigned char *aligned_buf(size_t align, size_t len, int seed)
{
    void *p = NULL;
    if (posix_memalign(&p, align, len) != 0)
        return NULL;
    for (size_t i = 0; i < len; i++)
        ((unsigned char *)p)[i] = (unsigned char)(seed + i * 7);
    return p;
}

static void test_misaligned(AioctxNode *n, size_t a)
{
    unsigned char *buf = aligned_buf(a, 4 * a, 0);
    struct io_wait w = { 0 };
    char want[64];
    snprintf(want, sizeof want, "multiples of %zu bytes", a);
    is_int(aioctx_node_pread(n, buf + 1, a, 0, io_wait_cb, &w), -EINVAL, "a misaligned buffer -> -EINVAL");
    like(aioctx_last_error(), want, "  the error names the alignment");
    is_int(aioctx_node_pwrite(n, buf, a, a / 2, io_wait_cb, &w), -EINVAL, "a misaligned offset -> -EINVAL");
    like(aioctx_last_error(), "aioctx_node_alignment", "  and where to find it");
    is_int(aioctx_node_pread(n, buf, a + 1, 0, io_wait_cb, &w), -EINVAL, "a misaligned length -> -EINVAL");
    is_int(aioctx_node_in_flight(n), 0, "  nothing in flight");
    /* In a drained section, where valid requests wait in a queue. */
    is_int(aioctx_node_drained_begin(n), 0, "drained_begin");
    is_int(aioctx_node_pwrite(n, buf, a, a / 2, io_wait_cb, &w), -EINVAL,
           "  a misaligned request in the section -> -EINVAL at once, not queued");
    is_int(aioctx_node_drained_end(n), 0, "drained_end");
    ok(!atomic_load(&w.done), "  no callback ran");
    free(buf);
}

static void test_aligned_io(AioctxNode *n, size_t a)
{
    size_t len = 16 * a;
    unsigned char *w = aligned_buf(a, len, 5), *r = aligned_buf(a, len, 0);
    memset(r, 0, len);
    struct io_wait io = { 0 };
    is_int(aioctx_node_pwrite(n, w, len, 3 * a, io_wait_cb, &io), 0, "an aligned write is submitted");
    is_int(wait_io(&io), (long long)len, "  and writes everything");
    is_int(aioctx_node_flush(n), 0, "flush -> 0");
    ok(file_has(img, 3 * a, w, len), "  the data is in the file (plain pread)");
    io = (struct io_wait){ 0 };
    is_int(aioctx_node_pread(n, r, len, 3 * a, io_wait_cb, &io), 0, "an aligned read is submitted");
    is_int(wait_io(&io), (long long)len, "  and reads everything");
    ok(memcmp(r, w, len) == 0, "  what was written");
    io = (struct io_wait){ 0 };
    is_int(aioctx_node_pread(n, r, 2 * a, IMG_SIZE - a, io_wait_cb, &io), 0, "a read across the end of the file");
    is_int(wait_io(&io), (long long)a, "  is short: only the bytes before the end");
    free(w);
    free(r);
}

/* A completion that starts a read and drains the node in its callback. */
struct chain {
    AioctxNode *n;
    unsigned char *buf;
    size_t a;
    struct batch next;
    int submit_rc, drain_rc, next_done_at_drain;
    struct io_wait first;
};

static void chain_cb(void *opaque, int64_t ret)
{
    struct chain *c = opaque;
    c->submit_rc = aioctx_node_pread(c->n, c->buf + c->a, c->a, 5 * c->a, batch_cb, &c->next);
    c->drain_rc = aioctx_node_drain(c->n);
    c->next_done_at_drain = atomic_load(&c->next.done);
    io_wait_cb(&c->first, ret);
}

static void test_drain_from_completion(AioctxNode *n, size_t a)
{
    struct chain c = { .n = n, .buf = aligned_buf(a, 2 * a, 0), .a = a, .next = { .want = (int64_t)a } };
    is_int(aioctx_node_pread(n, c.buf, a, 0, chain_cb, &c), 0, "a read whose completion reads and drains");
    is_int(wait_io(&c.first), (long long)a, "  its completion ran (watchdog: a drain that never returns)");
    is_int(c.submit_rc, 0, "  the read from the completion was submitted");
    is_int(c.drain_rc, 0, "  the drain from the completion -> 0");
    is_int(c.next_done_at_drain, 1, "  with that read done when it returned");
    is_int(atomic_load(&c.next.bad), 0, "  a whole block");
    free(c.buf);
}

/* QD reads at once on an IOThread node, then drained. */
static void test_queue(AioctxGraph *g, size_t a)
{
    AioctxNode *n = aioctx_node_open_file(g, "direct-iot", aioctx_iothread_context(iot), img,
                                          AIOCTX_OPEN_DIRECT);
    if (!ok(n != NULL, "a read-only O_DIRECT node on an IOThread: %s", n ? "ok" : aioctx_last_error()))
        return;
    unsigned char *bufs = aligned_buf(a, QD * a, 0);
    struct batch b = { .want = (int64_t)a };
    int submitted = 0;
    for (int i = 0; i < QD; i++)
        submitted += aioctx_node_pread(n, bufs + (size_t)i * a, a, (uint64_t)((i * 37) % 200) * a, batch_cb, &b) == 0;
    is_int(submitted, QD, "%d reads submitted at once", QD);
    is_int(aioctx_node_drain(n), 0, "drain -> 0");
    is_int(atomic_load(&b.done), QD, "  every completion ran before it returned");
    is_int(atomic_load(&b.bad), 0, "  each read a whole block");
    is_int(aioctx_node_in_flight(n), 0, "  nothing in flight");
    free(bufs);
}

static void test_backend_flags(AioctxGraph *g)
{
    AioctxNode *t = aioctx_node_open_file(g, "threads", main_ctx, img, AIOCTX_OPEN_AIO_THREADS);
    ok(t != NULL, "AIOCTX_OPEN_AIO_THREADS opens");
    is_str(t ? aioctx_node_io_backend(t) : NULL, "threads", "  its backend is \"threads\"");
    AioctxNode *u = aioctx_node_open_file(g, "uring", main_ctx, img, AIOCTX_OPEN_AIO_IO_URING);
    if (io_uring_usable()) {
        ok(u != NULL, "AIOCTX_OPEN_AIO_IO_URING opens: %s", u ? "ok" : aioctx_last_error());
        is_str(u ? aioctx_node_io_backend(u) : NULL, "io_uring", "  its backend is \"io_uring\"");
    } else {
        ok(u == NULL && aioctx_last_errno() == -ENOTSUP, "AIOCTX_OPEN_AIO_IO_URING without io_uring -> ENOTSUP");
        like(aioctx_last_error(), "io_uring", "  the error says why");
    }
    ok(aioctx_node_open_file(g, "both", main_ctx, img, AIOCTX_OPEN_AIO_THREADS | AIOCTX_OPEN_AIO_IO_URING) == NULL &&
           aioctx_last_errno() == -EINVAL,
       "both backend flags -> EINVAL");
    like(aioctx_last_error(), "choose one", "  the error says what to do");
    ok(aioctx_node_open_file(g, "bad", main_ctx, img, 1u << 7) == NULL && aioctx_last_errno() == -EINVAL,
       "an unknown flag -> EINVAL");
    AioctxNode *c = aioctx_node_new(g, "c-driver", main_ctx, NULL, NULL);
    ok(c != NULL && aioctx_node_io_backend(c) == NULL && aioctx_last_errno() == -ENOTSUP,
       "a C-driver node has no backend (NULL, ENOTSUP)");
    is_int((long long)aioctx_node_alignment(c), 1, "  and needs no alignment");
    ok(aioctx_node_io_backend(NULL) == NULL && aioctx_node_alignment(NULL) == 0, "NULL node: NULL and 0");
}

/* Reads that wait for the device (their pages dropped from the cache) are
 * in flight when their IOThread is freed: the kernel fails a ring's requests
 * still running when their submitter exits (-EFAULT), so the IOThread waits
 * for them first; their completions run at the drain that follows. */
#define STOP_READS 32
#define STOP_SIZE (1024 * 1024)

static void test_reads_in_flight_at_iothread_free(AioctxGraph *g)
{
    char path[160];
    snprintf(path, sizeof path, "%s/stop.img", dir);
    unsigned char *block = malloc(STOP_SIZE);
    /* Zeroed: valgrind does not see the kernel write them (io_uring). */
    unsigned char *bufs = calloc(STOP_READS, STOP_SIZE);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    bool made = block && bufs && fd >= 0;
    for (int i = 0; made && i < STOP_READS; i++) {
        memset(block, 'a' + i % 26, STOP_SIZE);
        made = pwrite(fd, block, STOP_SIZE, (off_t)i * STOP_SIZE) == STOP_SIZE;
    }
    made = made && fsync(fd) == 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
    if (!ok(made, "a 32 MiB image out of the page cache")) {
        goto out;
    }
    AioctxIoThread *it = aioctx_iothread_new("stop-iot");
    AioctxNode *n = aioctx_node_open_file(g, "stop", aioctx_iothread_context(it), path, 0);
    if (!ok(n != NULL, "open_file on a new IOThread: %s", n ? "ok" : aioctx_last_error())) {
        aioctx_iothread_free(it);
        goto out;
    }
    struct batch b = { .want = STOP_SIZE };
    int submitted = 0;
    for (int i = 0; i < STOP_READS; i++)
        submitted += aioctx_node_pread(n, bufs + (size_t)i * STOP_SIZE, STOP_SIZE, (int64_t)i * STOP_SIZE,
                                       batch_cb, &b) == 0;
    is_int(submitted, STOP_READS, "32 reads of 1 MiB submitted");
    is_int(aioctx_iothread_free(it), 0, "the IOThread is freed with them in flight");
    is_int(aioctx_node_drain(n), 0, "the node drains");
    is_int(atomic_load(&b.done), STOP_READS, "  every completion ran");
    is_int(atomic_load(&b.bad), 0, "  each read all of its block (no -EFAULT)");
    int wrong = 0;
    for (int i = 0; i < STOP_READS; i++)
        for (size_t j = 0; j < STOP_SIZE; j += 4096)
            wrong += bufs[(size_t)i * STOP_SIZE + j] != 'a' + i % 26;
    is_int(wrong, 0, "  with its data");
out:
    if (fd >= 0)
        close(fd);
    unlink(path);
    free(block);
    free(bufs);
}

int main(void)
{
    skip_unless_backend();
    tap_watchdog(60);
    main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main claims the main context");
    if (!ok(make_temp_dir(dir, sizeof dir, "direct") != NULL, "mkdtemp %s", dir))
        return done_testing();
    snprintf(img, sizeof img, "%s/disk.img", dir);
    ok(make_image(img, IMG_SIZE, 0644) == 0, "a 1 MiB image");
    iot = aioctx_iothread_new("direct-iot");
    AioctxGraph *g = aioctx_graph_new(NULL);

    test_backend_flags(g);
    test_reads_in_flight_at_iothread_free(g);
    AioctxNode *n = aioctx_node_open_file(g, "direct", main_ctx, img, AIOCTX_OPEN_DIRECT | AIOCTX_OPEN_RDWR);
    if (n == NULL && aioctx_last_errno() == -EINVAL) {
        /* tmpfs before Linux 6.6, and a few others, have no O_DIRECT. */
        printf("ok %d - O_DIRECT # SKIP %s\n", ++tap_st.run, aioctx_last_error());
    } else if (ok(n != NULL, "open_file(DIRECT | RDWR): %s", n ? "ok" : aioctx_last_error())) {
        if (run_backend())
            is_str(aioctx_node_io_backend(n), run_backend(), "its backend is AIOCTX_IO_BACKEND's");
        size_t a = aioctx_node_alignment(n);
        ok(a >= 512 && (a & (a - 1)) == 0, "the alignment (%zu) is a power of two >= 512", a);
        test_misaligned(n, a);
        test_aligned_io(n, a);
        test_drain_from_completion(n, a);
        test_queue(g, a);
    }
    aioctx_graph_free(g);
    aioctx_iothread_free(iot);
    unlink(img);
    rmdir(dir);
    return done_testing();
}
