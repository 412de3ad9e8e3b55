/*
 * A program built outside the aioctx tree, against an installed copy:
 * tools/check-install.sh compiles it with `pkg-config --cflags --libs aioctx`
 * (and once more against the static library) and runs it.
 *
 * It prints "header <AIOCTX_VERSION_MAJOR.MINOR.MICRO>", "version
 * <aioctx_version()>" and "library <path of the
 * libaioctx mapped into the process, or 'static'>", then uses both installed
 * headers: a BH on its own loop, and the QEMU-name compat header waiting for
 * an IOThread. Exit status 0 only if all of that worked.
 */
#define _GNU_SOURCE
#include <aioctx.h>
#include <aioctx/qemu-compat.h>

#include <stdio.h>
#include <string.h>

/* The version macros work in #if, and the header is at least 0.2.0. */
#if !AIOCTX_CHECK_VERSION(0, 2, 0) || AIOCTX_CHECK_VERSION(AIOCTX_VERSION_MAJOR, \
                                                          AIOCTX_VERSION_MINOR + 1, 0)
#error "AIOCTX_CHECK_VERSION disagrees with AIOCTX_VERSION_*"
#endif

/* The path of the shared libaioctx this process runs, or "static". */
static void print_library(void)
{
    char line[4096], path[4096] = "static";
    FILE *maps = fopen("/proc/self/maps", "r");
    while (maps && fgets(line, sizeof line, maps)) {
        char *p = strchr(line, '/');
        if (p && strstr(p, "/libaioctx.so")) {
            p[strcspn(p, "\n")] = '\0';
            snprintf(path, sizeof path, "%s", p);
            break;
        }
    }
    if (maps)
        fclose(maps);
    printf("library %s\n", path);
}

static void count(void *opaque)
{
    ++*(int *)opaque;
}

static void finish(void *opaque)
{
    *(volatile int *)opaque = 1;
    aio_wait_kick();
}

int main(void)
{
    int runs = 0, status = 0;
    volatile int done = 0;
    AioctxContext *ctx;
    AioctxBh *bh;
    IOThread *it;

    printf("header %d.%d.%d\n", AIOCTX_VERSION_MAJOR, AIOCTX_VERSION_MINOR, AIOCTX_VERSION_MICRO);
    printf("version %s\n", aioctx_version());
    print_library();

    ctx = aioctx_context_new("outside");
    bh = aioctx_bh_new(ctx, count, &runs);
    if (!ctx || !bh || aioctx_bh_schedule(bh) != 0 || aioctx_poll(ctx, false) != 1 || runs != 1) {
        fprintf(stderr, "BH round trip failed: %s\n", aioctx_last_error());
        status = 1;
    }
    aioctx_bh_delete(bh);
    aioctx_context_unref(ctx);

    qemu_init_main_loop(&error_fatal);
    it = iothread_create("outside-io", &error_fatal);
    aio_context_acquire(iothread_get_aio_context(it));
    aio_bh_schedule_oneshot(iothread_get_aio_context(it), finish, (void *)&done);
    AIO_WAIT_WHILE(iothread_get_aio_context(it), !done);
    aio_context_release(iothread_get_aio_context(it));
    iothread_destroy(it);
    while (aio_poll(qemu_get_aio_context(), false)) {
    }
    if (!done) {
        fprintf(stderr, "AIO_WAIT_WHILE returned before the IOThread's work ran\n");
        status = 1;
    }
    printf("%s\n", status ? "FAILED" : "ok");
    return status;
}
