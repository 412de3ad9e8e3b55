/*
 * libaioctx-glib: a GSource that runs an aioctx context (include/aioctx-glib.h).
 * Uses only aioctx's public embedding calls: the context's fd, its next
 * timer deadline and a non-blocking poll.
 */
#include "aioctx-glib.h"

#include <errno.h>
#include <limits.h>

typedef struct {
    GSource source;
    AioctxContext *ctx; /* a reference, dropped in finalize */
    gpointer fd_tag;
} AioctxGlibSource;

static bool deadline_passed(AioctxContext *ctx)
{
    int64_t deadline = aioctx_context_deadline_ns(ctx);
    return deadline >= 0 && deadline <= aioctx_clock_ns();
}

/* Runs before every wait, so a timer armed by anything the loop ran is seen
 * in time (timers do not make the fd readable). */
static gboolean source_prepare(GSource *source, gint *timeout)
{
    AioctxGlibSource *s = (AioctxGlibSource *)source;
    int64_t deadline = aioctx_context_deadline_ns(s->ctx);
    int64_t now, ms;

    if (deadline < 0) {
        *timeout = -1;
        return FALSE;
    }
    now = aioctx_clock_ns();
    if (deadline <= now) {
        *timeout = 0;
        return TRUE;
    }
    /* Rounded up: waking a little late is fine, early would spin. */
    ms = (deadline - now + 999999) / 1000000;
    *timeout = ms > INT_MAX ? INT_MAX : (gint)ms;
    return FALSE;
}

static gboolean source_check(GSource *source)
{
    AioctxGlibSource *s = (AioctxGlibSource *)source;
    GIOCondition revents = g_source_query_unix_fd(source, s->fd_tag);
    return (revents & (G_IO_IN | G_IO_HUP | G_IO_ERR)) != 0 || deadline_passed(s->ctx);
}

static gboolean source_dispatch(GSource *source, GSourceFunc cb, gpointer data)
{
    AioctxGlibSource *s = (AioctxGlibSource *)source;
    (void)cb;
    (void)data;
    if (aioctx_poll(s->ctx, false) < 0) {
        /* Only a wrong thread fails, and it would fail on every wake-up. */
        g_warning("aioctx GSource '%s' removed: %s", g_source_get_name(source),
                  aioctx_last_error());
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static void source_finalize(GSource *source)
{
    aioctx_context_unref(((AioctxGlibSource *)source)->ctx);
}

static GSourceFuncs source_funcs = {
    .prepare = source_prepare,
    .check = source_check,
    .dispatch = source_dispatch,
    .finalize = source_finalize,
};

GSource *aioctx_glib_source_new(AioctxContext *ctx)
{
    int fd = aioctx_context_fd(ctx);
    GSource *source;
    AioctxGlibSource *s;

    if (fd < 0) {
        errno = -fd;
        return NULL;
    }
    source = g_source_new(&source_funcs, sizeof(AioctxGlibSource));
    s = (AioctxGlibSource *)source;
    s->ctx = aioctx_context_ref(ctx);
    s->fd_tag = g_source_add_unix_fd(source, fd, G_IO_IN);
    g_source_set_name(source, aioctx_context_name(ctx));
    return source;
}
