#ifndef SWIFT_SERVE_CZLIB_SHIM_H
#define SWIFT_SERVE_CZLIB_SHIM_H

#include <zlib.h>

// deflateInit2 / inflateInit2 are macros that pass the library version and the z_stream size;
// Swift cannot import macros that take arguments, so wrap them.
static inline int czlib_deflateInit2(z_streamp strm, int level, int windowBits, int memLevel) {
    return deflateInit2(strm, level, Z_DEFLATED, windowBits, memLevel, Z_DEFAULT_STRATEGY);
}

static inline int czlib_inflateInit2(z_streamp strm, int windowBits) {
    return inflateInit2(strm, windowBits);
}

#endif
