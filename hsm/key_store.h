// Non-exportable signing keys and their records, in a PKCS#11 token.
//
// This is the whole of signet's contact with private keys: they are
// generated in the token with the non-exportable template, checked before
// first use, addressed by CKA_ID, and used only through C_Sign on a digest
// computed on the host. Nothing here imports, exports, wraps or reads
// private key material; the only private-key attribute ever requested is
// the export probe, which must answer CKR_ATTRIBUTE_SENSITIVE and is asked
// with a NULL buffer so that even a broken token could not hand bytes back.
//
// Key records are opaque CKO_DATA objects beside the key pair, linked by
// CKA_LABEL ("signet:<hex key id>"). SoftHSM refuses CKA_ID on data objects
// and refuses to change CKA_VALUE, so records are immutable: a change writes
// generation n+1 and then destroys generation n; readers take the highest
// generation, so a crash between the two steps loses nothing.
//
// Handles: a private-key handle belongs to one module connection, and
// finding one (C_FindObjects) is slow on a token with many objects (tens of
// milliseconds with 1,000 keys). So handles are found off the signing path
// and cached per connection: LoadKey finds the key's handle on every
// connection up at the time, and a connection the pool (re)opens finds the
// handles of every loaded key before it serves (a connection warmer
// registered with the SessionPool). Signing never searches: a handle that
// is missing or that the HSM calls invalid means that connection's view is
// broken, so it is marked lost (re-opened and re-warmed by the pool) and the
// signature answers UNAVAILABLE.
//
// Thread-safety: thread-safe. Token writes (generate, record writes,
// destroy) are serialized through one writer lock, because SoftHSM's file
// token does not tolerate one instance writing while others read; reads
// retry SoftHSM's transient errors a bounded number of times.
#ifndef SIGNET_HSM_KEY_STORE_H_
#define SIGNET_HSM_KEY_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "hsm/algorithm.h"
#include "hsm/public_key.h"
#include "hsm/session_pool.h"

namespace signet::hsm {

// A key that passed every load-time check. Immutable.
struct LoadedKey {
  std::string key_id;  // CKA_ID bytes
  KeySpec spec;
  std::shared_ptr<const PublicKey> public_key;
};

// A record as stored: its generation and the caller's opaque bytes.
struct StoredRecord {
  uint64_t generation = 0;
  std::string bytes;
};

// The role: where keys live and sign. Pkcs11KeyStore is the mechanism.
// Admin-path operations (generate, load, records) wait this long for a
// session; signing uses the caller's deadline.
inline constexpr absl::Duration kAdminSessionWait = absl::Seconds(30);

class KeyStore {
 public:
  virtual ~KeyStore() = default;

  // Generates a key pair in the token with the non-exportable template and
  // returns its CKA_ID. The key is not usable until LoadKey() checked it.
  // A marker written before the key pair says its generation has not
  // finished until the key's first record is written
  // (ListUnfinishedGenerations).
  virtual absl::StatusOr<std::string> GenerateKeyPair(const KeySpec& spec) = 0;

  // Runs every load-time check on the key (see Pkcs11KeyStore) and makes it
  // usable for SignDigest. FAILED_PRECONDITION naming the failed check and
  // the key id when the key is unfit (or its id is ambiguous); NOT_FOUND
  // when there is no such key.
  virtual absl::StatusOr<LoadedKey> LoadKey(absl::string_view key_id,
                                            const KeySpec& expected) = 0;

  // Signs a host-computed digest with a loaded key. The signature is in JWS
  // form (r||s for ECDSA). INVALID_ARGUMENT for a digest of the wrong length,
  // FAILED_PRECONDITION for a key that is not loaded, UNAVAILABLE when the
  // HSM is unreachable or the connection used turned out unfit for the key
  // (retry: it is being re-established), DEADLINE_EXCEEDED when no session
  // frees in time; NOT_FOUND / DATA_LOSS when the token lost the key or
  // holds two private keys with its id (see Pkcs11KeyStore).
  virtual absl::StatusOr<std::string> SignDigest(absl::string_view key_id,
                                                 absl::string_view digest,
                                                 absl::Time deadline) = 0;

  // Signs each of `digests` with a loaded key, in order, and returns one
  // result per digest (each as SignDigest's). One session serves a run of
  // digests back to back, so the HSM sees a steady stream of requests, as
  // a batch of tokens wants; the session goes back to the pool after a
  // failed signature and at least every kMaxBatchLeaseTime, so a batch never
  // looks like a stalled connection. No signature starts at or after
  // `deadline`: those digests get DEADLINE_EXCEEDED.
  virtual std::vector<absl::StatusOr<std::string>> SignDigests(
      absl::string_view key_id, absl::Span<const std::string> digests,
      absl::Time deadline) = 0;

  // CKA_IDs of every private key in the token with signet's label prefix.
  virtual absl::StatusOr<std::vector<std::string>> ListKeyIds() = 0;

