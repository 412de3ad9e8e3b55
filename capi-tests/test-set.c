/*
 * test-set: context sets — dedup on add, acquire each distinct context once in
 * ascending id order, release each once, -EPERM / -EBUSY rules, free of a held
 * set, and an ABBA stress: many threads acquiring overlapping sets built in
 * opposite insertion orders, with a counter protected only by the contexts.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"

#include <pthread.h>
#include <stdatomic.h>

static void test_basic(void)
{
    AioctxContext *a = aioctx_context_new("set-a");
    AioctxContext *b = aioctx_context_new("set-b");
    AioctxSet *s = aioctx_set_new();

    ok(s != NULL, "set_new");
    is_int(aioctx_set_len(s), 0, "a new set is empty");
    is_int(aioctx_set_add(s, a), 1, "add a -> 1 (added)");
    is_int(aioctx_set_add(s, a), 0, "add a again -> 0 (already present)");
    is_int(aioctx_set_add(s, b), 1, "add b -> 1");
    is_int(aioctx_set_add(s, a), 0, "add a a third time -> 0");
    is_int(aioctx_set_len(s), 2, "len counts distinct contexts (2)");

    is_int(aioctx_set_acquire(s), 0, "set_acquire");
    is_int(aioctx_lock_depth(a), 1, "a held once although added three times");
    is_int(aioctx_lock_depth(b), 1, "b held once");
    is_int(aioctx_set_acquire(s), -EBUSY, "acquire of a set already held -> -EBUSY");
    ok(aioctx_last_error()[0] != '\0', "... with a message: '%s'", aioctx_last_error());
    ok(aioctx_lock_depth(a) == 1 && aioctx_lock_depth(b) == 1, "depths unchanged by the refused acquire");
    AioctxContext *c = aioctx_context_new("set-c");
    is_int(aioctx_set_add(s, c), -EBUSY, "add to a held set -> -EBUSY");
    is_int(aioctx_set_len(s), 2, "len unchanged");
    is_int(aioctx_set_release(s), 0, "set_release");
    is_int(aioctx_lock_depth(a), 0, "a released once -> depth 0");
    is_int(aioctx_lock_depth(b), 0, "b depth 0");
    is_int(aioctx_set_release(s), -EPERM, "release of a set not held -> -EPERM");
    ok(aioctx_last_error()[0] != '\0', "... with a message: '%s'", aioctx_last_error());
    is_int(aioctx_set_add(s, c), 1, "add works again once released");

    /* Caller already holding a member: the set adds exactly one level. */
    aioctx_acquire(a);
    is_int(aioctx_set_acquire(s), 0, "set_acquire while already holding a member");
    ok(aioctx_lock_depth(a) == 2 && aioctx_lock_depth(b) == 1 && aioctx_lock_depth(c) == 1,
       "each member gained exactly one level (a:2 b:1 c:1)");
    is_int(aioctx_set_release(s), 0, "set_release");
    ok(aioctx_lock_depth(a) == 1 && aioctx_lock_depth(b) == 0 && aioctx_lock_depth(c) == 0,
       "each member lost exactly one level (a:1 b:0 c:0)");
    aioctx_release(a);

    /* Sets hold references: contexts stay alive while in a set. */
    aioctx_context_unref(c);
    is_int(aioctx_set_acquire(s), 0, "set_acquire after the caller dropped its ref to a member");
    is_int(aioctx_set_release(s), 0, "set_release");

    /* Empty set. */
    AioctxSet *e = aioctx_set_new();
    is_int(aioctx_set_acquire(e), 0, "acquire of an empty set");
    is_int(aioctx_set_release(e), 0, "release of an empty set that was acquired");
    aioctx_set_free(e);

    aioctx_set_free(s);
    aioctx_context_unref(a);
    aioctx_context_unref(b);
}

/* ---- other threads ---------------------------------------------------------- */

struct set_thread_res {
    AioctxSet *s;
    AioctxContext *a;
    int release_rc, acquire_rc, try_rc;
};

