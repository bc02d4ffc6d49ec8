// Integration tests of hsm/ through the production boundary: a real
// `p11-kit server` process with SoftHSM2 behind it, reached through
// p11-kit-client.so (docs/architecture.md, "The HSM boundary as it behaves").
//
// Every test has its own temporary token and its own server. Results are
// checked independently of signet's code where that matters: signatures with
// the OpenSSL CLI, attributes with pkcs11-tool, file ownership with stat(2).
// Waits are bounded and generous (a loaded 2-core machine); nothing asserts
// a timing.
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/algorithm.h"
#include "hsm/attributes.h"
#include "hsm/digest.h"
#include "hsm/fault_injection.h"
#include "hsm/key_store.h"
#include "hsm/module.h"
#include "hsm/pin.h"
#include "hsm/public_key.h"
#include "hsm/session_pool.h"
#include "hsm/token_uri.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_token.h"

namespace signet::hsm {
namespace {

using ::signet::testing::LookupUser;
using ::signet::testing::P11KitServer;
using ::signet::testing::P11KitServerOptions;
using ::signet::testing::RunProcess;
using ::signet::testing::RunResult;
using ::signet::testing::SpawnOptions;
using ::signet::testing::TempToken;
using ::signet::testing::TempTokenOptions;
using ::signet::testing::UserIds;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAreArray;

constexpr char kHsmUser[] = "signet-hsm";
constexpr char kServiceUser[] = "signet";
constexpr char kOtherUser[] = "nobody";

// Generous bounds for a loaded 2-core machine. None is asserted as a timing:
// they only keep a broken run from hanging until ctest's timeout.
constexpr absl::Duration kToolTimeout = absl::Seconds(120);
constexpr absl::Duration kSignDeadline = absl::Seconds(5);
constexpr absl::Duration kRecoveryBound = absl::Seconds(60);
constexpr absl::Duration kPollInterval = absl::Milliseconds(200);

// ASSERT_OK for absl::Status / StatusOr (Abseil 20220623 has no matchers).
const absl::Status& StatusOf(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}
#define SIGNET_ASSERT_OK(expr)                          \
  do {                                                  \
    const absl::Status signet_status_ = StatusOf(expr); \
    ASSERT_TRUE(signet_status_.ok()) << signet_status_; \
  } while (false)

std::string Hex(absl::string_view bytes) {
  return absl::BytesToHexString(bytes);
}

std::string Describe(const RunResult& result) {
  return absl::StrCat(
      "exit_code=", result.exit_code, " signal=", result.term_signal,
      " timed_out=", result.timed_out, " output:\n", result.output);
}

// The external programs these tests need. A missing one is a failure that
// says how to fix it, never a skip.
absl::StatusOr<RunResult> RunTool(SpawnOptions options) {
  const std::string program = options.argv.empty() ? "" : options.argv[0];
  absl::StatusOr<RunResult> result =
      RunProcess(std::move(options), kToolTimeout);
  if (!result.ok() && absl::IsNotFound(result.status())) {
    return absl::NotFoundError(absl::StrCat(
        result.status().message(), ": ", program,
        " is required (run scripts/setup as root: it installs openssl, "
        "opensc, softhsm2 and p11-kit)"));
  }
  return result;
}

absl::StatusOr<UserIds> RequireUser(const char* name) {
  absl::StatusOr<UserIds> user = LookupUser(name);
  if (!user.ok() && absl::IsNotFound(user.status())) {
    return absl::NotFoundError(absl::StrCat(
        user.status().message(),
        ": run scripts/setup as root first (it creates the system users "
        "signet-hsm and signet)"));
  }
  return user;
}

absl::Status WriteFile(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// The JWS form r||s of an ECDSA signature as the DER ECDSA-Sig-Value that
// `openssl dgst -verify` expects (RFC 3279 section 2.2.3). Test-only use of
// OpenSSL, independent of signet's own verification.
absl::StatusOr<std::string> EcdsaRawToDer(absl::string_view raw) {
  if (raw.empty() || raw.size() % 2 != 0) {
    return absl::InvalidArgumentError("r||s has an odd length");
  }
  const size_t half = raw.size() / 2;
  const auto* bytes = reinterpret_cast<const unsigned char*>(raw.data());
  BIGNUM* r = BN_bin2bn(bytes, static_cast<int>(half), nullptr);
  BIGNUM* s = BN_bin2bn(bytes + half, static_cast<int>(half), nullptr);
  ECDSA_SIG* sig = ECDSA_SIG_new();
  if (r == nullptr || s == nullptr || sig == nullptr ||
      ECDSA_SIG_set0(sig, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    return absl::InternalError("ECDSA_SIG construction failed");
  }
  unsigned char* der = nullptr;
  const int len = i2d_ECDSA_SIG(sig, &der);
  ECDSA_SIG_free(sig);
  if (len <= 0) return absl::InternalError("i2d_ECDSA_SIG failed");
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

// `openssl dgst -<hash> -verify pub.pem -signature sig data`, run in `dir`
// on files written there: the OpenSSL CLI's verdict, independent of
// PublicKey::VerifyDigest.
absl::StatusOr<RunResult> OpenSslVerify(const std::string& dir,
                                        const std::string& name,
                                        SignatureAlgorithm algorithm,
                                        absl::string_view spki_pem,
                                        absl::string_view data,
                                        absl::string_view jws_signature) {
  std::string sig(jws_signature);
  if (IsEcdsa(algorithm)) {
    SIGNET_ASSIGN_OR_RETURN(sig, EcdsaRawToDer(jws_signature));
  }
  const std::string pub_path = absl::StrCat(dir, "/", name, ".pub.pem");
  const std::string sig_path = absl::StrCat(dir, "/", name, ".sig");
  const std::string data_path = absl::StrCat(dir, "/", name, ".data");
  for (const auto& [path, bytes] :
       {std::pair<std::string, absl::string_view>{pub_path, spki_pem},
        {sig_path, sig},
        {data_path, data}}) {
    SIGNET_RETURN_IF_ERROR(WriteFile(path, bytes));
  }
  SpawnOptions options;
  options.argv = {
      "openssl",
      "dgst",
      algorithm == SignatureAlgorithm::kEcdsaP384Sha384 ? "-sha384" : "-sha256",
      "-verify",
      pub_path,
      "-signature",
      sig_path};
  if (algorithm == SignatureAlgorithm::kRsaPssSha256) {
    for (const char* opt :
         {"rsa_padding_mode:pss", "rsa_pss_saltlen:32", "rsa_mgf1_md:sha256"}) {
      options.argv.push_back("-sigopt");
      options.argv.push_back(opt);
    }
  }
  options.argv.push_back(data_path);
  return RunTool(std::move(options));
}

// Recursively every entry (files and directories) under `dir`.
std::vector<std::string> TreeEntries(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code error;
  for (std::filesystem::recursive_directory_iterator it(dir, error), end;
       !error && it != end; it.increment(error)) {
    out.push_back(it->path().string());
  }
  return out;
}

// Forks, becomes `user` and opens `path` read-only: 0 on success, else the
// errno of open() (or 200+ when the privilege drop failed).
int OpenAsUser(const UserIds& user, const std::string& path) {
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(1, &user.gid) != 0 || setgid(user.gid) != 0) _exit(201);
    if (setuid(user.uid) != 0) _exit(202);
    int fd = open(path.c_str(), O_RDONLY);
    _exit(fd >= 0 ? 0 : errno);
  }
  if (pid < 0) return 203;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 204;
}

// One "Private Key Object" block of `pkcs11-tool --list-objects`.
struct ListedKey {
  std::string label;
  std::string id_hex;
  std::set<std::string> usage;
  std::set<std::string> access;
  std::optional<std::vector<std::string>> allowed_mechanisms;
  std::string text;
};

std::set<std::string> CommaSet(absl::string_view value) {
  std::set<std::string> out;
  for (absl::string_view item : absl::StrSplit(value, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (!item.empty()) out.insert(std::string(item));
  }
  return out;
}

// Parses pkcs11-tool 0.23's object listing:
//   Private Key Object; EC
//     label:      signet:...
//     ID:         0a1b...
//     Usage:      sign
//     Access:     sensitive, always sensitive, never extractable, local
//     Allowed mechanisms: ECDSA
// (the last line only when the tool could read CKA_ALLOWED_MECHANISMS).
std::vector<ListedKey> ParsePrivateKeys(absl::string_view output) {
  std::vector<ListedKey> keys;
  ListedKey* current = nullptr;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    if (!line.empty() && line[0] != ' ' && line[0] != '\t') {
      if (absl::StartsWith(line, "Private Key Object")) {
        keys.emplace_back();
        current = &keys.back();
      } else {
        current = nullptr;
      }
    }
    if (current == nullptr) continue;
    absl::StrAppend(&current->text, line, "\n");
    absl::string_view rest = absl::StripAsciiWhitespace(line);
    const size_t colon = rest.find(':');
    if (colon == absl::string_view::npos) continue;
    absl::string_view name = absl::StripAsciiWhitespace(rest.substr(0, colon));
    absl::string_view value =
        absl::StripAsciiWhitespace(rest.substr(colon + 1));
    if (name == "label") {
      current->label = std::string(value);
    } else if (name == "ID") {
      current->id_hex = absl::AsciiStrToLower(value);
    } else if (name == "Usage") {
      current->usage = CommaSet(value);
    } else if (name == "Access") {
      current->access = CommaSet(value);
    } else if (name == "Allowed mechanisms") {
      std::vector<std::string> mechs;
      for (const std::string& m : CommaSet(value)) mechs.push_back(m);
      current->allowed_mechanisms = mechs;
    }
  }
  return keys;
}

// pkcs11-tool's name for the one mechanism each algorithm allows.
std::string ToolMechanismName(SignatureAlgorithm a) {
  switch (a) {
    case SignatureAlgorithm::kEcdsaP256Sha256:
    case SignatureAlgorithm::kEcdsaP384Sha384:
      return "ECDSA";
    case SignatureAlgorithm::kRsaPkcs1Sha256:
      return "RSA-PKCS";
    case SignatureAlgorithm::kRsaPssSha256:
      return "RSA-PKCS-PSS";
  }
  return "?";
}

struct AlgCase {
  SignatureAlgorithm algorithm;
  int rsa_bits;
  const char* name;
};

void PrintTo(const AlgCase& c, std::ostream* os) { *os << c.name; }

std::string CaseName(const ::testing::TestParamInfo<AlgCase>& info) {
  return info.param.name;
}

// ---------------------------------------------------------------------------
// A fresh token and a real p11-kit server in front of it, per test.

class ThroughServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // docs/architecture.md, "The HSM boundary as it behaves": when the remote
    // side dies the next write raises SIGPIPE, to be ignored process-wide. hsm/
    // does not do it itself (see LosingTheServerDoesNotKillTheProcess), so the
    // tests do it here as signetd would; otherwise the first call after a kill
    // ends the test binary.
    signal(SIGPIPE, SIG_IGN);
    absl::StatusOr<std::unique_ptr<TempToken>> token = TempToken::Create();
    ASSERT_TRUE(token.ok()) << token.status();
    token_ = std::move(*token);
    absl::StatusOr<std::unique_ptr<P11KitServer>> server =
        P11KitServer::Start(*token_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    injector_ = std::make_shared<FaultInjector>();
  }

  void TearDown() override {
    // Users of the server first, then the server, then the token.
    store_.reset();
    pool_.reset();
    server_.reset();
    token_.reset();
  }

  // A pool through the boundary: p11-kit-client.so against this test's
  // server, behind a pass-through FaultInjectingConnector that only counts
  // connects and calls.
  absl::StatusOr<std::unique_ptr<SessionPool>> MakePool(
      SessionPoolOptions options) {
    ModuleOptions module;
    module.module_path = P11KitServer::client_module_path();
    module.p11_kit_server_address = server_->address();
    SIGNET_ASSIGN_OR_RETURN(std::unique_ptr<P11KitConnector> connector,
                            P11KitConnector::Create(module));
    if (connector->in_process()) {
      return absl::InternalError("p11-kit-client.so taken as in-process");
    }
    SIGNET_ASSIGN_OR_RETURN(TokenUri uri, TokenUri::Parse(token_->token_uri()));
    return SessionPool::Create(std::make_unique<FaultInjectingConnector>(
                                   std::move(connector), injector_),
                               std::move(uri),
                               Pin::FromBytes(token_->user_pin()), options);
  }

  void OpenStore(SessionPoolOptions options = {}) {
    absl::StatusOr<std::unique_ptr<SessionPool>> pool = MakePool(options);
    ASSERT_TRUE(pool.ok()) << pool.status() << "\nserver log:\n"
                           << server_->ReadLog();
    pool_ = std::move(*pool);
    store_ = std::make_unique<Pkcs11KeyStore>(pool_.get());
  }

  // Generates and loads a key through the boundary; nullopt on failure (with
  // a test failure recorded).
  std::optional<LoadedKey> NewKey(const KeySpec& spec) {
    absl::StatusOr<std::string> id = store_->GenerateKeyPair(spec);
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return std::nullopt;
    absl::StatusOr<LoadedKey> key = store_->LoadKey(*id, spec);
    EXPECT_TRUE(key.ok()) << key.status();
    if (!key.ok()) return std::nullopt;
    return *key;
  }

  absl::StatusOr<RunResult> Pkcs11ToolThroughServer(
      std::vector<std::string> args, absl::string_view as_user = "") {
    SpawnOptions options;
    options.argv = {"pkcs11-tool", "--module",
                    P11KitServer::client_module_path()};
    options.argv.insert(options.argv.end(), args.begin(), args.end());
    options.env = {{"P11_KIT_SERVER_ADDRESS", server_->address()}};
    options.unset_env = {"SOFTHSM2_CONF"};
    options.as_user = std::string(as_user);
    return RunTool(std::move(options));
  }

  std::unique_ptr<TempToken> token_;
  std::unique_ptr<P11KitServer> server_;
  std::shared_ptr<FaultInjector> injector_;
  std::unique_ptr<SessionPool> pool_;
  std::unique_ptr<Pkcs11KeyStore> store_;
};

absl::Time Deadline() { return absl::Now() + kSignDeadline; }

// ---------------------------------------------------------------------------
// 1. Every algorithm through the boundary, verified by the OpenSSL CLI.

class EveryAlgorithmTest : public ThroughServerTest,
                           public ::testing::WithParamInterface<AlgCase> {};

TEST_P(EveryAlgorithmTest, GeneratesLoadsSignsAndOpenSslVerifies) {
  ASSERT_NO_FATAL_FAILURE(OpenStore());
  const KeySpec spec{GetParam().algorithm, GetParam().rsa_bits};

  SIGNET_ASSERT_OK(store_->CheckAlgorithmSupported(spec));
  absl::StatusOr<std::string> id = store_->GenerateKeyPair(spec);
  ASSERT_TRUE(id.ok()) << id.status();
  // Every load-time check through p11-kit-client: attributes, the
  // preallocated CKA_ALLOWED_MECHANISMS read, the export probe, pairwise.
  absl::StatusOr<LoadedKey> key = store_->LoadKey(*id, spec);
  ASSERT_TRUE(key.ok()) << key.status() << "\nserver log:\n"
                        << server_->ReadLog();
  EXPECT_EQ(key->public_key->is_ec(), IsEcdsa(spec.algorithm));
  EXPECT_EQ(key->public_key->bits(),
            IsEcdsa(spec.algorithm)
                ? static_cast<int>(DigestLength(spec.algorithm) * 8)
                : spec.rsa_bits);

  const std::string data =
      absl::StrCat("eyJhbGciOiJ", GetParam().name, "\"}.eyJzdWIiOiJ0ZXN0In0");
  absl::StatusOr<std::string> digest = DigestFor(spec.algorithm, data);
  SIGNET_ASSERT_OK(digest);
  absl::StatusOr<std::string> sig =
      store_->SignDigest(*id, *digest, Deadline());
  ASSERT_TRUE(sig.ok()) << sig.status();
  if (IsEcdsa(spec.algorithm)) {
    EXPECT_EQ(sig->size(), 2 * DigestLength(spec.algorithm));
  } else {
    EXPECT_EQ(sig->size(), static_cast<size_t>(spec.rsa_bits / 8));
  }
  SIGNET_ASSERT_OK(
      key->public_key->VerifyDigest(spec.algorithm, *digest, *sig));

  absl::StatusOr<std::string> pem = key->public_key->SpkiPem();
  SIGNET_ASSERT_OK(pem);
  absl::StatusOr<RunResult> verified =
      OpenSslVerify(token_->dir(), "good", spec.algorithm, *pem, data, *sig);
  SIGNET_ASSERT_OK(verified);
  EXPECT_TRUE(verified->succeeded()) << Describe(*verified);
  EXPECT_THAT(verified->output, HasSubstr("Verified OK"))
      << Describe(*verified);

  // The CLI is not a rubber stamp: other data fails.
  absl::StatusOr<RunResult> tampered = OpenSslVerify(
      token_->dir(), "bad", spec.algorithm, *pem, data + "x", *sig);
  SIGNET_ASSERT_OK(tampered);
  EXPECT_FALSE(tampered->succeeded()) << Describe(*tampered);
  EXPECT_THAT(tampered->output, Not(HasSubstr("Verified OK")));
}

INSTANTIATE_TEST_SUITE_P(
    All, EveryAlgorithmTest,
    ::testing::Values(
        AlgCase{SignatureAlgorithm::kEcdsaP256Sha256, 0, "ES256"},
        AlgCase{SignatureAlgorithm::kEcdsaP384Sha384, 0, "ES384"},
        AlgCase{SignatureAlgorithm::kRsaPkcs1Sha256, 2048, "RS256_2048"},
        AlgCase{SignatureAlgorithm::kRsaPkcs1Sha256, 3072, "RS256_3072"},
        AlgCase{SignatureAlgorithm::kRsaPkcs1Sha256, 4096, "RS256_4096"},
        AlgCase{SignatureAlgorithm::kRsaPssSha256, 2048, "PS256_2048"}),
    CaseName);

// ---------------------------------------------------------------------------
// 2. The attributes as pkcs11-tool shows them.

TEST_F(ThroughServerTest, Pkcs11ToolShowsEveryKeySensitiveNeverExtractable) {
  ASSERT_NO_FATAL_FAILURE(OpenStore());
  const std::vector<AlgCase> cases = {
      {SignatureAlgorithm::kEcdsaP256Sha256, 0, "ES256"},
      {SignatureAlgorithm::kEcdsaP384Sha384, 0, "ES384"},
      {SignatureAlgorithm::kRsaPkcs1Sha256, 2048, "RS256"},
      {SignatureAlgorithm::kRsaPssSha256, 2048, "PS256"},
  };
  std::map<std::string, AlgCase> expected;  // by hex CKA_ID
  for (const AlgCase& c : cases) {
    std::optional<LoadedKey> key = NewKey({c.algorithm, c.rsa_bits});
    ASSERT_TRUE(key.has_value()) << c.name;
    expected.emplace(Hex(key->key_id), c);
  }

  // Through the boundary, as a client would see it.
  absl::StatusOr<RunResult> listed =
      Pkcs11ToolThroughServer({"--login", "--pin", token_->user_pin(),
                               "--list-objects", "--type", "privkey"});
  SIGNET_ASSERT_OK(listed);
  ASSERT_TRUE(listed->succeeded()) << Describe(*listed);
  const std::vector<ListedKey> keys = ParsePrivateKeys(listed->output);
  ASSERT_EQ(keys.size(), cases.size()) << Describe(*listed);
  std::set<std::string> seen;
  for (const ListedKey& k : keys) {
    auto it = expected.find(k.id_hex);
    ASSERT_NE(it, expected.end()) << "unexpected private key:\n"
                                  << k.text << Describe(*listed);
    seen.insert(k.id_hex);
    SCOPED_TRACE(absl::StrCat(it->second.name, "\n", k.text));
    EXPECT_EQ(k.label,
              Pkcs11KeyStore::LabelFor(absl::HexStringToBytes(k.id_hex)));
    // Each item exactly: "never extractable" contains "extractable", so a
    // substring match would not tell the two apart.
    EXPECT_TRUE(k.access.count("sensitive"));
    EXPECT_TRUE(k.access.count("always sensitive"));
    EXPECT_TRUE(k.access.count("never extractable"));
    EXPECT_TRUE(k.access.count("local"));
    EXPECT_FALSE(k.access.count("extractable"));
    // CKA_DECRYPT, CKA_UNWRAP, CKA_DERIVE are false: signing only.
    EXPECT_EQ(k.usage, std::set<std::string>{"sign"});
    // pkcs11-tool 0.23 asks CKA_ALLOWED_MECHANISMS with a NULL size query,
    // which p11-kit-client answers with CKR_DEVICE_ERROR (docs/architecture.md,
    // "The HSM boundary as it behaves"), so through the boundary it prints a
    // warning and no line; should a later version print it, it must show the
    // one mechanism.
    if (k.allowed_mechanisms.has_value()) {
      EXPECT_EQ(
          *k.allowed_mechanisms,
          std::vector<std::string>{ToolMechanismName(it->second.algorithm)});
    }
  }
  EXPECT_EQ(seen.size(), expected.size());

  // CKA_ALLOWED_MECHANISMS as pkcs11-tool shows it: read-only, from the
  // token files with SoftHSM loaded into pkcs11-tool itself (the server runs
  // as this same user, so its files are readable here). Same keys, same
  // access flags, and exactly the one mechanism of each key's algorithm.
  SpawnOptions direct;
  direct.argv = {"pkcs11-tool",    "--module", TempToken::softhsm_module_path(),
                 "--login",        "--pin",    token_->user_pin(),
                 "--list-objects", "--type",   "privkey"};
  direct.env = {{"SOFTHSM2_CONF", token_->conf_path()}};
  absl::StatusOr<RunResult> direct_listed = RunTool(direct);
  SIGNET_ASSERT_OK(direct_listed);
  ASSERT_TRUE(direct_listed->succeeded()) << Describe(*direct_listed);
  const std::vector<ListedKey> direct_keys =
      ParsePrivateKeys(direct_listed->output);
  ASSERT_EQ(direct_keys.size(), cases.size()) << Describe(*direct_listed);
  for (const ListedKey& k : direct_keys) {
    SCOPED_TRACE(k.text);
    auto it = expected.find(k.id_hex);
    ASSERT_NE(it, expected.end());
    EXPECT_EQ(k.usage, std::set<std::string>{"sign"});
    EXPECT_TRUE(k.access.count("never extractable"));
    EXPECT_FALSE(k.access.count("extractable"));
    ASSERT_TRUE(k.allowed_mechanisms.has_value())
        << "pkcs11-tool printed no \"Allowed mechanisms\" line";
    EXPECT_EQ(
        *k.allowed_mechanisms,
        std::vector<std::string>{ToolMechanismName(it->second.algorithm)});
  }
}

// ---------------------------------------------------------------------------
// 3. Several connections, several keys: every signature is by the key asked.

TEST_F(ThroughServerTest,
       ConcurrentSignaturesAreByTheKeyAskedForOnEveryConnection) {
  SessionPoolOptions options;
  options.connections = 3;
  options.sessions_per_connection = 2;
  ASSERT_NO_FATAL_FAILURE(OpenStore(options));
  ASSERT_EQ(pool_->LiveConnections(), 3) << pool_->LastError();
  EXPECT_EQ(injector_->Connects(), 3);

  std::vector<LoadedKey> keys;
  for (int i = 0; i < 6; ++i) {
    std::optional<LoadedKey> key =
        NewKey({SignatureAlgorithm::kEcdsaP256Sha256});
    ASSERT_TRUE(key.has_value());
    keys.push_back(*key);
  }
  for (int i = 0; i < 2; ++i) {
    std::optional<LoadedKey> key =
        NewKey({SignatureAlgorithm::kRsaPkcs1Sha256, 2048});
    ASSERT_TRUE(key.has_value());
    keys.push_back(*key);
  }

  // Loading found every key's handle on all three connections: from here
  // on, signing never searches, not even a connection's first signature.
  const int finds_after_load = injector_->Calls("C_FindObjects");

  constexpr int kThreads = 6;
  constexpr int kSignsPerThread = 30;
  struct Result {
    size_t key_index;
    std::string digest;
    absl::StatusOr<std::string> signature;
  };
  std::vector<std::vector<Result>> results(kThreads);
  std::vector<std::thread> threads;
  std::atomic<bool> go{false};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < kSignsPerThread; ++i) {
        const size_t k = static_cast<size_t>(t * 5 + i) % keys.size();
        const std::string message = absl::StrCat("thread ", t, " sign ", i);
        absl::StatusOr<std::string> digest =
            DigestFor(keys[k].spec.algorithm, message);
        if (!digest.ok()) {
          results[t].push_back({k, "", digest.status()});
          continue;
        }
        results[t].push_back(
            {k, *digest,
             store_->SignDigest(keys[k].key_id, *digest,
                                absl::Now() + absl::Seconds(30))});
      }
    });
  }
  go = true;
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(injector_->Calls("C_FindObjects"), finds_after_load)
      << "signing searched the token";

  int checked = 0;
  std::vector<int> per_key(keys.size(), 0);
  std::map<std::string, int> failed;  // "key id: status" -> count
  for (const std::vector<Result>& thread_results : results) {
    for (const Result& r : thread_results) {
      const LoadedKey& asked = keys[r.key_index];
      if (!r.signature.ok()) {
        ++failed[absl::StrCat(Hex(asked.key_id), ": ",
                              r.signature.status().ToString())];
        continue;
      }
      EXPECT_TRUE(
          asked.public_key
              ->VerifyDigest(asked.spec.algorithm, r.digest, *r.signature)
              .ok())
          << "signature does not verify with the key asked for, "
          << Hex(asked.key_id);
      for (size_t other = 0; other < keys.size(); ++other) {
        if (other == r.key_index ||
            keys[other].spec.algorithm != asked.spec.algorithm) {
          continue;
        }
        EXPECT_EQ(
            keys[other]
                .public_key
                ->VerifyDigest(asked.spec.algorithm, r.digest, *r.signature)
                .code(),
            absl::StatusCode::kInvalidArgument)
            << "a signature asked of key " << Hex(asked.key_id)
            << " verifies with key " << Hex(keys[other].key_id);
      }
      ++per_key[r.key_index];
      ++checked;
    }
  }
  EXPECT_TRUE(failed.empty())
      << "failed signatures (key: status x count):\n"
      << absl::StrJoin(failed, "\n", absl::PairFormatter(" x "));
  EXPECT_EQ(checked, kThreads * kSignsPerThread);
  for (size_t k = 0; k < keys.size(); ++k) {
    EXPECT_GT(per_key[k], 0) << "key " << k << " was never asked";
  }
  // Each connection is its own p11-kit-remote process with its own SoftHSM
  // instance, which numbers the objects itself: a handle found on one
  // connection means nothing (or another key) on the other. Every
  // connection must find every key exactly once.
  std::map<uint64_t, std::vector<CK_OBJECT_HANDLE>> handles_by_connection;
  {
    std::vector<SessionPool::Lease> leases;
    for (int i = 0; i < pool_->Capacity(); ++i) {
      absl::StatusOr<SessionPool::Lease> lease =
          pool_->Acquire(absl::Now() + absl::Seconds(30));
      ASSERT_TRUE(lease.ok()) << lease.status();
      leases.push_back(std::move(*lease));
    }
    for (SessionPool::Lease& lease : leases) {
      const uint64_t conn = lease.connection().id();
      if (handles_by_connection.count(conn)) continue;
      std::vector<CK_OBJECT_HANDLE>& handles = handles_by_connection[conn];
      for (const LoadedKey& key : keys) {
        AttributeTemplate templ;
        templ.Ulong(CKA_CLASS, CKO_PRIVATE_KEY).Bytes(CKA_ID, key.key_id);
        std::vector<CK_OBJECT_HANDLE> found;
        CK_RV rv = CKR_GENERAL_ERROR;
        // SoftHSM may answer a transient error while it re-reads a token
        // another instance wrote (docs/architecture.md, "The HSM boundary as it
        // behaves"): retry a few times.
        for (int attempt = 0; attempt < 5 && rv != CKR_OK; ++attempt) {
          found.clear();
          rv = lease.api().FindObjects(lease.session(), templ.data(),
                                       templ.size(), &found);
          if (rv != CKR_OK) absl::SleepFor(absl::Milliseconds(50));
        }
        ASSERT_EQ(rv, CKR_OK);
        EXPECT_EQ(found.size(), 1u)
            << "connection " << conn << " does not see key " << Hex(key.key_id)
            << " (generated through another connection)";
        handles.push_back(found.empty() ? CK_INVALID_HANDLE : found[0]);
      }
    }
  }
  EXPECT_EQ(handles_by_connection.size(), 3u);
  for (const auto& [conn, handles] : handles_by_connection) {
    ::testing::Test::RecordProperty(absl::StrCat("handles_connection_", conn),
                                    absl::StrJoin(handles, ","));
  }
  // No connection was lost or re-established.
  EXPECT_EQ(pool_->LiveConnections(), 3);
  EXPECT_EQ(injector_->Connects(), 3);
  // Handles are cached per (connection, key), found when the key was
  // loaded: GenerateKeyPair's uniqueness search, LoadKey's two searches
  // (private and public key) on the connection that checks the key and one
  // on each of the two others, then this test's own one per (connection,
  // key). At most: SoftHSM's transient errors are retried.
  EXPECT_LE(injector_->Calls("C_FindObjects"),
            static_cast<int>(2 * (1 + 2 + 2 + 3) * keys.size()));
}

