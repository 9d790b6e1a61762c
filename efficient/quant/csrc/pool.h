// Internals of lutkernels.cpp shared with the other kernel files of the library: the thread pool and the
// per-process scratch (one kernel call at a time holds it: lock_call / unlock_call around its use).
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef void (*task_fn)(void *ctx, int64_t begin, int64_t end);

namespace lk {
void parallel_for(int nthreads, int64_t total, int64_t chunk, task_fn fn, void *ctx);
void lock_call(void);
void unlock_call(void);
void *scratch(size_t bytes);
int64_t pick_chunk(int64_t nblocks, int nthreads);
}  // namespace lk
