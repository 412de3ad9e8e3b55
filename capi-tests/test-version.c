/*
 * test-version: the header's AIOCTX_VERSION_* macros agree with
 * aioctx_version() of the library (the pkg-config version is compared by
 * tools/check-install.sh), and AIOCTX_CHECK_VERSION compares as documented,
 * in #if as well as in code.
 */
#include "tap.h"
#include "aioctx.h"

#include <stdio.h>

#if !AIOCTX_CHECK_VERSION(0, 0, 0) || !AIOCTX_CHECK_VERSION(0, 1, 0)
#error "AIOCTX_CHECK_VERSION fails for older versions"
#endif
#if AIOCTX_CHECK_VERSION(AIOCTX_VERSION_MAJOR + 1, 0, 0)
#error "AIOCTX_CHECK_VERSION passes for a newer major"
#endif

int main(void)
{
    char header[64];
    tap_watchdog(30);

    snprintf(header, sizeof header, "%d.%d.%d", AIOCTX_VERSION_MAJOR, AIOCTX_VERSION_MINOR,
             AIOCTX_VERSION_MICRO);
    is_str(aioctx_version(), header, "aioctx_version() is AIOCTX_VERSION_MAJOR.MINOR.MICRO");
    ok(AIOCTX_VERSION_MAJOR > 0 || AIOCTX_VERSION_MINOR >= 2, "the header is 0.2 or newer");

    ok(AIOCTX_CHECK_VERSION(AIOCTX_VERSION_MAJOR, AIOCTX_VERSION_MINOR, AIOCTX_VERSION_MICRO),
       "CHECK_VERSION of itself is true");
    ok(!AIOCTX_CHECK_VERSION(AIOCTX_VERSION_MAJOR, AIOCTX_VERSION_MINOR,
                             AIOCTX_VERSION_MICRO + 1),
       "a newer micro is false");
    ok(!AIOCTX_CHECK_VERSION(AIOCTX_VERSION_MAJOR, AIOCTX_VERSION_MINOR + 1, 0),
       "a newer minor is false");
    ok(!AIOCTX_CHECK_VERSION(AIOCTX_VERSION_MAJOR + 1, 0, 0), "a newer major is false");
    ok(AIOCTX_CHECK_VERSION(AIOCTX_VERSION_MAJOR, 0, 0), "an older minor is true");
    if (AIOCTX_VERSION_MICRO > 0)
        ok(AIOCTX_CHECK_VERSION(AIOCTX_VERSION_MAJOR, AIOCTX_VERSION_MINOR, 0),
           "an older micro is true");
    return done_testing();
}