static void *foreign_release(void *arg)
{
    struct set_thread_res *r = arg;
    r->release_rc = aioctx_set_release(r->s);
    r->try_rc = aioctx_try_acquire(r->a);
    if (r->try_rc == 0)
        aioctx_release(r->a);
    return NULL;
}

static void test_foreign_thread(void)
{
    AioctxContext *a = aioctx_context_new("set-f-a");
    AioctxSet *s = aioctx_set_new();
    struct set_thread_res r = { s, a, -99, -99, -99 };
    pthread_t th;
    aioctx_set_add(s, a);
    aioctx_set_acquire(s);
    pthread_create(&th, NULL, foreign_release, &r);
    pthread_join(th, NULL);
    is_int(r.release_rc, -EPERM, "set_release by a thread that does not hold it -> -EPERM");
    is_int(r.try_rc, -EBUSY, "the members stay held by the owner");
    is_int(aioctx_lock_depth(a), 1, "owner's depth unchanged");
    aioctx_set_release(s);
    aioctx_set_free(s);
    aioctx_context_unref(a);
}

static void *try_acquire_thread(void *arg)
{
    AioctxContext *c = arg;
    int rc = aioctx_try_acquire(c);
    if (rc == 0)
        aioctx_release(c);
    return (void *)(intptr_t)rc;
}

static void test_free_held(void)
{
    AioctxContext *a = aioctx_context_new("set-h-a");
    AioctxContext *b = aioctx_context_new("set-h-b");
    AioctxSet *s = aioctx_set_new();
    void *rc;
    pthread_t th;
    aioctx_set_add(s, b);
    aioctx_set_add(s, a);
    aioctx_set_add(s, b);
    aioctx_set_acquire(s);
    aioctx_set_free(s);
    ok(aioctx_lock_depth(a) == 0 && aioctx_lock_depth(b) == 0,
       "set_free of a set held by the caller releases it first");
    pthread_create(&th, NULL, try_acquire_thread, b);
    pthread_join(th, &rc);
    is_int((intptr_t)rc, 0, "another thread can take a member afterwards");
    aioctx_set_free(NULL);
    ok(1, "set_free(NULL) is a no-op");
    aioctx_context_unref(a);
    aioctx_context_unref(b);
}

/* ---- acquisition order ---------------------------------------------------------- */

struct order_probe {
    AioctxContext *low, *high;
    atomic_int holding_high;
    atomic_int release_high;
    int saw_low_taken;
};

static void *order_probe_thread(void *arg)
{
    struct order_probe *p = arg;
    aioctx_acquire(p->high);
    atomic_store(&p->holding_high, 1);
    /* The main thread is now blocked in set_acquire. If it acquires in ascending id
     * order it took `low` first and is waiting for `high`. */
    int64_t end = tap_now_ns() + 2000000000LL * tap_scale();
    while (tap_now_ns() < end) {
        int rc = aioctx_try_acquire(p->low);
        if (rc == -EBUSY) {
            p->saw_low_taken = 1;
            break;
        }
        if (rc == 0)
            aioctx_release(p->low);
        tap_sleep_ms(1);
    }
    aioctx_release(p->high);
    return NULL;
}

static void test_order(void)
{
    AioctxContext *low = aioctx_context_new("set-o-low");
    AioctxContext *high = aioctx_context_new("set-o-high");
    ok(aioctx_context_id(low) < aioctx_context_id(high), "ids: low < high");
    AioctxSet *s = aioctx_set_new();
    aioctx_set_add(s, high); /* inserted in descending order */
    aioctx_set_add(s, low);
    struct order_probe p = { low, high, 0, 0, 0 };
    pthread_t th;
    pthread_create(&th, NULL, order_probe_thread, &p);
    while (!atomic_load(&p.holding_high))
        tap_sleep_ms(1);
    is_int(aioctx_set_acquire(s), 0, "set_acquire (blocks until the probe releases high)");
    pthread_join(th, NULL);
    ok(p.saw_low_taken,
       "while blocked on the higher-id context, the lower-id one was already held: ascending id order");
    ok(aioctx_lock_depth(low) == 1 && aioctx_lock_depth(high) == 1, "both held once");
    aioctx_set_release(s);
    aioctx_set_free(s);
    aioctx_context_unref(low);
    aioctx_context_unref(high);
}

