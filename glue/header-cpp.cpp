// The glue headers compile as C++ and declare their functions extern "C":
// calling through them links against the C libraries.
#ifdef HAVE_GLIB
#include "aioctx-glib.h"
#include "aioctx-glib.h"
#endif
#ifdef HAVE_UV
#include "aioctx-uv.h"
#include "aioctx-uv.h"
#endif

int main()
{
    int status = 0;
#ifdef HAVE_GLIB
    status |= aioctx_glib_source_new(nullptr) != nullptr;
#endif
#ifdef HAVE_UV
    status |= aioctx_uv_attach(nullptr, nullptr) != nullptr;
    aioctx_uv_detach(nullptr);
#endif
    return status;
}
