#include "server/worker_pool.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/clock.h"

namespace signet::server {

WorkerPool::WorkerPool(int threads, int queue_size)
    : queue_size_(queue_size),
      running_since_(static_cast<size_t>(threads), absl::InfiniteDuration()) {
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

absl::Status WorkerPool::Submit(const void* owner, std::function<void()> task,
                                std::function<bool()> wanted) {
  std::vector<Queued> dropped;  // destroyed after the lock is released
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("signetd is shutting down");
  if (queued_ >= queue_size_) DropUnwantedLocked(&dropped);
  if (queued_ >= queue_size_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "signetd is at capacity (", busy_, " requests at the HSM, ", queued_,
        " waiting); retry with backoff"));
  }
  std::deque<Queued>& queue = queues_[owner];
  if (queue.empty()) turns_.push_back(owner);
  queue.push_back(Queued{std::move(task), std::move(wanted)});
  ++queued_;
  return absl::OkStatus();
}

void WorkerPool::DropUnwantedLocked(std::vector<Queued>* dropped) {
  for (auto it = queues_.begin(); it != queues_.end();) {
    std::deque<Queued>& queue = it->second;
    for (auto q = queue.begin(); q != queue.end();) {
      if (q->wanted && !q->wanted()) {
        dropped->push_back(std::move(*q));
        q = queue.erase(q);
        --queued_;
      } else {
        ++q;
      }
    }
    if (queue.empty()) {
      std::erase(turns_, it->first);
      queues_.erase(it++);
    } else {
      ++it;
    }
  }
}

std::function<void()> WorkerPool::TakeLocked() {
  const void* owner = turns_.front();
  turns_.pop_front();
  auto it = queues_.find(owner);
  std::function<void()> task = std::move(it->second.front().task);
  it->second.pop_front();
  if (it->second.empty()) {
    queues_.erase(it);  // an owner is kept only while it has work
  } else {
    turns_.push_back(owner);  // its next task waits for the others' turns
  }
  --queued_;
  return task;
}

int WorkerPool::busy() const {
  absl::MutexLock lock(&mu_);
  return busy_;
}

int WorkerPool::StuckWorkers(absl::Duration longer_than) const {
  absl::MutexLock lock(&mu_);
  return StuckWorkersLocked(longer_than);
}

int WorkerPool::StuckWorkersLocked(absl::Duration longer_than) const {
  // Monotonic: a wall clock stepped forward makes no worker look stuck.
  const absl::Duration cutoff = base::MonotonicNow() - longer_than;
  int stuck = 0;
  for (absl::Duration since : running_since_) {
    if (since < cutoff) ++stuck;
  }
  return stuck;
}

bool WorkerPool::WaitIdle(absl::Duration limit) const {
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return busy_ == 0 && queued_ == 0;
  };
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&idle), limit);
}

int WorkerPool::queued() const {
  absl::MutexLock lock(&mu_);
  return queued_;
}

void WorkerPool::Loop(size_t index) {
  // One lock round per task: the next task is taken in the same critical
  // section that counts the last one done.
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || queued_ > 0;
  };
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.Await(absl::Condition(&ready));
    if (queued_ == 0) return;  // stopping, nothing left
    std::function<void()> task = TakeLocked();
    ++busy_;
    running_since_[index] = base::MonotonicNow();
    mu_.Unlock();
    task();
    task = nullptr;  // what it holds goes outside the lock
    mu_.Lock();
    --busy_;
    running_since_[index] = absl::InfiniteDuration();
  }
}

}  // namespace signet::server
