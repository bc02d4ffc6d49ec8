// A bounded pool of threads for HSM work, so no gRPC callback thread ever
// blocks on the HSM (docs/architecture.md, "Code conventions").
//
// Submit() never blocks: when the queue is full it answers
// RESOURCE_EXHAUSTED and the RPC can say so at once. The number of threads
// bounds how many workers a stalled HSM can hold (a PKCS#11 call in flight
// cannot be cancelled). Thread-safe.
#ifndef SIGNET_SERVER_WORKER_POOL_H_
#define SIGNET_SERVER_WORKER_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace signet::server {

class WorkerPool {
 public:
  WorkerPool(int threads, int queue_size);
  // Runs what is queued, then joins. Threads stuck in an HSM call keep the
  // destructor waiting: call Detach() first on a stalled shutdown.
  ~WorkerPool();

  // Queues `task` for `owner` (a tenant; any stable address). Each owner's
  // tasks run in order, and the owners with queued tasks take turns, one
  // task each: a tenant with a deep queue delays another tenant's call by
  // at most one task per other waiting tenant, not by its whole queue.
  // RESOURCE_EXHAUSTED when `queue_size` tasks are waiting (all owners);
  // UNAVAILABLE after shutdown began.
  //
  // `wanted`, if given, says whether the task is still worth running (its
  // call has not been answered). A full queue first drops the tasks no
  // longer wanted, unrun: calls answered at their deadline while queued
  // must not keep their places (an outside attack filled the queue with
  // such tasks from a tenant with 100 ms deadlines, and a third tenant was
  // refused "at capacity"). `wanted` is called under the pool's lock: it
  // must be quick and take no lock.
  absl::Status Submit(const void* owner, std::function<void()> task,
                      std::function<bool()> wanted = {})
      ABSL_LOCKS_EXCLUDED(mu_);
  // A task of no particular owner (they share one turn).
  absl::Status Submit(std::function<void()> task) ABSL_LOCKS_EXCLUDED(mu_) {
    return Submit(nullptr, std::move(task), {});
  }

  // Threads in the pool.
  int threads() const { return static_cast<int>(threads_.size()); }

  // Tasks running right now, and waiting.
  int busy() const ABSL_LOCKS_EXCLUDED(mu_);
  int queued() const ABSL_LOCKS_EXCLUDED(mu_);
  // Workers that have been running one task for longer than `longer_than`:
  // tasks are bounded by their deadlines, so these are stuck in an HSM call
  // that does not return (a stalled HSM).
  int StuckWorkers(absl::Duration longer_than) const ABSL_LOCKS_EXCLUDED(mu_);

  // Waits up to `limit` until no task runs or waits; true if none does.
  bool WaitIdle(absl::Duration limit) const ABSL_LOCKS_EXCLUDED(mu_);

  // Stops taking tasks, runs what is queued, and joins the threads (what
  // the destructor does, for a shutdown that must finish every task before
  // what the tasks use goes away, e.g. the audit log). Later Submits answer
  // UNAVAILABLE. Idempotent.
  void Join() ABSL_LOCKS_EXCLUDED(mu_);

  // Lets the threads go without joining them (for an exit while an HSM call
  // is stuck).
  void Detach() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Loop(size_t index) ABSL_LOCKS_EXCLUDED(mu_);
  int StuckWorkersLocked(absl::Duration longer_than) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int queue_size_;
  mutable absl::Mutex mu_;
  // Next task to run, taking the owners in turn (Submit).
  std::function<void()> TakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Each owner's queued tasks, and the owners with any, in turn order.
  struct Queued {
    std::function<void()> task;
    std::function<bool()> wanted;  // empty: always wanted
  };
  // Moves the tasks no longer wanted into `dropped` (destroyed by the caller
  // outside the lock: they may hold large requests).
  void DropUnwantedLocked(std::vector<Queued>* dropped)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::flat_hash_map<const void*, std::deque<Queued>> queues_
      ABSL_GUARDED_BY(mu_);
  std::deque<const void*> turns_ ABSL_GUARDED_BY(mu_);
  int queued_ ABSL_GUARDED_BY(mu_) = 0;
  int busy_ ABSL_GUARDED_BY(mu_) = 0;
  // When each worker took its current task (base::MonotonicNow());
  // InfiniteDuration when idle.
  std::vector<absl::Duration> running_since_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_WORKER_POOL_H_
