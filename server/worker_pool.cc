#include "server/worker_pool.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace signet::server {

WorkerPool::WorkerPool(int threads, int queue_size)
    : queue_size_(queue_size),
      running_since_(static_cast<size_t>(threads), absl::InfiniteFuture()) {
  threads_.reserve(threads);
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this, i] { Loop(static_cast<size_t>(i)); });
  }
}

WorkerPool::~WorkerPool() { Join(); }

void WorkerPool::Join() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void WorkerPool::Detach() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) {
    if (t.joinable()) t.detach();
  }
}

absl::Status WorkerPool::Submit(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("signetd is shutting down");
  if (static_cast<int>(queue_.size()) >= queue_size_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "signetd is at capacity (", busy_, " requests at the HSM, ",
        queue_.size(), " waiting); retry with backoff"));
  }
  queue_.push_back(std::move(task));
  return absl::OkStatus();
}

int WorkerPool::busy() const {
  absl::MutexLock lock(&mu_);
  return busy_;
}

int WorkerPool::StuckWorkers(absl::Duration longer_than) const {
  const absl::Time cutoff = absl::Now() - longer_than;
  absl::MutexLock lock(&mu_);
  int stuck = 0;
  for (absl::Time since : running_since_) {
    if (since < cutoff) ++stuck;
  }
  return stuck;
}

int WorkerPool::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size());
}

void WorkerPool::Loop(size_t index) {
  // One lock round per task: the next task is taken in the same critical
  // section that counts the last one done.
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !queue_.empty();
  };
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.Await(absl::Condition(&ready));
    if (queue_.empty()) return;  // stopping, nothing left
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    ++busy_;
    running_since_[index] = absl::Now();
    mu_.Unlock();
    task();
    task = nullptr;  // what it holds goes outside the lock
    mu_.Lock();
    --busy_;
    running_since_[index] = absl::InfiniteFuture();
  }
}

}  // namespace signet::server
