/* Diagnostics: the state dump (buffer and line callback), the slow-wait
 * warning through the log handler, and per-context counters. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aioctx.h"
#include "tap.h"

static int warnings;
static char last_warning[8192];

static void log_handler(void *opaque, int level, const char *message)
{
    (void)opaque;
    if (level == AIOCTX_LOG_WARNING) {
        warnings++;
        snprintf(last_warning, sizeof(last_warning), "%s", message);
    }
}

static void count_line(void *opaque, const char *line)
{
    (void)line;
    (*(int *)opaque)++;
}

static void set_flag(void *opaque)
{
    *(int *)opaque = 1;
}

static bool flag_clear(void *opaque)
{
    return *(int *)opaque == 0;
}

static void slow_bh(void *opaque)
{
    struct timespec ts = { 0, 3000000 }; /* 3 ms with the context held */
    nanosleep(&ts, NULL);
    *(int *)opaque = 1;
}

int main(void)
{
    /* Read once by the library, at the first wait: set before any call. */
    setenv("AIOCTX_WAIT_WARN_MS", "30", 1);
    tap_watchdog(20);

    AioctxContext *main_ctx = aioctx_main_context();
    is_int(aioctx_context_claim(main_ctx), 0, "main thread claims the main context");
    AioctxIoThread *it = aioctx_iothread_new("diag-io");
    AioctxContext *io = aioctx_iothread_context(it);
    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxNode *n = aioctx_node_new(g, "diag-node", io, NULL, NULL);
    ok(n != NULL, "a node on the IOThread");

    /* The dump, into a buffer. */
    size_t need = aioctx_debug_dump(NULL, 0);
    ok(need > 0, "dump(NULL, 0) measures the text (%zu bytes)", need);
    char *buf = malloc(need + 1);
    is_int((int)aioctx_debug_dump(buf, need + 1), (int)need, "dump returns the full length");
    ok(strstr(buf, "context 'diag-io'") != NULL, "the dump names the IOThread's context");
    ok(strstr(buf, "home 'diag-io'") != NULL, "... and its home thread");
    ok(strstr(buf, "node 'diag-node': context 'diag-io'") != NULL, "the dump lists the node and its context");
    ok(strstr(buf, "0 in flight, active, writable") != NULL, "... with its requests and flags");
    char small[16];
    is_int((int)aioctx_debug_dump(small, sizeof(small)), (int)need, "a short buffer still reports the full length");
    is_int((int)strlen(small), (int)sizeof(small) - 1, "... and is filled and NUL-terminated");
    is_int((int)aioctx_debug_dump(NULL, 4), 0, "NULL buffer with a size is refused");
    ok(strlen(aioctx_last_error()) > 0, "... with a message");

    aioctx_acquire(io);
    aioctx_debug_dump(buf, need + 1);
    free(buf);
    need = aioctx_debug_dump(NULL, 0);
    buf = malloc(need + 1);
    aioctx_debug_dump(buf, need + 1);
    ok(strstr(buf, "at depth 1") != NULL, "a held context shows its owner's depth");
    aioctx_release(io);
    free(buf);

    int lines = 0;
    ok(aioctx_debug_dump_lines(count_line, &lines) >= 3, "dump_lines returns the line count");
    ok(lines >= 3, "the callback saw every line (%d)", lines);
    is_int(aioctx_debug_dump_lines(NULL, NULL), -EINVAL, "dump_lines(NULL) is -EINVAL");

    /* A wait past AIOCTX_WAIT_WARN_MS logs the dump once. */
    aioctx_set_log_handler(log_handler, NULL);
    int fired = 0;
    AioctxTimer *t = aioctx_timer_new(main_ctx, set_flag, &fired);
    aioctx_timer_mod(t, aioctx_clock_ns() + 150000000LL);
    is_int(aioctx_poll_while(main_ctx, flag_clear, &fired, -1, 0), 0, "a 150 ms wait completes");
    is_int(warnings, 1, "it logged exactly one warning");
    ok(strstr(last_warning, "still waiting") != NULL && strstr(last_warning, "context 'main'") != NULL,
       "the warning says it is still waiting and includes the dump");
    warnings = 0;
    fired = 0;
    aioctx_timer_mod(t, aioctx_clock_ns() + 1000000LL);
    aioctx_poll_while(main_ctx, flag_clear, &fired, -1, 0);
    is_int(warnings, 0, "a short wait logs nothing");
    aioctx_set_log_handler(NULL, NULL);
    aioctx_timer_free(t);

    /* Counters. */
    AioctxContextStats before, after;
    is_int(aioctx_context_stats(io, &before), 0, "stats of the IOThread's context");
    int done = 0;
    aioctx_bh_schedule_oneshot(io, slow_bh, &done);
    aioctx_poll_while(io, flag_clear, &done, -1, 0);
    is_int(aioctx_context_stats(io, &after), 0, "stats again");
    ok(after.polls > before.polls, "polls counted (%llu -> %llu)", (unsigned long long)before.polls,
       (unsigned long long)after.polls);
    ok(after.dispatches >= before.dispatches + 1, "the BH counted as a dispatch");
    ok(after.wakeups > before.wakeups, "waking the blocked IOThread counted as a wake-up");
    ok(after.longest_hold_ns >= 3000000, "the 3 ms dispatch shows as the longest hold (%lld ns)",
       (long long)after.longest_hold_ns);
    is_int(aioctx_context_stats(NULL, &after), -EINVAL, "stats(NULL ctx) is -EINVAL");
    is_int(aioctx_context_stats(io, NULL), -EINVAL, "stats(NULL out) is -EINVAL");

    aioctx_graph_free(g);
    is_int(aioctx_iothread_free(it), 0, "IOThread freed");
    return done_testing();
}
