/* The public header must compile alone in strict ISO C11 (no feature-test
 * macros, no other header first) and be safe to include twice. */
#include "aioctx.h"
#include "aioctx.h"

int main(void)
{
    /* Calling through the header proves the declaration links. */
    const char *v = aioctx_version();
    return v && v[0] ? 0 : 1;
}
