/*
 * test-errors: the error conventions of the whole core API — every function
 * given NULL (or another invalid argument) returns -EINVAL / NULL / a no-op,
 * never crashes; aioctx_last_error() is thread-local, "" before any failure,
 * set by every failure and names the object; aioctx_version().
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"

#include <pthread.h>

static void cb(void *opaque)
{
    (void)opaque;
}

static bool cond(void *opaque)
{
    (void)opaque;
    return false;
}

/* Checks rc == -EINVAL and that a message was set. */
#define EINVAL_CASE(call)                                                         \
    do {                                                                          \
        long long rc_ = (long long)(call);                                        \
        const char *e_ = aioctx_last_error();                                     \
        is_int(rc_, -EINVAL, "%s -> -EINVAL", #call);                             \
        ok(e_ != NULL && e_[0] != '\0', "  ... and sets last_error: '%s'", e_ ? e_ : "(NULL)"); \
    } while (0)

#define NULL_CASE(call)                                                           \
    do {                                                                          \
        const void *p_ = (const void *)(call);                                    \
        const char *e_ = aioctx_last_error();                                     \
        ok(p_ == NULL, "%s -> NULL", #call);                                      \
        ok(e_ != NULL && e_[0] != '\0', "  ... and sets last_error: '%s'", e_ ? e_ : "(NULL)"); \
    } while (0)

static void test_null_everywhere(void)
{
    AioctxContext *ctx = aioctx_context_new("errors-ctx");

    /* contexts and their lock */
    NULL_CASE(aioctx_context_new(NULL));
    NULL_CASE(aioctx_context_new(""));
    ok(aioctx_context_ref(NULL) == NULL, "aioctx_context_ref(NULL) -> NULL");
    aioctx_context_unref(NULL);
    ok(1, "aioctx_context_unref(NULL) is a no-op");
    ok(aioctx_context_name(NULL) == NULL, "aioctx_context_name(NULL) -> NULL");
    is_int(aioctx_context_id(NULL), 0, "aioctx_context_id(NULL) -> 0 (never a valid id)");
    EINVAL_CASE(aioctx_context_claim(NULL));
    EINVAL_CASE(aioctx_acquire(NULL));
    EINVAL_CASE(aioctx_try_acquire(NULL));
    EINVAL_CASE(aioctx_release(NULL));
    is_int(aioctx_lock_depth(NULL), -EINVAL, "aioctx_lock_depth(NULL) -> -EINVAL");
    EINVAL_CASE(aioctx_poll(NULL, false));
    EINVAL_CASE(aioctx_poll(NULL, true));
    EINVAL_CASE(aioctx_notify(NULL));
    EINVAL_CASE(aioctx_context_fd(NULL));
    EINVAL_CASE(aioctx_context_deadline_ns(NULL));

    /* bottom halves, fd handlers, timers */
    NULL_CASE(aioctx_bh_new(NULL, cb, NULL));
    NULL_CASE(aioctx_bh_new(ctx, NULL, NULL));
    EINVAL_CASE(aioctx_bh_schedule(NULL));
    EINVAL_CASE(aioctx_bh_cancel(NULL));
    aioctx_bh_delete(NULL);
    ok(1, "aioctx_bh_delete(NULL) is a no-op");
    EINVAL_CASE(aioctx_bh_schedule_oneshot(NULL, cb, NULL));
    EINVAL_CASE(aioctx_bh_schedule_oneshot(ctx, NULL, NULL));
    EINVAL_CASE(aioctx_set_fd_handler(NULL, 0, cb, NULL, NULL));
    EINVAL_CASE(aioctx_set_fd_handler(ctx, -1, cb, NULL, NULL));
    EINVAL_CASE(aioctx_set_fd_handler(ctx, -1, NULL, NULL, NULL));
    NULL_CASE(aioctx_timer_new(NULL, cb, NULL));
    NULL_CASE(aioctx_timer_new(ctx, NULL, NULL));
    EINVAL_CASE(aioctx_timer_mod(NULL, 0));
    EINVAL_CASE(aioctx_timer_del(NULL));
    aioctx_timer_free(NULL);
    ok(1, "aioctx_timer_free(NULL) is a no-op");
    AioctxTimer *t = aioctx_timer_new(ctx, cb, NULL);
    EINVAL_CASE(aioctx_timer_mod(t, -1));
    EINVAL_CASE(aioctx_timer_mod(t, INT64_MIN));
    aioctx_timer_free(t);

    /* waiting */
    EINVAL_CASE(aioctx_poll_while(NULL, cond, NULL, 0, 0));
    EINVAL_CASE(aioctx_poll_while(ctx, NULL, NULL, 0, 0));
    EINVAL_CASE(aioctx_poll_while(ctx, cond, NULL, 0, 4));
    EINVAL_CASE(aioctx_poll_while(ctx, cond, NULL, -1, 0xffffffffu));
    is_int(aioctx_lock_depth(ctx), 0, "no refused poll_while left the context held");
    aioctx_wait_kick();
    ok(1, "aioctx_wait_kick() with no waiter is harmless");

    /* context sets */
    EINVAL_CASE(aioctx_set_add(NULL, ctx));
    AioctxSet *s = aioctx_set_new();
    ok(s != NULL, "aioctx_set_new()");
    EINVAL_CASE(aioctx_set_add(s, NULL));
    is_int(aioctx_set_len(NULL), 0, "aioctx_set_len(NULL) -> 0");
    EINVAL_CASE(aioctx_set_acquire(NULL));
    EINVAL_CASE(aioctx_set_release(NULL));
    aioctx_set_free(NULL);
    ok(1, "aioctx_set_free(NULL) is a no-op");
    aioctx_set_free(s);

    /* IOThreads */
    NULL_CASE(aioctx_iothread_new(NULL));
    NULL_CASE(aioctx_iothread_new(""));
    ok(aioctx_iothread_context(NULL) == NULL, "aioctx_iothread_context(NULL) -> NULL");
    is_int(aioctx_iothread_free(NULL), 0, "aioctx_iothread_free(NULL) -> 0 (no-op)");

    aioctx_context_unref(ctx);
}

static void test_messages_name_objects(void)
{
    AioctxContext *ctx = aioctx_context_new("errors-named-ctx");
    is_int(aioctx_release(ctx), -EPERM, "release of a context not held -> -EPERM");
    like(aioctx_last_error(), "errors-named-ctx", "the message names the context");

    AioctxIoThread *it = aioctx_iothread_new("errors-iot");
    AioctxContext *ic = aioctx_iothread_context(it);
    is_int(aioctx_poll(ic, false), -EPERM, "poll of an IOThread's context from main -> -EPERM");
    like(aioctx_last_error(), aioctx_context_name(ic), "the message names the context");
    is_int(aioctx_iothread_free(it), 0, "iothread_free");

    AioctxBh *bh = aioctx_bh_new(ctx, cb, NULL);
    AioctxTimer *t = aioctx_timer_new(ctx, cb, NULL);
    aioctx_context_unref(ctx);
    int rc = aioctx_bh_schedule(bh);
    is_int(rc, -ENODEV, "bh_schedule after its context was freed -> -ENODEV (no use-after-free)");
    ok(aioctx_last_error()[0] != '\0', "  ... with a message: '%s'", aioctx_last_error());
    is_int(aioctx_timer_mod(t, 0), -ENODEV, "timer_mod after its context was freed -> -ENODEV");
    is_int(aioctx_bh_cancel(bh), 0, "bh_cancel of an orphaned BH is still fine");
    is_int(aioctx_timer_del(t), 0, "timer_del of an orphaned timer is still fine");
    aioctx_bh_delete(bh);
    aioctx_timer_free(t);
    ok(1, "orphaned BH and timer can be freed (valgrind checks)");
}

struct thread_err {
    char before[256];
    int rc;
    char after[256];
    const char *ptr;
};

static void *errors_thread(void *arg)
{
    struct thread_err *e = arg;
    const char *p = aioctx_last_error();
    snprintf(e->before, sizeof e->before, "%s", p ? p : "(NULL)");
    e->rc = aioctx_set_acquire(NULL);
    p = aioctx_last_error();
    snprintf(e->after, sizeof e->after, "%s", p ? p : "(NULL)");
    return NULL;
}

static void test_thread_local(void)
{
    struct thread_err e;
    pthread_t th;
    char mine[256];

    ok(aioctx_context_new("") == NULL, "fail in main (context_new(\"\"))");
    snprintf(mine, sizeof mine, "%s", aioctx_last_error());
    ok(mine[0] != '\0', "main has a message: '%s'", mine);

    memset(&e, 0, sizeof e);
    pthread_create(&th, NULL, errors_thread, &e);
    pthread_join(th, NULL);
    is_str(e.before, "", "a new thread's last_error is \"\" (not main's message)");
    is_int(e.rc, -EINVAL, "the thread fails its own call");
    ok(e.after[0] != '\0' && strcmp(e.after, mine) != 0, "and gets its own message: '%s'", e.after);
    is_str(aioctx_last_error(), mine, "main's message is unaffected by the other thread's failure");

    /* A success does not make the pointer invalid; last_error never returns NULL. */
    AioctxContext *c = aioctx_context_new("errors-ok");
    ok(aioctx_last_error() != NULL, "last_error is never NULL");
    aioctx_context_unref(c);
}

static void test_version(void)
{
    const char *v = aioctx_version();
    ok(v != NULL, "aioctx_version() is not NULL");
    if (!v)
        return;
    int a, b, c, n = 0;
    ok(sscanf(v, "%d.%d.%d%n", &a, &b, &c, &n) == 3 && n > 0, "version '%s' is MAJOR.MINOR.PATCH", v);
    ok(aioctx_version() == v, "static storage: same pointer each time");
}

int main(void)
{
    tap_watchdog(10);
    {
        /* Before anything failed in this thread. */
        const char *e = aioctx_last_error();
        ok(e != NULL && e[0] == '\0', "last_error is \"\" before any failure");
    }
    test_null_everywhere();
    test_messages_name_objects();
    test_thread_local();
    test_version();
    return done_testing();
}
