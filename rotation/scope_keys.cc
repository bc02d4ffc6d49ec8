#include "rotation/scope_keys.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "jose/jwk.h"

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

absl::StatusOr<ScopeKey> EnsureActiveKey(
    hsm::KeyStore& store, const ScopeKeyPolicy& policy,
    const std::map<std::string, KeyRecord>& records, absl::Time now,
    bool may_write) {
  const KeyRecord* active = nullptr;
  uint64_t newest_generation = 0;
  for (const auto& [hex_id, record] : records) {
    if (record.scope() != policy.scope) continue;
    newest_generation = std::max(newest_generation, record.key_generation());
    if (!CanSign(StateAt(record, now))) continue;
    // At most one key is ACTIVE per scope; should two ever be, the newest
    // generation wins.
    if (active == nullptr ||
        record.key_generation() > active->key_generation()) {
      active = &record;
    }
  }

  if (active != nullptr) {
    if (active->algorithm() != policy.algorithm ||
        (active->rsa_bits() != 0 &&
         static_cast<int>(active->rsa_bits()) != policy.key_spec.rsa_bits)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "scope ", policy.scope, ": its active key ", active->kid(), " is ",
          active->algorithm(), " but the configuration asks for ",
          policy.algorithm, "; rotate the scope's key to change algorithm"));
    }
    absl::StatusOr<hsm::LoadedKey> key = store.LoadKey(
        absl::HexStringToBytes(active->key_id()), policy.key_spec);
    if (!key.ok()) {
      return absl::Status(
          key.status().code(),
          absl::StrCat("scope ", policy.scope, ": ", key.status().message()));
    }
    return ScopeKey{*active, std::move(*key)};
  }

  if (!may_write) {
    return absl::FailedPreconditionError(absl::StrCat(
        "scope ", policy.scope,
        " has no active key on the token, and this replica does not create "
        "keys (never_create_keys): start the replica that writes keys first"));
  }
  SIGNET_ASSIGN_OR_RETURN(std::string key_id,
                          store.GenerateKeyPair(policy.key_spec));
  SIGNET_ASSIGN_OR_RETURN(hsm::LoadedKey key,
                          store.LoadKey(key_id, policy.key_spec));
  // The kid (RFC 7638 thumbprint) is computed above hsm/, which knows
  // nothing of JOSE.
  SIGNET_ASSIGN_OR_RETURN(std::string kid,
                          jose::JwkThumbprint(key.public_key->get()));
  KeyRecord record = NewActiveKeyRecord(
      policy.scope, absl::BytesToHexString(key_id), policy.algorithm,
      hsm::IsEcdsa(policy.key_spec.algorithm) ? 0 : policy.key_spec.rsa_bits,
      now, policy.timings);
  record.set_key_generation(newest_generation + 1);
  record.set_kid(kid);
  SIGNET_RETURN_IF_ERROR(ValidateKeyRecord(record));
  // Persisted before it takes effect: a key without a record is never used.
  SIGNET_RETURN_IF_ERROR(
      store.WriteRecord(key_id, SerializeKeyRecord(record)).status());
  return ScopeKey{std::move(record), std::move(key)};
}

}  // namespace signet::rotation