// ---------------------------------------------------------------------------
// 4. Keys that did not come from our template are refused through the
// boundary.

TEST_F(ThroughServerTest, RefusesAnImportedKeyAndAnExtractableKey) {
  ASSERT_NO_FATAL_FAILURE(OpenStore());
  const std::string imported_id = "imported-key-01";
  const std::string extractable_id = "extractable-key-01";
  {
    absl::StatusOr<SessionPool::Lease> lease =
        pool_->Acquire(absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(lease.ok()) << lease.status();

    // A key made outside the HSM (here by OpenSSL, in the test only) and
    // imported with C_CreateObject: CKA_LOCAL and CKA_ALWAYS_SENSITIVE are
    // false, although the template asks for everything else.
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
    const std::string ec_point =
        std::string("\x04\x41", 2) +
        std::string(reinterpret_cast<char*>(point), point_len);
    const CK_MECHANISM_TYPE ecdsa = CKM_ECDSA;
    const absl::string_view allowed(reinterpret_cast<const char*>(&ecdsa),
                                    sizeof(ecdsa));
    AttributeTemplate priv;
    priv.Ulong(CKA_CLASS, CKO_PRIVATE_KEY)
        .Ulong(CKA_KEY_TYPE, CKK_EC)
        .Bool(CKA_TOKEN, true)
        .Bool(CKA_PRIVATE, true)
        .Bool(CKA_SENSITIVE, true)
        .Bool(CKA_EXTRACTABLE, false)
        .Bool(CKA_SIGN, true)
        .Bytes(CKA_ID, imported_id)
        .Bytes(CKA_LABEL, Pkcs11KeyStore::LabelFor(imported_id))
        .Bytes(CKA_EC_PARAMS, EcParamsDer(SignatureAlgorithm::kEcdsaP256Sha256))
        .Bytes(CKA_VALUE, priv_value)
        .Bytes(CKA_ALLOWED_MECHANISMS, allowed);
    AttributeTemplate pub;
    pub.Ulong(CKA_CLASS, CKO_PUBLIC_KEY)
        .Ulong(CKA_KEY_TYPE, CKK_EC)
        .Bool(CKA_TOKEN, true)
        .Bool(CKA_VERIFY, true)
        .Bytes(CKA_ID, imported_id)
        .Bytes(CKA_LABEL, Pkcs11KeyStore::LabelFor(imported_id))
        .Bytes(CKA_EC_PARAMS, EcParamsDer(SignatureAlgorithm::kEcdsaP256Sha256))
        .Bytes(CKA_EC_POINT, ec_point);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    ASSERT_EQ(lease->api().CreateObject(lease->session(), priv.data(),
                                        priv.size(), &h),
              CKR_OK);
    ASSERT_EQ(
        lease->api().CreateObject(lease->session(), pub.data(), pub.size(), &h),
        CKR_OK);

    // A key generated in the HSM, but sensitive=false and extractable.
    AttributeTemplate gen_pub;
    gen_pub.Bool(CKA_TOKEN, true)
        .Bool(CKA_VERIFY, true)
        .Bytes(CKA_ID, extractable_id)
        .Bytes(CKA_LABEL, Pkcs11KeyStore::LabelFor(extractable_id))
        .Bytes(CKA_EC_PARAMS,
               EcParamsDer(SignatureAlgorithm::kEcdsaP256Sha256));
    AttributeTemplate gen_priv;
    gen_priv.Bool(CKA_TOKEN, true)
        .Bool(CKA_PRIVATE, true)
        .Bool(CKA_SIGN, true)
        .Bool(CKA_SENSITIVE, false)
        .Bool(CKA_EXTRACTABLE, true)
        .Bytes(CKA_ID, extractable_id)
        .Bytes(CKA_LABEL, Pkcs11KeyStore::LabelFor(extractable_id))
        .Bytes(CKA_ALLOWED_MECHANISMS, allowed);
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    CK_OBJECT_HANDLE h1 = CK_INVALID_HANDLE, h2 = CK_INVALID_HANDLE;
    ASSERT_EQ(lease->api().GenerateKeyPair(
                  lease->session(), &mech, gen_pub.data(), gen_pub.size(),
                  gen_priv.data(), gen_priv.size(), &h1, &h2),
              CKR_OK);
  }

  const KeySpec es256{SignatureAlgorithm::kEcdsaP256Sha256};
  absl::StatusOr<LoadedKey> imported = store_->LoadKey(imported_id, es256);
  EXPECT_EQ(imported.status().code(), absl::StatusCode::kFailedPrecondition)
      << imported.status();
  EXPECT_THAT(imported.status().message(), HasSubstr("CKA_ALWAYS_SENSITIVE"));
  EXPECT_THAT(imported.status().message(), HasSubstr(Hex(imported_id)));

  absl::StatusOr<LoadedKey> extractable =
      store_->LoadKey(extractable_id, es256);
  EXPECT_EQ(extractable.status().code(), absl::StatusCode::kFailedPrecondition)
      << extractable.status();
  EXPECT_THAT(extractable.status().message(), HasSubstr("CKA_SENSITIVE"));
  EXPECT_THAT(extractable.status().message(), HasSubstr(Hex(extractable_id)));

  // A refused key never signs, on any connection.
  for (const std::string& id : {imported_id, extractable_id}) {
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(store_->SignDigest(id, std::string(32, 'd'), Deadline())
                    .status()
                    .code(),
                absl::StatusCode::kFailedPrecondition);
    }
  }
  // Both carry signet's label, so they are listed, and a good key beside
  // them is unaffected.
  std::optional<LoadedKey> good = NewKey(es256);
  ASSERT_TRUE(good.has_value());
  absl::StatusOr<std::vector<std::string>> ids = store_->ListKeyIds();
  SIGNET_ASSERT_OK(ids);
  EXPECT_THAT(*ids, UnorderedElementsAreArray(std::vector<std::string>{
                        imported_id, extractable_id, good->key_id}));
  SIGNET_ASSERT_OK(
      store_->SignDigest(good->key_id, std::string(32, 'g'), Deadline()));
}

