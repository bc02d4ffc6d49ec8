#include "hsm/key_store.h"

#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "base/status_macros.h"
#include "hsm/attributes.h"
#include "hsm/ckr.h"
#include "hsm/digest.h"

namespace signet::hsm {
namespace {

constexpr absl::string_view kLabelPrefix = "signet:";
constexpr absl::string_view kRecordApplication = "signet-record";
// The marker of a generation not yet recorded (see GenerateKeyPair).
constexpr absl::string_view kUnrecordedApplication = "signet-unrecorded";
// The object CheckWritable makes and destroys at once.
constexpr absl::string_view kWriteCheckApplication = "signet-write-check";
constexpr size_t kKeyIdBytes = 16;
constexpr size_t kMaxRecordBytes = 16 * 1024;
constexpr size_t kGenerationHeader = 8;
constexpr int kReadAttempts = 4;

std::string Hex(absl::string_view id) { return absl::BytesToHexString(id); }

// SoftHSM's file token answers transient errors to one instance while
// another writes (docs/architecture.md, "The HSM boundary as it behaves",
// one writer): retry reads a bounded number of times.
template <typename F>
CK_RV RetryRead(F&& call) {
  CK_RV rv = CKR_OK;
  for (int attempt = 0; attempt < kReadAttempts; ++attempt) {
    rv = call();
    if (!IsTransientReadError(rv)) return rv;
    absl::SleepFor(absl::Milliseconds(10 << attempt));
  }
  return rv;
}

absl::Status Unfit(absl::string_view key_id, absl::string_view check) {
  return absl::FailedPreconditionError(
      absl::StrCat("key ", Hex(key_id), " refused: ", check));
}

// Reads one attribute into a preallocated buffer of `capacity` bytes (never a
// NULL size query: through p11-kit-client those can answer CKR_DEVICE_ERROR).
absl::StatusOr<std::string> ReadAttribute(SessionPool::Lease& lease,
                                          CK_OBJECT_HANDLE object,
                                          CK_ATTRIBUTE_TYPE type,
                                          size_t capacity,
                                          absl::string_view what) {
  std::string buf(capacity, '\0');
  CK_ATTRIBUTE attr = {type, buf.data(), static_cast<CK_ULONG>(buf.size())};
  CK_RV rv = RetryRead([&] {
    attr.ulValueLen = static_cast<CK_ULONG>(buf.size());
    return lease.api().GetAttributeValue(lease.session(), object, &attr, 1);
  });
  SIGNET_RETURN_IF_ERROR(
      lease.Check(rv, absl::StrCat("C_GetAttributeValue(", what, ")")));
  if (attr.ulValueLen == CK_UNAVAILABLE_INFORMATION ||
      attr.ulValueLen > buf.size()) {
    return absl::InternalError(
        absl::StrCat("C_GetAttributeValue(", what, "): no value"));
  }
  buf.resize(attr.ulValueLen);
  return buf;
}

absl::StatusOr<bool> ReadBool(SessionPool::Lease& lease, CK_OBJECT_HANDLE o,
                              CK_ATTRIBUTE_TYPE type, absl::string_view what) {
  SIGNET_ASSIGN_OR_RETURN(std::string v,
                          ReadAttribute(lease, o, type, 1, what));
  if (v.size() != 1) {
    return absl::InternalError(absl::StrCat(what, " is not a CK_BBOOL"));
  }
  return v[0] != 0;
}

absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> Find(SessionPool::Lease& lease,
                                                   AttributeTemplate& templ) {
  std::vector<CK_OBJECT_HANDLE> found;
  CK_RV rv = RetryRead([&] {
    return lease.api().FindObjects(lease.session(), templ.data(), templ.size(),
                                   &found);
  });
  SIGNET_RETURN_IF_ERROR(lease.Check(rv, "C_FindObjects"));
  return found;
}

// Destroys every object `templ` matches; `what` names them in an error.
absl::Status DestroyEveryMatch(SessionPool::Lease& lease,
                               AttributeTemplate& templ,
                               absl::string_view what) {
  SIGNET_ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found,
                          Find(lease, templ));
  for (CK_OBJECT_HANDLE h : found) {
    SIGNET_RETURN_IF_ERROR(
        lease.Check(lease.api().DestroyObject(lease.session(), h),
                    absl::StrCat("C_DestroyObject(", what, ")")));
  }
  return absl::OkStatus();
}

// The one key of class `cls` with `key_id` that `session`'s connection sees,
// by a targeted search (CKA_CLASS + CKA_ID). NOT_FOUND when there is none,
// FAILED_PRECONDITION when there are several (an ambiguous id is refused).
// When the search itself fails, `*rv` is its CK_RV (else CKR_OK) and the
// status is CkrStatus's.
absl::StatusOr<CK_OBJECT_HANDLE> FindUnique(Pkcs11Api& api,
                                            CK_SESSION_HANDLE session,
                                            CK_OBJECT_CLASS cls,
                                            absl::string_view key_id,
                                            CK_RV* rv) {
  AttributeTemplate templ;
  templ.Ulong(CKA_CLASS, cls).Bytes(CKA_ID, key_id);
  std::vector<CK_OBJECT_HANDLE> found;
  *rv = RetryRead([&] {
    return api.FindObjects(session, templ.data(), templ.size(), &found);
  });
  if (*rv != CKR_OK) return CkrStatus(*rv, "C_FindObjects");
  const char* kind = cls == CKO_PRIVATE_KEY ? "private" : "public";
  if (found.empty()) {
    return absl::NotFoundError(absl::StrCat("no ", kind, " key with id ",
                                            Hex(key_id), " in the token"));
  }
  if (found.size() > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat(found.size(), " ", kind, " keys share id ", Hex(key_id),
                     "; refusing an ambiguous key"));
  }
  return found.front();
}

