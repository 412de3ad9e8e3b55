/* aioctx_wait_begin / aioctx_wait_poll / aioctx_wait_end: a wait whose
 * condition is an expression the caller evaluates, as QEMU's AIO_WAIT_WHILE. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#include "aioctx.h"
#include "tap.h"
#include "test-util.h"

static atomic_int flag;
static atomic_int stage;

static void set_flag_cb(void *opaque)
{
    (void)opaque;
    atomic_store(&flag, 1);
}

/* Sets the flag and kicks once the waiter has begun and checked its
 * condition, but before it polls: the kick must not be lost. */
static void *late_kicker(void *arg)
{
    (void)arg;
    while (atomic_load(&stage) != 1)
        ;
    atomic_store(&flag, 1);
    aioctx_wait_kick();
    atomic_store(&stage, 2);
    return NULL;
}

static void *poll_from_other_thread(void *w)
{
    return (void *)(long)aioctx_wait_poll(w);
}

int main(void)
{
    tap_watchdog(20);
    AioctxContext *main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main claims the main context");
    ok(aioctx_current_context() == main_ctx, "it is the main thread's current context");
    ok(aioctx_context_is_home(main_ctx), "and the main thread is its home");
    AioctxIoThread *it = aioctx_iothread_new("wait-api-io");
    AioctxContext *io = aioctx_iothread_context(it);
    ok(!aioctx_context_is_home(io), "the main thread is not the IOThread context's home");
    ok(!aioctx_context_is_home(NULL), "is_home(NULL) is false");

    /* A wait on IOThread work with an expression condition. */
    aioctx_acquire(io);
    AioctxWait *w = aioctx_wait_begin(io, long_timeout(), 0);
    ok(w != NULL, "wait_begin with the context held once");
    aioctx_bh_schedule_oneshot(io, set_flag_cb, NULL);
    int polls = 0;
    while (!atomic_load(&flag)) {
        if (aioctx_wait_poll(w) < 0)
            break;
        polls++;
    }
    ok(atomic_load(&flag), "the IOThread ran the BH while main waited (%d polls)", polls);
    is_int(aioctx_lock_depth(io), 1, "the depth is back to 1 after each poll");
    aioctx_wait_end(w);

    /* Held twice: refused at begin, like poll_while. */
    aioctx_acquire(io);
    errno = 0;
    ok(aioctx_wait_begin(io, -1, 0) == NULL, "wait_begin with the context held twice fails");
    is_int(errno, EDEADLK, "... with EDEADLK");
    is_int(aioctx_lock_depth(io), 2, "... and the depth unchanged");
    aioctx_release(io);
    aioctx_release(io);

    /* A kick between the condition check and the poll is not lost. */
    atomic_store(&flag, 0);
    pthread_t kicker;
    pthread_create(&kicker, NULL, late_kicker, NULL);
    w = aioctx_wait_begin(io, long_timeout(), 0);
    int64_t start = aioctx_clock_ns();
    int rc = 0;
    int first = 1;
    while (!atomic_load(&flag)) {
        if (first) {
            /* The condition was just seen true; let the kick happen now. */
            atomic_store(&stage, 1);
            while (atomic_load(&stage) != 2)
                ;
            first = 0;
        }
        rc = aioctx_wait_poll(w);
        if (rc < 0)
            break;
    }
    is_int(rc, 0, "the wait ended without error");
    ok(aioctx_clock_ns() - start < long_timeout() / 2, "the late kick woke the poll (no lost wake-up)");
    pthread_join(kicker, NULL);

    /* Only the waiting thread may poll it. */
    pthread_t other;
    void *other_rc;
    pthread_create(&other, NULL, poll_from_other_thread, w);
    pthread_join(other, &other_rc);
    is_int((int)(long)other_rc, -EPERM, "wait_poll from another thread is -EPERM");
    aioctx_wait_end(w);

    /* Timeout. */
    w = aioctx_wait_begin(io, 20 * MS, 0);
    rc = 0;
    while (rc == 0)
        rc = aioctx_wait_poll(w);
    is_int(rc, -ETIMEDOUT, "a wait that is never satisfied times out");
    aioctx_wait_end(w);

    is_int(aioctx_wait_poll(NULL), -EINVAL, "wait_poll(NULL) is -EINVAL");
    ok(aioctx_wait_begin(io, -1, 99) == NULL, "unknown flags are refused");
    aioctx_wait_end(NULL);
    is_int(aioctx_iothread_free(it), 0, "IOThread freed");
    return done_testing();
}