// ---------------------------------------------------------------------------
// 5. Losing the HSM.

// Signs until it works or `bound` passes; returns the codes seen meanwhile.
struct PollOutcome {
  absl::StatusOr<std::string> signature = absl::UnknownError("never tried");
  std::map<absl::StatusCode, int> failures;
  std::vector<std::string> messages;  // distinct failure messages
  int attempts = 0;
};

PollOutcome SignUntilItWorks(Pkcs11KeyStore& store, const LoadedKey& key,
                             absl::string_view digest, absl::Duration bound) {
  PollOutcome out;
  const absl::Time give_up = absl::Now() + bound;
  for (;;) {
    ++out.attempts;
    out.signature = store.SignDigest(key.key_id, digest, Deadline());
    if (out.signature.ok() || absl::Now() >= give_up) return out;
    ++out.failures[out.signature.status().code()];
    const std::string message(out.signature.status().ToString());
    if (std::find(out.messages.begin(), out.messages.end(), message) ==
        out.messages.end()) {
      out.messages.push_back(message);
    }
    absl::SleepFor(kPollInterval);
  }
}

std::string DescribeOutcome(const PollOutcome& outcome) {
  std::string out = absl::StrCat(outcome.attempts, " attempts; failures:");
  for (const auto& [code, n] : outcome.failures) {
    absl::StrAppend(&out, " ", absl::StatusCodeToString(code), "x", n);
  }
  absl::StrAppend(&out, "\nmessages:\n  ",
                  absl::StrJoin(outcome.messages, "\n  "));
  return out;
}

