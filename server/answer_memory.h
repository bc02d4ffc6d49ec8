// The memory of signing answers held in signetd, bounded per tenant and for
// all tenants together.
//
// Why: a call's concurrency slot is free once it is answered, but its
// serialized answer stays in signetd until the client reads it, and a
// client may never read. A bound checked only on answers already written
// (as signetd first did) lets every call admitted before the check add its
// answer on top: an outside attack paused the HSM while 64 calls were
// admitted and held 13 times the limit, and tenants together had no bound.
// So each call holds, from its admission, the largest answer its request
// can have (known from the request: its signing inputs plus a signature
// and names per item), that hold becomes the answer's real size once
// written, and it is released when the call is done (the client took the
// answer, or the call ended without it). docs/architecture.md, "Health,
// overload and shutdown".
//
// Thread-safety: AnswerMemory is thread-safe. An AnswerHold is used by one
// call in order: Hold (a gRPC thread), Written (whichever thread answers),
// Release (when gRPC is done with the call).
#ifndef SIGNET_SERVER_ANSWER_MEMORY_H_
#define SIGNET_SERVER_ANSWER_MEMORY_H_

#include <atomic>
#include <cstdint>

namespace signet::server {

// The largest answer a call may need beyond its signing inputs, per item:
// an RSA-4096 signature in base64url (683 bytes), the kid (43), the alg,
// a status message of a refused item, and protobuf framing.
inline constexpr int64_t kAnswerBytesPerItem = 1024;

// One account of answer memory: a tenant's, or all tenants'.
class AnswerMemory {
 public:
  explicit AnswerMemory(int64_t limit_bytes) : limit_(limit_bytes) {}
  AnswerMemory(const AnswerMemory&) = delete;
  AnswerMemory& operator=(const AnswerMemory&) = delete;

  // Adds `bytes` unless that takes the account past its limit. An account
  // that holds nothing always takes one more, however large, so that a
  // legal request is never refused for its size alone.
  bool TryHold(int64_t bytes);
  // Gives back `bytes` held (or adds them, when negative).
  void Release(int64_t bytes) { held_.fetch_sub(bytes); }

  int64_t held() const { return held_.load(); }
  int64_t limit() const { return limit_; }

 private:
  const int64_t limit_;
  std::atomic<int64_t> held_{0};
};

// One call's answer, held in its tenant's account and in the all-tenants
// account from admission until the call is done.
class AnswerHold {
 public:
  AnswerHold() = default;
  AnswerHold(const AnswerHold&) = delete;
  AnswerHold& operator=(const AnswerHold&) = delete;
  ~AnswerHold() { Release(); }

  // Holds `bytes` in both accounts, or in neither; then returns the account
  // that refused (the tenant's is asked first), or null.
  AnswerMemory* Hold(AnswerMemory* tenant, AnswerMemory* all, int64_t bytes);
  // The answer is written: the hold becomes its real size.
  void Written(int64_t bytes);
  // The call is done: the hold is given back. Idempotent.
  void Release();

 private:
  AnswerMemory* tenant_ = nullptr;
  AnswerMemory* all_ = nullptr;
  int64_t bytes_ = 0;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_ANSWER_MEMORY_H_
