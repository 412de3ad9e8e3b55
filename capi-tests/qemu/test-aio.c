/*
 * test-aio: what QEMU's tests/unit/test-aio.c checks, through qemu-compat.h:
 * every case that needs neither coroutines nor the GSource (the
 * /aio-gsource/ cases; embedding is examples-c/embed-glib.c's business),
 * plus the /aio/notify case of older QEMUs. /aio/external-client is left out:
 * aioctx has no aio_disable_external() (QEMU 8.1 removed it too).
 *
 * Built once per QEMU era (AIOCTX_QEMU_VERSION): aio_set_event_notifier and
 * aio_set_fd_handler are called with that era's signature.
 */
#define _GNU_SOURCE
#include "tap.h"
#include <aioctx/qemu-compat.h>

#include <pthread.h>
#include <stdatomic.h>

static AioContext *ctx;

/* The signatures of the era this program is built for. */
#if !defined(AIOCTX_QEMU_VERSION) || AIOCTX_QEMU_VERSION >= 80100
#define ERA "8.1+"
#define SET_EVENT_NOTIFIER(c, e, h) aio_set_event_notifier(c, e, h, NULL, NULL)
#define SET_FD_HANDLER(c, fd, r, w, op) aio_set_fd_handler(c, fd, r, w, NULL, NULL, op)
#elif AIOCTX_QEMU_VERSION >= 70000
#define ERA "7.0-8.0"
#define SET_EVENT_NOTIFIER(c, e, h) aio_set_event_notifier(c, e, false, h, NULL, NULL)
#define SET_FD_HANDLER(c, fd, r, w, op) aio_set_fd_handler(c, fd, false, r, w, NULL, NULL, op)
#elif AIOCTX_QEMU_VERSION >= 20900
#define ERA "2.9-6.2"
#define SET_EVENT_NOTIFIER(c, e, h) aio_set_event_notifier(c, e, false, h, NULL)
#define SET_FD_HANDLER(c, fd, r, w, op) aio_set_fd_handler(c, fd, false, r, w, NULL, op)
#elif AIOCTX_QEMU_VERSION >= 20500
#define ERA "2.5-2.8"
#define SET_EVENT_NOTIFIER(c, e, h) aio_set_event_notifier(c, e, false, h)
#define SET_FD_HANDLER(c, fd, r, w, op) aio_set_fd_handler(c, fd, false, r, w, op)
#else
#define ERA "before 2.5"
#define SET_EVENT_NOTIFIER(c, e, h) aio_set_event_notifier(c, e, h)
#define SET_FD_HANDLER(c, fd, r, w, op) aio_set_fd_handler(c, fd, r, w, op)
#endif

/* Runs what is ready until nothing is: leaves no wake-up behind. */
static void flush_ctx(void)
{
    while (aio_poll(ctx, false)) {
    }
}

/* ---- event notifiers -------------------------------------------------------- */

struct en_data {
    EventNotifier e;
    int n;
    int active;
    bool auto_set;
    int not_set; /* times the handler found the notifier clear */
};

/* Counts a run; while active, consumes one unit and re-sets when auto_set. */
static void event_ready_cb(EventNotifier *e)
{
    /* e is the first member: QEMU's container_of. */
    struct en_data *data = (struct en_data *)e;
    if (!event_notifier_test_and_clear(e))
        data->not_set++;
    data->n++;
    if (data->active > 0)
        data->active--;
    if (data->auto_set && data->active)
        event_notifier_set(e);
}

static void wait_until_inactive(struct en_data *data)
{
    while (data->active > 0)
        aio_poll(ctx, true);
}

static void dummy_notifier_read(EventNotifier *e)
{
    event_notifier_test_and_clear(e);
}

static void test_set_event_notifier(void)
{
    struct en_data data = { .n = 0, .active = 0 };
    is_int(event_notifier_init(&data.e, false), 0, "/aio/event/add-remove: event_notifier_init");
    ok(event_notifier_get_fd(&data.e) >= 0, "/aio/event/add-remove: the notifier has an fd");
    SET_EVENT_NOTIFIER(ctx, &data.e, event_ready_cb);
    ok(!aio_poll(ctx, false), "/aio/event/add-remove: a clear notifier does not run");
    is_int(data.n, 0, "/aio/event/add-remove: no call");
    SET_EVENT_NOTIFIER(ctx, &data.e, NULL);
    ok(!aio_poll(ctx, false), "/aio/event/add-remove: removed");
    is_int(data.n, 0, "/aio/event/add-remove: still no call");
    event_notifier_cleanup(&data.e);
}

