#include "hsm/key_store.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/attributes.h"
#include "hsm/ckr.h"
#include "hsm/digest.h"
#include "tests/testing/immutable.h"
#include "tests/testing/in_process_hsm.h"

namespace signet::hsm {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::testing::UnorderedElementsAre;

absl::Time Later() { return absl::Now() + absl::Seconds(10); }

class KeyStoreTest : public InProcessKeyStoreTest {
 protected:
  // A pool of `options` in place of the default one.
  void UsePool(const SessionPoolOptions& options) {
    auto pool = MakePool(options);
    ASSERT_TRUE(pool.ok()) << pool.status();
    store_.reset();
    pool_ = std::move(*pool);
    store_ = std::make_unique<Pkcs11KeyStore>(pool_.get());
    pool_options_ = options;
  }

  // A pool of one connection in place of the default one.
  void UseOneConnection() {
    SessionPoolOptions one;
    one.connections = 1;
    UsePool(one);
  }

  // The default layout (two connections of two sessions), with lost
  // connections re-opened within milliseconds.
  void UseFastRecovery() {
    SessionPoolOptions fast;
    fast.initial_backoff = absl::Milliseconds(5);
    fast.max_backoff = absl::Milliseconds(20);
    UsePool(fast);
  }

  // Waits until every connection of the pool is up (re-opened and warmed).
  void WaitForEveryConnection() {
    const absl::Time bound = absl::Now() + absl::Seconds(10);
    while (pool_->LiveConnections() < pool_options_.connections &&
           absl::Now() < bound) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    ASSERT_EQ(pool_->LiveConnections(), pool_options_.connections)
        << pool_->LastError();
  }

  // Every session of the pool, leased.
  std::vector<std::optional<SessionPool::Lease>> HoldEverySession() {
    std::vector<std::optional<SessionPool::Lease>> all;
    for (int i = 0; i < pool_->Capacity(); ++i) {
      auto lease = pool_->Acquire(absl::Now() + absl::Seconds(5));
      if (!lease.ok()) {
        ADD_FAILURE() << "session " << i << ": " << lease.status();
        break;
      }
      all.emplace_back(*std::move(lease));
    }
    return all;
  }

  // Signs once with `key` on each connection, and verifies: every other
  // session is held meanwhile, so the signature must take that
  // connection's. Returns the ids of the connections signed on.
  // A second key pair planted with `key`'s id (as a person with the PIN
  // could), then every connection re-opened, so each warm-up sees two.
  void PlantDuplicateAndReconnect(const LoadedKey& key) {
    GenerateWithTemplate(*pool_, /*sensitive=*/true, /*extractable=*/false,
                         {CKM_ECDSA}, key.key_id);
    {
      std::vector<std::optional<SessionPool::Lease>> all = HoldEverySession();
      for (std::optional<SessionPool::Lease>& lease : all) {
        (void)lease->Check(CKR_DEVICE_ERROR, "C_Sign");
      }
    }
    ASSERT_NO_FATAL_FAILURE(WaitForEveryConnection());
  }

  std::set<uint64_t> SignOnEveryConnection(const LoadedKey& key) {
    std::vector<std::optional<SessionPool::Lease>> held = HoldEverySession();
    std::set<uint64_t> signed_on;
    std::set<uint64_t> tried;
    const std::string digest(DigestLength(key.spec.algorithm), 'e');
    for (std::optional<SessionPool::Lease>& lease : held) {
      const uint64_t connection = lease->connection().id();
      if (!tried.insert(connection).second) continue;
      lease.reset();  // the one free session
      auto sig = store_->SignDigest(key.key_id, digest, Later());
      if (!sig.ok()) {
        ADD_FAILURE() << "on connection " << connection << ": " << sig.status();
        continue;
      }
      if (!key.public_key->VerifyDigest(key.spec.algorithm, digest, *sig)
               .ok()) {
        ADD_FAILURE() << "signature on connection " << connection
                      << " does not verify";
        continue;
      }
      auto again = pool_->Acquire(absl::Now() + absl::Seconds(5));
      if (!again.ok()) {
        ADD_FAILURE() << again.status();
        continue;
      }
      EXPECT_EQ(again->connection().id(), connection);
      lease.emplace(*std::move(again));
      signed_on.insert(connection);
    }
    return signed_on;
  }

  // Generates and loads an ES256 key.
  LoadedKey NewEs256() {
    KeySpec spec{SignatureAlgorithm::kEcdsaP256Sha256};
    auto id = store_->GenerateKeyPair(spec);
    EXPECT_TRUE(id.ok()) << id.status();
    auto key = store_->LoadKey(*id, spec);
    EXPECT_TRUE(key.ok()) << key.status();
    return *key;
  }

