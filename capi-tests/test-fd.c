/*
 * test-fd: fd handlers — read/write callbacks on pipes, eventfds and
 * socketpairs, removal (both NULL), replacement, removal from inside the
 * callback (own fd and another ready fd), invalid fds.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

static AioctxContext *ctx;
static pthread_t main_thread;

struct fdh {
    int fd;
    int reads, writes;
    int bytes;
    int bad_thread, bad_depth;
    int remove_self;     /* remove own handler in the callback */
    int remove_rc;
    struct fdh *victim;  /* remove this other handler in the callback */
    int removed;         /* set when someone removed this handler */
    int ran_after_removal;
};

static void check_ctx(struct fdh *h)
{
    if (!pthread_equal(pthread_self(), main_thread))
        h->bad_thread++;
    if (aioctx_lock_depth(ctx) < 1)
        h->bad_depth++;
}

static void on_read(void *opaque)
{
    struct fdh *h = opaque;
    char buf[64];
    check_ctx(h);
    if (h->removed)
        h->ran_after_removal++;
    h->reads++;
    ssize_t n = read(h->fd, buf, sizeof buf);
    if (n > 0)
        h->bytes += (int)n;
    if (h->remove_self) {
        h->remove_rc = aioctx_set_fd_handler(ctx, h->fd, NULL, NULL, NULL);
        h->removed = 1;
    }
    if (h->victim && !h->victim->removed) {
        h->remove_rc = aioctx_set_fd_handler(ctx, h->victim->fd, NULL, NULL, NULL);
        h->victim->removed = 1;
    }
}

static void on_read_other(void *opaque)
{
    struct fdh *h = opaque;
    check_ctx(h);
    h->reads += 1000; /* distinguishable from on_read */
    char buf[64];
    ssize_t n = read(h->fd, buf, sizeof buf);
    if (n > 0)
        h->bytes += (int)n;
}

static void on_write(void *opaque)
{
    struct fdh *h = opaque;
    check_ctx(h);
    if (h->removed)
        h->ran_after_removal++;
    h->writes++;
    if (h->remove_self) {
        h->remove_rc = aioctx_set_fd_handler(ctx, h->fd, NULL, NULL, NULL);
        h->removed = 1;
    }
}

static void test_pipe_read(void)
{
    int p[2];
    struct fdh h = { 0 };
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
        ok(0, "pipe2");
        return;
    }
    h.fd = p[0];
    is_int(aioctx_set_fd_handler(ctx, p[0], on_read, NULL, &h), 0, "set_fd_handler(pipe read end)");
    is_int(aioctx_poll(ctx, false), 0, "poll: empty pipe, no callback");
    is_int(h.reads, 0, "read handler not called for an empty pipe");
    ok(write(p[1], "abc", 3) == 3, "write 3 bytes");
    is_int(aioctx_poll(ctx, false), 1, "poll returns 1 when a read handler ran");
    is_int(h.reads, 1, "read handler ran once");
    is_int(h.bytes, 3, "it got the 3 bytes (opaque passed through)");
    is_int(aioctx_poll(ctx, false), 0, "drained pipe: no more callbacks");

    /* Level-triggered: data left unread is reported again. */
    ok(write(p[1], "0123456789012345678901234567890123456789012345678901234567890123456789", 70) == 70,
       "write 70 bytes (more than one callback reads)");
    aioctx_poll(ctx, false);
    aioctx_poll(ctx, false);
    is_int(h.bytes, 73, "handler is called again while data remains (level-triggered)");
    is_int(h.reads, 3, "in two callbacks");

    /* Replacement. */
    is_int(aioctx_set_fd_handler(ctx, p[0], on_read_other, NULL, &h), 0,
           "set_fd_handler again on the same fd replaces the handler");
    ok(write(p[1], "x", 1) == 1, "write 1 byte");
    aioctx_poll(ctx, false);
    is_int(h.reads, 1003, "only the replacement handler ran");

    /* Removal. */
    is_int(aioctx_set_fd_handler(ctx, p[0], NULL, NULL, NULL), 0, "both callbacks NULL removes the handler");
    ok(write(p[1], "y", 1) == 1, "write 1 byte");
    is_int(aioctx_poll(ctx, false), 0, "poll after removal: no callback");
    is_int(h.reads, 1003, "removed handler did not run");

    /* Re-adding after removal works and sees the data that arrived meanwhile. */
    is_int(aioctx_set_fd_handler(ctx, p[0], on_read, NULL, &h), 0, "re-add the handler");
    is_int(aioctx_poll(ctx, false), 1, "the re-added handler runs for data written while removed");
    is_int(h.bytes, 75, "and reads it");
    ok(h.bad_thread == 0 && h.bad_depth == 0,
       "fd callbacks ran in the home thread with the context lock held");
    aioctx_set_fd_handler(ctx, p[0], NULL, NULL, NULL);
    close(p[0]);
    close(p[1]);
}

