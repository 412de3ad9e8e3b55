// The public header must compile alone as C++17 and be safe to include twice.
// Linking the call below fails if the header lacks extern "C".
#include "aioctx.h"
#include "aioctx.h"

int main()
{
    const char *v = aioctx_version();
    return v != nullptr && v[0] != '\0' ? 0 : 1;
}