static void test_wait_event_notifier(void)
{
    struct en_data data = { .n = 0, .active = 1 };
    event_notifier_init(&data.e, false);
    SET_EVENT_NOTIFIER(ctx, &data.e, event_ready_cb);
    flush_ctx();
    ok(data.n == 0 && data.active == 1, "/aio/event/wait: nothing before the set");

    event_notifier_set(&data.e);
    ok(aio_poll(ctx, false), "/aio/event/wait: a set notifier runs its handler");
    ok(data.n == 1 && data.active == 0, "/aio/event/wait: once");
    ok(!aio_poll(ctx, false), "/aio/event/wait: the handler cleared it");
    is_int(data.n, 1, "/aio/event/wait: not again");

    SET_EVENT_NOTIFIER(ctx, &data.e, NULL);
    ok(!aio_poll(ctx, false), "/aio/event/wait: removed");
    ok(data.n == 1 && data.not_set == 0, "/aio/event/wait: the handler always found it set");
    event_notifier_cleanup(&data.e);
}

static void test_flush_event_notifier(void)
{
    struct en_data data = { .n = 0, .active = 10, .auto_set = true };
    event_notifier_init(&data.e, false);
    SET_EVENT_NOTIFIER(ctx, &data.e, event_ready_cb);
    flush_ctx();
    ok(data.n == 0 && data.active == 10, "/aio/event/flush: nothing before the set");

    event_notifier_set(&data.e);
    ok(aio_poll(ctx, false), "/aio/event/flush: first run");
    ok(data.n == 1 && data.active == 9, "/aio/event/flush: one unit consumed");
    ok(aio_poll(ctx, false), "/aio/event/flush: the handler set it again");

    wait_until_inactive(&data);
    ok(data.n == 10 && data.active == 0, "/aio/event/flush: ten runs, then inactive");
    ok(!aio_poll(ctx, false), "/aio/event/flush: no run after the last");

    SET_EVENT_NOTIFIER(ctx, &data.e, NULL);
    ok(!aio_poll(ctx, false), "/aio/event/flush: removed");
    is_int(data.not_set, 0, "/aio/event/flush: the handler always found it set");
    event_notifier_cleanup(&data.e);
}

static void test_wait_event_notifier_noflush(void)
{
    struct en_data data = { .n = 0 };
    struct en_data dummy = { .n = 0, .active = 1 };

    event_notifier_init(&data.e, false);
    SET_EVENT_NOTIFIER(ctx, &data.e, event_ready_cb);
    ok(!aio_poll(ctx, false), "/aio/event/wait/no-flush-cb: nothing yet");
    is_int(data.n, 0, "/aio/event/wait/no-flush-cb: no call");

    event_notifier_set(&data.e);
    ok(aio_poll(ctx, true), "/aio/event/wait/no-flush-cb: a blocking poll runs the set notifier");
    data.n = 0;

    event_notifier_init(&dummy.e, false);
    SET_EVENT_NOTIFIER(ctx, &dummy.e, event_ready_cb);

    event_notifier_set(&data.e);
    ok(aio_poll(ctx, false), "/aio/event/wait/no-flush-cb: set again: runs");
    is_int(data.n, 1, "/aio/event/wait/no-flush-cb: once");
    ok(!aio_poll(ctx, false), "/aio/event/wait/no-flush-cb: then nothing");
    is_int(data.n, 1, "/aio/event/wait/no-flush-cb: still once");

    event_notifier_set(&data.e);
    ok(aio_poll(ctx, false), "/aio/event/wait/no-flush-cb: a third set runs");
    is_int(data.n, 2, "/aio/event/wait/no-flush-cb: twice in all");
    ok(!aio_poll(ctx, false), "/aio/event/wait/no-flush-cb: then nothing");

    event_notifier_set(&dummy.e);
    wait_until_inactive(&dummy);
    ok(data.n == 2 && dummy.n == 1 && dummy.active == 0,
       "/aio/event/wait/no-flush-cb: the other notifier ran alone");

    SET_EVENT_NOTIFIER(ctx, &dummy.e, NULL);
    event_notifier_cleanup(&dummy.e);
    SET_EVENT_NOTIFIER(ctx, &data.e, NULL);
    ok(!aio_poll(ctx, false), "/aio/event/wait/no-flush-cb: removed");
    ok(data.n == 2 && data.not_set == 0 && dummy.not_set == 0,
       "/aio/event/wait/no-flush-cb: every handler call found its notifier set");
    event_notifier_cleanup(&data.e);
}

/* ---- /aio/acquire -------------------------------------------------------------- */