TEST_F(ThroughServerTest, KilledServerIsUnavailableThenSigningRecovers) {
  SessionPoolOptions options;
  options.connections = 2;
  options.sessions_per_connection = 2;
  ASSERT_NO_FATAL_FAILURE(OpenStore(options));
  // One key: with two keys generated through two connections this test
  // would also hit the multi-connection visibility problem that
  // ConcurrentSignaturesAreByTheKeyAskedForOnEveryConnection pins.
  std::optional<LoadedKey> key = NewKey({SignatureAlgorithm::kEcdsaP256Sha256});
  ASSERT_TRUE(key.has_value());
  const std::string digest(32, 'k');
  // Sign on both connections (LoadKey cached the handles on each).
  for (int i = 0; i < 8; ++i) {
    SIGNET_ASSERT_OK(store_->SignDigest(key->key_id, digest, Deadline()));
  }
  ASSERT_EQ(pool_->LiveConnections(), 2);
  const int connects_before = injector_->Connects();
  const int finds_before = injector_->Calls("C_FindObjects");

  // The whole process group: each connection's p11-kit-remote child too.
  SIGNET_ASSERT_OK(server_->Kill());

  // No crash, no hang: every sign answers UNAVAILABLE before its deadline.
  // Enough calls to hit both connections (CKR_DEVICE_ERROR on each) and
  // then the pool's "every connection is down" answer while it retries.
  for (int i = 0; i < 8; ++i) {
    const absl::Time start = absl::Now();
    absl::StatusOr<std::string> sig =
        store_->SignDigest(key->key_id, digest, start + kSignDeadline);
    EXPECT_EQ(sig.status().code(), absl::StatusCode::kUnavailable)
        << "call " << i << ": " << sig.status() << " after "
        << absl::Now() - start;
    EXPECT_THAT(sig.status().message(), HasSubstr("HSM")) << sig.status();
  }
  // The admin path answers UNAVAILABLE too, never "no keys".
  EXPECT_EQ(store_->ListKeyIds().status().code(),
            absl::StatusCode::kUnavailable);

  SIGNET_ASSERT_OK(server_->Restart());
  // Recovery without LoadKey: the pool reconnects (initialize, login) and
  // each new connection finds the loaded key's handle before it serves.
  PollOutcome outcome = SignUntilItWorks(*store_, *key, digest, kRecoveryBound);
  ASSERT_TRUE(outcome.signature.ok())
      << "no recovery within " << kRecoveryBound << ": "
      << DescribeOutcome(outcome) << "\nserver log:\n"
      << server_->ReadLog();
  for (const auto& [code, n] : outcome.failures) {
    EXPECT_EQ(code, absl::StatusCode::kUnavailable) << DescribeOutcome(outcome);
  }
  SIGNET_ASSERT_OK(key->public_key->VerifyDigest(key->spec.algorithm, digest,
                                                 *outcome.signature));
  EXPECT_GT(injector_->Connects(), connects_before);
  EXPECT_GT(injector_->Calls("C_FindObjects"), finds_before);

  // Both connections come back, and signing works on each of them.
  const absl::Time bound = absl::Now() + kRecoveryBound;
  while (pool_->LiveConnections() < 2 && absl::Now() < bound) {
    absl::SleepFor(kPollInterval);
  }
  EXPECT_EQ(pool_->LiveConnections(), 2) << pool_->LastError();
  for (int i = 0; i < 8; ++i) {
    absl::StatusOr<std::string> sig =
        store_->SignDigest(key->key_id, digest, Deadline());
    ASSERT_TRUE(sig.ok()) << sig.status();
    SIGNET_ASSERT_OK(
        key->public_key->VerifyDigest(key->spec.algorithm, digest, *sig));
  }
}