absl::StatusOr<CK_OBJECT_HANDLE> FindOne(SessionPool::Lease& lease,
                                         CK_OBJECT_CLASS cls,
                                         absl::string_view key_id) {
  CK_RV rv = CKR_OK;
  absl::StatusOr<CK_OBJECT_HANDLE> found =
      FindUnique(lease.api(), lease.session(), cls, key_id, &rv);
  // Through the lease, so a lost connection is marked down.
  if (rv != CKR_OK) return lease.Check(rv, "C_FindObjects");
  return found;
}

// Finds the private-key handle of every key in `key_ids` on a connection
// that is not serving yet, and caches it there. A key not found (or
// ambiguous) is noted on the connection, never searched for later; a failed
// search keeps the connection down (UNAVAILABLE: retried with backoff).
absl::Status WarmConnection(Connection& connection, CK_SESSION_HANDLE session,
                            const std::vector<std::string>& key_ids,
                            std::vector<std::string>& missed) {
  for (const std::string& key_id : key_ids) {
    CK_RV rv = CKR_OK;
    absl::StatusOr<CK_OBJECT_HANDLE> handle =
        FindUnique(connection.api(), session, CKO_PRIVATE_KEY, key_id, &rv);
    if (rv != CKR_OK) {
      return absl::UnavailableError(absl::StrCat("finding the private key ",
                                                 Hex(key_id), ": ",
                                                 handle.status().message()));
    }
    if (!handle.ok()) {
      connection.NoteWarmUpMiss(key_id, handle.status());
      missed.push_back(key_id);
      continue;
    }
    connection.CacheHandle(key_id, *handle);
  }
  return absl::OkStatus();
}

// Creates an immutable, private token object of class CKO_DATA linked to a
// key pair by `label`: a record, or a generation marker.
absl::Status CreateDataObject(SessionPool::Lease& lease,
                              absl::string_view label,
                              absl::string_view application,
                              absl::string_view value, absl::string_view what,
                              CK_OBJECT_HANDLE* handle) {
  AttributeTemplate templ;
  templ.Ulong(CKA_CLASS, CKO_DATA)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_MODIFIABLE, false)
      .Bytes(CKA_LABEL, label)
      .Bytes(CKA_APPLICATION, application)
      .Bytes(CKA_VALUE, value);
  return lease.Check(lease.api().CreateObject(lease.session(), templ.data(),
                                              templ.size(), handle),
                     what);
}

uint64_t DecodeGeneration(absl::string_view header) {
  uint64_t g = 0;
  for (size_t i = 0; i < kGenerationHeader; ++i) {
    g = (g << 8) | static_cast<unsigned char>(header[i]);
  }
  return g;
}

std::string EncodeGeneration(uint64_t g) {
  std::string out(kGenerationHeader, '\0');
  for (int i = kGenerationHeader - 1; i >= 0; --i) {
    out[i] = static_cast<char>(g & 0xff);
    g >>= 8;
  }
  return out;
}

}  // namespace

Pkcs11KeyStore::Pkcs11KeyStore(SessionPool* pool) : pool_(pool) {
  // Captures the shared set, not `this`: the pool may run the warmer once
  // more while the destructor removes it.
  warmer_id_ = pool_->AddConnectionWarmer(
      [warm = warm_](Connection& connection,
                     CK_SESSION_HANDLE session) -> absl::Status {
        std::vector<std::string> key_ids;
        {
          absl::MutexLock lock(&warm->mu);
          key_ids.assign(warm->key_ids.begin(), warm->key_ids.end());
        }
        std::vector<std::string> missed;
        absl::Status warmed =
            WarmConnection(connection, session, key_ids, missed);
        absl::MutexLock lock(&warm->mu);
        for (std::string& key_id : missed) {
          // Only a key still loaded: one unloaded meanwhile is nobody's.
          if (warm->key_ids.contains(key_id)) {
            warm->missed.insert(std::move(key_id));
          }
        }
        return warmed;
      });
}

Pkcs11KeyStore::~Pkcs11KeyStore() { pool_->RemoveConnectionWarmer(warmer_id_); }

std::string Pkcs11KeyStore::LabelFor(absl::string_view key_id) {
  return absl::StrCat(kLabelPrefix, Hex(key_id));
}

absl::StatusOr<SessionPool::Lease> Pkcs11KeyStore::AcquireForAdmin() {
  return pool_->Acquire(absl::Now() + kAdminSessionWait);
}