struct acquire_data {
    pthread_mutex_t start_lock;
    EventNotifier notifier;
    atomic_bool thread_acquired;
};

static void *acquire_thread(void *opaque)
{
    struct acquire_data *data = opaque;
    pthread_mutex_lock(&data->start_lock); /* wait for the go */
    pthread_mutex_unlock(&data->start_lock);
    /* Before or after the main thread blocks in aio_poll: the same outcome. */
    event_notifier_set(&data->notifier);
    aio_context_acquire(ctx);
    aio_context_release(ctx);
    atomic_store(&data->thread_acquired, true);
    return NULL;
}

static void test_acquire(void)
{
    struct acquire_data data;
    pthread_t thread;

    event_notifier_init(&data.notifier, false);
    SET_EVENT_NOTIFIER(ctx, &data.notifier, dummy_notifier_read);
    ok(!aio_poll(ctx, false), "/aio/acquire: nothing ready");

    pthread_mutex_init(&data.start_lock, NULL);
    pthread_mutex_lock(&data.start_lock);
    atomic_init(&data.thread_acquired, false);
    pthread_create(&thread, NULL, acquire_thread, &data);

    /* Block in aio_poll while holding ctx: the thread's notifier wakes us,
     * and it cannot take ctx before we release it. */
    aio_context_acquire(ctx);
    pthread_mutex_unlock(&data.start_lock);
    ok(aio_poll(ctx, true), "/aio/acquire: the other thread's notifier ends the blocking poll");
    ok(!atomic_load(&data.thread_acquired), "/aio/acquire: it could not take ctx meanwhile");
    aio_context_release(ctx);

    pthread_join(thread, NULL);
    SET_EVENT_NOTIFIER(ctx, &data.notifier, NULL);
    event_notifier_cleanup(&data.notifier);
    pthread_mutex_destroy(&data.start_lock);
    ok(atomic_load(&data.thread_acquired), "/aio/acquire: it took ctx once released");
}

/* ---- bottom halves ------------------------------------------------------------- */

struct bh_data {
    QEMUBH *bh;
    int n;
    int max;
};

static void bh_test_cb(void *opaque)
{
    struct bh_data *data = opaque;
    if (++data->n < data->max)
        qemu_bh_schedule(data->bh);
}

static void bh_delete_cb(void *opaque)
{
    struct bh_data *data = opaque;
    if (++data->n < data->max) {
        qemu_bh_schedule(data->bh);
    } else {
        qemu_bh_delete(data->bh);
        data->bh = NULL;
    }
}

/* /aio/bh/schedule and /aio/bh/flush check the same sequence. */
static void test_bh_schedule(const char *name)
{
    struct bh_data data = { .n = 0 };
    data.bh = aio_bh_new(ctx, bh_test_cb, &data);
    qemu_bh_schedule(data.bh);
    is_int(data.n, 0, "%s: not run by scheduling", name);
    ok(aio_poll(ctx, true), "%s: a blocking poll runs it", name);
    is_int(data.n, 1, "%s: once", name);
    ok(!aio_poll(ctx, false), "%s: then nothing", name);
    is_int(data.n, 1, "%s: still once", name);
    qemu_bh_delete(data.bh);
}

static void test_bh_schedule10(void)
{
    struct bh_data data = { .n = 0, .max = 10 };
    data.bh = aio_bh_new(ctx, bh_test_cb, &data);
    qemu_bh_schedule(data.bh);
    is_int(data.n, 0, "/aio/bh/schedule10: not run by scheduling");
    ok(aio_poll(ctx, false), "/aio/bh/schedule10: a non-blocking poll runs it");
    is_int(data.n, 1, "/aio/bh/schedule10: once per poll (it rescheduled itself)");
    ok(aio_poll(ctx, true), "/aio/bh/schedule10: a blocking poll runs the rescheduled BH");
    is_int(data.n, 2, "/aio/bh/schedule10: twice");
    while (data.n < 10)
        aio_poll(ctx, true);
    is_int(data.n, 10, "/aio/bh/schedule10: ten runs");
    ok(!aio_poll(ctx, false), "/aio/bh/schedule10: then nothing");
    is_int(data.n, 10, "/aio/bh/schedule10: still ten");
    qemu_bh_delete(data.bh);
}

static void test_bh_cancel(void)
{
    struct bh_data data = { .n = 0 };
    data.bh = aio_bh_new(ctx, bh_test_cb, &data);
    qemu_bh_schedule(data.bh);
    qemu_bh_cancel(data.bh);
    is_int(data.n, 0, "/aio/bh/cancel: not run");
    ok(!aio_poll(ctx, false), "/aio/bh/cancel: a cancelled BH does not run");
    is_int(data.n, 0, "/aio/bh/cancel: still not run");
    qemu_bh_delete(data.bh);
}