TEST_F(ThroughServerTest, ServerStoppedForGoodAnswersUnavailableClearly) {
  ASSERT_NO_FATAL_FAILURE(OpenStore());
  std::optional<LoadedKey> key = NewKey({SignatureAlgorithm::kEcdsaP256Sha256});
  ASSERT_TRUE(key.has_value());
  const std::string digest(32, 's');
  SIGNET_ASSERT_OK(store_->SignDigest(key->key_id, digest, Deadline()));

  SIGNET_ASSERT_OK(server_->Kill());
  // Repeatedly, while the pool keeps retrying with backoff in the
  // background: always UNAVAILABLE, always naming the HSM. The first call
  // on each connection reports the lost connection ("C_SignInit:
  // CKR_DEVICE_ERROR (the HSM connection was lost; reconnecting)"); once
  // every connection is down, "HSM unavailable: ...".
  absl::Status last;
  for (int i = 0; i < 15; ++i) {
    absl::StatusOr<std::string> sig =
        store_->SignDigest(key->key_id, digest, Deadline());
    EXPECT_EQ(sig.status().code(), absl::StatusCode::kUnavailable)
        << "call " << i << ": " << sig.status();
    EXPECT_THAT(sig.status().message(), HasSubstr("HSM")) << sig.status();
    last = sig.status();
    absl::SleepFor(kPollInterval);
  }
  EXPECT_THAT(last.message(), HasSubstr("HSM unavailable")) << last;
  EXPECT_EQ(pool_->LiveConnections(), 0);
  // Every other operation too: never "no keys", never "not found".
  EXPECT_EQ(store_->ListKeyIds().status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(store_->LoadKey(key->key_id, key->spec).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(store_->ReadRecord(key->key_id).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(store_->GenerateKeyPair({SignatureAlgorithm::kEcdsaP256Sha256})
                .status()
                .code(),
            absl::StatusCode::kUnavailable);

  // A new pool against the dead socket: p11-kit-client initializes and shows
  // zero slots, which is "HSM unavailable".
  SessionPoolOptions options;
  options.open_attempts = 2;
  absl::StatusOr<std::unique_ptr<SessionPool>> fresh = MakePool(options);
  EXPECT_EQ(fresh.status().code(), absl::StatusCode::kUnavailable)
      << fresh.status();
  EXPECT_THAT(fresh.status().message(), HasSubstr("unavailable"));
}

// ---------------------------------------------------------------------------
// 6. Records and keys live in the token and survive the server.

TEST_F(ThroughServerTest, RecordsAndKeysSurviveAServerRestart) {
  ASSERT_NO_FATAL_FAILURE(OpenStore());
  std::optional<LoadedKey> ec = NewKey({SignatureAlgorithm::kEcdsaP256Sha256});
  ASSERT_TRUE(ec.has_value());
  std::optional<LoadedKey> ps =
      NewKey({SignatureAlgorithm::kRsaPssSha256, 2048});
  ASSERT_TRUE(ps.has_value());

  absl::StatusOr<uint64_t> gen = store_->WriteRecord(ec->key_id, "first");
  SIGNET_ASSERT_OK(gen);
  EXPECT_EQ(*gen, 1u);
  gen = store_->WriteRecord(ec->key_id, "second");
  SIGNET_ASSERT_OK(gen);
  EXPECT_EQ(*gen, 2u);
  gen = store_->WriteRecord(ps->key_id, std::string("\x00\xffps", 4));
  SIGNET_ASSERT_OK(gen);
  EXPECT_EQ(*gen, 1u);
  absl::StatusOr<std::optional<StoredRecord>> record =
      store_->ReadRecord(ec->key_id);
  SIGNET_ASSERT_OK(record);
  ASSERT_TRUE(record->has_value());
  EXPECT_EQ((*record)->generation, 2u);
  EXPECT_EQ((*record)->bytes, "second");

  // The HSM dies under the first "run", which then goes away too.
  SIGNET_ASSERT_OK(server_->Kill());
  store_.reset();
  pool_.reset();
  SIGNET_ASSERT_OK(server_->Restart());

  // A second run sees the same keys and records, and can use the keys.
  ASSERT_NO_FATAL_FAILURE(OpenStore());
  absl::StatusOr<std::vector<std::string>> ids = store_->ListKeyIds();
  SIGNET_ASSERT_OK(ids);
  EXPECT_THAT(*ids, UnorderedElementsAreArray(
                        std::vector<std::string>{ec->key_id, ps->key_id}));
  absl::StatusOr<std::map<std::string, StoredRecord>> all =
      store_->ReadAllRecords();
  SIGNET_ASSERT_OK(all);
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ(all->at(ec->key_id).generation, 2u);
  EXPECT_EQ(all->at(ec->key_id).bytes, "second");
  EXPECT_EQ(all->at(ps->key_id).generation, 1u);
  EXPECT_EQ(all->at(ps->key_id).bytes, std::string("\x00\xffps", 4));

  for (const LoadedKey* before : {&*ec, &*ps}) {
    absl::StatusOr<LoadedKey> again =
        store_->LoadKey(before->key_id, before->spec);
    ASSERT_TRUE(again.ok()) << again.status();
    // The same public key as before the restart.
    EXPECT_EQ(*again->public_key->SpkiDer(), *before->public_key->SpkiDer());
    absl::StatusOr<std::string> digest =
        DigestFor(before->spec.algorithm, "after restart");
    SIGNET_ASSERT_OK(digest);
    absl::StatusOr<std::string> sig =
        store_->SignDigest(before->key_id, *digest, Deadline());
    ASSERT_TRUE(sig.ok()) << sig.status();
    // Verified with the public key of the first run.
    SIGNET_ASSERT_OK(before->public_key->VerifyDigest(before->spec.algorithm,
                                                      *digest, *sig));
  }
  // The next generation continues from the stored one.
  gen = store_->WriteRecord(ec->key_id, "third");
  SIGNET_ASSERT_OK(gen);
  EXPECT_EQ(*gen, 3u);
}

// ---------------------------------------------------------------------------
// 5b. The hsm/ layer itself must survive the HSM's death: the issue puts
// "SIGPIPE ignored" among hsm/'s fault duties, so a process that uses hsm/
// with SIGPIPE's default disposition must not be killed by it.

// Reads one byte from `fd`, waiting at most `timeout`. False on timeout/EOF.
bool ReadByte(int fd, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (absl::Now() < give_up) {
    char c;
    ssize_t n = read(fd, &c, 1);
    if (n == 1) return true;
    if (n == 0) return false;
    if (errno != EINTR && errno != EAGAIN) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

TEST_F(ThroughServerTest, LosingTheServerDoesNotKillTheProcess) {
  int to_parent[2], to_child[2];
  ASSERT_EQ(pipe(to_parent), 0);
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(fcntl(to_parent[0], F_SETFL, O_NONBLOCK), 0);
  // Forked while this process has no other thread: the child is an
  // ordinary single-threaded program that uses hsm/ and never touches
  // SIGPIPE's disposition itself.
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    signal(SIGPIPE, SIG_DFL);
    close(to_parent[0]);
    close(to_child[1]);
    SessionPoolOptions options;
    options.connections = 1;
    absl::StatusOr<std::unique_ptr<SessionPool>> pool = MakePool(options);
    if (!pool.ok()) _exit(10);
    Pkcs11KeyStore store(pool->get());
    const KeySpec spec{SignatureAlgorithm::kEcdsaP256Sha256};
    absl::StatusOr<std::string> id = store.GenerateKeyPair(spec);
    if (!id.ok() || !store.LoadKey(*id, spec).ok()) _exit(11);
    if (!store.SignDigest(*id, std::string(32, 'p'), Deadline()).ok()) {
      _exit(12);
    }
    (void)!write(to_parent[1], "r", 1);  // ready: kill the server now
    char c;
    if (read(to_child[0], &c, 1) != 1) _exit(13);
    for (int i = 0; i < 3; ++i) {
      absl::StatusOr<std::string> sig =
          store.SignDigest(*id, std::string(32, 'p'), Deadline());
      if (sig.status().code() != absl::StatusCode::kUnavailable) _exit(14);
    }
    _exit(0);
  }
  close(to_parent[1]);
  close(to_child[0]);
  const bool ready = ReadByte(to_parent[0], absl::Seconds(120));
  if (ready) {
    EXPECT_TRUE(server_->Kill().ok());
  }
  (void)!write(to_child[1], "k", 1);
  close(to_child[1]);
  close(to_parent[0]);
  int status = 0;
  const absl::Time give_up = absl::Now() + absl::Seconds(120);
  pid_t reaped = 0;
  while ((reaped = waitpid(child, &status, WNOHANG)) == 0 &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  if (reaped == 0) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    FAIL() << "the child using hsm/ hung after the server was killed";
  }
  ASSERT_TRUE(ready) << "the child could not set up a key; status " << status;
  ASSERT_FALSE(WIFSIGNALED(status) && WTERMSIG(status) == SIGPIPE)
      << "a process using hsm/ was killed by SIGPIPE when p11-kit server "
         "died: hsm/ must ignore SIGPIPE (docs/architecture.md, \"The HSM "
         "boundary as it behaves\", losing the HSM)";
  ASSERT_TRUE(WIFEXITED(status))
      << "child killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "exit 14: a sign after the kill did not answer UNAVAILABLE";
}

// ---------------------------------------------------------------------------
// 7. With the service users: keys written through the socket are the HSM
// user's files. (tests/testing/testing_test.cc covers the token and socket
// ownership at start and that other uids see no token; this is about what
// the HSM process writes.)

TEST(ServiceUsersTest, KeysWrittenThroughTheSocketBelongToTheHsmUser) {
  ASSERT_EQ(geteuid(), 0u)
      << "this test switches users (signet-hsm, signet, nobody) and must run "
         "as root";
  signal(SIGPIPE, SIG_IGN);
  absl::StatusOr<UserIds> hsm_user = RequireUser(kHsmUser);
  SIGNET_ASSERT_OK(hsm_user);
  absl::StatusOr<UserIds> service_user = RequireUser(kServiceUser);
  SIGNET_ASSERT_OK(service_user);
  absl::StatusOr<UserIds> other_user = RequireUser(kOtherUser);
  SIGNET_ASSERT_OK(other_user);

  TempTokenOptions token_options;
  token_options.label = "signet-users";
  token_options.owner_user = kHsmUser;
  token_options.pin_file_user = kServiceUser;
  absl::StatusOr<std::unique_ptr<TempToken>> token =
      TempToken::Create(token_options);
  SIGNET_ASSERT_OK(token);
  P11KitServerOptions server_options;
  server_options.run_as_user = kHsmUser;
  server_options.allowed_user = kServiceUser;
  absl::StatusOr<std::unique_ptr<P11KitServer>> server =
      P11KitServer::Start(**token, server_options);
  SIGNET_ASSERT_OK(server);
  const std::string& tokens_dir = (*token)->tokens_dir();
  const std::vector<std::string> before = TreeEntries(tokens_dir);

  auto pkcs11_tool = [&](std::vector<std::string> args,
                         const char* user) -> absl::StatusOr<RunResult> {
    SpawnOptions options;
    options.argv = {"pkcs11-tool", "--module",
                    P11KitServer::client_module_path()};
    options.argv.insert(options.argv.end(), args.begin(), args.end());
    options.env = {{"P11_KIT_SERVER_ADDRESS", (*server)->address()}};
    options.unset_env = {"SOFTHSM2_CONF"};
    options.as_user = user;
    return RunTool(std::move(options));
  };

  // A process of another uid cannot use the socket: no key is made.
  absl::StatusOr<RunResult> as_other = pkcs11_tool(
      {"--login", "--pin", (*token)->user_pin(), "--keypairgen", "--key-type",
       "EC:prime256v1", "--label", "intruder", "--id", "0f"},
      kOtherUser);
  SIGNET_ASSERT_OK(as_other);
  EXPECT_FALSE(as_other->succeeded()) << Describe(*as_other);
  EXPECT_EQ(TreeEntries(tokens_dir), before) << "nobody changed the token";

  // signet generates a key through the socket.
  absl::StatusOr<RunResult> generated =
      pkcs11_tool({"--login", "--pin", (*token)->user_pin(), "--keypairgen",
                   "--key-type", "EC:prime256v1", "--label", "x", "--id", "01"},
                  kServiceUser);
  SIGNET_ASSERT_OK(generated);
  ASSERT_TRUE(generated->succeeded())
      << Describe(*generated) << "\nserver log:\n"
      << (*server)->ReadLog();

  // The HSM process wrote it: new files, every entry signet-hsm's.
  const std::vector<std::string> after = TreeEntries(tokens_dir);
  const std::set<std::string> before_set(before.begin(), before.end());
  int new_objects = 0;
  for (const std::string& path : after) {
    if (!before_set.count(path) && absl::EndsWith(path, ".object")) {
      ++new_objects;
    }
  }
  EXPECT_GE(new_objects, 2) << "no key files appeared (private + public)\n"
                            << absl::StrJoin(after, "\n");
  for (const std::string& path : std::vector<std::string>{tokens_dir}) {
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0) << path;
    EXPECT_EQ(st.st_uid, hsm_user->uid) << path;
    EXPECT_EQ(st.st_mode & 07777, 0700u) << path;
  }
  for (const std::string& path : after) {
    struct stat st;
    ASSERT_EQ(lstat(path.c_str(), &st), 0) << path;
    EXPECT_EQ(st.st_uid, hsm_user->uid) << path;
    EXPECT_EQ(st.st_mode & 0007, 0u) << path << " is world-accessible";
    if (S_ISREG(st.st_mode)) {
      // signet reaches the socket but never the files (with the PIN they
      // would decrypt the keys offline).
      EXPECT_EQ(OpenAsUser(*service_user, path), EACCES) << path;
      EXPECT_EQ(OpenAsUser(*other_user, path), EACCES) << path;
    }
  }

  // The key is visible to a second connection (a new remote process
  // reading what the first wrote), sensitive and never extractable.
  absl::StatusOr<RunResult> listed =
      pkcs11_tool({"--login", "--pin", (*token)->user_pin(), "--list-objects",
                   "--type", "privkey"},
                  kServiceUser);
  SIGNET_ASSERT_OK(listed);
  ASSERT_TRUE(listed->succeeded()) << Describe(*listed);
  const std::vector<ListedKey> keys = ParsePrivateKeys(listed->output);
  ASSERT_EQ(keys.size(), 1u) << Describe(*listed);
  EXPECT_EQ(keys[0].label, "x");
  EXPECT_EQ(keys[0].id_hex, "01");
  EXPECT_TRUE(keys[0].access.count("sensitive")) << keys[0].text;
  EXPECT_TRUE(keys[0].access.count("never extractable")) << keys[0].text;
  EXPECT_FALSE(keys[0].access.count("extractable")) << keys[0].text;

  // nobody cannot list it either, and root (this process, through hsm/) is
  // refused by --user signet: the pool reports the HSM unavailable, never
  // "no keys".
  as_other = pkcs11_tool({"--login", "--pin", (*token)->user_pin(),
                          "--list-objects", "--type", "privkey"},
                         kOtherUser);
  SIGNET_ASSERT_OK(as_other);
  EXPECT_FALSE(as_other->succeeded() &&
               !ParsePrivateKeys(as_other->output).empty())
      << Describe(*as_other);
  ModuleOptions module;
  module.module_path = P11KitServer::client_module_path();
  module.p11_kit_server_address = (*server)->address();
  absl::StatusOr<std::unique_ptr<P11KitConnector>> connector =
      P11KitConnector::Create(module);
  SIGNET_ASSERT_OK(connector);
  absl::StatusOr<TokenUri> uri = TokenUri::Parse((*token)->token_uri());
  SIGNET_ASSERT_OK(uri);
  SessionPoolOptions pool_options;
  pool_options.connections = 1;
  pool_options.open_attempts = 2;
  absl::StatusOr<std::unique_ptr<SessionPool>> as_root =
      SessionPool::Create(std::move(*connector), std::move(*uri),
                          Pin::FromBytes((*token)->user_pin()), pool_options);
  EXPECT_EQ(as_root.status().code(), absl::StatusCode::kUnavailable)
      << as_root.status();
}

}  // namespace
}  // namespace signet::hsm
