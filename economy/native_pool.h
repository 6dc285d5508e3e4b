// Splitting a custom call's items over XLA's intra-op thread pool: shared by the native
// kernels (economy/native_market.cc, agents/native_sample.cc).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace agora {

// Runs body(item, scratch) for item in [0, items) on the calling thread and on XLA's
// intra-op pool, each thread with its own scratch = make_scratch(). Workers take items from
// a shared counter; the caller waits only for items already taken, so a pool task that
// starts late finds nothing left and returns (the shared state outlives the call), and a
// busy pool cannot deadlock the call.
template <typename MakeScratch, typename Body>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t items, MakeScratch make_scratch, Body body) {
  if (items <= 0) return;
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto st = std::make_shared<State>();
  auto work = [st, items, make_scratch, body]() {
    auto sc = make_scratch();
    int64_t i;
    while ((i = st->next.fetch_add(1)) < items) {
      body(i, sc);
      if (st->done.fetch_add(1) + 1 == items) {
        std::lock_guard<std::mutex> g(st->mu);
        st->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), items - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> g(st->mu);
  st->cv.wait(g, [&] { return st->done.load() == items; });
}

}  // namespace agora