static void test_bh_delete(void)
{
    struct bh_data data = { .n = 0 };
    data.bh = aio_bh_new(ctx, bh_test_cb, &data);
    qemu_bh_schedule(data.bh);
    qemu_bh_delete(data.bh);
    is_int(data.n, 0, "/aio/bh/delete: not run");
    ok(!aio_poll(ctx, false), "/aio/bh/delete: a BH deleted while scheduled does not run");
    is_int(data.n, 0, "/aio/bh/delete: still not run");
}

static void test_bh_delete_from_cb(void)
{
    struct bh_data data1 = { .n = 0, .max = 1 };
    data1.bh = aio_bh_new(ctx, bh_delete_cb, &data1);
    qemu_bh_schedule(data1.bh);
    is_int(data1.n, 0, "/aio/bh/callback-delete/one: not run by scheduling");
    while (data1.n < data1.max)
        aio_poll(ctx, true);
    ok(data1.n == data1.max && data1.bh == NULL,
       "/aio/bh/callback-delete/one: ran and deleted itself");
    ok(!aio_poll(ctx, false), "/aio/bh/callback-delete/one: then nothing");
}

static void test_bh_delete_from_cb_many(void)
{
    struct bh_data d[4] = {
        { .n = 0, .max = 1 }, { .n = 0, .max = 3 }, { .n = 0, .max = 2 }, { .n = 0, .max = 4 },
    };
    int i, all_once = 1, all_done = 1;
    /* aio_bh_new_full: the same BH, with QEMU's debug name. */
#if !defined(AIOCTX_QEMU_VERSION) || AIOCTX_QEMU_VERSION >= 80100
    for (i = 0; i < 4; i++)
        d[i].bh = aio_bh_new_full(ctx, bh_delete_cb, &d[i], "delete-many", NULL);
#else
    for (i = 0; i < 4; i++)
        d[i].bh = aio_bh_new_full(ctx, bh_delete_cb, &d[i], "delete-many");
#endif
    for (i = 0; i < 4; i++)
        qemu_bh_schedule(d[i].bh);
    ok(d[0].n + d[1].n + d[2].n + d[3].n == 0,
       "/aio/bh/callback-delete/many: none run by scheduling");

    ok(aio_poll(ctx, false), "/aio/bh/callback-delete/many: one poll runs them");
    for (i = 0; i < 4; i++)
        all_once &= d[i].n == 1;
    ok(all_once, "/aio/bh/callback-delete/many: each once");
    ok(d[0].bh == NULL, "/aio/bh/callback-delete/many: the first deleted itself");

    while (d[0].n < d[0].max || d[1].n < d[1].max || d[2].n < d[2].max || d[3].n < d[3].max)
        aio_poll(ctx, true);
    for (i = 0; i < 4; i++)
        all_done &= d[i].n == d[i].max && d[i].bh == NULL;
    ok(all_done, "/aio/bh/callback-delete/many: each ran max times and deleted itself");
}

/* ---- /aio/timer/schedule ---------------------------------------------------------- */

struct timer_data {
    QEMUTimer timer; /* embedded, as QEMU's test has it */
    QEMUClockType clock_type;
    int n;
    int max;
    int64_t ns;
};

static void timer_test_cb(void *opaque)
{
    struct timer_data *data = opaque;
    if (++data->n < data->max)
        timer_mod(&data->timer, qemu_clock_get_ns(data->clock_type) + data->ns);
}

static void dummy_io_handler_read(EventNotifier *e)
{
    (void)e;
}