struct writer_args {
    int fd;
    int delay_ms;
    int is_eventfd;
    int64_t acted_at; /* just before writing */
};

static void *writer_thread(void *arg)
{
    struct writer_args *w = arg;
    tap_sleep_ms(w->delay_ms);
    w->acted_at = tap_now_ns();
    if (w->is_eventfd) {
        uint64_t one = 1;
        if (write(w->fd, &one, sizeof one) != sizeof one)
            abort();
    } else if (write(w->fd, "z", 1) != 1) {
        abort();
    }
    return NULL;
}

static void on_eventfd(void *opaque)
{
    struct fdh *h = opaque;
    uint64_t v;
    check_ctx(h);
    h->reads++;
    if (read(h->fd, &v, sizeof v) == sizeof v)
        h->bytes += (int)v;
}

static void test_blocking_wakeup(void)
{
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct fdh h = { 0 };
    pthread_t th;
    h.fd = efd;
    is_int(aioctx_set_fd_handler(ctx, efd, on_eventfd, NULL, &h), 0, "set_fd_handler(eventfd)");
    struct writer_args w = { efd, 30, 1, 0 };
    pthread_create(&th, NULL, writer_thread, &w);
    int rc = aioctx_poll(ctx, true);
    int64_t back = tap_now_ns();
    pthread_join(th, NULL);
    is_int(rc, 1, "a blocking poll is woken by an eventfd written from another thread");
    is_int(h.reads, 1, "the handler ran");
    is_int(h.bytes, 1, "and read the eventfd counter");
    ok(back >= w.acted_at, "one blocking poll waited for the write (returned %lld us after it)",
       (long long)((back - w.acted_at) / 1000));
    is_int(h.bad_thread, 0, "in the home thread");
    aioctx_set_fd_handler(ctx, efd, NULL, NULL, NULL);
    close(efd);
}

static void test_write_and_self_removal(void)
{
    int sv[2];
    struct fdh h = { 0 };
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
        ok(0, "socketpair");
        return;
    }
    h.fd = sv[0];
    h.remove_self = 1;
    h.remove_rc = -12345;
    is_int(aioctx_set_fd_handler(ctx, sv[0], NULL, on_write, &h), 0, "set_fd_handler(socket, write only)");
    is_int(aioctx_poll(ctx, false), 1, "a writable socket runs the write handler");
    is_int(h.writes, 1, "write handler ran once");
    is_int(h.remove_rc, 0, "the handler removed its own fd from inside the callback (rc 0)");
    is_int(aioctx_poll(ctx, false), 0, "after self-removal nothing runs although the socket stays writable");
    is_int(h.writes, 1, "still one run");
    is_int(h.ran_after_removal, 0, "never called after removal");

    /* Read and write callbacks on one fd. */
    struct fdh rw = { 0 };
    rw.fd = sv[0];
    is_int(aioctx_set_fd_handler(ctx, sv[0], on_read, on_write, &rw), 0, "set both callbacks on one fd");
    aioctx_poll(ctx, false);
    ok(rw.writes >= 1 && rw.reads == 0, "only the write callback runs while nothing is readable");
    ok(write(sv[1], "hello", 5) == 5, "peer writes 5 bytes");
    rw.writes = 0;
    aioctx_poll(ctx, false);
    ok(rw.reads == 1 && rw.bytes == 5, "the read callback runs when data arrives");
    ok(rw.writes >= 1, "and the write callback still runs (socket writable)");
    /* Switch to read only. */
    is_int(aioctx_set_fd_handler(ctx, sv[0], on_read, NULL, &rw), 0, "switch to a read-only handler");
    rw.writes = 0;
    aioctx_poll(ctx, false);
    is_int(rw.writes, 0, "write callback no longer runs");
    aioctx_set_fd_handler(ctx, sv[0], NULL, NULL, NULL);
    close(sv[0]);
    close(sv[1]);
}