  // CKA_IDs whose GenerateKeyPair started and whose first record was never
  // written: what a crash (or a failed record write) between generating a
  // key and recording it leaves, with or without the key pair. Only these
  // key pairs are safe to destroy for want of a record; one without a
  // record that is not listed here was recorded once (its record was
  // deleted outside signet) or was made by another program.
  virtual absl::StatusOr<std::vector<std::string>>
  ListUnfinishedGenerations() = 0;

  // The CKA_IDs of loaded keys that can no longer sign from the token: its
  // private key is gone (deleted behind signet's back: by hand, or by
  // another program), or a second private key now shares its id (planted,
  // or imported by another program), which a connection opened since
  // cannot tell apart and refuses. Nothing is unloaded; the caller decides
  // (and loading such a key again fails, saying why). UNAVAILABLE when the
  // HSM cannot be asked.
  virtual absl::StatusOr<std::vector<std::string>> LoadedKeysUnusable() = 0;

  // Destroys the private key, then the public key, then the key's records
  // (and an unfinished generation's marker).
  virtual absl::Status DestroyKeyPair(absl::string_view key_id) = 0;

  // Destroys only the private key (the key can never sign again); its
  // public key and records stay, as the tombstone operators and audits
  // read. OK if the private key is already gone.
  virtual absl::Status DestroyPrivateKey(absl::string_view key_id) = 0;

  // Makes a loaded key unusable for SignDigest and stops warming its
  // handles on new connections; the token is not touched. For a key that
  // no longer signs nor is published. No-op for a key that is not loaded.
  virtual void UnloadKey(absl::string_view key_id) = 0;

  // Writes the next generation of `key_id`'s record and destroys the older
  // ones; returns the new generation. Once the new generation is written
  // the write succeeded: an older one that cannot be destroyed stays
  // (readers take the highest) until the next write.
  virtual absl::StatusOr<uint64_t> WriteRecord(absl::string_view key_id,
                                               absl::string_view bytes) = 0;
  // The highest generation of `key_id`'s record, or nullopt if none.
  virtual absl::StatusOr<std::optional<StoredRecord>> ReadRecord(
      absl::string_view key_id) = 0;
  // Every key id that has a record, with its highest generation.
  virtual absl::StatusOr<std::map<std::string, StoredRecord>>
  ReadAllRecords() = 0;

  // Creates a small token object and destroys it again: OK when the token
  // takes writes now, else the error that refused the write. The writer's
  // passes write only when a key's time comes (hours or days apart), so a
  // token that stopped taking writes (a read-only or full file system
  // under SoftHSM, a write-protected token, an HSM out of object space)
  // would otherwise show only when a rotation or revocation fails. What an
  // earlier check left (a crash between the two calls) is destroyed first.
  virtual absl::Status CheckWritable() = 0;
};

class Pkcs11KeyStore : public KeyStore {
 public:
  // Registers a connection warmer with `pool` (removed by the destructor):
  // every connection the pool opens finds the private-key handles of every
  // loaded key before it serves. `pool` must outlive the store.
  explicit Pkcs11KeyStore(SessionPool* pool);
  ~Pkcs11KeyStore() override;
  Pkcs11KeyStore(const Pkcs11KeyStore&) = delete;
  Pkcs11KeyStore& operator=(const Pkcs11KeyStore&) = delete;

  // Refuses, with UNIMPLEMENTED and a message that says so, an algorithm
  // the token cannot do: asks C_GetMechanismList / C_GetMechanismInfo for
  // the key generation and signing mechanisms, CKF_SIGN, and the key size.
  absl::Status CheckAlgorithmSupported(const KeySpec& spec);

  absl::StatusOr<std::string> GenerateKeyPair(const KeySpec& spec) override;

  // Load-time checks, each failure a FAILED_PRECONDITION naming it:
  //   CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE true;
  //   CKA_EXTRACTABLE false; CKA_LOCAL true; CKA_SIGN true;
  //   CKA_ALLOWED_MECHANISMS exactly the algorithm's one mechanism (read
  //   into a preallocated buffer: a size query through p11-kit-client
  //   answers CKR_DEVICE_ERROR);
  //   the export probe answers CKR_ATTRIBUTE_SENSITIVE (CKA_VALUE for EC,
  //   CKA_PRIVATE_EXPONENT for RSA; any other answer fails);
  //   the key type, curve and modulus size are `expected`;
  //   a pairwise test: sign random bytes in the HSM, verify in OpenSSL.
  // Then finds and caches the key's private-key handle on every connection
  // up (a connection that does not see the key is re-opened; one that sees
  // two private keys with its id fails the load), and adds the key to the
  // set every newly opened connection warms. A key is signable only once
  // LoadKey returned.
  absl::StatusOr<LoadedKey> LoadKey(absl::string_view key_id,
                                    const KeySpec& expected) override;

