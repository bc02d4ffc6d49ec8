#include "rotation/scope_keys.h"

#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"

namespace signet::rotation {

std::map<std::string, KeyRecord> ParseRecords(
    const std::map<std::string, hsm::StoredRecord>& records, int* unreadable) {
  std::map<std::string, KeyRecord> out;
  int bad = 0;
  for (const auto& [key_id, stored] : records) {
    absl::StatusOr<KeyRecord> record = ParseKeyRecord(stored.bytes);
    // The record must describe the key it is linked to.
    if (!record.ok() || record->key_id() != absl::BytesToHexString(key_id)) {
      ++bad;
      continue;
    }
    out.emplace(record->key_id(), std::move(*record));
  }
  if (unreadable != nullptr) *unreadable = bad;
  return out;
}

}  // namespace signet::rotation