  // The options of pool_: the fixture's default pool, or UsePool's.
  SessionPoolOptions pool_options_;
};

struct AlgCase {
  SignatureAlgorithm algorithm;
  int rsa_bits;
};

class KeyStoreAlgorithmTest : public KeyStoreTest,
                              public ::testing::WithParamInterface<AlgCase> {};

TEST_P(KeyStoreAlgorithmTest, GeneratesLoadsAndSignsAVerifiableDigest) {
  KeySpec spec{GetParam().algorithm, GetParam().rsa_bits};
  ASSERT_TRUE(store_->CheckAlgorithmSupported(spec).ok());
  auto id = store_->GenerateKeyPair(spec);
  ASSERT_TRUE(id.ok()) << id.status();
  auto key = store_->LoadKey(*id, spec);
  ASSERT_TRUE(key.ok()) << key.status();
  ASSERT_NE(key->public_key, nullptr);
  EXPECT_EQ(key->public_key->is_ec(), IsEcdsa(spec.algorithm));
  auto digest = DigestFor(spec.algorithm, "header.claims");
  ASSERT_TRUE(digest.ok());
  auto sig = store_->SignDigest(*id, *digest, Later());
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(
      key->public_key->VerifyDigest(spec.algorithm, *digest, *sig).ok());
  auto other = DigestFor(spec.algorithm, "header.claimz");
  EXPECT_FALSE(
      key->public_key->VerifyDigest(spec.algorithm, *other, *sig).ok());
}

INSTANTIATE_TEST_SUITE_P(
    All, KeyStoreAlgorithmTest,
    ::testing::Values(AlgCase{SignatureAlgorithm::kEcdsaP256Sha256, 0},
                      AlgCase{SignatureAlgorithm::kEcdsaP384Sha384, 0},
                      AlgCase{SignatureAlgorithm::kRsaPkcs1Sha256, 2048},
                      AlgCase{SignatureAlgorithm::kRsaPssSha256, 2048},
                      AlgCase{SignatureAlgorithm::kRsaPkcs1Sha256, 3072}));

TEST_F(KeyStoreTest, RefusesAnAlgorithmTheTokenCannotDo) {
  injector_->HideMechanism(CKM_RSA_PKCS_PSS);
  absl::Status st = store_->CheckAlgorithmSupported(
      {SignatureAlgorithm::kRsaPssSha256, 2048});
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(st.message(), HasSubstr("PS256"));
  EXPECT_TRUE(
      store_->CheckAlgorithmSupported({SignatureAlgorithm::kEcdsaP256Sha256})
          .ok());
  EXPECT_EQ(
      store_
          ->CheckAlgorithmSupported({SignatureAlgorithm::kRsaPkcs1Sha256, 1024})
          .code(),
      absl::StatusCode::kInvalidArgument);
}

struct BoolCheckCase {
  CK_ATTRIBUTE_TYPE type;
  bool bad_value;
  const char* name;
};

class KeyStoreCheckTest : public KeyStoreTest,
                          public ::testing::WithParamInterface<BoolCheckCase> {
};

TEST_P(KeyStoreCheckTest, RefusesAKeyFailingTheCheckAndNamesIt) {
  KeySpec spec{SignatureAlgorithm::kEcdsaP256Sha256};
  auto id = store_->GenerateKeyPair(spec);
  ASSERT_TRUE(id.ok());
  injector_->OverrideBool(GetParam().type, GetParam().bad_value);
  auto key = store_->LoadKey(*id, spec);
  EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(key.status().message(), HasSubstr(GetParam().name));
  EXPECT_THAT(key.status().message(), HasSubstr(absl::BytesToHexString(*id)));
  // A refused key never signs.
  injector_->Clear();
  auto sig = store_->SignDigest(*id, std::string(32, 'd'), Later());
  EXPECT_EQ(sig.status().code(), absl::StatusCode::kFailedPrecondition);
}

INSTANTIATE_TEST_SUITE_P(
    EveryAttribute, KeyStoreCheckTest,
    ::testing::Values(
        BoolCheckCase{CKA_SENSITIVE, false, "CKA_SENSITIVE"},
        BoolCheckCase{CKA_ALWAYS_SENSITIVE, false, "CKA_ALWAYS_SENSITIVE"},
        BoolCheckCase{CKA_NEVER_EXTRACTABLE, false, "CKA_NEVER_EXTRACTABLE"},
        BoolCheckCase{CKA_EXTRACTABLE, true, "CKA_EXTRACTABLE"},
        BoolCheckCase{CKA_LOCAL, false, "CKA_LOCAL"},
        BoolCheckCase{CKA_SIGN, false, "CKA_SIGN"}));

TEST_F(KeyStoreTest, ExportProbeMustAnswerAttributeSensitive) {
  KeySpec spec{SignatureAlgorithm::kEcdsaP256Sha256};
  auto id = store_->GenerateKeyPair(spec);
  ASSERT_TRUE(id.ok());
  for (CK_RV answer : {CKR_OK, CKR_ATTRIBUTE_TYPE_INVALID}) {
    injector_->FailAttribute(CKA_VALUE, answer);
    auto key = store_->LoadKey(*id, spec);
    EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(key.status().message(), HasSubstr("export probe"));
    EXPECT_THAT(key.status().message(), HasSubstr(CkrName(answer)));
  }
  injector_->Clear();
  EXPECT_TRUE(store_->LoadKey(*id, spec).ok());
}

TEST_F(KeyStoreTest, RsaExportProbeUsesThePrivateExponent) {
  KeySpec spec{SignatureAlgorithm::kRsaPkcs1Sha256, 2048};
  auto id = store_->GenerateKeyPair(spec);
  ASSERT_TRUE(id.ok());
  injector_->FailAttribute(CKA_PRIVATE_EXPONENT, CKR_OK);
  auto key = store_->LoadKey(*id, spec);
  EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(key.status().message(), HasSubstr("CKA_PRIVATE_EXPONENT"));
}

TEST_F(KeyStoreTest, RefusesAKeyOfAnotherAlgorithmThanExpected) {
  auto id = store_->GenerateKeyPair({SignatureAlgorithm::kEcdsaP256Sha256});
  ASSERT_TRUE(id.ok());
  auto as_p384 = store_->LoadKey(*id, {SignatureAlgorithm::kEcdsaP384Sha384});
  EXPECT_EQ(as_p384.status().code(), absl::StatusCode::kFailedPrecondition);
  auto as_rsa = store_->LoadKey(*id, {SignatureAlgorithm::kRsaPkcs1Sha256});
  EXPECT_EQ(as_rsa.status().code(), absl::StatusCode::kFailedPrecondition);
  auto rsa =
      store_->GenerateKeyPair({SignatureAlgorithm::kRsaPkcs1Sha256, 2048});
  ASSERT_TRUE(rsa.ok());
  // Same key type, other mechanism: CKA_ALLOWED_MECHANISMS tells them apart.
  auto as_pss =
      store_->LoadKey(*rsa, {SignatureAlgorithm::kRsaPssSha256, 2048});
  EXPECT_EQ(as_pss.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(as_pss.status().message(), HasSubstr("CKA_ALLOWED_MECHANISMS"));
  auto wrong_size =
      store_->LoadKey(*rsa, {SignatureAlgorithm::kRsaPkcs1Sha256, 3072});
  EXPECT_EQ(wrong_size.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(KeyStoreTest, RefusesAKeyGeneratedExtractable) {
  std::string id = GenerateWithTemplate(*pool_, /*sensitive=*/false,
                                        /*extractable=*/true, {CKM_ECDSA});
  auto key = store_->LoadKey(id, {SignatureAlgorithm::kEcdsaP256Sha256});
  EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(key.status().message(), HasSubstr("CKA_SENSITIVE"));
}

TEST_F(KeyStoreTest, RefusesAKeyWithoutExactlyOneAllowedMechanism) {
  std::string none = GenerateWithTemplate(*pool_, true, false, {});
  auto key = store_->LoadKey(none, {SignatureAlgorithm::kEcdsaP256Sha256});
  EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(key.status().message(), HasSubstr("CKA_ALLOWED_MECHANISMS"));
  std::string two =
      GenerateWithTemplate(*pool_, true, false, {CKM_ECDSA, CKM_ECDSA_SHA256});
  key = store_->LoadKey(two, {SignatureAlgorithm::kEcdsaP256Sha256});
  EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(key.status().message(), HasSubstr("CKA_ALLOWED_MECHANISMS"));
}

TEST_F(KeyStoreTest, RefusesAnImportedKey) {
  // A key made outside the HSM (here by OpenSSL, in the test only) and
  // imported: CKA_LOCAL and CKA_ALWAYS_SENSITIVE are false.
  EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  ASSERT_NE(pkey, nullptr);
  BIGNUM* d = nullptr;
  ASSERT_EQ(EVP_PKEY_get_bn_param(pkey, "priv", &d), 1);
  std::string priv_value(32, '\0');
  BN_bn2binpad(d, reinterpret_cast<unsigned char*>(priv_value.data()), 32);
  unsigned char point[65];
  size_t point_len = 0;
  ASSERT_EQ(EVP_PKEY_get_octet_string_param(pkey, "pub", point, sizeof(point),
                                            &point_len),
            1);
  BN_clear_free(d);
  EVP_PKEY_free(pkey);
  std::string ec_point = std::string("\x04\x41", 2) +
                         std::string(reinterpret_cast<char*>(point), point_len);
  std::string id = "imported";
  auto lease = pool_->Acquire(Later());
  ASSERT_TRUE(lease.ok());
  const CK_MECHANISM_TYPE ecdsa = CKM_ECDSA;
  AttributeTemplate priv;
  priv.Ulong(CKA_CLASS, CKO_PRIVATE_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_EC)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Bool(CKA_SIGN, true)
      .Bytes(CKA_ID, id)
      .Bytes(CKA_EC_PARAMS, EcParamsDer(SignatureAlgorithm::kEcdsaP256Sha256))
      .Bytes(CKA_VALUE, priv_value)
      .Bytes(CKA_ALLOWED_MECHANISMS,
             absl::string_view(reinterpret_cast<const char*>(&ecdsa),
                               sizeof(ecdsa)));
  AttributeTemplate pub;
  pub.Ulong(CKA_CLASS, CKO_PUBLIC_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_EC)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_VERIFY, true)
      .Bytes(CKA_ID, id)
      .Bytes(CKA_EC_PARAMS, EcParamsDer(SignatureAlgorithm::kEcdsaP256Sha256))
      .Bytes(CKA_EC_POINT, ec_point);
  CK_OBJECT_HANDLE h;
  ASSERT_EQ(
      lease->api().CreateObject(lease->session(), priv.data(), priv.size(), &h),
      CKR_OK);
  ASSERT_EQ(
      lease->api().CreateObject(lease->session(), pub.data(), pub.size(), &h),
      CKR_OK);
  lease = absl::UnavailableError("released");
  auto key = store_->LoadKey(id, {SignatureAlgorithm::kEcdsaP256Sha256});
  EXPECT_EQ(key.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(key.status().message(), HasSubstr("CKA_ALWAYS_SENSITIVE"));
}

TEST_F(KeyStoreTest, SigningNeverSearchesAfterTheHandlesAreCached) {
  LoadedKey key = NewEs256();
  ASSERT_TRUE(
      store_->SignDigest(key.key_id, std::string(32, 'a'), Later()).ok());
  ASSERT_TRUE(
      store_->SignDigest(key.key_id, std::string(32, 'b'), Later()).ok());
  const int finds = injector_->Calls("C_FindObjects");
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(
        store_->SignDigest(key.key_id, std::string(32, 'c'), Later()).ok());
  }
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds);
  EXPECT_GE(injector_->Calls("C_Sign"), 22);
}

// ---------------------------------------------------------------------------
// Handles are found off the signing path: when a key is loaded, on every
// connection up, and when a connection is (re)opened, before it serves.
// Signing never searches (not even the first signature on a connection).

TEST_F(KeyStoreTest, FirstSignOnEveryConnectionAfterLoadNeverSearches) {
  ASSERT_EQ(pool_->LiveConnections(), 2);
  LoadedKey a = NewEs256();
  LoadedKey b = NewEs256();
  const int finds = injector_->Calls("C_FindObjects");
  for (const LoadedKey* key : {&a, &b}) {
    EXPECT_THAT(SignOnEveryConnection(*key), SizeIs(2));
  }
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds)
      << "a first signature on a connection searched the token";
}

TEST_F(KeyStoreTest, FirstSignAfterAReconnectNeverSearches) {
  ASSERT_NO_FATAL_FAILURE(UseFastRecovery());
  LoadedKey key = NewEs256();
  ASSERT_THAT(SignOnEveryConnection(key), SizeIs(2));
  const int connects = injector_->Connects();
  injector_->Fail("C_Sign", CKR_DEVICE_ERROR, 1);
  EXPECT_EQ(store_->SignDigest(key.key_id, std::string(32, 'a'), Later())
                .status()
                .code(),
            absl::StatusCode::kUnavailable);
  ASSERT_NO_FATAL_FAILURE(WaitForEveryConnection());
  EXPECT_EQ(injector_->Connects(), connects + 1);
  const int finds = injector_->Calls("C_FindObjects");
  EXPECT_THAT(SignOnEveryConnection(key), SizeIs(2));
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds)
      << "the first signature on the re-opened connection searched";
}

