#include "server/answer_memory.h"

namespace signet::server {

bool AnswerMemory::TryHold(int64_t bytes) {
  // Added first and taken back when over: two calls racing may both be
  // refused near the limit, but the account never passes it.
  const int64_t before = held_.fetch_add(bytes);
  if (before > 0 && before + bytes > limit_) {
    held_.fetch_sub(bytes);
    return false;
  }
  return true;
}

AnswerMemory* AnswerHold::Hold(AnswerMemory* tenant, AnswerMemory* all,
                               int64_t bytes) {
  Release();
  if (!tenant->TryHold(bytes)) return tenant;
  if (!all->TryHold(bytes)) {
    tenant->Release(bytes);
    return all;
  }
  tenant_ = tenant;
  all_ = all;
  bytes_ = bytes;
  return nullptr;
}

void AnswerHold::Written(int64_t bytes) {
  if (tenant_ == nullptr) return;
  const int64_t change = bytes_ - bytes;
  tenant_->Release(change);
  all_->Release(change);
  bytes_ = bytes;
}

void AnswerHold::Release() {
  if (tenant_ == nullptr) return;
  tenant_->Release(bytes_);
  all_->Release(bytes_);
  tenant_ = nullptr;
  all_ = nullptr;
  bytes_ = 0;
}

}  // namespace signet::server