/* ---- large sets ---------------------------------------------------------------- */

static void test_large(void)
{
    enum { N = 2000 };
    static AioctxContext *ctx[N];
    AioctxSet *s = aioctx_set_new();
    char name[32];
    int ok_depth = 1, added = 0;
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "big-%d", i);
        ctx[i] = aioctx_context_new(name);
    }
    /* Insert in a scrambled order, each twice. */
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < N; i++)
            added += aioctx_set_add(s, ctx[(i * 7919) % N]);
    is_int(added, N, "%d distinct contexts added twice each: %d reported as added", N, N);
    is_int(aioctx_set_len(s), N, "len %d", N);
    int64_t t0 = tap_now_ns();
    aioctx_set_acquire(s);
    for (int i = 0; i < N; i++)
        if (aioctx_lock_depth(ctx[i]) != 1)
            ok_depth = 0;
    aioctx_set_release(s);
    for (int i = 0; i < N; i++)
        if (aioctx_lock_depth(ctx[i]) != 0)
            ok_depth = 0;
    diag("acquire+release of a %d-context set: %lld us", N, (long long)((tap_now_ns() - t0) / 1000));
    ok(ok_depth, "every member held exactly once, then released");
    aioctx_set_free(s);
    for (int i = 0; i < N; i++)
        aioctx_context_unref(ctx[i]);
}

/* ---- ABBA stress ------------------------------------------------------------------ */

#define NCTX 6
#define NTHR 8
#define ITERS 2000

static AioctxContext *sctx[NCTX];
static long counters[NCTX];        /* protected only by sctx[i] */
static atomic_int occupant[NCTX];  /* 0 or thread index + 1 */
static atomic_int violations;
static atomic_int errors;
static int iters = ITERS;

static void *stress_thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    AioctxSet *s = aioctx_set_new();
    int members[NCTX], n = 0;
    /* Overlapping windows of 3-4 contexts; odd threads insert in descending order
     * and add one member twice. */
    for (int k = 0; k < 3 + t % 2; k++)
        members[n++] = (t + k) % NCTX;
    if (t % 2) {
        for (int i = n - 1; i >= 0; i--)
            aioctx_set_add(s, sctx[members[i]]);
        aioctx_set_add(s, sctx[members[0]]);
    } else {
        for (int i = 0; i < n; i++)
            aioctx_set_add(s, sctx[members[i]]);
    }
    for (int it = 0; it < iters; it++) {
        if (aioctx_set_acquire(s) != 0) {
            atomic_fetch_add(&errors, 1);
            continue;
        }
        for (int i = 0; i < n; i++) {
            int m = members[i];
            int expected = 0;
            if (!atomic_compare_exchange_strong(&occupant[m], &expected, t + 1))
                atomic_fetch_add(&violations, 1);
            long v = counters[m];
            if ((it & 63) == 0)
                sched_yield();
            counters[m] = v + 1;
        }
        for (int i = 0; i < n; i++)
            atomic_store(&occupant[members[i]], 0);
        if (aioctx_set_release(s) != 0)
            atomic_fetch_add(&errors, 1);
    }
    aioctx_set_free(s);
    return NULL;
}