TEST_F(KeyStoreTest, ManyKeysInTheTokenAreNeverSearchedWhileSigning) {
  ASSERT_NO_FATAL_FAILURE(UseFastRecovery());
  // Keys that are in the token but not loaded: a scan would meet them all.
  for (int i = 0; i < 60; ++i) {
    ASSERT_TRUE(
        store_->GenerateKeyPair({SignatureAlgorithm::kEcdsaP256Sha256}).ok());
  }
  std::vector<LoadedKey> keys;
  for (int i = 0; i < 3; ++i) keys.push_back(NewEs256());
  const int finds = injector_->Calls("C_FindObjects");
  const int reads = injector_->Calls("C_GetAttributeValue");
  for (const LoadedKey& key : keys) {
    EXPECT_THAT(SignOnEveryConnection(key), SizeIs(2));
  }
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds);
  EXPECT_EQ(injector_->Calls("C_GetAttributeValue"), reads);

  // A connection re-opened: its warm-up makes one targeted search per
  // loaded key (not a scan of the token), and signing none.
  {
    auto lease = pool_->Acquire(Later());
    ASSERT_TRUE(lease.ok());
    (void)lease->Check(CKR_DEVICE_ERROR, "C_Sign");
  }
  ASSERT_NO_FATAL_FAILURE(WaitForEveryConnection());
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds + 3);
  EXPECT_EQ(injector_->Calls("C_GetAttributeValue"), reads);
  for (const LoadedKey& key : keys) {
    EXPECT_THAT(SignOnEveryConnection(key), SizeIs(2));
  }
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds + 3);
}

