#ifndef SWIFT_SERVE_CNGHTTP2_SHIM_H
#define SWIFT_SERVE_CNGHTTP2_SHIM_H

#include <nghttp2/nghttp2.h>

// Macros and flag combinations that Swift cannot import directly.
static inline int cnghttp2_err_deferred(void) { return NGHTTP2_ERR_DEFERRED; }
static inline int cnghttp2_err_callback_failure(void) { return NGHTTP2_ERR_CALLBACK_FAILURE; }
static inline int cnghttp2_err_temporal_callback_failure(void) { return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; }
static inline int cnghttp2_err_wouldblock(void) { return NGHTTP2_ERR_WOULDBLOCK; }

#endif
