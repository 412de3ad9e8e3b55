/*
 * test-file-lock: the raw-file driver's image write lock between processes,
 * the migration source/destination pair.
 *
 * A child process (the source) opens the image RDWR (active) and writes; the
 * parent (the destination) cannot open it RDWR active (NULL, EAGAIN, "locked
 * by another process"), opens it RDWR|INACTIVE, and its activate_all fails
 * with -EAGAIN (node still inactive) until the child's inactivate_all; then
 * activate_all succeeds and writes work, and now the child cannot activate.
 * A second child that dies (SIGKILL) holding the lock: the kernel releases it.
 *
 * Both children are forked before the parent makes any aioctx call, so each
 * starts from a pristine, single-threaded library. They talk to the parent
 * over pipes: one command byte in, int results out. Only the parent prints TAP.
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
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#define BLK 4096

static char dir[64], img[128];

/* ---- pipes ------------------------------------------------------------------------------ */

static void send_int(int fd, int v)
{
    ssize_t r = write(fd, &v, sizeof v);
    (void)r;
}

static int recv_int(int fd)
{
    int v;
    size_t got = 0;
    while (got < sizeof v) {
        ssize_t r = read(fd, (char *)&v + got, sizeof v - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return INT_MIN;
        got += (size_t)r;
    }
    return v;
}


static void fill(unsigned char *buf, unsigned seed)
{
    for (int i = 0; i < BLK; i++)
        buf[i] = (unsigned char)((seed * 97u + (unsigned)i * 13u) & 0xff);
}

/* ---- completions ------------------------------------------------------------------------------ */


/* Submits a write and waits for it; returns the callback's ret or the submit error. */
static int64_t write_block(AioctxNode *n, const unsigned char *buf, uint64_t off)
{
    struct io_wait io;
    atomic_store(&io.done, 0);
    atomic_store(&io.ret, 0);
    int rc = aioctx_node_pwrite(n, buf, BLK, off, io_wait_cb, &io);
    if (rc)
        return rc;
    if (aioctx_poll_while(aioctx_node_context(n), io_wait_pending, &io, long_timeout(), 0))
        return INT_MIN;
    return atomic_load(&io.ret);
}

/* ---- the source process ------------------------------------------------------------------------ */

/*
 * Child 1 (the migration source):
 *   start: open RDWR active on an IOThread, write block 0  -> sends open ok, write ret
 *   'I': inactivate_all                                      -> sends rc
 *   'A': activate_all                                        -> sends rc, "locked by another process" in msg, inactive
 *   'Q': free everything and exit(0)
 */
static int child_source(int cmd, int res)
{
    signal(SIGALRM, SIG_DFL);
    alarm(60 * (unsigned)tap_scale());
    aioctx_context_claim(aioctx_main_context());
    AioctxIoThread *it = aioctx_iothread_new("lock-src-iot");
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(g, "src", aioctx_iothread_context(it), img, AIOCTX_OPEN_RDWR);
    send_int(res, n != NULL);
    unsigned char buf[BLK];
    fill(buf, 1);
    send_int(res, n ? (int)write_block(n, buf, 0) : -1);
    for (;;) {
        char c = pipe_recv(cmd);
        if (c == 'I') {
            send_int(res, aioctx_graph_inactivate_all(g));
        } else if (c == 'A') {
            send_int(res, aioctx_graph_activate_all(g));
            send_int(res, strstr(aioctx_last_error(), "locked by another process") != NULL);
            send_int(res, n && aioctx_node_is_inactive(n));
        } else {
            break;      /* 'Q' or the parent went away */
        }
    }
    aioctx_graph_free(g);
    aioctx_iothread_free(it);
    return 0;
}

/*
 * Child 2 (a source that dies): on 'S' opens the image RDWR active on the main
 * context and sends whether it worked, then waits to be killed.
 */
static int child_crasher(int cmd, int res)
{
    signal(SIGALRM, SIG_DFL);
    alarm(60 * (unsigned)tap_scale());
    if (pipe_recv(cmd) != 'S')
        return 0;
    aioctx_context_claim(aioctx_main_context());
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_open_file(g, "crasher", aioctx_main_context(), img, AIOCTX_OPEN_RDWR);
    send_int(res, n != NULL);
    pipe_recv(cmd);      /* killed while waiting here */
    aioctx_graph_free(g);
    return 0;
}

/* The parent's ends of earlier children's pipes, closed in later children. */
static int inherited[8];
static int ninherited;

static pid_t spawn(int (*fn)(int, int), int *cmd_w, int *res_r)
{
    int cmd[2], res[2];
    if (pipe(cmd) || pipe(res))
        return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(cmd[1]);
        close(res[0]);
        for (int i = 0; i < ninherited; i++)
            close(inherited[i]);
        _exit(fn(cmd[0], res[1]) == 0 ? 0 : 1);
    }
    close(cmd[0]);
    close(res[1]);
    *cmd_w = cmd[1];
    *res_r = res[0];
    inherited[ninherited++] = cmd[1];
    inherited[ninherited++] = res[0];
    return pid;
}