TEST_F(KeyStoreTest, AStaleHandleMarksTheConnectionLostAndIsNotSearchedFor) {
  ASSERT_NO_FATAL_FAILURE(UseFastRecovery());
  LoadedKey key = NewEs256();
  ASSERT_THAT(SignOnEveryConnection(key), SizeIs(2));
  for (CK_RV stale : {CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID}) {
    SCOPED_TRACE(CkrName(stale));
    // The lost connection stays down until the test lets it come back.
    injector_->Fail("Connect", CKR_DEVICE_ERROR, -1);
    const int finds = injector_->Calls("C_FindObjects");
    const int signs = injector_->Calls("C_Sign");
    injector_->Fail("C_SignInit", stale, 1);
    auto sig = store_->SignDigest(key.key_id, std::string(32, 's'), Later());
    EXPECT_EQ(sig.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(sig.status().message(), HasSubstr(CkrName(stale)));
    EXPECT_THAT(sig.status().message(), HasSubstr("HSM connection"));
    EXPECT_EQ(injector_->Calls("C_FindObjects"), finds);
    EXPECT_EQ(injector_->Calls("C_Sign"), signs);
    EXPECT_EQ(pool_->LiveConnections(), 1);
    // The other connection goes on signing meanwhile.
    auto other = store_->SignDigest(key.key_id, std::string(32, 'o'), Later());
    ASSERT_TRUE(other.ok()) << other.status();

    // Back: re-opened and re-warmed; signing works on both connections
    // without a search.
    injector_->Clear();
    ASSERT_NO_FATAL_FAILURE(WaitForEveryConnection());
    const int warmed = injector_->Calls("C_FindObjects");
    EXPECT_EQ(warmed, finds + 1);  // the warm-up: one key, one search
    EXPECT_THAT(SignOnEveryConnection(key), SizeIs(2));
    EXPECT_EQ(injector_->Calls("C_FindObjects"), warmed);
  }
}

TEST_F(KeyStoreTest, AKeyLoadedWhileAConnectionIsDownIsWarmedWhenItComesBack) {
  ASSERT_NO_FATAL_FAILURE(UseFastRecovery());
  injector_->Fail("Connect", CKR_DEVICE_ERROR, -1);
  {
    auto lease = pool_->Acquire(Later());
    ASSERT_TRUE(lease.ok());
    (void)lease->Check(CKR_DEVICE_ERROR, "C_Sign");
  }
  ASSERT_EQ(pool_->LiveConnections(), 1);
  LoadedKey key = NewEs256();
  const int finds = injector_->Calls("C_FindObjects");
  injector_->Clear();
  ASSERT_NO_FATAL_FAILURE(WaitForEveryConnection());
  // Found by the returning connection's warm-up, before it served...
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds + 1);
  // ...so no signature on it searches.
  EXPECT_THAT(SignOnEveryConnection(key), SizeIs(2));
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds + 1);
  EXPECT_TRUE(pool_->LastWarmUpMiss().ok()) << pool_->LastWarmUpMiss();
}