absl::Status Pkcs11KeyStore::CheckAlgorithmSupported(const KeySpec& spec) {
  SIGNET_RETURN_IF_ERROR(ValidateKeySpec(spec));
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  std::vector<CK_MECHANISM_TYPE> mechs;
  SIGNET_RETURN_IF_ERROR(lease.Check(
      lease.api().GetMechanismList(lease.connection().slot(), &mechs),
      "C_GetMechanismList"));
  const int bits = IsEcdsa(spec.algorithm)
                       ? static_cast<int>(DigestLength(spec.algorithm) * 8)
                       : spec.rsa_bits;
  for (CK_MECHANISM_TYPE needed :
       {KeyGenMechanism(spec.algorithm), SignMechanism(spec.algorithm)}) {
    if (std::find(mechs.begin(), mechs.end(), needed) == mechs.end()) {
      return absl::UnimplementedError(absl::StrCat(
          "the HSM cannot do ", AlgorithmName(spec.algorithm), ": mechanism 0x",
          absl::Hex(needed), " is not in its mechanism list"));
    }
    CK_MECHANISM_INFO info;
    SIGNET_RETURN_IF_ERROR(lease.Check(
        lease.api().GetMechanismInfo(lease.connection().slot(), needed, &info),
        "C_GetMechanismInfo"));
    const bool is_sign = needed == SignMechanism(spec.algorithm);
    if (is_sign && (info.flags & CKF_SIGN) == 0) {
      return absl::UnimplementedError(absl::StrCat(
          "the HSM cannot sign with ", AlgorithmName(spec.algorithm)));
    }
    if (bits < static_cast<int>(info.ulMinKeySize) ||
        bits > static_cast<int>(info.ulMaxKeySize)) {
      return absl::UnimplementedError(
          absl::StrCat("the HSM cannot do ", AlgorithmName(spec.algorithm),
                       " with ", bits, "-bit keys (it supports ",
                       info.ulMinKeySize, " to ", info.ulMaxKeySize, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Pkcs11KeyStore::GenerateKeyPair(
    const KeySpec& spec) {
  SIGNET_RETURN_IF_ERROR(ValidateKeySpec(spec));
  std::string key_id(kKeyIdBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(key_id.data()),
                 key_id.size()) != 1) {
    return absl::InternalError("RAND_bytes failed for a key id");
  }
  const std::string label = LabelFor(key_id);
  const CK_MECHANISM_TYPE allowed = SignMechanism(spec.algorithm);

  AttributeTemplate pub;
  pub.Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, false)
      .Bool(CKA_VERIFY, true)
      .Bool(CKA_ENCRYPT, false)
      .Bool(CKA_WRAP, false)
      .Bool(CKA_VERIFY_RECOVER, false)
      .Bool(CKA_DERIVE, false)
      .Bool(CKA_MODIFIABLE, false)
      .Bytes(CKA_ID, key_id)
      .Bytes(CKA_LABEL, label);
  if (IsEcdsa(spec.algorithm)) {
    pub.Bytes(CKA_EC_PARAMS, EcParamsDer(spec.algorithm));
  } else {
    pub.Ulong(CKA_MODULUS_BITS, spec.rsa_bits)
        .Bytes(CKA_PUBLIC_EXPONENT, absl::string_view("\x01\x00\x01", 3));
  }
  AttributeTemplate priv;
  priv.Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Bool(CKA_MODIFIABLE, false)
      .Bool(CKA_COPYABLE, false)
      .Bool(CKA_SIGN, true)
      .Bool(CKA_SIGN_RECOVER, false)
      .Bool(CKA_DECRYPT, false)
      .Bool(CKA_UNWRAP, false)
      .Bool(CKA_DERIVE, false)
      .Bytes(CKA_ID, key_id)
      .Bytes(CKA_LABEL, label)
      .Bytes(CKA_ALLOWED_MECHANISMS,
             absl::string_view(reinterpret_cast<const char*>(&allowed),
                               sizeof(allowed)));
  CK_MECHANISM mech = {KeyGenMechanism(spec.algorithm), nullptr, 0};

  absl::MutexLock writer(&writer_mu_);
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  // Search before writing, on the same session. Each connection is its own
  // SoftHSM instance, and an instance that writes without having read since
  // another instance's write never sees that other write (SoftHSM 2.6.1
  // Generation::commit takes the on-disk counter + 1 as its own): the
  // search makes it re-read the token first. It doubles as a uniqueness
  // check of the new CKA_ID.
  AttributeTemplate same_id;
  same_id.Bytes(CKA_ID, key_id);
  SIGNET_ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> clash,
                          Find(lease, same_id));
  if (!clash.empty()) {
    return absl::InternalError("a fresh random key id is already in use");
  }
  // The marker first: a key pair without a record may be destroyed at the
  // next start only when this marker says its generation never finished
  // (the first WriteRecord removes it). Without it a key whose record was
  // deleted later, outside signet, would look the same and be destroyed.
  CK_OBJECT_HANDLE marker_handle = CK_INVALID_HANDLE;
  SIGNET_RETURN_IF_ERROR(CreateDataObject(
      lease, label, kUnrecordedApplication, absl::string_view("\x01", 1),
      "C_CreateObject(generation marker)", &marker_handle));
  CK_OBJECT_HANDLE pub_handle = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE priv_handle = CK_INVALID_HANDLE;
  absl::Status st = lease.Check(
      lease.api().GenerateKeyPair(lease.session(), &mech, pub.data(),
                                  pub.size(), priv.data(), priv.size(),
                                  &pub_handle, &priv_handle),
      absl::StrCat("C_GenerateKeyPair(", AlgorithmName(spec.algorithm), ")"));
  if (!st.ok()) {
    // Best effort: a marker left behind is removed by the next start.
    (void)lease.api().DestroyObject(lease.session(), marker_handle);
    return st;
  }
  lease.connection().CacheHandle(key_id, priv_handle);
  return key_id;
}

absl::StatusOr<LoadedKey> Pkcs11KeyStore::LoadKey(absl::string_view key_id,
                                                  const KeySpec& expected) {
  SIGNET_RETURN_IF_ERROR(ValidateKeySpec(expected));
  LoadedKey key;
  uint64_t checked_on = 0;
  {
    SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
    SIGNET_ASSIGN_OR_RETURN(key, CheckKey(lease, key_id, expected));
    checked_on = lease.connection().id();
  }  // That session goes back first: it may be its connection's only one.

  // Every connection opened from now on warms the key before it serves;
  // the connections up now are warmed here.
  {
    absl::MutexLock lock(&warm_->mu);
    warm_->key_ids.insert(key.key_id);
  }
  absl::Status warmed = pool_->WarmLiveConnections(
      [&](SessionPool::Lease& lease) -> absl::Status {
        if (lease.connection().id() == checked_on) return absl::OkStatus();
        absl::StatusOr<CK_OBJECT_HANDLE> handle =
            FindOne(lease, CKO_PRIVATE_KEY, key_id);
        if (handle.ok()) {
          lease.connection().CacheHandle(key_id, *handle);
          return absl::OkStatus();
        }
        if (handle.status().code() == absl::StatusCode::kFailedPrecondition) {
          return handle.status();  // ambiguous on this connection
        }
        // Lost, or blind to a key another connection just checked (its
        // SoftHSM instance has a stale view of the token): re-opened, it
        // reads the token afresh and its warm-up finds the key.
        lease.MarkLost();
        return absl::OkStatus();
      },
      absl::Now() + kAdminSessionWait);
  if (!warmed.ok()) {
    bool was_loaded;
    {
      absl::ReaderMutexLock lock(&keys_mu_);
      was_loaded = loaded_.contains(key_id);
    }
    if (!was_loaded) {
      {
        absl::MutexLock lock(&warm_->mu);
        warm_->key_ids.erase(key.key_id);
      }
      pool_->DropCachedHandles(key_id);
    }
    return warmed;
  }

  absl::MutexLock lock(&keys_mu_);
  loaded_[key.key_id] = std::make_shared<const LoadedKey>(key);
  return key;
}

absl::StatusOr<LoadedKey> Pkcs11KeyStore::CheckKey(SessionPool::Lease& lease,
                                                   absl::string_view key_id,
                                                   const KeySpec& expected) {
  // Fresh, targeted searches: a check must not trust a cache filled before
  // it, and an ambiguous id (two private keys) is refused.
  SIGNET_ASSIGN_OR_RETURN(const CK_OBJECT_HANDLE priv,
                          FindOne(lease, CKO_PRIVATE_KEY, key_id));
  SIGNET_ASSIGN_OR_RETURN(const CK_OBJECT_HANDLE pub,
                          FindOne(lease, CKO_PUBLIC_KEY, key_id));
  lease.connection().CacheHandle(key_id, priv);

  struct BoolCheck {
    CK_ATTRIBUTE_TYPE type;
    const char* name;
    bool required;
  };
  constexpr BoolCheck kChecks[] = {
      {CKA_SENSITIVE, "CKA_SENSITIVE", true},
      {CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", true},
      {CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", true},
      {CKA_EXTRACTABLE, "CKA_EXTRACTABLE", false},
      {CKA_LOCAL, "CKA_LOCAL", true},
      {CKA_SIGN, "CKA_SIGN", true},
  };
  for (const BoolCheck& check : kChecks) {
    absl::StatusOr<bool> v = ReadBool(lease, priv, check.type, check.name);
    if (!v.ok()) {
      if (v.status().code() == absl::StatusCode::kUnavailable)
        return v.status();
      return Unfit(key_id, absl::StrCat(check.name, " cannot be read (",
                                        v.status().message(), ")"));
    }
    if (*v != check.required) {
      return Unfit(key_id, absl::StrCat(check.name, " is ",
                                        *v ? "true" : "false", ", must be ",
                                        check.required ? "true" : "false"));
    }
  }

  SIGNET_ASSIGN_OR_RETURN(std::string key_type,
                          ReadAttribute(lease, priv, CKA_KEY_TYPE,
                                        sizeof(CK_KEY_TYPE), "CKA_KEY_TYPE"));
  CK_KEY_TYPE type;
  std::memcpy(&type, key_type.data(), std::min(key_type.size(), sizeof(type)));
  const bool ec = IsEcdsa(expected.algorithm);
  if (type != (ec ? CKK_EC : CKK_RSA)) {
    return Unfit(
        key_id, absl::StrCat("key type is not the ", ec ? "EC" : "RSA", " key ",
                             AlgorithmName(expected.algorithm), " needs"));
  }

  // Preallocated: a NULL size query for this attribute through
  // p11-kit-client answers CKR_DEVICE_ERROR although the HSM is fine.
  CK_MECHANISM_TYPE mechs[16];
  CK_ATTRIBUTE allowed_attr = {CKA_ALLOWED_MECHANISMS, mechs, sizeof(mechs)};
  CK_RV rv = RetryRead([&] {
    allowed_attr.ulValueLen = sizeof(mechs);
    return lease.api().GetAttributeValue(lease.session(), priv, &allowed_attr,
                                         1);
  });
  absl::Status st =
      lease.Check(rv, "C_GetAttributeValue(CKA_ALLOWED_MECHANISMS)");
  if (!st.ok()) {
    if (st.code() == absl::StatusCode::kUnavailable) return st;
    return Unfit(key_id, absl::StrCat("CKA_ALLOWED_MECHANISMS cannot be read (",
                                      st.message(), ")"));
  }
  const CK_MECHANISM_TYPE want = SignMechanism(expected.algorithm);
  if (allowed_attr.ulValueLen != sizeof(CK_MECHANISM_TYPE) ||
      mechs[0] != want) {
    return Unfit(key_id,
                 absl::StrCat("CKA_ALLOWED_MECHANISMS must be exactly the one "
                              "mechanism of ",
                              AlgorithmName(expected.algorithm)));
  }

  // The export probe. Asked with a NULL buffer so no value could ever be
  // copied into signet's memory; only CKR_ATTRIBUTE_SENSITIVE passes (an RSA
  // key has no CKA_VALUE, so it must be probed on CKA_PRIVATE_EXPONENT).
  CK_ATTRIBUTE probe = {ec ? CKA_VALUE : CKA_PRIVATE_EXPONENT, nullptr, 0};
  rv = lease.api().GetAttributeValue(lease.session(), priv, &probe, 1);
  if (rv != CKR_ATTRIBUTE_SENSITIVE) {
    st = lease.Check(rv, "export probe");
    if (st.code() == absl::StatusCode::kUnavailable) return st;
    return Unfit(key_id, absl::StrCat("export probe of ",
                                      ec ? "CKA_VALUE" : "CKA_PRIVATE_EXPONENT",
                                      " answered ", CkrName(rv),
                                      " instead of CKR_ATTRIBUTE_SENSITIVE"));
  }

  absl::StatusOr<PublicKey> public_key = absl::InternalError("unset");
  if (ec) {
    SIGNET_ASSIGN_OR_RETURN(
        std::string params,
        ReadAttribute(lease, pub, CKA_EC_PARAMS, 64, "CKA_EC_PARAMS"));
    if (params != EcParamsDer(expected.algorithm)) {
      return Unfit(key_id,
                   absl::StrCat("the curve is not the one ",
                                AlgorithmName(expected.algorithm), " needs"));
    }
    SIGNET_ASSIGN_OR_RETURN(
        std::string point,
        ReadAttribute(lease, pub, CKA_EC_POINT, 256, "CKA_EC_POINT"));
    public_key = PublicKey::FromEcPoint(params, point);
  } else {
    SIGNET_ASSIGN_OR_RETURN(
        std::string n,
        ReadAttribute(lease, pub, CKA_MODULUS, 1024, "CKA_MODULUS"));
    SIGNET_ASSIGN_OR_RETURN(std::string e,
                            ReadAttribute(lease, pub, CKA_PUBLIC_EXPONENT, 64,
                                          "CKA_PUBLIC_EXPONENT"));
    public_key = PublicKey::FromRsa(n, e);
  }
  if (!public_key.ok()) {
    return Unfit(key_id, absl::StrCat("public key unusable: ",
                                      public_key.status().message()));
  }
  if (!ec && public_key->bits() != expected.rsa_bits) {
    return Unfit(key_id, absl::StrCat("modulus is ", public_key->bits(),
                                      " bits, expected ", expected.rsa_bits));
  }

  LoadedKey key;
  key.key_id = std::string(key_id);
  key.spec = expected;
  key.public_key = std::make_shared<const PublicKey>(std::move(*public_key));

  // Pairwise test: the private key in the HSM and the public key we will
  // publish belong together.
  std::string digest(DigestLength(expected.algorithm), '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(digest.data()),
                 digest.size()) != 1) {
    return absl::InternalError("RAND_bytes failed for the pairwise test");
  }
  absl::StatusOr<std::string> sig = SignWithLease(lease, key, digest);
  if (!sig.ok()) {
    if (sig.status().code() == absl::StatusCode::kUnavailable) {
      return sig.status();
    }
    return Unfit(key_id, absl::StrCat("pairwise test could not sign: ",
                                      sig.status().message()));
  }
  absl::Status verified =
      key.public_key->VerifyDigest(expected.algorithm, digest, *sig);
  if (!verified.ok()) {
    return Unfit(key_id,
                 "pairwise test: the HSM's signature does not verify "
                 "with the token's public key");
  }

  return key;
}

absl::StatusOr<std::string> Pkcs11KeyStore::SignWithLease(
    SessionPool::Lease& lease, const LoadedKey& key, absl::string_view digest) {
  const SignatureAlgorithm alg = key.spec.algorithm;
  std::string input;
  if (alg == SignatureAlgorithm::kRsaPkcs1Sha256) {
    SIGNET_ASSIGN_OR_RETURN(input, Sha256DigestInfo(digest));
  } else {
    input = std::string(digest);
  }
  CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
  CK_MECHANISM mech = {SignMechanism(alg), nullptr, 0};
  if (alg == SignatureAlgorithm::kRsaPssSha256) {
    mech.pParameter = &pss;
    mech.ulParameterLen = sizeof(pss);
  }
  // Never a search here (one costs tens of milliseconds on a big token, and
  // would hold this connection's sign lock): the handle was found when the
  // key was loaded or the connection opened.
  Connection& connection = lease.connection();
  const std::optional<CK_OBJECT_HANDLE> handle =
      connection.CachedHandle(key.key_id);
  if (!handle) {
    if (std::optional<absl::Status> miss = connection.WarmUpMiss(key.key_id)) {
      // Opened after the key was loaded and still blind to it: the token
      // itself lost the key (NOT_FOUND), or holds two with its id
      // (DATA_LOSS: not FAILED_PRECONDITION, which says "not loaded"), and
      // a re-opened connection would not help. Not UNAVAILABLE: a retry
      // cannot succeed.
      return absl::Status(
          absl::IsNotFound(*miss) ? absl::StatusCode::kNotFound
                                  : absl::StatusCode::kDataLoss,
          absl::StrCat("key ", Hex(key.key_id),
                       " was not found on HSM connection ", connection.id(),
                       " when it was opened (", miss->message(), ")"));
    }
    lease.MarkLost();
    return absl::UnavailableError(
        absl::StrCat("key ", Hex(key.key_id),
                     " has no handle on HSM connection ", connection.id(),
                     ", whose view of the token is incomplete; "
                     "reconnecting it"));
  }
  absl::MutexLock one_signature_at_a_time(&connection.sign_mu());
  CK_RV rv = lease.api().SignInit(lease.session(), &mech, *handle);
  if (rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID) {
    // The object behind the cached handle is gone on this connection (or
    // the handle names nothing there): its view is broken. Re-opened, it
    // finds the key afresh before it serves again.
    lease.MarkLost();
    return absl::UnavailableError(
        absl::StrCat("C_SignInit: ", CkrName(rv), " for key ", Hex(key.key_id),
                     " on HSM connection ", connection.id(),
                     ": its cached handle is stale; reconnecting it"));
  }
  SIGNET_RETURN_IF_ERROR(lease.Check(rv, "C_SignInit"));
  unsigned char sig[1024];
  CK_ULONG sig_len = sizeof(sig);
  SIGNET_RETURN_IF_ERROR(lease.Check(
      lease.api().Sign(lease.session(),
                       reinterpret_cast<const unsigned char*>(input.data()),
                       input.size(), sig, &sig_len),
      "C_Sign"));
  if (IsEcdsa(alg) && sig_len != 2 * DigestLength(alg)) {
    return absl::InternalError(
        absl::StrCat("C_Sign returned ", sig_len, " bytes; ECDSA r||s for ",
                     AlgorithmName(alg), " is ", 2 * DigestLength(alg)));
  }
  return std::string(reinterpret_cast<const char*>(sig), sig_len);
}

absl::StatusOr<std::shared_ptr<const LoadedKey>> Pkcs11KeyStore::LoadedKeyFor(
    absl::string_view key_id, absl::string_view digest) {
  std::shared_ptr<const LoadedKey> key;
  {
    absl::ReaderMutexLock lock(&keys_mu_);
    auto it = loaded_.find(key_id);
    if (it != loaded_.end()) key = it->second;
  }
  if (key == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "key ", Hex(key_id), " has not passed the load-time checks"));
  }
  if (digest.size() != DigestLength(key->spec.algorithm)) {
    return absl::InvalidArgumentError(
        absl::StrCat("digest is ", digest.size(), " bytes; ",
                     AlgorithmName(key->spec.algorithm), " needs ",
                     DigestLength(key->spec.algorithm)));
  }
  return key;
}

absl::StatusOr<std::string> Pkcs11KeyStore::SignDigest(absl::string_view key_id,
                                                       absl::string_view digest,
                                                       absl::Time deadline) {
  SIGNET_ASSIGN_OR_RETURN(std::shared_ptr<const LoadedKey> key,
                          LoadedKeyFor(key_id, digest));
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, pool_->Acquire(deadline));
  return SignWithLease(lease, *key, digest);
}