int main(void)
{
    skip_unless_backend();
    tap_watchdog(60);
    if (!ok(make_temp_dir(dir, sizeof dir, "lock") != NULL, "mkdtemp"))
        return done_testing();
    snprintf(img, sizeof img, "%s/shared.img", dir);
    ok(make_image(img, 64 * BLK, 0644) == 0, "a 256 KiB image");

    /* Fork both children before any aioctx call. */
    int src_cmd, src_res, crash_cmd, crash_res;
    pid_t src = spawn(child_source, &src_cmd, &src_res);
    pid_t crasher = spawn(child_crasher, &crash_cmd, &crash_res);
    ok(src > 0 && crasher > 0, "forked the source and the crasher processes");

    is_int(recv_int(src_res), 1, "the source process opened the image RDWR (active)");
    is_int(recv_int(src_res), BLK, "and wrote block 0");

    AioctxContext *main_ctx = aioctx_main_context();
    aioctx_context_claim(main_ctx);
    AioctxIoThread *iot = aioctx_iothread_new("lock-dst-iot");
    AioctxContext *iot_ctx = aioctx_iothread_context(iot);
    AioctxGraph *g = aioctx_graph_new(NULL);
    unsigned char b0[BLK], b1[BLK], b2[BLK], rbuf[BLK];
    fill(b0, 1);
    fill(b1, 2);
    fill(b2, 3);

    /* The source holds the lock. */
    AioctxNode *n = aioctx_node_open_file(g, "dst", iot_ctx, img, AIOCTX_OPEN_RDWR);
    ok(n == NULL, "the destination's active RDWR open of the same image -> NULL");
    like(aioctx_last_error(), "locked by another process", "  EAGAIN: '%s'", aioctx_last_error());
    like(aioctx_last_error(), img, "  the message names the path");
    ok(aioctx_graph_find(g, "dst") == NULL, "  no node added");

    AioctxNode *ro = aioctx_node_open_file(g, "dst-ro", iot_ctx, img, 0);
    ok(ro != NULL, "a read-only open of the locked image works");
    struct io_wait io = { 0, 0 };
    is_int(aioctx_node_pread(ro, rbuf, BLK, 0, io_wait_cb, &io), 0, "  pread");
    aioctx_poll_while(iot_ctx, io_wait_pending, &io, long_timeout(), 0);
    ok(atomic_load(&io.ret) == BLK && memcmp(rbuf, b0, BLK) == 0, "  reads the source's block 0");

    n = aioctx_node_open_file(g, "dst", iot_ctx, img, AIOCTX_OPEN_RDWR | AIOCTX_OPEN_INACTIVE);
    ok(n != NULL, "RDWR|INACTIVE open (incoming migration) works: %s", n ? "ok" : aioctx_last_error());
    if (!n) {
        pipe_send(src_cmd, 'Q');
        kill(crasher, SIGKILL);
        return done_testing();
    }
    ok(aioctx_node_is_inactive(n), "  the node is inactive");
    is_int(write_block(n, b1, BLK), -EPERM, "  a write on it -> -EPERM");

    is_int(aioctx_graph_activate_all(g), -EAGAIN, "activate_all while the source holds the image -> -EAGAIN");
    like(aioctx_last_error(), "locked by another process", "  '%s'", aioctx_last_error());
    ok(aioctx_node_is_inactive(n), "  the node is still inactive");
    is_int(write_block(n, b1, BLK), -EPERM, "  writes still refused");
    is_int(aioctx_graph_activate_all(g), -EAGAIN, "  a retry -> -EAGAIN again");

    /* The source hands over. */
    pipe_send(src_cmd, 'I');
    is_int(recv_int(src_res), 0, "the source's inactivate_all -> 0");
    is_int(aioctx_graph_activate_all(g), 0, "now the destination's activate_all -> 0");
    ok(!aioctx_node_is_inactive(n), "  the node is active");
    is_int(write_block(n, b1, BLK), BLK, "  a write works (4096)");
    ok(file_has(img, BLK, b1, BLK), "  and is in the file");
    ok(file_has(img, 0, b0, BLK), "  the source's block 0 is intact");

    /* Now the source cannot take it back. */
    pipe_send(src_cmd, 'A');
    is_int(recv_int(src_res), -EAGAIN, "the source's activate_all while the destination runs -> -EAGAIN");
    is_int(recv_int(src_res), 1, "  with \"locked by another process\"");
    is_int(recv_int(src_res), 1, "  the source's node stays inactive");

    /* And back: the destination inactivates, the source activates. */
    is_int(aioctx_graph_inactivate_all(g), 0, "the destination's inactivate_all (migration back)");
    pipe_send(src_cmd, 'A');
    is_int(recv_int(src_res), 0, "the source's activate_all -> 0");
    recv_int(src_res);
    is_int(recv_int(src_res), 0, "  the source's node is active");
    is_int(aioctx_graph_activate_all(g), -EAGAIN, "the destination's activate_all -> -EAGAIN again");
    pipe_send(src_cmd, 'I');
    is_int(recv_int(src_res), 0, "the source inactivates again");

    pipe_send(src_cmd, 'Q');
    int status = 0;
    is_int(waitpid(src, &status, 0), src, "waitpid(source)");
    ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the source exited with 0 (status %#x)", status);

    /* A source that dies holding the lock: the kernel drops the OFD lock with it. */
    pipe_send(crash_cmd, 'S');
    is_int(recv_int(crash_res), 1, "the crasher opened the image RDWR (active)");
    is_int(aioctx_graph_activate_all(g), -EAGAIN, "the destination's activate_all -> -EAGAIN");
    kill(crasher, SIGKILL);
    is_int(waitpid(crasher, &status, 0), crasher, "the crasher is killed (SIGKILL) and reaped");
    ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "  it died of SIGKILL");
    is_int(aioctx_graph_activate_all(g), 0, "then the destination's activate_all -> 0");
    is_int(write_block(n, b2, 2 * BLK), BLK, "  writes work");
    ok(file_has(img, 2 * BLK, b2, BLK), "  data in the file");

    /* Two active RDWR nodes of one image in this process conflict too. */
    AioctxGraph *g2 = aioctx_graph_new(NULL);
    ok(aioctx_node_open_file(g2, "second", main_ctx, img, AIOCTX_OPEN_RDWR) == NULL,
       "a second active RDWR open in the same process -> NULL (OFD locks conflict per open file)");
    like(aioctx_last_error(), "locked by another process", "  EAGAIN");
    aioctx_graph_free(g2);

    close(src_cmd);
    close(src_res);
    close(crash_cmd);
    close(crash_res);
    aioctx_graph_free(g);
    is_int(aioctx_iothread_free(iot), 0, "iothread_free");
    unlink(img);
    ok(rmdir(dir) == 0, "temporary directory removed");
    return done_testing();
}