TEST_F(KeyStoreTest, AWarmUpThatLosesTheConnectionKeepsItDown) {
  ASSERT_NO_FATAL_FAILURE(UseFastRecovery());
  LoadedKey key = NewEs256();
  const int connects = injector_->Connects();
  // Every search fails as on a dead HSM: a re-opened connection cannot warm
  // up, so it does not serve; the other one goes on.
  injector_->Fail("C_FindObjects", CKR_DEVICE_ERROR, -1);
  {
    auto lease = pool_->Acquire(Later());
    ASSERT_TRUE(lease.ok());
    (void)lease->Check(CKR_DEVICE_ERROR, "C_Sign");
  }
  const absl::Time bound = absl::Now() + absl::Seconds(10);
  while (injector_->Connects() < connects + 3 && absl::Now() < bound) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_GE(injector_->Connects(), connects + 3);  // retried
  EXPECT_EQ(pool_->LiveConnections(), 1);
  EXPECT_THAT(pool_->LastError().message(), HasSubstr("warming up"));
  for (int i = 0; i < 4; ++i) {
    auto sig = store_->SignDigest(key.key_id, std::string(32, 'w'), Later());
    ASSERT_TRUE(sig.ok()) << sig.status();
  }
  injector_->Clear();
  ASSERT_NO_FATAL_FAILURE(WaitForEveryConnection());
  EXPECT_THAT(SignOnEveryConnection(key), SizeIs(2));
}

// A second private key planted with a loaded key's id, seen by a
// connection's warm-up: the store answered FAILED_PRECONDITION, the code of
// "not loaded", which the Signer takes for a key revoked while the call
// waited and answers "retry". DATA_LOSS says the token is at fault.
TEST_F(KeyStoreTest, AnIdTwoPrivateKeysShareIsDataLossAtSigning) {
  ASSERT_NO_FATAL_FAILURE(UseFastRecovery());
  LoadedKey key = NewEs256();
  ASSERT_NO_FATAL_FAILURE(PlantDuplicateAndReconnect(key));
  auto sig = store_->SignDigest(key.key_id, std::string(32, 'd'), Later());
  EXPECT_EQ(sig.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(sig.status().message(), HasSubstr("share id"));
  // The reconcile pass hears of it: the key is unusable (an outside attack
  // saw health say SERVING for twelve passes while every signature was
  // refused so).
  auto unusable = store_->LoadedKeysUnusable();
  ASSERT_TRUE(unusable.ok()) << unusable.status();
  EXPECT_THAT(*unusable, UnorderedElementsAre(key.key_id));
  store_->UnloadKey(key.key_id);
  auto after = store_->LoadedKeysUnusable();
  ASSERT_TRUE(after.ok());
  EXPECT_THAT(*after, SizeIs(0));
}

// The duplicate removed before a pass heard of it: the key is found once
// again, so it is not reported (a reload could land on a connection whose
// view is stale and refuse a healthy key), not searched for again, and the
// connections whose warm-up missed it are re-opened, so they sign with it.
TEST_F(KeyStoreTest, AKeyAConnectionMissedButFoundOnceIsKept) {
  ASSERT_NO_FATAL_FAILURE(UseFastRecovery());
  LoadedKey key = NewEs256();
  ASSERT_NO_FATAL_FAILURE(PlantDuplicateAndReconnect(key));
  ASSERT_EQ(store_->SignDigest(key.key_id, std::string(32, 'd'), Later())
                .status()
                .code(),
            absl::StatusCode::kDataLoss);
  {
    // The planted pair (no label) goes; signet's stays.
    auto lease = pool_->Acquire(Later());
    ASSERT_TRUE(lease.ok()) << lease.status();
    for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
      AttributeTemplate templ;
      templ.Ulong(CKA_CLASS, cls).Bytes(CKA_ID, key.key_id);
      std::vector<CK_OBJECT_HANDLE> found;
      ASSERT_EQ(lease->api().FindObjects(lease->session(), templ.data(),
                                         templ.size(), &found),
                CKR_OK);
      ASSERT_THAT(found, SizeIs(2));
      for (CK_OBJECT_HANDLE object : found) {
        CK_ATTRIBUTE label = {CKA_LABEL, nullptr, 0};
        const CK_RV rv =
            lease->api().GetAttributeValue(lease->session(), object, &label, 1);
        if (rv != CKR_OK || label.ulValueLen == 0) {
          ASSERT_EQ(lease->api().DestroyObject(lease->session(), object),
                    CKR_OK);
        }
      }
    }
  }
  auto unusable = store_->LoadedKeysUnusable();
  ASSERT_TRUE(unusable.ok()) << unusable.status();
  EXPECT_THAT(*unusable, SizeIs(0));
  // The connections whose warm-up missed it are re-opened and sign with it
  // again (they refused it with DATA_LOSS until they reconnected for
  // another reason).
  ASSERT_NO_FATAL_FAILURE(WaitForEveryConnection());
  EXPECT_THAT(SignOnEveryConnection(key), SizeIs(pool_options_.connections));
  const int finds = injector_->Calls("C_FindObjects");
  auto after = store_->LoadedKeysUnusable();
  ASSERT_TRUE(after.ok());
  EXPECT_THAT(*after, SizeIs(0));
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds);
}

