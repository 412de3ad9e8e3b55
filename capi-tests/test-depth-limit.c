/*
 * test-depth-limit.c - at the lock's depth limit, aioctx_acquire fails with
 * -EOVERFLOW and aioctx_poll refuses before it waits (it could not take its
 * own level), leaving the caller's depth alone. Debug builds of the library
 * lower the limit with AIOCTX_TEST_MAX_DEPTH; release builds skip.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"
#include "test-util.h"

#include <stdlib.h>

int main(void)
{
    tap_watchdog(30);
#ifndef AIOCTX_TEST_PANIC_HOOK
    printf("1..0 # SKIP the depth limit can be lowered in debug builds of the library only\n");
    return 0;
#else
    enum { LIMIT = 1000 };
    setenv("AIOCTX_TEST_MAX_DEPTH", "1000", 1);
    AioctxContext *ctx = aioctx_context_new("depth");
    is_int(aioctx_context_claim(ctx), 0, "claim");
    atomic_int ran = 0;
    aioctx_bh_schedule_oneshot(ctx, inc_cb, &ran);
    int bad = 0;
    for (int i = 0; i < LIMIT; i++)
        bad += aioctx_acquire(ctx) != 0;
    is_int(bad, 0, "%d nested acquires", LIMIT);
    is_int(aioctx_acquire(ctx), -EOVERFLOW, "one more: -EOVERFLOW");
    is_int(aioctx_lock_depth(ctx), LIMIT, "depth unchanged");
    is_int(aioctx_poll(ctx, false), -EOVERFLOW, "poll at the limit: -EOVERFLOW");
    like(aioctx_last_error(), "overflow", "the message says why");
    is_int(aioctx_lock_depth(ctx), LIMIT, "the poll left the caller's depth alone");
    is_int(atomic_load(&ran), 0, "and ran nothing");
    aioctx_release(ctx);
    is_int(aioctx_poll(ctx, false), 1, "one level below the limit the poll runs the BH");
    is_int(atomic_load(&ran), 1, "the BH ran once");
    is_int(aioctx_lock_depth(ctx), LIMIT - 1, "and the depth is the caller's again");
    for (int i = 0; i < LIMIT - 1; i++)
        aioctx_release(ctx);
    is_int(aioctx_lock_depth(ctx), 0, "all released");
    aioctx_context_unref(ctx);
    return done_testing();
#endif
}