static void test_remove_other_in_callback(void)
{
    int a[2], b[2];
    struct fdh ha = { 0 }, hb = { 0 };
    if (pipe2(a, O_NONBLOCK) != 0 || pipe2(b, O_NONBLOCK) != 0) {
        ok(0, "pipe2");
        return;
    }
    ha.fd = a[0];
    hb.fd = b[0];
    /* Each removes the other: whichever runs first, the other must not run after. */
    ha.victim = &hb;
    hb.victim = &ha;
    aioctx_set_fd_handler(ctx, a[0], on_read, NULL, &ha);
    aioctx_set_fd_handler(ctx, b[0], on_read, NULL, &hb);
    ok(write(a[1], "1", 1) == 1 && write(b[1], "2", 1) == 1, "make both pipes readable");
    is_int(aioctx_poll(ctx, false), 1, "poll runs a handler");
    is_int(ha.reads + hb.reads, 1,
           "exactly one handler ran: it removed the other, ready one, which then must not run");
    is_int(ha.ran_after_removal + hb.ran_after_removal, 0, "no handler ran after its removal");
    aioctx_poll(ctx, false);
    is_int(ha.reads + hb.reads, 1, "the removed handler does not run in a later poll either");
    aioctx_set_fd_handler(ctx, a[0], NULL, NULL, NULL);
    aioctx_set_fd_handler(ctx, b[0], NULL, NULL, NULL);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

/* Removing or replacing a handler from another thread while its callback
 * runs in the context's IOThread returns only after that callback did, so
 * the caller may free its opaque then (as with aioctx_bh_delete). */
struct slow {
    atomic_int entered, left;
};

static void slow_read(void *opaque)
{
    struct slow *s = opaque;
    atomic_store(&s->entered, 1);
    usleep(50 * 1000);
    atomic_store(&s->left, 1);
}

static void nop_read(void *opaque)
{
    (void)opaque;
}

static void test_removal_waits_for_running_callback(void)
{
    AioctxIoThread *iot = aioctx_iothread_new("fd-iot");
    if (!ok(iot != NULL, "iothread_new"))
        return;
    AioctxContext *ictx = aioctx_iothread_context(iot);
    for (int replace = 0; replace < 2; replace++) {
        int p[2];
        struct slow s = { 0 };
        if (pipe2(p, O_NONBLOCK) != 0) {
            ok(0, "pipe2");
            break;
        }
        aioctx_set_fd_handler(ictx, p[0], slow_read, NULL, &s);
        ok(write(p[1], "x", 1) == 1, "make the pipe readable");
        while (!atomic_load(&s.entered))
            usleep(100);
        int rc = replace ? aioctx_set_fd_handler(ictx, p[0], nop_read, NULL, NULL)
                         : aioctx_set_fd_handler(ictx, p[0], NULL, NULL, NULL);
        int left = atomic_load(&s.left);
        is_int(rc, 0, "%s the handler while its io_read runs in the IOThread -> 0",
               replace ? "replacing" : "removing");
        ok(left, "  it returned after io_read did (its opaque may be freed now)");
        aioctx_set_fd_handler(ictx, p[0], NULL, NULL, NULL);
        close(p[0]);
        close(p[1]);
    }
    is_int(aioctx_iothread_free(iot), 0, "iothread_free");
}

struct hup {
    int fd;
    int calls;
    int eof;
};

static void hup_cb(void *opaque)
{
    struct hup *h = opaque;
    char c;
    h->calls++;
    if (read(h->fd, &c, 1) == 0) {
        h->eof = 1;
        aioctx_set_fd_handler(ctx, h->fd, NULL, NULL, NULL);
    }
}

static void test_hangup(void)
{
    int p[2];
    struct hup h = { 0, 0, 0 };
    if (pipe2(p, O_NONBLOCK) != 0) {
        ok(0, "pipe2");
        return;
    }
    h.fd = p[0];
    aioctx_set_fd_handler(ctx, p[0], hup_cb, NULL, &h);
    is_int(aioctx_poll(ctx, false), 0, "open empty pipe: nothing to do");
    close(p[1]);
    is_int(aioctx_poll(ctx, false), 1, "closing the write end runs the read handler (hang-up)");
    ok(h.calls == 1 && h.eof, "which sees EOF and removes itself");
    is_int(aioctx_poll(ctx, false), 0, "nothing afterwards");
    close(p[0]);
}

static void test_invalid_fds(void)
{
    struct fdh h = { 0 };
    int p[2];

    is_int(aioctx_set_fd_handler(ctx, -1, on_read, NULL, &h), -EINVAL, "fd -1 -> -EINVAL");
    ok(aioctx_last_error()[0] != '\0', "... with a message: '%s'", aioctx_last_error());
    is_int(aioctx_set_fd_handler(ctx, -42, NULL, NULL, NULL), -EINVAL, "fd -42 (removal) -> -EINVAL");

    if (pipe(p) == 0) {
        close(p[0]);
        close(p[1]);
        is_int(aioctx_set_fd_handler(ctx, p[0], on_read, NULL, &h), -EBADF, "a closed fd -> -EBADF");
        ok(aioctx_last_error()[0] != '\0', "... with a message: '%s'", aioctx_last_error());
    }

    char path[] = "/tmp/aioctx-test-fd-XXXXXX";
    int f = mkstemp(path);
    if (f >= 0) {
        unlink(path);
        int rc = aioctx_set_fd_handler(ctx, f, on_read, NULL, &h);
        ok(rc < 0, "a regular file is refused with a negative errno (got %d)", rc);
        ok(aioctx_last_error()[0] != '\0', "... with a message: '%s'", aioctx_last_error());
        close(f);
    }
    is_int(aioctx_poll(ctx, false), 0, "refused registrations left nothing behind");
    is_int(h.reads, 0, "no callback ran");

    /* The context still works after the failures. */
    if (pipe2(p, O_NONBLOCK) == 0) {
        h.fd = p[0];
        aioctx_set_fd_handler(ctx, p[0], on_read, NULL, &h);
        ok(write(p[1], "k", 1) == 1, "write");
        is_int(aioctx_poll(ctx, false), 1, "a valid fd still works after refused ones");
        aioctx_set_fd_handler(ctx, p[0], NULL, NULL, NULL);
        close(p[0]);
        close(p[1]);
    }
    is_int(aioctx_set_fd_handler(NULL, 0, on_read, NULL, NULL), -EINVAL, "set_fd_handler(NULL ctx) -> -EINVAL");
}

int main(void)
{
    tap_watchdog(15);
    main_thread = pthread_self();
    ctx = aioctx_context_new("fd-test");
    if (!ok(ctx != NULL, "context_new(\"fd-test\")"))
        return done_testing();
    is_int(aioctx_context_claim(ctx), 0, "main thread claims the context");

    test_pipe_read();
    test_blocking_wakeup();
    test_write_and_self_removal();
    test_remove_other_in_callback();
    test_removal_waits_for_running_callback();
    test_hangup();
    test_invalid_fds();

    aioctx_context_unref(ctx);
    return done_testing();
}