static void test_stress(void)
{
    pthread_t th[NTHR];
    long expected[NCTX] = { 0 };
    char name[16];
    if (tap_scale() > 1)
        iters = ITERS / 10;
    for (int i = 0; i < NCTX; i++) {
        snprintf(name, sizeof name, "stress-%d", i);
        sctx[i] = aioctx_context_new(name);
    }
    for (int t = 0; t < NTHR; t++)
        for (int k = 0; k < 3 + t % 2; k++)
            expected[(t + k) % NCTX] += iters;
    int64_t t0 = tap_now_ns();
    for (intptr_t t = 0; t < NTHR; t++)
        pthread_create(&th[t], NULL, stress_thread, (void *)t);
    for (int t = 0; t < NTHR; t++)
        pthread_join(th[t], NULL);
    diag("%d threads x %d set acquisitions: %lld ms", NTHR, iters, (long long)((tap_now_ns() - t0) / 1000000));
    ok(1, "no deadlock: %d threads acquiring overlapping sets in opposite insertion orders finished", NTHR);
    is_int(atomic_load(&errors), 0, "every set_acquire/set_release succeeded");
    is_int(atomic_load(&violations), 0, "no two threads ever held the same context at once");
    int exact = 1;
    for (int i = 0; i < NCTX; i++)
        if (counters[i] != expected[i]) {
            exact = 0;
            diag("counter %d: %ld, expected %ld", i, counters[i], expected[i]);
        }
    ok(exact, "counters protected only by the contexts are exact");
    for (int i = 0; i < NCTX; i++)
        aioctx_context_unref(sctx[i]);
}

/* aioctx_set_add_many: the contexts of many drives in one call. */
static void test_add_many(void)
{
    enum { NC = 40, NDRIVES = 400 };
    AioctxContext *ctxs[NC], *drives[NDRIVES];
    for (int i = 0; i < NC; i++)
        ctxs[i] = aioctx_context_new("set-many");
    for (int d = 0; d < NDRIVES; d++)
        drives[d] = ctxs[(d * 13) % NC];
    AioctxSet *s = aioctx_set_new();
    is_int(aioctx_set_add(s, ctxs[0]), 1, "one context added the usual way");
    is_int(aioctx_set_add_many(s, drives, NDRIVES), NC - 1, "add_many counts only the new contexts");
    is_int((int)aioctx_set_len(s), NC, "the set has each context once");
    is_int(aioctx_set_add_many(s, drives, NDRIVES), 0, "adding them all again adds nothing");
    is_int(aioctx_set_add_many(s, NULL, 0), 0, "n = 0 with NULL is fine");
    is_int(aioctx_set_add_many(s, NULL, 3), -EINVAL, "NULL array with n > 0 -> -EINVAL");
    AioctxContext *fresh = aioctx_context_new("set-many-fresh");
    AioctxContext *with_null[3] = { fresh, NULL, ctxs[1] };
    is_int(aioctx_set_add_many(s, with_null, 3), -EINVAL, "a NULL entry -> -EINVAL");
    is_int((int)aioctx_set_len(s), NC, "... and nothing was added");

    /* Long runs of one context (skipped eight at a time), a NULL deep inside
     * one, and a short tail: the same answers as one add at a time. */
    enum { RUN = 101 };
    AioctxContext *runs[RUN];
    for (int i = 0; i < RUN; i++)
        runs[i] = i < 60 ? fresh : ctxs[2];
    runs[37] = NULL;
    is_int(aioctx_set_add_many(s, runs, RUN), -EINVAL, "a NULL inside a run of repeats -> -EINVAL");
    like(aioctx_last_error(), "ctxs[37] is NULL", "... naming the entry");
    is_int((int)aioctx_set_len(s), NC, "... and the contexts before it were taken back out");
    runs[37] = fresh;
    runs[RUN - 1] = NULL;
    is_int(aioctx_set_add_many(s, runs, RUN), -EINVAL, "a NULL in the tail after the last full chunk -> -EINVAL");
    like(aioctx_last_error(), "ctxs[100] is NULL", "... naming the entry");
    runs[0] = NULL;
    is_int(aioctx_set_add_many(s, runs, 1), -EINVAL, "a NULL first entry -> -EINVAL");
    is_int((int)aioctx_set_len(s), NC, "the set is unchanged by the failed calls");
    runs[0] = runs[RUN - 1] = fresh;
    is_int(aioctx_set_add_many(s, runs, RUN), 1, "runs of two contexts, one new -> 1");
    is_int(aioctx_set_add_many(s, runs, RUN), 0, "again -> 0");
    is_int((int)aioctx_set_len(s), NC + 1, "the set has each once");
    is_int(aioctx_set_acquire(s), 0, "acquire");
    int once = 1;
    for (int i = 0; i < NC; i++)
        once &= aioctx_lock_depth(ctxs[i]) == 1;
    ok(once, "every context held exactly once");
    is_int(aioctx_set_add_many(s, drives, 1), -EBUSY, "add_many to a held set -> -EBUSY");
    is_int(aioctx_set_release(s), 0, "release");
    aioctx_set_free(s);
    aioctx_context_unref(fresh);
    for (int i = 0; i < NC; i++)
        aioctx_context_unref(ctxs[i]);
}