std::vector<absl::StatusOr<std::string>> Pkcs11KeyStore::SignDigests(
    absl::string_view key_id, absl::Span<const std::string> digests,
    absl::Time deadline) {
  std::vector<absl::StatusOr<std::string>> out;
  out.reserve(digests.size());
  std::optional<SessionPool::Lease> lease;
  absl::Duration leased_at_monotonic;  // base::MonotonicNow()
  // Counted on the monotonic clock from here (SessionPool::Acquire does
  // the same), so a wall clock step during the batch moves neither end.
  const base::MonotonicDeadline until =
      base::MonotonicDeadline::FromWallClock(deadline);
  for (const std::string& digest : digests) {
    absl::StatusOr<std::shared_ptr<const LoadedKey>> key =
        LoadedKeyFor(key_id, digest);
    if (!key.ok()) {
      out.push_back(key.status());
      continue;
    }
    if (until.passed()) {
      out.push_back(absl::DeadlineExceededError(
          "the deadline passed before this signature could start"));
      continue;
    }
    const absl::Duration now_monotonic = base::MonotonicNow();
    if (lease.has_value() &&
        now_monotonic - leased_at_monotonic >= kMaxBatchLeaseTime) {
      lease.reset();
    }
    if (!lease.has_value()) {
      absl::StatusOr<SessionPool::Lease> next =
          pool_->Acquire(until.OnWallClock());
      if (!next.ok()) {
        out.push_back(next.status());
        continue;
      }
      lease.emplace(*std::move(next));
      leased_at_monotonic = now_monotonic;
    }
    out.push_back(SignWithLease(*lease, **key, digest));
    // After a failure, the next digest gets a session of its own: this one's
    // connection may be down (the lease marked it) or stale.
    if (!out.back().ok()) lease.reset();
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> Pkcs11KeyStore::ListKeyIds() {
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  AttributeTemplate templ;
  templ.Ulong(CKA_CLASS, CKO_PRIVATE_KEY);
  SIGNET_ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found,
                          Find(lease, templ));
  std::vector<std::string> ids;
  for (CK_OBJECT_HANDLE h : found) {
    absl::StatusOr<std::string> label =
        ReadAttribute(lease, h, CKA_LABEL, 256, "CKA_LABEL");
    if (!label.ok() || !absl::StartsWith(*label, kLabelPrefix)) continue;
    SIGNET_ASSIGN_OR_RETURN(std::string id,
                            ReadAttribute(lease, h, CKA_ID, 256, "CKA_ID"));
    if (*label != LabelFor(id)) continue;
    ids.push_back(std::move(id));
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::StatusOr<std::vector<std::string>>
Pkcs11KeyStore::ListUnfinishedGenerations() {
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  AttributeTemplate templ;
  templ.Ulong(CKA_CLASS, CKO_DATA)
      .Bytes(CKA_APPLICATION, kUnrecordedApplication);
  SIGNET_ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found,
                          Find(lease, templ));
  std::vector<std::string> ids;
  for (CK_OBJECT_HANDLE h : found) {
    SIGNET_ASSIGN_OR_RETURN(
        std::string label,
        ReadAttribute(lease, h, CKA_LABEL, 256, "CKA_LABEL"));
    if (!absl::StartsWith(label, kLabelPrefix)) continue;
    std::string id = absl::HexStringToBytes(label.substr(kLabelPrefix.size()));
    if (LabelFor(id) != label) continue;  // not a label signet writes
    ids.push_back(std::move(id));
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

absl::StatusOr<std::vector<std::string>> Pkcs11KeyStore::LoadedKeysUnusable() {
  std::vector<std::string> key_ids;
  absl::flat_hash_set<std::string> missed;
  {
    absl::ReaderMutexLock lock(&keys_mu_);
    for (const auto& [key_id, key] : loaded_) key_ids.push_back(key_id);
  }
  {
    absl::MutexLock lock(&warm_->mu);
    missed = warm_->missed;
  }
  std::vector<std::string> unusable;
  if (key_ids.empty()) return unusable;
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  Connection& connection = lease.connection();
  for (const std::string& key_id : key_ids) {
    std::optional<CK_OBJECT_HANDLE> handle = connection.CachedHandle(key_id);
    if (handle && !missed.contains(key_id)) {
      // Read through the handle: no search. A handle can outlive its object
      // (CKR_OBJECT_HANDLE_INVALID), so the id read back must be the key's.
      std::string id(key_id.size() + 1, '\0');
      CK_ATTRIBUTE attr = {CKA_ID, id.data(), static_cast<CK_ULONG>(id.size())};
      CK_RV rv = RetryRead([&] {
        attr.ulValueLen = static_cast<CK_ULONG>(id.size());
        return lease.api().GetAttributeValue(lease.session(), *handle, &attr,
                                             1);
      });
      if (rv == CKR_OK && attr.ulValueLen == key_id.size() &&
          id.compare(0, key_id.size(), key_id) == 0) {
        continue;
      }
      if (rv != CKR_OK && rv != CKR_OBJECT_HANDLE_INVALID &&
          rv != CKR_KEY_HANDLE_INVALID) {
        absl::Status st = lease.Check(rv, "C_GetAttributeValue(CKA_ID)");
        if (absl::IsUnavailable(st)) return st;
        continue;  // an odd answer about one key does not make it unusable
      }
    }
    // No handle here, one that names nothing (or another object), or a key
    // some connection's warm-up missed: a targeted search settles it.
    CK_RV rv = CKR_OK;
    absl::StatusOr<CK_OBJECT_HANDLE> found =
        FindUnique(lease.api(), lease.session(), CKO_PRIVATE_KEY, key_id, &rv);
    if (rv != CKR_OK) return lease.Check(rv, "C_FindObjects");
    if (found.ok()) {
      if (!handle || *handle != *found) connection.CacheHandle(key_id, *found);
      if (missed.contains(key_id)) {
        // Found exactly once here: the miss was a connection's stale view
        // (SoftHSM instances refresh their object lists late) or a
        // duplicate since removed; not searched for again. Loading it
        // again instead would refuse a healthy key whenever the reload
        // lands on a connection whose view is still stale.
        {
          absl::MutexLock lock(&warm_->mu);
          warm_->missed.erase(key_id);
        }
        // The connections that missed it still refuse it: re-opened, they
        // find it afresh.
        pool_->ReopenConnectionsThatMissed(key_id);
      }
    } else if (absl::IsNotFound(found.status()) ||
               absl::IsFailedPrecondition(found.status())) {
      unusable.push_back(key_id);  // gone, or its id is now shared
    }
  }
  return unusable;
}

void Pkcs11KeyStore::UnloadKey(absl::string_view key_id) {
  {
    // Unusable first, so no signature starts from here on.
    absl::MutexLock lock(&keys_mu_);
    loaded_.erase(std::string(key_id));
  }
  {
    // And no connection opened from now on looks for it.
    absl::MutexLock lock(&warm_->mu);
    warm_->key_ids.erase(std::string(key_id));
    warm_->missed.erase(std::string(key_id));
  }
  pool_->DropCachedHandles(key_id);
}

absl::Status Pkcs11KeyStore::DestroyPrivateKey(absl::string_view key_id) {
  UnloadKey(key_id);
  absl::MutexLock writer(&writer_mu_);
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  absl::StatusOr<CK_OBJECT_HANDLE> h = FindOne(lease, CKO_PRIVATE_KEY, key_id);
  if (h.status().code() == absl::StatusCode::kNotFound) return absl::OkStatus();
  SIGNET_RETURN_IF_ERROR(h.status());
  absl::Status st = lease.Check(lease.api().DestroyObject(lease.session(), *h),
                                "C_DestroyObject");
  pool_->DropCachedHandles(key_id);
  return st;
}

absl::Status Pkcs11KeyStore::DestroyKeyPair(absl::string_view key_id) {
  UnloadKey(key_id);
  absl::MutexLock writer(&writer_mu_);
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  pool_->DropCachedHandles(key_id);
  for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
    absl::StatusOr<CK_OBJECT_HANDLE> h = FindOne(lease, cls, key_id);
    if (h.status().code() == absl::StatusCode::kNotFound) continue;
    SIGNET_RETURN_IF_ERROR(h.status());
    SIGNET_RETURN_IF_ERROR(lease.Check(
        lease.api().DestroyObject(lease.session(), *h), "C_DestroyObject"));
  }
  SIGNET_ASSIGN_OR_RETURN(auto records, FindRecords(lease, key_id));
  for (const auto& [generation, handle] : records) {
    SIGNET_RETURN_IF_ERROR(
        lease.Check(lease.api().DestroyObject(lease.session(), handle),
                    "C_DestroyObject(record)"));
  }
  SIGNET_RETURN_IF_ERROR(DestroyGenerationMarkers(lease, key_id));
  pool_->DropCachedHandles(key_id);
  return absl::OkStatus();
}

absl::Status Pkcs11KeyStore::DestroyGenerationMarkers(
    SessionPool::Lease& lease, absl::string_view key_id) {
  AttributeTemplate templ;
  templ.Ulong(CKA_CLASS, CKO_DATA)
      .Bytes(CKA_LABEL, LabelFor(key_id))
      .Bytes(CKA_APPLICATION, kUnrecordedApplication);
  return DestroyEveryMatch(lease, templ, "generation marker");
}

absl::StatusOr<std::vector<std::pair<uint64_t, CK_OBJECT_HANDLE>>>
Pkcs11KeyStore::FindRecords(SessionPool::Lease& lease,
                            absl::string_view key_id) {
  AttributeTemplate templ;
  templ.Ulong(CKA_CLASS, CKO_DATA)
      .Bytes(CKA_LABEL, LabelFor(key_id))
      .Bytes(CKA_APPLICATION, kRecordApplication);
  SIGNET_ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found,
                          Find(lease, templ));
  std::vector<std::pair<uint64_t, CK_OBJECT_HANDLE>> out;
  for (CK_OBJECT_HANDLE h : found) {
    SIGNET_ASSIGN_OR_RETURN(
        std::string value,
        ReadAttribute(lease, h, CKA_VALUE, kGenerationHeader + kMaxRecordBytes,
                      "CKA_VALUE"));
    if (value.size() < kGenerationHeader) continue;  // not ours
    out.emplace_back(DecodeGeneration(value), h);
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<uint64_t> Pkcs11KeyStore::WriteRecord(absl::string_view key_id,
                                                     absl::string_view bytes) {
  if (bytes.size() > kMaxRecordBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "record of ", bytes.size(), " bytes exceeds ", kMaxRecordBytes));
  }
  absl::MutexLock writer(&writer_mu_);
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  SIGNET_ASSIGN_OR_RETURN(auto older, FindRecords(lease, key_id));
  const uint64_t generation = older.empty() ? 1 : older.back().first + 1;
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  SIGNET_RETURN_IF_ERROR(
      CreateDataObject(lease, LabelFor(key_id), kRecordApplication,
                       absl::StrCat(EncodeGeneration(generation), bytes),
                       "C_CreateObject(record)", &handle));
  // Only now that n+1 exists may n go: a crash in between leaves both, and
  // readers take the highest. From here on the record is written, whatever
  // fails: an older generation left behind (the connection dropped, say)
  // is harmless and the next write of this record removes it, so the
  // write is not reported failed (a seventh outside attack saw a
  // revocation in force answered "not completed").
  for (const auto& [gen, h] : older) {
    if (!lease
             .Check(lease.api().DestroyObject(lease.session(), h),
                    "C_DestroyObject(old record)")
             .ok()) {
      break;
    }
  }
  if (generation == 1) {
    // The key is recorded: its generation finished. A crash before this
    // (or a failure) leaves a marker beside a record, which the start-up
    // clean-up ignores (the record keeps the key) and the key's
    // destruction removes.
    (void)DestroyGenerationMarkers(lease, key_id);
  }
  return generation;
}

absl::Status Pkcs11KeyStore::CheckWritable() {
  absl::MutexLock writer(&writer_mu_);
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  AttributeTemplate templ;
  templ.Ulong(CKA_CLASS, CKO_DATA)
      .Bytes(CKA_APPLICATION, kWriteCheckApplication);
  SIGNET_RETURN_IF_ERROR(
      DestroyEveryMatch(lease, templ, "an earlier write check's object"));
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  SIGNET_RETURN_IF_ERROR(CreateDataObject(
      lease, "signet-write-check", kWriteCheckApplication,
      absl::string_view("\x01", 1), "C_CreateObject(write check)", &handle));
  return lease.Check(lease.api().DestroyObject(lease.session(), handle),
                     "C_DestroyObject(write check)");
}

absl::StatusOr<std::optional<StoredRecord>> Pkcs11KeyStore::ReadRecordWithLease(
    SessionPool::Lease& lease, absl::string_view key_id) {
  SIGNET_ASSIGN_OR_RETURN(auto records, FindRecords(lease, key_id));
  if (records.empty()) return std::optional<StoredRecord>();
  SIGNET_ASSIGN_OR_RETURN(
      std::string value,
      ReadAttribute(lease, records.back().second, CKA_VALUE,
                    kGenerationHeader + kMaxRecordBytes, "CKA_VALUE(record)"));
  StoredRecord record;
  record.generation = DecodeGeneration(value);
  record.bytes = value.substr(kGenerationHeader);
  return std::optional<StoredRecord>(std::move(record));
}

absl::StatusOr<std::optional<StoredRecord>> Pkcs11KeyStore::ReadRecord(
    absl::string_view key_id) {
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  return ReadRecordWithLease(lease, key_id);
}

absl::StatusOr<std::map<std::string, StoredRecord>>
Pkcs11KeyStore::ReadAllRecords() {
  SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease lease, AcquireForAdmin());
  AttributeTemplate templ;
  templ.Ulong(CKA_CLASS, CKO_DATA).Bytes(CKA_APPLICATION, kRecordApplication);
  SIGNET_ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> found,
                          Find(lease, templ));
  std::map<std::string, StoredRecord> out;
  for (CK_OBJECT_HANDLE h : found) {
    SIGNET_ASSIGN_OR_RETURN(
        std::string label,
        ReadAttribute(lease, h, CKA_LABEL, 256, "CKA_LABEL"));
    if (!absl::StartsWith(label, kLabelPrefix)) continue;
    std::string key_id =
        absl::HexStringToBytes(label.substr(kLabelPrefix.size()));
    SIGNET_ASSIGN_OR_RETURN(
        std::string value,
        ReadAttribute(lease, h, CKA_VALUE, kGenerationHeader + kMaxRecordBytes,
                      "CKA_VALUE"));
    if (value.size() < kGenerationHeader) continue;
    uint64_t generation = DecodeGeneration(value);
    auto it = out.find(key_id);
    if (it == out.end() || it->second.generation < generation) {
      out[key_id] = StoredRecord{generation, value.substr(kGenerationHeader)};
    }
  }
  return out;
}

}  // namespace signet::hsm
