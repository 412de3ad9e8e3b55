/*
 * aioctx-glib: run an aioctx context from a GLib main loop.
 *
 * Link with `pkg-config --cflags --libs aioctx-glib` (libaioctx-glib, an
 * optional library built when GLib's development files are present).
 */
#ifndef AIOCTX_GLIB_H
#define AIOCTX_GLIB_H

#include <aioctx.h>
#include <glib.h>

G_BEGIN_DECLS

/**
 * A new GSource that runs ctx in the thread of the GMainContext it is
 * attached to (g_source_attach), the way QEMU's aio_get_g_source runs an
 * AioContext: BHs, fd handlers and due timers run there, with ctx held.
 *
 * It polls aioctx_context_fd(ctx) for G_IO_IN and turns
 * aioctx_context_deadline_ns(ctx) into GLib's timeout before every wait
 * (rounded up to whole milliseconds, so a timer never fires early); a timer
 * armed from another thread wakes the loop through the fd. When woken it
 * calls aioctx_poll(ctx, false). That thread must be ctx's home, or become
 * it: claim it first with aioctx_context_claim(ctx), or the first poll claims
 * it. If a poll fails (another thread is ctx's home: -EPERM), the source
 * logs a g_warning with aioctx_last_error() and removes itself.
 *
 * The source holds a reference to ctx until it is finalized. Release it the
 * GLib way: g_source_destroy() to detach it, g_source_unref() for the
 * reference returned here. Attach at most one source per context.
 *
 * Returns NULL if ctx is NULL, with errno (EINVAL) and aioctx_last_error()
 * saying so.
 *
 * Since: 0.2
 */
GSource *aioctx_glib_source_new(AioctxContext *ctx);

G_END_DECLS

#endif /* AIOCTX_GLIB_H */
