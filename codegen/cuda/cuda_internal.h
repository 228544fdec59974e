/* cuda_internal.h — what the CUDA generator's files share: the text buffer (support's StrBuf) and the
 * device prelude every translation unit starts with. */
#ifndef MOEPPC_CUDA_INTERNAL_H
#define MOEPPC_CUDA_INTERNAL_H

#include "codegen/cuda/cg_cuda.h"

typedef StrBuf CgBuf;
#define cb_printf strbuf_printf
/* The prelude: integer types, bf16/f16 <-> f32 conversions (bit operations and cvt PTX, no headers),
 * warp reductions. `wdtype` selects what ldw() (load a weight element as f32) reads. */
void cb_prelude(CgBuf *b, moe_dtype wdtype);
/* A double as a C++ literal that round-trips exactly ("%.17g" plus a marker of its type). */
void cb_double(CgBuf *b, const char *name, double v);

#endif