/* Holding a member of higher id before acquiring a set breaks the global
 * order: against another thread's set holding the lower one and waiting for
 * it, the acquire fails with -EDEADLK instead of hanging. */
struct other_set {
    AioctxSet *set;
    int rc;
};

static void *acquire_other_set(void *arg)
{
    struct other_set *o = arg;
    o->rc = aioctx_set_acquire(o->set);
    if (o->rc == 0)
        aioctx_set_release(o->set);
    return NULL;
}

static void test_member_held_out_of_order(void)
{
    AioctxContext *lo = aioctx_context_new("order-lo"), *hi = aioctx_context_new("order-hi");
    AioctxSet *mine = aioctx_set_new(), *theirs = aioctx_set_new();
    AioctxContext *both[] = { lo, hi };
    aioctx_set_add_many(mine, both, 2);
    aioctx_set_add_many(theirs, both, 2);
    is_int(aioctx_acquire(hi), 0, "hold the higher-id member outside the set");
    struct other_set o = { theirs, 99 };
    pthread_t t;
    pthread_create(&t, NULL, acquire_other_set, &o);
    while (aioctx_try_acquire(lo) == 0) { /* until the other set took it */
        aioctx_release(lo);
        tap_sleep_ms(1);
    }
    tap_sleep_ms(20); /* it now waits for the higher one */
    is_int(aioctx_set_acquire(mine), -EDEADLK, "acquiring a set that contains it: -EDEADLK, not a hang");
    like(aioctx_last_error(), "order-lo", "  naming the cycle: '%s'", aioctx_last_error());
    is_int(aioctx_lock_depth(lo), 0, "  nothing taken by the set is left held");
    is_int(aioctx_lock_depth(hi), 1, "  the caller's own hold is unchanged");
    aioctx_release(hi);
    pthread_join(t, NULL);
    is_int(o.rc, 0, "the other set then gets both");
    aioctx_set_free(mine);
    aioctx_set_free(theirs);
    aioctx_context_unref(lo);
    aioctx_context_unref(hi);
}

int main(void)
{
    tap_watchdog(30);
    test_add_many();
    test_basic();
    test_foreign_thread();
    test_free_held();
    test_order();
    test_large();
    test_stress();
    test_member_held_out_of_order();

    AioctxContext *a = aioctx_context_new("set-null");
    AioctxSet *s = aioctx_set_new();
    is_int(aioctx_set_add(NULL, a), -EINVAL, "set_add(NULL set) -> -EINVAL");
    is_int(aioctx_set_add(s, NULL), -EINVAL, "set_add(set, NULL ctx) -> -EINVAL");
    is_int(aioctx_set_len(s), 0, "the refused add left the set empty");
    is_int(aioctx_set_len(NULL), 0, "set_len(NULL) -> 0");
    is_int(aioctx_set_acquire(NULL), -EINVAL, "set_acquire(NULL) -> -EINVAL");
    is_int(aioctx_set_release(NULL), -EINVAL, "set_release(NULL) -> -EINVAL");
    aioctx_set_free(s);
    aioctx_context_unref(a);
    return done_testing();
}