TEST_F(KeyStoreTest, AKeyGoneFromTheTokenIsReportedAndNotSearchedFor) {
  ASSERT_NO_FATAL_FAILURE(UseFastRecovery());
  LoadedKey key = NewEs256();
  // Destroyed behind the store's back (another writer, say).
  ASSERT_NO_FATAL_FAILURE(DestroyBehindTheStoresBack(*pool_, key.key_id));
  {
    // Both connections re-opened: neither finds the key any more.
    std::vector<std::optional<SessionPool::Lease>> all = HoldEverySession();
    for (std::optional<SessionPool::Lease>& lease : all) {
      (void)lease->Check(CKR_DEVICE_ERROR, "C_Sign");
    }
  }
  ASSERT_NO_FATAL_FAILURE(WaitForEveryConnection());
  EXPECT_EQ(pool_->LastWarmUpMiss().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(pool_->LastWarmUpMiss().message(),
              HasSubstr(absl::BytesToHexString(key.key_id)));
  // NOT_FOUND (not UNAVAILABLE: a retry cannot help), naming what the
  // warm-up found; no search, and no reconnect (a re-opened connection
  // would not find the key either).
  const int finds = injector_->Calls("C_FindObjects");
  const int connects = injector_->Connects();
  for (int i = 0; i < 4; ++i) {
    auto sig = store_->SignDigest(key.key_id, std::string(32, 'g'), Later());
    EXPECT_EQ(sig.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(sig.status().message(), HasSubstr("when it was opened"));
  }
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds);
  EXPECT_EQ(injector_->Connects(), connects);
  EXPECT_EQ(pool_->LiveConnections(), 2);
}

// The reconcile pass asks which loaded keys are gone: the keys that are
// there are read through their cached handles, never searched for; a key
// deleted behind the store's back is reported (and only it), and it stays
// loaded until the caller unloads it.
TEST_F(KeyStoreTest,
       LoadedKeysUnusableReadsHandlesAndReportsOnlyTheDeletedKey) {
  LoadedKey kept = NewEs256();
  LoadedKey deleted = NewEs256();
  int finds = injector_->Calls("C_FindObjects");
  auto none = store_->LoadedKeysUnusable();
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_THAT(*none, SizeIs(0));
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds);
  ASSERT_NO_FATAL_FAILURE(DestroyBehindTheStoresBack(*pool_, deleted.key_id));
  finds = injector_->Calls("C_FindObjects");
  auto gone = store_->LoadedKeysUnusable();
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_THAT(*gone, UnorderedElementsAre(deleted.key_id));
  // One targeted search, for the key whose handle names nothing.
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds + 1);
  // Still signable as far as the store knows: unloading is the caller's.
  EXPECT_TRUE(
      store_->SignDigest(kept.key_id, std::string(32, 'k'), Later()).ok());
  store_->UnloadKey(deleted.key_id);
  auto after = store_->LoadedKeysUnusable();
  ASSERT_TRUE(after.ok());
  EXPECT_THAT(*after, SizeIs(0));
}

TEST_F(KeyStoreTest, LoadedKeysUnusableIsUnavailableWhenTheHsmIs) {
  NewEs256();
  injector_->Fail("C_GetAttributeValue", CKR_DEVICE_ERROR, 1);
  EXPECT_EQ(store_->LoadedKeysUnusable().status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(KeyStoreTest, DestroyDropsTheHandlesAndNoNewConnectionLooksForTheKey) {
  ASSERT_NO_FATAL_FAILURE(UseFastRecovery());
  LoadedKey a = NewEs256();
  LoadedKey b = NewEs256();
  ASSERT_TRUE(store_->DestroyKeyPair(a.key_id).ok());
  {
    std::vector<std::optional<SessionPool::Lease>> all = HoldEverySession();
    ASSERT_THAT(all, SizeIs(pool_->Capacity()));
    for (std::optional<SessionPool::Lease>& lease : all) {
      EXPECT_FALSE(lease->connection().CachedHandle(a.key_id).has_value());
      EXPECT_TRUE(lease->connection().CachedHandle(b.key_id).has_value());
    }
  }
  const int finds = injector_->Calls("C_FindObjects");
  {
    auto lease = pool_->Acquire(Later());
    ASSERT_TRUE(lease.ok());
    (void)lease->Check(CKR_DEVICE_ERROR, "C_Sign");
  }
  ASSERT_NO_FATAL_FAILURE(WaitForEveryConnection());
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds + 1);  // b only
  EXPECT_TRUE(pool_->LastWarmUpMiss().ok()) << pool_->LastWarmUpMiss();
  EXPECT_THAT(SignOnEveryConnection(b), SizeIs(2));
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds + 1);
}