static void test_timer_schedule(void)
{
    struct timer_data data = { .n = 0, .ns = SCALE_MS * 750LL, .max = 2,
                               .clock_type = QEMU_CLOCK_REALTIME };
    EventNotifier e;

    /* QEMU needs an fd so that aio_poll blocks for a timer; aioctx does not,
     * but the sequence is kept. */
    event_notifier_init(&e, false);
    SET_EVENT_NOTIFIER(ctx, &e, dummy_io_handler_read);
    aio_poll(ctx, false);

    aio_timer_init(ctx, &data.timer, data.clock_type, SCALE_NS, timer_test_cb, &data);
    timer_mod(&data.timer, qemu_clock_get_ns(data.clock_type) + data.ns);
    is_int(data.n, 0, "/aio/timer/schedule: not fired by arming");
    flush_ctx();
    ok(!aio_poll(ctx, false), "/aio/timer/schedule: not due yet");
    is_int(data.n, 0, "/aio/timer/schedule: not fired early");

    tap_sleep_ms(1000);
    is_int(data.n, 0, "/aio/timer/schedule: fires only in a poll");
    ok(aio_poll(ctx, false), "/aio/timer/schedule: due: a non-blocking poll fires it");
    is_int(data.n, 1, "/aio/timer/schedule: once");

    flush_ctx(); /* the callback re-armed it */
    ok(!aio_poll(ctx, false), "/aio/timer/schedule: the re-armed timer is not due yet");
    is_int(data.n, 1, "/aio/timer/schedule: still once");
    ok(aio_poll(ctx, true), "/aio/timer/schedule: a blocking poll waits for it");
    is_int(data.n, 2, "/aio/timer/schedule: twice");
    ok(!aio_poll(ctx, false), "/aio/timer/schedule: max reached: not re-armed");
    is_int(data.n, 2, "/aio/timer/schedule: still twice");

    SET_EVENT_NOTIFIER(ctx, &e, NULL);
    event_notifier_cleanup(&e);
    timer_del(&data.timer);
    timer_deinit(&data.timer);
}

/* ---- /aio/notify (QEMU up to 2.x) ----------------------------------------------------
 * A notify made while nobody polls is not lost: the next blocking poll
 * returns at once, and false (no callback ran). A timer is the safety
 * net: if the notify was lost, the timer ends the blocking poll instead
 * (returning true, late), and the case fails rather than hangs. */

static void rescue_cb(void *opaque)
{
    ++*(int *)opaque;
}

static void test_notify(void)
{
    QEMUTimer rescue;
    int rescued = 0;
    bool progress;

    flush_ctx();
    aio_timer_init(ctx, &rescue, QEMU_CLOCK_REALTIME, SCALE_MS, rescue_cb, &rescued);
    timer_mod(&rescue, qemu_clock_get_ms(QEMU_CLOCK_REALTIME) + 2000);
    ok(!aio_poll(ctx, false), "/aio/notify: nothing ready");
    aio_notify(ctx);
    progress = aio_poll(ctx, true);
    ok(!progress && rescued == 0,
       "/aio/notify: after aio_notify, a blocking aio_poll returns false at once");
    if (rescued)
        diag("the notify was lost: the blocking poll waited for the 2 s safety timer");
    ok(!aio_poll(ctx, false), "/aio/notify: and the notify is consumed");
    timer_del(&rescue);
    timer_deinit(&rescue);
}

/* ---- aio_set_fd_handler with the era's signature ------------------------------------- */

struct fd_data {
    int fd;
    int reads;
};

static void fd_read_cb(void *opaque)
{
    struct fd_data *d = opaque;
    char c;
    if (read(d->fd, &c, 1) == 1)
        d->reads++;
}

static void test_fd_handler(void)
{
    int p[2];
    struct fd_data d = { -1, 0 };
    char c = 'x';
    if (!ok(pipe(p) == 0, "pipe"))
        return;
    d.fd = p[0];
    SET_FD_HANDLER(ctx, p[0], fd_read_cb, NULL, &d);
    ok(!aio_poll(ctx, false), "aio_set_fd_handler (" ERA " signature): an empty pipe is not read");
    ok(write(p[1], &c, 1) == 1, "write a byte");
    ok(aio_poll(ctx, false), "aio_set_fd_handler (" ERA "): the readable pipe runs io_read");
    is_int(d.reads, 1, "aio_set_fd_handler (" ERA "): it read the byte");
    SET_FD_HANDLER(ctx, p[0], NULL, NULL, NULL);
    ok(write(p[1], &c, 1) == 1, "write another");
    ok(!aio_poll(ctx, false), "aio_set_fd_handler (" ERA "): removed: not called");
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    tap_watchdog(30);
    is_int(qemu_init_main_loop(&error_abort), 0, "qemu_init_main_loop");
    ctx = qemu_get_aio_context();
    flush_ctx();

    test_acquire();
    test_bh_schedule("/aio/bh/schedule");
    test_bh_schedule10();
    test_bh_cancel();
    test_bh_delete();
    test_bh_delete_from_cb();
    test_bh_delete_from_cb_many();
    test_bh_schedule("/aio/bh/flush");
    test_set_event_notifier();
    test_wait_event_notifier();
    test_wait_event_notifier_noflush();
    test_flush_event_notifier();
    test_timer_schedule();
    test_fd_handler();
    test_notify();
    return done_testing();
}
