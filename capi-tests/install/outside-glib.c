/*
 * Built outside the tree against an installed libaioctx-glib
 * (`pkg-config --cflags --libs aioctx-glib`, tools/check-install.sh): a BH
 * run by a GMainLoop through aioctx_glib_source_new. Exit status 0 if it ran.
 */
#include <aioctx-glib.h>

#include <stdio.h>

static GMainLoop *loop;

static void quit(void *opaque)
{
    *(int *)opaque = 1;
    g_main_loop_quit(loop);
}

int main(void)
{
    int ran = 0;
    AioctxContext *ctx = aioctx_main_context();
    GSource *source = aioctx_glib_source_new(ctx);

    if (!source || aioctx_context_claim(ctx) != 0) {
        fprintf(stderr, "aioctx_glib_source_new: %s\n", aioctx_last_error());
        return 1;
    }
    g_source_attach(source, NULL);
    loop = g_main_loop_new(NULL, FALSE);
    aioctx_bh_schedule_oneshot(ctx, quit, &ran);
    g_main_loop_run(loop);
    g_source_destroy(source);
    g_source_unref(source);
    g_main_loop_unref(loop);
    printf("%s\n", ran ? "ok" : "FAILED");
    return ran ? 0 : 1;
}