  // Never searches the token: signs with the handle cached on the leased
  // connection. A missing handle, or CKR_OBJECT_HANDLE_INVALID /
  // CKR_KEY_HANDLE_INVALID from C_SignInit, marks the connection lost and
  // answers UNAVAILABLE (the re-opened connection finds the key afresh). A
  // key the connection's warm-up did not find answers NOT_FOUND (the token
  // lost it: a re-opened connection would not find it either); one whose id
  // two private keys share there answers DATA_LOSS.
  absl::StatusOr<std::string> SignDigest(absl::string_view key_id,
                                         absl::string_view digest,
                                         absl::Time deadline) override;
  std::vector<absl::StatusOr<std::string>> SignDigests(
      absl::string_view key_id, absl::Span<const std::string> digests,
      absl::Time deadline) override;
  absl::StatusOr<std::vector<std::string>> ListKeyIds() override;
  absl::StatusOr<std::vector<std::string>> ListUnfinishedGenerations() override;
  // Asks through one connection, without a search for a key that is there:
  // each loaded key's cached handle is read (CKA_ID, one call). A key
  // whose handle there is missing, stale, or names another object is
  // looked for once (a targeted search), which re-caches the handle of a
  // key that is there; so is a key some connection's warm-up missed (until
  // a search finds it exactly once). A key found twice is reported.
  absl::StatusOr<std::vector<std::string>> LoadedKeysUnusable() override;
  // Also drops the key's handles on every connection and takes it out of
  // the set new connections warm.
  absl::Status DestroyKeyPair(absl::string_view key_id) override;
  absl::Status DestroyPrivateKey(absl::string_view key_id) override;
  void UnloadKey(absl::string_view key_id) override;
  absl::StatusOr<uint64_t> WriteRecord(absl::string_view key_id,
                                       absl::string_view bytes) override;
  absl::StatusOr<std::optional<StoredRecord>> ReadRecord(
      absl::string_view key_id) override;
  absl::StatusOr<std::map<std::string, StoredRecord>> ReadAllRecords() override;
  absl::Status CheckWritable() override;

  // Longest time SignDigests holds one session before it gives it back
  // and takes the next free one (far below SessionPoolOptions'
  // stall_threshold).
  static constexpr absl::Duration kMaxBatchLeaseTime = absl::Milliseconds(50);

  // The label that links a key pair and its records: "signet:<hex id>".
  static std::string LabelFor(absl::string_view key_id);

 private:
  // The ids of the loaded keys (and of a key being loaded), which every
  // newly opened connection warms. Shared with the pool's warmer, which may
  // run once more after the store is gone.
  struct WarmSet {
    absl::Mutex mu;
    absl::flat_hash_set<std::string> key_ids ABSL_GUARDED_BY(mu);
    // Loaded keys a connection's warm-up did not find exactly once (gone,
    // or an id two private keys share): LoadedKeysUnusable searches for
    // these, whatever handle another connection still holds.
    absl::flat_hash_set<std::string> missed ABSL_GUARDED_BY(mu);
  };

  // The load-time checks on `lease`'s connection; caches the private-key
  // handle there.
  absl::StatusOr<LoadedKey> CheckKey(SessionPool::Lease& lease,
                                     absl::string_view key_id,
                                     const KeySpec& expected);
  absl::StatusOr<std::string> SignWithLease(SessionPool::Lease& lease,
                                            const LoadedKey& key,
                                            absl::string_view digest);
  absl::StatusOr<std::vector<std::pair<uint64_t, CK_OBJECT_HANDLE>>>
  FindRecords(SessionPool::Lease& lease, absl::string_view key_id);
  // Destroys `key_id`'s generation markers (see GenerateKeyPair).
  absl::Status DestroyGenerationMarkers(SessionPool::Lease& lease,
                                        absl::string_view key_id);
  absl::StatusOr<std::optional<StoredRecord>> ReadRecordWithLease(
      SessionPool::Lease& lease, absl::string_view key_id);
  absl::StatusOr<SessionPool::Lease> AcquireForAdmin();
  // The loaded key `key_id`, checked against `digest`'s length: the
  // preconditions of SignDigest.
  absl::StatusOr<std::shared_ptr<const LoadedKey>> LoadedKeyFor(
      absl::string_view key_id, absl::string_view digest);

  SessionPool* const pool_;
  const std::shared_ptr<WarmSet> warm_ = std::make_shared<WarmSet>();
  uint64_t warmer_id_ = 0;
  // One writer for every token write (see the file comment).
  absl::Mutex writer_mu_;
  // Read on every sign (reader lock), written when a key is loaded or
  // destroyed.
  absl::Mutex keys_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<const LoadedKey>> loaded_
      ABSL_GUARDED_BY(keys_mu_);
};

}  // namespace signet::hsm

#endif  // SIGNET_HSM_KEY_STORE_H_
