/* Failing calls report their errno three ways: the return value, errno (so a
 * constructor's NULL can be told apart, as with fopen) and aioctx_last_errno(). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "aioctx.h"
#include "test-util.h"
#include "tap.h"

static void *other_thread(void *arg)
{
    (void)arg;
    is_int(aioctx_last_errno(), 0, "another thread has its own last errno (none yet)");
    return NULL;
}

int main(void)
{
    skip_unless_backend();
    tap_watchdog(10);
    is_int(aioctx_last_errno(), 0, "no failure yet: 0");

    errno = 0;
    ok(aioctx_context_new(NULL) == NULL, "context_new(NULL) fails");
    is_int(errno, EINVAL, "errno is EINVAL");
    is_int(aioctx_last_errno(), -EINVAL, "aioctx_last_errno() is -EINVAL");

    AioctxGraph *g = aioctx_graph_new(NULL);
    AioctxContext *main_ctx = aioctx_main_context();
    errno = 0;
    ok(aioctx_node_open_file(g, "missing", main_ctx, "/nonexistent/aioctx.img", AIOCTX_OPEN_RDWR) == NULL,
       "opening a missing image fails");
    is_int(errno, ENOENT, "errno is ENOENT");
    is_int(aioctx_last_errno(), -ENOENT, "aioctx_last_errno() is -ENOENT");
    ok(strstr(aioctx_last_error(), "/nonexistent/aioctx.img") != NULL, "the message names the path");

    is_int(aioctx_release(main_ctx), -EPERM, "release without acquire: -EPERM");
    is_int(aioctx_last_errno(), -EPERM, "aioctx_last_errno() follows the latest failure");
    ok(aioctx_context_id(main_ctx) > 0, "a successful call");
    is_int(aioctx_last_errno(), -EPERM, "a success leaves the last failure as it was");

    pthread_t t;
    pthread_create(&t, NULL, other_thread, NULL);
    pthread_join(t, NULL);

    aioctx_graph_free(g);
    return done_testing();
}