TEST_F(KeyStoreTest, BadDigestAndUnknownKeyAreRefused) {
  LoadedKey key = NewEs256();
  auto short_digest = store_->SignDigest(key.key_id, "short", Later());
  EXPECT_EQ(short_digest.status().code(), absl::StatusCode::kInvalidArgument);
  auto unknown = store_->SignDigest("nope", std::string(32, 'a'), Later());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(KeyStoreTest, DeviceErrorIsUnavailableThenTheLayerRecovers) {
  // One connection, so the next sign must wait for the reconnect.
  ASSERT_NO_FATAL_FAILURE(UseOneConnection());
  LoadedKey key = NewEs256();
  ASSERT_TRUE(
      store_->SignDigest(key.key_id, std::string(32, 'a'), Later()).ok());
  const int connects = injector_->Connects();
  const int finds = injector_->Calls("C_FindObjects");
  injector_->Fail("C_Sign", CKR_DEVICE_ERROR, 1);
  auto failed = store_->SignDigest(key.key_id, std::string(32, 'a'), Later());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  // Next sign: the lost connection is re-established, and its warm-up finds
  // the handles again before it serves (a handle belongs to one connection).
  std::string digest(32, 'z');
  for (int i = 0; i < 4; ++i) {
    auto sig = store_->SignDigest(key.key_id, digest, Later());
    ASSERT_TRUE(sig.ok()) << sig.status();
    EXPECT_TRUE(
        key.public_key
            ->VerifyDigest(SignatureAlgorithm::kEcdsaP256Sha256, digest, *sig)
            .ok());
  }
  EXPECT_GT(injector_->Connects(), connects);
  EXPECT_GT(injector_->Calls("C_FindObjects"), finds);
}

TEST_F(KeyStoreTest, SignDigestsSignsEachDigestAndRefusesOnlyTheBadOnes) {
  LoadedKey key = NewEs256();
  std::vector<std::string> digests;
  for (char c : std::string("abcde")) digests.push_back(std::string(32, c));
  digests[2] = "short";
  auto sigs = store_->SignDigests(key.key_id, digests, Later());
  ASSERT_THAT(sigs, SizeIs(5));
  for (size_t i = 0; i < digests.size(); ++i) {
    if (i == 2) {
      EXPECT_EQ(sigs[i].status().code(), absl::StatusCode::kInvalidArgument);
      continue;
    }
    ASSERT_TRUE(sigs[i].ok()) << i << ": " << sigs[i].status();
    // Each signature is over its own digest, in order.
    EXPECT_TRUE(key.public_key
                    ->VerifyDigest(SignatureAlgorithm::kEcdsaP256Sha256,
                                   digests[i], *sigs[i])
                    .ok())
        << i;
  }
  EXPECT_FALSE(key.public_key
                   ->VerifyDigest(SignatureAlgorithm::kEcdsaP256Sha256,
                                  digests[0], *sigs[1])
                   .ok());
  // Every session went back to the pool.
  std::vector<SessionPool::Lease> all;
  for (int i = 0; i < pool_->Capacity(); ++i) {
    auto lease = pool_->Acquire(absl::Now() + absl::Seconds(1));
    ASSERT_TRUE(lease.ok()) << i << ": " << lease.status();
    all.push_back(*std::move(lease));
  }
}

TEST_F(KeyStoreTest, SignDigestsOfAnUnknownKeyAreRefused) {
  auto sigs = store_->SignDigests(
      "nope", {std::string(32, 'a'), std::string(32, 'b')}, Later());
  ASSERT_THAT(sigs, SizeIs(2));
  EXPECT_EQ(sigs[0].status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(sigs[1].status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(KeyStoreTest, SignDigestsStartsNoSignatureAfterTheDeadline) {
  LoadedKey key = NewEs256();
  const int signs = injector_->Calls("C_Sign");
  auto sigs = store_->SignDigests(
      key.key_id, std::vector<std::string>(3, std::string(32, 'a')),
      absl::Now() - absl::Milliseconds(1));
  ASSERT_THAT(sigs, SizeIs(3));
  for (const auto& sig : sigs) {
    EXPECT_EQ(sig.status().code(), absl::StatusCode::kDeadlineExceeded);
  }
  EXPECT_EQ(injector_->Calls("C_Sign"), signs);
}

TEST_F(KeyStoreTest, SignDigestsGoOnOnAFreshSessionAfterALostConnection) {
  ASSERT_NO_FATAL_FAILURE(UseOneConnection());
  LoadedKey key = NewEs256();
  const int connects = injector_->Connects();
  injector_->Fail("C_Sign", CKR_DEVICE_ERROR, 1);
  const std::vector<std::string> digests(4, std::string(32, 'q'));
  auto sigs = store_->SignDigests(key.key_id, digests, Later());
  ASSERT_THAT(sigs, SizeIs(4));
  EXPECT_EQ(sigs[0].status().code(), absl::StatusCode::kUnavailable);
  for (int i = 1; i < 4; ++i) {
    ASSERT_TRUE(sigs[i].ok()) << i << ": " << sigs[i].status();
    EXPECT_TRUE(key.public_key
                    ->VerifyDigest(SignatureAlgorithm::kEcdsaP256Sha256,
                                   digests[i], *sigs[i])
                    .ok());
  }
  // The rest were signed on the re-established connection.
  EXPECT_GT(injector_->Connects(), connects);
}

TEST_F(KeyStoreTest, TransientReadErrorsAreRetriedABoundedNumberOfTimes) {
  LoadedKey key = NewEs256();
  injector_->Fail("C_FindObjects", CKR_GENERAL_ERROR, 2);
  auto ids = store_->ListKeyIds();
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, UnorderedElementsAre(key.key_id));
  injector_->Fail("C_FindObjects", CKR_TOKEN_NOT_RECOGNIZED, -1);
  EXPECT_EQ(store_->ListKeyIds().status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(KeyStoreTest, RecordsKeepTheHighestGenerationAndReplaceTheOld) {
  LoadedKey key = NewEs256();
  EXPECT_EQ(store_->ReadRecord(key.key_id)->has_value(), false);
  ASSERT_EQ(*store_->WriteRecord(key.key_id, "first"), 1u);
  ASSERT_EQ(*store_->WriteRecord(key.key_id, "second"), 2u);
  auto record = store_->ReadRecord(key.key_id);
  ASSERT_TRUE(record.ok() && record->has_value());
  EXPECT_EQ((*record)->generation, 2u);
  EXPECT_EQ((*record)->bytes, "second");
  // A crash (or a dropped connection) between writing n+1 and destroying n
  // loses nothing, and the write is not reported failed: n+1 is the record
  // (a seventh outside attack saw a revocation in force answered "not
  // completed").
  injector_->Fail("C_DestroyObject", CKR_DEVICE_ERROR, 1);
  auto third = store_->WriteRecord(key.key_id, "third");
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(*third, 3u);
  record = store_->ReadRecord(key.key_id);
  ASSERT_TRUE(record.ok() && record->has_value()) << record.status();
  EXPECT_EQ((*record)->generation, 3u);
  EXPECT_EQ((*record)->bytes, "third");
  auto all = store_->ReadAllRecords();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ(all->at(key.key_id).bytes, "third");
  // The next write cleans up both older generations.
  ASSERT_EQ(*store_->WriteRecord(key.key_id, "fourth"), 4u);
  EXPECT_EQ((*store_->ReadRecord(key.key_id))->bytes, "fourth");
}

// The marker that lets a restart tell a crash between generating and
// recording a key (destroy the key pair) from a record deleted later
// outside signet (keep it).
TEST_F(KeyStoreTest, AGenerationIsUnfinishedUntilTheKeysFirstRecord) {
  EXPECT_THAT(*store_->ListUnfinishedGenerations(), IsEmpty());
  LoadedKey recorded = NewEs256();
  LoadedKey crashed = NewEs256();
  LoadedKey destroyed = NewEs256();
  EXPECT_THAT(
      *store_->ListUnfinishedGenerations(),
      UnorderedElementsAre(recorded.key_id, crashed.key_id, destroyed.key_id));
  ASSERT_TRUE(store_->WriteRecord(recorded.key_id, "rec").ok());
  ASSERT_TRUE(store_->DestroyKeyPair(destroyed.key_id).ok());
  EXPECT_THAT(*store_->ListUnfinishedGenerations(),
              UnorderedElementsAre(crashed.key_id));
  // Later generations of the record do not bring it back, and a record
  // deleted afterwards leaves a key whose generation had finished.
  ASSERT_TRUE(store_->WriteRecord(recorded.key_id, "rec2").ok());
  ASSERT_NO_FATAL_FAILURE(
      DestroyBehindTheStoresBack(*pool_, recorded.key_id, CKO_DATA));
  EXPECT_THAT(*store_->ListUnfinishedGenerations(),
              UnorderedElementsAre(crashed.key_id));
  EXPECT_THAT(*store_->ListKeyIds(),
              UnorderedElementsAre(recorded.key_id, crashed.key_id));
  // The marker is not a record.
  EXPECT_THAT(*store_->ReadAllRecords(), IsEmpty());
}

TEST_F(KeyStoreTest, RecordsAreBinarySafeAndBounded) {
  LoadedKey key = NewEs256();
  std::string binary("\x00\x01\xff\x00zz", 6);
  ASSERT_TRUE(store_->WriteRecord(key.key_id, binary).ok());
  EXPECT_EQ((*store_->ReadRecord(key.key_id))->bytes, binary);
  EXPECT_EQ(
      store_->WriteRecord(key.key_id, std::string(20000, 'x')).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(KeyStoreTest, DestroyRemovesTheKeyPairAndItsRecords) {
  LoadedKey a = NewEs256();
  LoadedKey b = NewEs256();
  ASSERT_TRUE(store_->WriteRecord(a.key_id, "rec-a").ok());
  ASSERT_TRUE(store_->WriteRecord(b.key_id, "rec-b").ok());
  EXPECT_THAT(*store_->ListKeyIds(), UnorderedElementsAre(a.key_id, b.key_id));
  ASSERT_TRUE(store_->DestroyKeyPair(a.key_id).ok());
  EXPECT_THAT(*store_->ListKeyIds(), UnorderedElementsAre(b.key_id));
  EXPECT_EQ(store_->SignDigest(a.key_id, std::string(32, 'a'), Later())
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->LoadKey(a.key_id, a.spec).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(store_->ReadRecord(a.key_id)->has_value());
  EXPECT_EQ((*store_->ReadRecord(b.key_id))->bytes, "rec-b");
  EXPECT_TRUE(store_->SignDigest(b.key_id, std::string(32, 'b'), Later()).ok());
}

// The token's data objects, of any application (what a write check left
// behind would show here).
size_t DataObjects(SessionPool& pool) {
  auto lease = pool.Acquire(Later());
  EXPECT_TRUE(lease.ok()) << lease.status();
  if (!lease.ok()) return 0;
  AttributeTemplate templ;
  templ.Ulong(CKA_CLASS, CKO_DATA);
  std::vector<CK_OBJECT_HANDLE> found;
  EXPECT_EQ(lease->api().FindObjects(lease->session(), templ.data(),
                                     templ.size(), &found),
            CKR_OK);
  return found.size();
}

// A token that takes no writes (here its object directory is immutable, so
// SoftHSM cannot create an object's file) is found by the write check,
// without a key's time having to come; the check leaves nothing behind,
// and clears what an earlier one left (a crash between its two calls).
TEST_F(KeyStoreTest, AWriteCheckSaysWhetherTheTokenTakesWrites) {
  LoadedKey key = NewEs256();
  ASSERT_TRUE(store_->WriteRecord(key.key_id, "rec").ok());
  const size_t before = DataObjects(*pool_);
  ASSERT_TRUE(store_->CheckWritable().ok());
  EXPECT_EQ(DataObjects(*pool_), before);
  {
    // An earlier check's object, left by a crash.
    auto lease = pool_->Acquire(Later());
    ASSERT_TRUE(lease.ok()) << lease.status();
    AttributeTemplate templ;
    templ.Ulong(CKA_CLASS, CKO_DATA)
        .Bool(CKA_TOKEN, true)
        .Bool(CKA_PRIVATE, true)
        .Bytes(CKA_LABEL, "signet-write-check")
        .Bytes(CKA_APPLICATION, "signet-write-check")
        .Bytes(CKA_VALUE, "x");
    CK_OBJECT_HANDLE left = CK_INVALID_HANDLE;
    ASSERT_EQ(lease->api().CreateObject(lease->session(), templ.data(),
                                        templ.size(), &left),
              CKR_OK);
  }
  ASSERT_EQ(DataObjects(*pool_), before + 1);
  ASSERT_TRUE(store_->CheckWritable().ok());
  EXPECT_EQ(DataObjects(*pool_), before);

  std::vector<std::string> token_dirs;
  for (const auto& entry :
       std::filesystem::directory_iterator(token_->tokens_dir())) {
    if (entry.is_directory()) token_dirs.push_back(entry.path());
  }
  ASSERT_THAT(token_dirs, SizeIs(1));
  if (absl::Status set = testing::SetImmutable(token_dirs[0], true);
      !set.ok()) {
    GTEST_SKIP() << "cannot make the token directory immutable here: " << set;
  }
  const absl::Status refused = store_->CheckWritable();
  ASSERT_TRUE(testing::SetImmutable(token_dirs[0], false).ok());
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.message()),
              HasSubstr("C_CreateObject(write check)"));
  EXPECT_TRUE(store_->CheckWritable().ok());
  EXPECT_EQ(DataObjects(*pool_), before);
  EXPECT_EQ((*store_->ReadRecord(key.key_id))->bytes, "rec");
}

}  // namespace
}  // namespace signet::hsm
