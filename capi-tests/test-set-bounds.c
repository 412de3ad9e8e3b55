/*
 * test-set-bounds: aioctx_set_add_many with an n no array can have (the
 * array's size in bytes beyond PTRDIFF_MAX) is -EINVAL, not an abort (a
 * slice that large is undefined behaviour in Rust), and adds nothing.
 */
#define _GNU_SOURCE
#include "tap.h"
#include "aioctx.h"

#include <stdint.h>

int main(void)
{
    tap_watchdog(10);
    AioctxContext *a = aioctx_context_new("bounds-a");
    AioctxContext *ctxs[2] = { a, a };
    AioctxSet *s = aioctx_set_new();
    const size_t huge[] = { SIZE_MAX, SIZE_MAX / sizeof(void *) + 1, (size_t)PTRDIFF_MAX / sizeof(void *) + 1 };
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        is_int(aioctx_set_add_many(s, ctxs, huge[i]), -EINVAL, "n = %zu -> -EINVAL", huge[i]);
        like(aioctx_last_error(), "aioctx_set_add_many: n = ", "... the message names n");
        is_int((int)aioctx_set_len(s), 0, "... nothing was added");
    }
    is_int(aioctx_set_add_many(s, ctxs, 2), 1, "a real n still works");
    aioctx_set_free(s);
    aioctx_context_unref(a);
    return done_testing();
}
