#include "rotation/key_state.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/timestamp.pb.h"
#include "rotation/key_record.pb.h"

namespace signet::rotation {
namespace {

// google.protobuf.Timestamp's valid range (timestamp.proto):
// 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
constexpr int64_t kMinTimestampSeconds = -62135596800;
constexpr int64_t kMaxTimestampSeconds = 253402300799;
constexpr int32_t kMaxNanos = 999999999;

// A record is a few hundred bytes. Anything far larger read from the token
// is not one of ours, and parsing it would only cost memory.
constexpr size_t kMaxRecordBytes = 64 * 1024;

bool IsValidTimestamp(const google::protobuf::Timestamp& ts) {
  return ts.seconds() >= kMinTimestampSeconds &&
         ts.seconds() <= kMaxTimestampSeconds && ts.nanos() >= 0 &&
         ts.nanos() <= kMaxNanos;
}

std::string FormatForError(const google::protobuf::Timestamp& ts) {
  return absl::FormatTime(absl::RFC3339_full, TimeFromProto(ts),
                          absl::UTCTimeZone());
}

absl::Status CheckPresent(bool has, const google::protobuf::Timestamp& ts,
                          absl::string_view field) {
  if (!has) {
    return absl::InvalidArgumentError(
        absl::StrCat("KeyRecord.", field, " is missing"));
  }
  if (!IsValidTimestamp(ts)) {
    return absl::InvalidArgumentError(
        absl::StrCat("KeyRecord.", field, " is not a valid timestamp (seconds=",
                     ts.seconds(), ", nanos=", ts.nanos(), ")"));
  }
  return absl::OkStatus();
}

// `later` must not precede `earlier`; both already checked present.
absl::Status CheckOrder(const google::protobuf::Timestamp& earlier,
                        absl::string_view earlier_field,
                        const google::protobuf::Timestamp& later,
                        absl::string_view later_field) {
  if (TimeFromProto(later) < TimeFromProto(earlier)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KeyRecord.", later_field, " (", FormatForError(later), ") is before ",
        earlier_field, " (", FormatForError(earlier), ")"));
  }
  return absl::OkStatus();
}

bool IsLowercaseHex(absl::string_view s) {
  for (char c : s) {
    if (!absl::ascii_isdigit(c) && !(c >= 'a' && c <= 'f')) {
      return false;
    }
  }
  return true;
}

}  // namespace

KeyState StateAt(const KeyRecord& record, absl::Time now) {
  if (record.has_revocation() &&
      TimeFromProto(record.revocation().revoked_at()) <= now) {
    return KeyState::kRevoked;
  }
  // Latest boundary first: for a valid record this is the same as walking
  // forwards, and for an out-of-order one it picks the least capable state
  // any passed boundary allows (see the header).
  if (now >= TimeFromProto(record.destroy_at())) {
    return KeyState::kDestroyed;
  }
  if (now >= TimeFromProto(record.unpublish_at())) {
    return KeyState::kUnpublished;
  }
  if (now >= TimeFromProto(record.retire_at())) {
    return KeyState::kRetired;
  }
  if (now >= TimeFromProto(record.activate_at())) {
    return KeyState::kActive;
  }
  return KeyState::kPending;
}

bool IsPublished(KeyState state) {
  switch (state) {
    case KeyState::kPending:
    case KeyState::kActive:
    case KeyState::kRetired:
      return true;
    case KeyState::kUnpublished:
    case KeyState::kDestroyed:
    case KeyState::kRevoked:
      return false;
  }
  return false;
}

bool CanSign(KeyState state) { return state == KeyState::kActive; }

absl::string_view KeyStateName(KeyState state) {
  switch (state) {
    case KeyState::kPending:
      return "PENDING";
    case KeyState::kActive:
      return "ACTIVE";
    case KeyState::kRetired:
      return "RETIRED";
    case KeyState::kUnpublished:
      return "UNPUBLISHED";
    case KeyState::kDestroyed:
      return "DESTROYED";
    case KeyState::kRevoked:
      return "REVOKED";
  }
  return "UNKNOWN";
}

