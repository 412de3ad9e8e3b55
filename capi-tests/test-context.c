/*
 * test-context: context construction, names, ids (the set order), reference
 * counting and the process-wide main context.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"

#include <pthread.h>

#define NCTX 64

static void test_new_invalid(void)
{
    AioctxContext *c;

    c = aioctx_context_new(NULL);
    ok(c == NULL, "context_new(NULL) returns NULL");
    ok(aioctx_last_error() && aioctx_last_error()[0],
       "context_new(NULL) sets last_error: '%s'", aioctx_last_error());
    c = aioctx_context_new("");
    ok(c == NULL, "context_new(\"\") returns NULL");
    ok(aioctx_last_error() && aioctx_last_error()[0],
       "context_new(\"\") sets last_error: '%s'", aioctx_last_error());
}

static void test_name_and_ids(void)
{
    AioctxContext *ctx[NCTX];
    char buf[32];
    int ascending = 1, names_ok = 1, unique = 1;

    for (int i = 0; i < NCTX; i++) {
        snprintf(buf, sizeof buf, "ctx-%d", i);
        ctx[i] = aioctx_context_new(buf);
        if (!ctx[i]) {
            ok(0, "context_new(\"%s\") failed: %s", buf, aioctx_last_error());
            for (int j = 0; j < i; j++)
                aioctx_context_unref(ctx[j]);
            return;
        }
        /* The name must be copied: clobber the caller's buffer. */
        memset(buf, 'X', sizeof buf - 1);
        buf[sizeof buf - 1] = '\0';
    }
    ok(1, "created %d contexts", NCTX);

    for (int i = 0; i < NCTX; i++) {
        char want[32];
        snprintf(want, sizeof want, "ctx-%d", i);
        const char *got = aioctx_context_name(ctx[i]);
        if (!got || strcmp(got, want) != 0) {
            names_ok = 0;
            diag("context %d: name '%s', want '%s'", i, got ? got : "(NULL)", want);
        }
        if (i > 0 && !(aioctx_context_id(ctx[i]) > aioctx_context_id(ctx[i - 1]))) {
            ascending = 0;
            diag("id[%d]=%llu not > id[%d]=%llu", i,
                 (unsigned long long)aioctx_context_id(ctx[i]), i - 1,
                 (unsigned long long)aioctx_context_id(ctx[i - 1]));
        }
        for (int j = 0; j < i; j++)
            if (aioctx_context_id(ctx[i]) == aioctx_context_id(ctx[j]))
                unique = 0;
    }
    int nonzero = 1;
    for (int i = 0; i < NCTX; i++)
        if (aioctx_context_id(ctx[i]) == 0)
            nonzero = 0;
    ok(nonzero, "no context has id 0");
    ok(names_ok, "context_name returns the (copied) name given to context_new");
    ok(unique, "context ids are unique");
    ok(ascending, "context ids ascend in creation order");

    /* Ids are never reused, even after a context is destroyed. */
    uint64_t last = aioctx_context_id(ctx[NCTX - 1]);
    aioctx_context_unref(ctx[NCTX - 1]);
    AioctxContext *again = aioctx_context_new("ctx-again");
    ok(again && aioctx_context_id(again) > last,
       "a context created after another was destroyed still gets a larger id");
    aioctx_context_unref(again);

    for (int i = 0; i < NCTX - 1; i++)
        aioctx_context_unref(ctx[i]);
}

static void test_refcount(void)
{
    AioctxContext *c = aioctx_context_new("refcounted");
    ok(c != NULL, "context_new(\"refcounted\")");
    if (!c)
        return;
    AioctxContext *r = aioctx_context_ref(c);
    ok(r == c, "context_ref returns the same pointer");
    AioctxContext *r2 = aioctx_context_ref(c);
    ok(r2 == c, "context_ref again returns the same pointer");
    aioctx_context_unref(c);
    aioctx_context_unref(c);
    /* One reference left: the context must still be fully usable. */
    is_str(aioctx_context_name(c), "refcounted", "context still alive after 2 of 3 unrefs");
    is_int(aioctx_acquire(c), 0, "acquire works on the still-referenced context");
    is_int(aioctx_lock_depth(c), 1, "depth 1");
    is_int(aioctx_release(c), 0, "release");
    aioctx_context_unref(c); /* last one: valgrind checks nothing leaks */
    ok(1, "last unref frees (valgrind checks for leaks)");

    aioctx_context_unref(NULL);
    ok(1, "context_unref(NULL) is a no-op");
    ok(aioctx_context_ref(NULL) == NULL, "context_ref(NULL) returns NULL");
    ok(aioctx_context_name(NULL) == NULL, "context_name(NULL) returns NULL");
}

static void *main_ctx_from_thread(void *arg)
{
    (void)arg;
    return aioctx_main_context();
}

static void test_main_context(void)
{
    AioctxContext *m1 = aioctx_main_context();
    AioctxContext *m2 = aioctx_main_context();
    void *m3 = NULL;
    pthread_t th;

    ok(m1 != NULL, "main_context is not NULL");
    ok(m1 == m2, "main_context returns the same pointer every time");
    pthread_create(&th, NULL, main_ctx_from_thread, NULL);
    pthread_join(th, &m3);
    ok(m3 == (void *)m1, "main_context is process-wide (same pointer from another thread)");
    ok(m1 && aioctx_context_name(m1) && aioctx_context_name(m1)[0],
       "main context has a name: '%s'", m1 ? aioctx_context_name(m1) : "(NULL)");

    /* Borrowed: ref + unref must leave it alive. */
    AioctxContext *r = aioctx_context_ref(m1);
    ok(r == m1, "main context can be ref'd");
    aioctx_context_unref(r);
    ok(aioctx_main_context() == m1 && aioctx_context_name(m1) != NULL,
       "main context survives a ref/unref pair");

    /* Unref of the main context is a no-op (it is never freed). */
    aioctx_context_unref(m1);
    aioctx_context_unref(m1);
    is_str(aioctx_context_name(m1), aioctx_context_name(aioctx_main_context()),
           "unref of the main context is a no-op: still alive");
    is_int(aioctx_acquire(m1), 0, "the main context is still usable");
    aioctx_release(m1);

    AioctxContext *c = aioctx_context_new("after-main");
    ok(c && aioctx_context_id(c) != aioctx_context_id(m1),
       "main context id differs from a new context's");
    aioctx_context_unref(c);
}

static void *unref_thread(void *arg)
{
    AioctxContext *c = arg;
    /* usable here too */
    if (aioctx_acquire(c) == 0)
        aioctx_release(c);
    aioctx_context_unref(c);
    return NULL;
}

static void test_unref_from_other_thread_and_usage(void)
{
    /* A context created in one thread may be used and destroyed in another. */
    AioctxContext *c = aioctx_context_new("cross-thread");
    pthread_t th;
    ok(c != NULL, "context_new(\"cross-thread\")");
    if (!c)
        return;
    pthread_create(&th, NULL, unref_thread, c);
    pthread_join(th, NULL);
    ok(1, "context unref'd from another thread");
}

int main(void)
{
    tap_watchdog(10);
    test_new_invalid();
    test_name_and_ids();
    test_refcount();
    test_main_context();
    test_unref_from_other_thread_and_usage();
    return done_testing();
}