absl::Status ValidateKeyRecord(const KeyRecord& record) {
  if (record.scope().empty()) {
    return absl::InvalidArgumentError("KeyRecord.scope is empty");
  }
  if (record.key_id().empty()) {
    return absl::InvalidArgumentError("KeyRecord.key_id is empty");
  }
  if (record.key_id().size() % 2 != 0 || !IsLowercaseHex(record.key_id())) {
    return absl::InvalidArgumentError(
        "KeyRecord.key_id is not lowercase hex of even length");
  }
  if (record.algorithm().empty()) {
    return absl::InvalidArgumentError("KeyRecord.algorithm is empty");
  }
  if (record.key_generation() == 0) {
    return absl::InvalidArgumentError(
        "KeyRecord.key_generation is 0 (the first key is generation 1)");
  }

  absl::Status s;
  if (s = CheckPresent(record.has_created_at(), record.created_at(),
                       "created_at");
      !s.ok()) {
    return s;
  }
  if (s = CheckPresent(record.has_activate_at(), record.activate_at(),
                       "activate_at");
      !s.ok()) {
    return s;
  }
  if (s = CheckPresent(record.has_retire_at(), record.retire_at(), "retire_at");
      !s.ok()) {
    return s;
  }
  if (s = CheckPresent(record.has_unpublish_at(), record.unpublish_at(),
                       "unpublish_at");
      !s.ok()) {
    return s;
  }
  if (s = CheckPresent(record.has_destroy_at(), record.destroy_at(),
                       "destroy_at");
      !s.ok()) {
    return s;
  }

  if (s = CheckOrder(record.created_at(), "created_at", record.activate_at(),
                     "activate_at");
      !s.ok()) {
    return s;
  }
  if (s = CheckOrder(record.activate_at(), "activate_at", record.retire_at(),
                     "retire_at");
      !s.ok()) {
    return s;
  }
  if (s = CheckOrder(record.retire_at(), "retire_at", record.unpublish_at(),
                     "unpublish_at");
      !s.ok()) {
    return s;
  }
  if (s = CheckOrder(record.unpublish_at(), "unpublish_at", record.destroy_at(),
                     "destroy_at");
      !s.ok()) {
    return s;
  }

  if (record.has_revocation()) {
    const KeyRecord::Revocation& revocation = record.revocation();
    if (s = CheckPresent(revocation.has_revoked_at(), revocation.revoked_at(),
                         "revocation.revoked_at");
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Time TimeFromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

std::string FormatInstant(absl::Time t) {
  if (t == absl::InfiniteFuture() || t == absl::InfinitePast()) return "";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

google::protobuf::Timestamp TimeToProto(absl::Time t) {
  // ToUnixSeconds rounds towards the infinite past, so nanos is always in
  // [0, 1e9) as Timestamp requires, also before 1970. Infinite times
  // saturate to int64 limits, outside Timestamp's range.
  const int64_t seconds = absl::ToUnixSeconds(t);
  google::protobuf::Timestamp ts;
  ts.set_seconds(seconds);
  ts.set_nanos(static_cast<int32_t>((t - absl::FromUnixSeconds(seconds)) /
                                    absl::Nanoseconds(1)));
  return ts;
}

KeyRecord NewActiveKeyRecord(absl::string_view scope, absl::string_view key_id,
                             absl::string_view algorithm, uint32_t rsa_bits,
                             absl::Time now, const KeyTimings& timings) {
  const absl::Time retire_at = now + timings.rotation_period;
  const absl::Time unpublish_at = retire_at + timings.publish_grace;
  const absl::Time destroy_at = unpublish_at + timings.destroy_delay;

  KeyRecord record;
  record.set_scope(std::string(scope));
  record.set_key_id(std::string(key_id));
  record.set_algorithm(std::string(algorithm));
  record.set_rsa_bits(rsa_bits);
  record.set_key_generation(1);
  *record.mutable_created_at() = TimeToProto(now);
  *record.mutable_activate_at() = TimeToProto(now);
  *record.mutable_retire_at() = TimeToProto(retire_at);
  *record.mutable_unpublish_at() = TimeToProto(unpublish_at);
  *record.mutable_destroy_at() = TimeToProto(destroy_at);
  return record;
}

bool CarryOperatorChanges(const std::vector<OperatorChange>& changes,
                          absl::Time now, KeyRecord* into) {
  const absl::Time oldest_kept = now - kChangeRetention;
  auto expired = [&](const OperatorChange& change) {
    return change.has_made_at() &&
           TimeFromProto(change.made_at()) < oldest_kept;
  };
  std::set<std::string> held;
  for (const OperatorChange& c : into->operator_changes()) {
    held.insert(c.request_id());
  }
  for (const OperatorChange& c : into->carried_changes()) {
    held.insert(c.request_id());
  }
  bool added = false;
  for (const OperatorChange& change : changes) {
    if (expired(change) || !held.insert(change.request_id()).second) continue;
    *into->add_carried_changes() = change;
    added = true;
  }
  if (!added) return false;
  // Oldest first (a change without made_at counts as the oldest), so the
  // ones dropped to fit are the oldest.
  std::vector<OperatorChange> kept;
  for (const OperatorChange& c : into->carried_changes()) {
    if (!expired(c)) kept.push_back(c);
  }
  std::stable_sort(kept.begin(), kept.end(),
                   [](const OperatorChange& a, const OperatorChange& b) {
                     return TimeFromProto(a.made_at()) <
                            TimeFromProto(b.made_at());
                   });
  size_t bytes = 0;
  for (const OperatorChange& c : kept) bytes += c.ByteSizeLong();
  size_t first = 0;
  while (first < kept.size() && bytes > kMaxCarriedChangeBytes) {
    bytes -= kept[first++].ByteSizeLong();
  }
  into->clear_carried_changes();
  for (size_t i = first; i < kept.size(); ++i) {
    *into->add_carried_changes() = std::move(kept[i]);
  }
  return true;
}

absl::StatusOr<KeyRecord> ParseKeyRecord(absl::string_view bytes) {
  if (bytes.size() > kMaxRecordBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ParseKeyRecord: ", bytes.size(),
        " bytes is too large for a KeyRecord (at most ", kMaxRecordBytes, ")"));
  }
  KeyRecord record;
  if (!record.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("ParseKeyRecord: ", bytes.size(),
                     " bytes are not a valid KeyRecord encoding"));
  }
  if (absl::Status s = ValidateKeyRecord(record); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ParseKeyRecord: ", s.message()));
  }
  return record;
}

std::string SerializeKeyRecord(const KeyRecord& record) {
  // ByteSizeLong also fills the cached sizes SerializeWithCachedSizes uses.
  std::string out(record.ByteSizeLong(), '\0');
  google::protobuf::io::ArrayOutputStream array(out.data(),
                                                static_cast<int>(out.size()));
  google::protobuf::io::CodedOutputStream coded(&array);
  coded.SetSerializationDeterministic(true);
  record.SerializeWithCachedSizes(&coded);
  return out;
}

}  // namespace signet::rotation
