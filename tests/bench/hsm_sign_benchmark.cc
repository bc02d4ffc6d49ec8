// Signs per second through hsm/ (Pkcs11KeyStore::SignDigest) against raw
// C_SignInit + C_Sign through the same module and the same boundary, in the
// same run (docs/architecture.md, "The HSM boundary as it behaves", cost per
// call).
//
// One process: a temporary SoftHSM2 token behind a real `p11-kit server`,
// reached through p11-kit-client.so with P11KitConnector, as signetd does.
// Cases: {ES256, RS256} x {1 key, 1,000 keys on the token} x pool layouts
// (C connections x S sessions, run with C*S threads, so every thread has a
// session of its own) x {raw, layer}.
//
//   raw    each thread holds one SessionPool lease for the whole run and
//          calls lease.api().SignInit/Sign with a handle it found once (and,
//          for RS256, a DigestInfo built once): the cost of the boundary
//          alone.
//   layer  each iteration is one Pkcs11KeyStore::SignDigest(key_id, digest,
//          deadline): lease acquire/release, the loaded-key lookup, the
//          cached-handle lookup, the DigestInfo, and the signature copy.
//
// The token first holds only the two measured keys (one ES256, one RS256):
// the "1 key" cases (one key of the algorithm signed with) run then. Before the
// first "1000 keys" case the token is filled with ES256 key pairs through the
// same boundary until it holds 1,000 key pairs, and fresh pools are opened. So
// the 1-key cases must run before the 1000-key ones (the registration order;
// --benchmark_filter is fine,
// --benchmark_enable_random_interleaving is not).
//
// Raw and layer of one case run back to back, --rounds times (default 4,
// each for --benchmark_min_time, default here 0.25 s), and the ratio is the
// median of the per-round ratios: on a shared 2-core machine the load drifts
// by more than the 5-10 % the goals are about, so only neighbouring runs are
// compared.
//
// Every session of every pool signs once with each key before measuring, so
// the numbers are steady state. Printed separately: the one-off cost of a
// handle lookup (C_FindObjects by CKA_ID), and for each pool the LoadKey
// time and the latency of the first signature per (connection, key).
//
// After the run a ratio table says, for each case, layer signs/s over raw
// signs/s and, for the layer, 1000-key over 1-key signs/s, against the goals
// of the HSM layer (overhead under 10 %; 1,000 keys within 5 % of 1 key). The
// table is informational: the exit status is 0 whatever the ratios.
//
// Not run by ctest. Run it with tests/bench/run_hsm_bench [benchmark flags].

#include <p11-kit/pkcs11.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status_macros.h"
#include "benchmark/benchmark.h"
#include "hsm/algorithm.h"
#include "hsm/attributes.h"
#include "hsm/digest.h"
#include "hsm/key_store.h"
#include "hsm/module.h"
#include "hsm/pin.h"
#include "hsm/session_pool.h"
#include "hsm/token_uri.h"
#include "tests/testing/p11kit_server.h"
#include "tests/testing/temp_token.h"

ABSL_FLAG(int, large_token_keys, 1000,
          "Key pairs on the token in the 'many keys' cases (the measured "
          "ES256 and RS256 keys plus ES256 fillers).");
ABSL_FLAG(int, rounds, 4,
          "Times each case runs raw then layer back to back; the ratio is the "
          "median of the rounds (the machine's load drifts).");
ABSL_FLAG(int, max_sessions, 4,
          "Largest number of sessions (= threads): layouts are N connections "
          "x 1 session and 1 connection x N sessions for N = 1, 2, 4, ... up "
          "to this.");

namespace signet::bench {
namespace {

using hsm::KeySpec;
using hsm::Pkcs11KeyStore;
using hsm::SessionPool;
using hsm::SignatureAlgorithm;

constexpr absl::Duration kSetupWait = absl::Seconds(60);
constexpr absl::Duration kSignDeadline = absl::Seconds(10);

enum class Path { kRaw, kLayer };

struct Layout {
  int connections;
  int sessions_per_connection;
  int threads() const { return connections * sessions_per_connection; }
  std::string Name() const {
    return absl::StrCat(connections, "c x ", sessions_per_connection, "s");
  }
  bool operator<(const Layout& o) const {
    return std::tie(connections, sessions_per_connection) <
           std::tie(o.connections, o.sessions_per_connection);
  }
  bool operator==(const Layout& o) const {
    return connections == o.connections &&
           sessions_per_connection == o.sessions_per_connection;
  }
};

const char* AlgName(SignatureAlgorithm a) {
  return a == SignatureAlgorithm::kEcdsaP256Sha256 ? "ES256" : "RS256";
}

KeySpec SpecFor(SignatureAlgorithm a) {
  KeySpec spec;
  spec.algorithm = a;
  spec.rsa_bits = 2048;
  return spec;
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// A pool of one layout with its own key store in which the two measured
// keys passed LoadKey.
struct Target {
  std::unique_ptr<SessionPool> pool;
  std::unique_ptr<Pkcs11KeyStore> store;
  std::map<SignatureAlgorithm, hsm::LoadedKey> keys;
};

// The token, the server and every pool, shared by all benchmark cases.
// Thread-safe: benchmark threads call TargetFor() concurrently before their
// timed loop.
class BenchEnv {
 public:
  static BenchEnv& Get() {
    static BenchEnv* env = new BenchEnv;
    return *env;
  }

  // The pool for `layout` on a token holding `keys` key pairs, created (and
  // the token filled) on first use.
  absl::StatusOr<Target*> TargetFor(Layout layout, int keys) {
    std::lock_guard<std::mutex> lock(mu_);
    SIGNET_RETURN_IF_ERROR(StartLocked());
    // "1 key" is the token as started: the measured key of each algorithm.
    keys = std::max(keys, base_keys_);
    if (keys != token_keys_) {
      if (keys < token_keys_) {
        return absl::FailedPreconditionError(absl::StrCat(
            "a ", keys, "-key case after the token was filled to ", token_keys_,
            " keys: run the small-token cases first (no random "
            "interleaving)"));
      }
      targets_.clear();  // pools for the small token: not used again
      SIGNET_RETURN_IF_ERROR(FillLocked(keys));
    }
    auto it = targets_.find(layout);
    if (it != targets_.end()) return it->second.get();
    SIGNET_ASSIGN_OR_RETURN(std::unique_ptr<Target> t,
                            MakeTargetLocked(layout));
    Target* raw = t.get();
    targets_[layout] = std::move(t);
    return raw;
  }

  const std::string& KeyId(SignatureAlgorithm a) const {
    return key_ids_.at(a);
  }
  const std::string& Digest() const { return digest_; }

  // Facts about the setup for the summary.
  std::vector<std::string> Notes() {
    std::lock_guard<std::mutex> lock(mu_);
    return notes_;
  }

  // Pools before the server, the server before the token.
  void Shutdown() {
    std::lock_guard<std::mutex> lock(mu_);
    targets_.clear();
    admin_store_.reset();
    admin_pool_.reset();
    server_.reset();
    token_.reset();
  }

 private:
  BenchEnv() = default;

  absl::Status StartLocked() {
    if (!start_status_.ok() || token_ != nullptr) return start_status_;
    start_status_ = DoStart();
    return start_status_;
  }

  absl::Status DoStart() {
    const auto t0 = std::chrono::steady_clock::now();
    testing::TempTokenOptions token_options;
    token_options.label = "signet-bench";
    SIGNET_ASSIGN_OR_RETURN(std::unique_ptr<testing::TempToken> token,
                            testing::TempToken::Create(token_options));
    token_ = std::move(token);
    SIGNET_ASSIGN_OR_RETURN(std::unique_ptr<testing::P11KitServer> server,
                            testing::P11KitServer::Start(*token_));
    server_ = std::move(server);

    SIGNET_ASSIGN_OR_RETURN(admin_pool_, MakePool({1, 1}));
    admin_store_ = std::make_unique<Pkcs11KeyStore>(admin_pool_.get());
    for (SignatureAlgorithm a : {SignatureAlgorithm::kEcdsaP256Sha256,
                                 SignatureAlgorithm::kRsaPkcs1Sha256}) {
      SIGNET_RETURN_IF_ERROR(admin_store_->CheckAlgorithmSupported(SpecFor(a)));
      SIGNET_ASSIGN_OR_RETURN(key_ids_[a],
                              admin_store_->GenerateKeyPair(SpecFor(a)));
    }
    token_keys_ = base_keys_ = static_cast<int>(key_ids_.size());
    digest_ = std::string(32, '\0');
    for (size_t i = 0; i < digest_.size(); ++i) {
      digest_[i] = static_cast<char>(i * 7 + 1);
    }
    notes_.push_back(absl::StrFormat(
        "setup: temp token, p11-kit server, ES256 + RS256-2048 keys: %.1f s",
        Seconds(std::chrono::steady_clock::now() - t0)));
    RecordFindCostLocked();
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<SessionPool>> MakePool(Layout layout) {
    hsm::ModuleOptions module;
    module.module_path = testing::P11KitServer::client_module_path();
    module.p11_kit_server_address = server_->address();
    SIGNET_ASSIGN_OR_RETURN(std::unique_ptr<hsm::P11KitConnector> connector,
                            hsm::P11KitConnector::Create(module));
    SIGNET_ASSIGN_OR_RETURN(hsm::TokenUri uri,
                            hsm::TokenUri::Parse(token_->token_uri()));
    hsm::SessionPoolOptions options;
    options.connections = layout.connections;
    options.sessions_per_connection = layout.sessions_per_connection;
    return SessionPool::Create(std::move(connector), std::move(uri),
                               hsm::Pin::FromBytes(token_->user_pin()),
                               options);
  }

  // Fills the token with ES256 key pairs through the boundary until it holds
  // `keys` key pairs (one writer, as Pkcs11KeyStore serializes writes).
  absl::Status FillLocked(int keys) {
    const int fillers = keys - token_keys_;
    const auto t0 = std::chrono::steady_clock::now();
    auto last = t0;
    for (int i = 0; i < fillers; ++i) {
      if ((i + 1) % 100 == 0) {
        const auto now = std::chrono::steady_clock::now();
        std::fprintf(stderr, "filling the token: %d of %d (%.1f ms each)\n",
                     i + 1, fillers, 10.0 * Seconds(now - last));
        last = now;
      }
      absl::StatusOr<std::string> id = admin_store_->GenerateKeyPair(
          SpecFor(SignatureAlgorithm::kEcdsaP256Sha256));
      if (!id.ok()) {
        return absl::Status(id.status().code(),
                            absl::StrCat("filler key ", i + 1, " of ", fillers,
                                         ": ", id.status().message()));
      }
      ++token_keys_;
    }
    const double s = Seconds(std::chrono::steady_clock::now() - t0);
    notes_.push_back(absl::StrFormat(
        "filled the token to %d key pairs: %d ES256 C_GenerateKeyPair "
        "through the boundary in %.1f s (%.1f ms each)",
        keys, fillers, s, fillers > 0 ? 1000.0 * s / fillers : 0.0));
    RecordFindCostLocked();
    return absl::OkStatus();
  }

  // The one-off cost the handle cache saves: finding one key's private key
  // with C_FindObjects on a token of token_keys_ key pairs (median of 9).
  void RecordFindCostLocked() {
    absl::StatusOr<SessionPool::Lease> lease =
        admin_pool_->Acquire(absl::Now() + kSetupWait);
    if (!lease.ok()) return;
    const std::string& id = key_ids_.at(SignatureAlgorithm::kEcdsaP256Sha256);
    std::vector<double> ms;
    for (int i = 0; i < 9; ++i) {
      hsm::AttributeTemplate templ;
      templ.Ulong(CKA_CLASS, CKO_PRIVATE_KEY).Bytes(CKA_ID, id);
      std::vector<CK_OBJECT_HANDLE> found;
      const auto t0 = std::chrono::steady_clock::now();
      CK_RV rv = lease->api().FindObjects(lease->session(), templ.data(),
                                          templ.size(), &found);
      ms.push_back(1000.0 * Seconds(std::chrono::steady_clock::now() - t0));
      if (rv != CKR_OK || found.size() != 1) return;
    }
    std::sort(ms.begin(), ms.end());
    notes_.push_back(absl::StrFormat(
        "one C_FindObjects by CKA_ID on a token of %d key pairs: %.2f ms "
        "(LoadKey pays two, private + public key, on the connection that "
        "checks the key and one on every other connection up; a connection "
        "opened later one per loaded key before it serves; signing none)",
        token_keys_, ms[ms.size() / 2]));
  }

  absl::StatusOr<std::unique_ptr<Target>> MakeTargetLocked(Layout layout) {
    auto target = std::make_unique<Target>();
    SIGNET_ASSIGN_OR_RETURN(std::unique_ptr<SessionPool> pool,
                            MakePool(layout));
    target->pool = std::move(pool);
    target->store = std::make_unique<Pkcs11KeyStore>(target->pool.get());
    std::vector<double> load_ms;
    for (const auto& [alg, id] : key_ids_) {
      const auto t0 = std::chrono::steady_clock::now();
      SIGNET_ASSIGN_OR_RETURN(hsm::LoadedKey key,
                              target->store->LoadKey(id, SpecFor(alg)));
      load_ms.push_back(1000.0 *
                        Seconds(std::chrono::steady_clock::now() - t0));
      target->keys.emplace(alg, std::move(key));
    }
    // Sign once with each key on every session, verified, before measuring:
    // hold all sessions but one, sign on that one, and move on to the next.
    // The first signature per (connection, key) is timed on its own: it is
    // what a signer waits for on a connection that just came up.
    std::vector<double> first_sign_ms;
    std::vector<std::pair<uint64_t, SignatureAlgorithm>> signed_on;
    std::vector<SessionPool::Lease> held;
    held.reserve(target->pool->Capacity());
    for (int i = 0; i < target->pool->Capacity(); ++i) {
      SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease l,
                              target->pool->Acquire(absl::Now() + kSetupWait));
      held.push_back(std::move(l));
    }
    std::vector<SessionPool::Lease> warmed;
    warmed.reserve(held.size());
    while (!held.empty()) {
      const uint64_t connection = held.back().connection().id();
      held.pop_back();  // frees exactly one session
      for (const auto& [alg, key] : target->keys) {
        const bool first =
            std::find(signed_on.begin(), signed_on.end(),
                      std::make_pair(connection, alg)) == signed_on.end();
        const auto t0 = std::chrono::steady_clock::now();
        absl::StatusOr<std::string> sig = target->store->SignDigest(
            key.key_id, digest_, absl::Now() + kSetupWait);
        if (first) {
          first_sign_ms.push_back(
              1000.0 * Seconds(std::chrono::steady_clock::now() - t0));
          signed_on.emplace_back(connection, alg);
        }
        if (!sig.ok()) return sig.status();
        SIGNET_RETURN_IF_ERROR(
            key.public_key->VerifyDigest(alg, digest_, *sig));
      }
      SIGNET_ASSIGN_OR_RETURN(SessionPool::Lease l,
                              target->pool->Acquire(absl::Now() + kSetupWait));
      warmed.push_back(std::move(l));
    }
    std::sort(load_ms.begin(), load_ms.end());
    std::sort(first_sign_ms.begin(), first_sign_ms.end());
    notes_.push_back(absl::StrFormat(
        "%s on a token of %d key pairs: LoadKey %.1f-%.1f ms; first "
        "SignDigest per (connection, key) median %.2f ms, max %.2f ms (%d)",
        layout.Name(), token_keys_, load_ms.front(), load_ms.back(),
        first_sign_ms[first_sign_ms.size() / 2], first_sign_ms.back(),
        static_cast<int>(first_sign_ms.size())));
    return target;
  }

  std::mutex mu_;
  absl::Status start_status_;
  std::unique_ptr<testing::TempToken> token_;
  std::unique_ptr<testing::P11KitServer> server_;
  std::unique_ptr<SessionPool> admin_pool_;
  std::unique_ptr<Pkcs11KeyStore> admin_store_;
  std::map<SignatureAlgorithm, std::string> key_ids_;
  std::string digest_;
  int base_keys_ = 0;   // the measured keys alone
  int token_keys_ = 0;  // key pairs on the token now
  std::map<Layout, std::unique_ptr<Target>> targets_;
  std::vector<std::string> notes_;
};

struct Case {
  SignatureAlgorithm alg;
  int keys;
  Layout layout;
  Path path;
  int round;
};

void Fail(benchmark::State& state, const absl::Status& status) {
  state.SkipWithError(status.ToString().c_str());
}

// Raw C_SignInit + C_Sign on a session this thread holds for the whole run.
void RunRaw(benchmark::State& state, Target& target, const Case& c) {
  BenchEnv& env = BenchEnv::Get();
  absl::StatusOr<SessionPool::Lease> lease =
      target.pool->Acquire(absl::Now() + kSetupWait);
  if (!lease.ok()) {
    Fail(state, lease.status());
    for (auto _ : state) {
    }
    return;
  }
  hsm::Pkcs11Api& api = lease->api();
  const CK_SESSION_HANDLE session = lease->session();

  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  {
    hsm::AttributeTemplate templ;
    templ.Ulong(CKA_CLASS, CKO_PRIVATE_KEY).Bytes(CKA_ID, env.KeyId(c.alg));
    std::vector<CK_OBJECT_HANDLE> found;
    CK_RV rv = api.FindObjects(session, templ.data(), templ.size(), &found);
    if (rv != CKR_OK || found.size() != 1) {
      Fail(state, absl::InternalError(absl::StrCat("raw: C_FindObjects rv=", rv,
                                                   " found=", found.size())));
    } else {
      key = found.front();
    }
  }
  std::string input = env.Digest();
  if (c.alg == SignatureAlgorithm::kRsaPkcs1Sha256) {
    absl::StatusOr<std::string> info = hsm::Sha256DigestInfo(env.Digest());
    if (info.ok()) input = *info;
  }
  const CK_MECHANISM_TYPE mechanism = hsm::SignMechanism(c.alg);
  unsigned char sig[1024];

  // One signature outside the timed loop, verified: the raw path signs with
  // the key the layer uses.
  if (key != CK_INVALID_HANDLE) {
    CK_MECHANISM mech = {mechanism, nullptr, 0};
    CK_ULONG sig_len = sizeof(sig);
    CK_RV rv = api.SignInit(session, &mech, key);
    if (rv == CKR_OK) {
      rv = api.Sign(session,
                    reinterpret_cast<const unsigned char*>(input.data()),
                    input.size(), sig, &sig_len);
    }
    absl::Status v =
        rv != CKR_OK ? absl::InternalError(absl::StrCat("raw: C_Sign rv=", rv))
                     : target.keys.at(c.alg).public_key->VerifyDigest(
                           c.alg, env.Digest(),
                           absl::string_view(reinterpret_cast<const char*>(sig),
                                             sig_len));
    if (!v.ok()) Fail(state, v);
  }

  for (auto _ : state) {
    CK_MECHANISM mech = {mechanism, nullptr, 0};
    CK_ULONG sig_len = sizeof(sig);
    CK_RV rv = api.SignInit(session, &mech, key);
    if (rv == CKR_OK) {
      rv = api.Sign(session,
                    reinterpret_cast<const unsigned char*>(input.data()),
                    input.size(), sig, &sig_len);
    }
    if (rv != CKR_OK) {
      Fail(state, absl::InternalError(absl::StrCat("raw: rv=", rv)));
      break;
    }
    benchmark::DoNotOptimize(sig);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}

// One Pkcs11KeyStore::SignDigest per iteration, as the signing service calls
// it (a fresh deadline each time).
void RunLayer(benchmark::State& state, Target& target, const Case& c) {
  BenchEnv& env = BenchEnv::Get();
  const std::string& key_id = env.KeyId(c.alg);
  const std::string& digest = env.Digest();
  for (auto _ : state) {
    absl::StatusOr<std::string> sig =
        target.store->SignDigest(key_id, digest, absl::Now() + kSignDeadline);
    if (!sig.ok()) {
      Fail(state, sig.status());
      break;
    }
    benchmark::DoNotOptimize(sig->data());
  }
  state.SetItemsProcessed(state.iterations());
}

void RunCase(benchmark::State& state, Case c) {
  absl::StatusOr<Target*> target = BenchEnv::Get().TargetFor(c.layout, c.keys);
  if (!target.ok()) {
    Fail(state, target.status());
    for (auto _ : state) {
    }
    return;
  }
  if (c.path == Path::kRaw) {
    RunRaw(state, **target, c);
  } else {
    RunLayer(state, **target, c);
  }
}

std::string CaseName(const Case& c) {
  return absl::StrCat(
      AlgName(c.alg), "/keys:", c.keys, "/conn:", c.layout.connections,
      "/sess:", c.layout.sessions_per_connection, "/round:", c.round, "/",
      c.path == Path::kRaw ? "raw" : "layer");
}

// Collects items_per_second per case and round while printing as usual.
class CollectingReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.run_type != Run::RT_Iteration) continue;
      Result& r = results_[run.run_name.function_name];
      if (run.error_occurred) {
        r.error = run.error_message;
        continue;
      }
      auto ips = run.counters.find("items_per_second");
      if (ips == run.counters.end()) continue;
      r.sum += ips->second.value;
      ++r.count;
    }
  }

  // Mean signs/s of one case and round over its repetitions; <0 when it
  // did not run.
  double Rate(const Case& c) const {
    auto it = results_.find(CaseName(c));
    if (it == results_.end() || it->second.count == 0) return -1;
    return it->second.sum / it->second.count;
  }
  std::vector<std::string> Errors() const {
    std::vector<std::string> out;
    for (const auto& [name, r] : results_) {
      if (!r.error.empty()) out.push_back(absl::StrCat(name, ": ", r.error));
    }
    return out;
  }

 private:
  struct Result {
    double sum = 0;
    int count = 0;
    std::string error;
  };
  std::map<std::string, Result> results_;
};

std::vector<Layout> Layouts(int max_sessions) {
  std::vector<Layout> out;
  for (int n = 1; n <= max_sessions; n *= 2) {
    out.push_back({n, 1});
    if (n > 1) out.push_back({1, n});
  }
  return out;
}

// "-" for a value that is missing, else `v` with `decimals` decimals.
std::string Fmt(double v, int decimals) {
  return v < 0 ? std::string("-") : absl::StrFormat("%.*f", decimals, v);
}

const char* Verdict(double ratio, double goal) {
  if (ratio < 0) return "n/a";
  return ratio >= goal ? "meets" : "MISSES";
}

double Median(std::vector<double> v) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Signs/s of raw and layer for one (alg, keys, layout), over the rounds.
struct Pair {
  double raw = -1;             // mean over rounds
  double layer = -1;           // mean over rounds
  std::vector<double> ratios;  // layer / raw of each round (back to back)
  double Ratio() const { return Median(ratios); }
  std::string Spread() const {
    if (ratios.size() < 2) return "";
    auto [lo, hi] = std::minmax_element(ratios.begin(), ratios.end());
    return absl::StrFormat("%.2f-%.2f", *lo, *hi);
  }
};

Pair Collect(const CollectingReporter& reporter, SignatureAlgorithm alg,
             int keys, Layout layout, int rounds) {
  Pair p;
  double raw_sum = 0, layer_sum = 0;
  int raw_n = 0, layer_n = 0;
  for (int r = 1; r <= rounds; ++r) {
    const double raw = reporter.Rate({alg, keys, layout, Path::kRaw, r});
    const double layer = reporter.Rate({alg, keys, layout, Path::kLayer, r});
    if (raw >= 0) raw_sum += raw, ++raw_n;
    if (layer >= 0) layer_sum += layer, ++layer_n;
    if (raw > 0 && layer >= 0) p.ratios.push_back(layer / raw);
  }
  if (raw_n > 0) p.raw = raw_sum / raw_n;
  if (layer_n > 0) p.layer = layer_sum / layer_n;
  return p;
}

void PrintTable(const CollectingReporter& reporter, int large_keys,
                const std::vector<Layout>& layouts, int rounds) {
  constexpr double kOverheadGoal = 0.90;  // layer >= 90 % of raw
  constexpr double kKeysGoal = 0.95;      // many keys >= 95 % of one key
  const SignatureAlgorithm algs[] = {SignatureAlgorithm::kEcdsaP256Sha256,
                                     SignatureAlgorithm::kRsaPkcs1Sha256};

  std::printf(
      "\n== hsm/ sign throughput: layer (Pkcs11KeyStore::SignDigest) vs raw "
      "C_SignInit+C_Sign, same module (p11-kit-client.so -> p11-kit server "
      "-> SoftHSM2), same run ==\n");
  std::printf(
      "Goals: the layer's overhead under 10 %% (layer/raw >= "
      "%.2f); with %d keys on the token within 5 %% of 1 key (%d/1 >= "
      "%.2f).\nInformational only: the exit status does not depend on "
      "them. Threads = sessions = connections x sessions per connection.\n"
      "Each case ran raw and layer back to back, %d round(s); layer/raw is "
      "the median of the per-round ratios (range in brackets), signs/s are "
      "means.\n\n",
      kOverheadGoal, large_keys, large_keys, kKeysGoal, rounds);

  std::printf("-- layer / raw --\n");
  std::printf("%-6s %5s %-7s %3s %9s %9s %9s %-11s %8s  %s\n", "alg", "keys",
              "layout", "thr", "raw/s", "layer/s", "layer/raw", "(range)",
              "overhead", "goal <10%");
  for (SignatureAlgorithm a : algs) {
    for (int keys : {1, large_keys}) {
      for (const Layout& l : layouts) {
        const Pair p = Collect(reporter, a, keys, l, rounds);
        if (p.raw < 0 && p.layer < 0) continue;
        const double ratio = p.Ratio();
        std::printf("%-6s %5d %-7s %3d %9s %9s %9s %-11s %8s  %s\n", AlgName(a),
                    keys, l.Name().c_str(), l.threads(), Fmt(p.raw, 0).c_str(),
                    Fmt(p.layer, 0).c_str(), Fmt(ratio, 3).c_str(),
                    p.Spread().empty() ? "" : ("(" + p.Spread() + ")").c_str(),
                    ratio < 0
                        ? "-"
                        : absl::StrFormat("%+.1f%%", (1 - ratio) * 100).c_str(),
                    Verdict(ratio, kOverheadGoal));
      }
    }
  }

  std::printf("\n-- %d keys / 1 key on the token --\n", large_keys);
  std::printf("%-6s %-7s %3s %9s %9s %9s  %-10s %8s %15s\n", "alg", "layout",
              "thr", "layer 1", "layer N", "layer N/1", "goal >=.95", "raw N/1",
              "(l/r N)/(l/r 1)");
  for (SignatureAlgorithm a : algs) {
    for (const Layout& l : layouts) {
      const Pair one = Collect(reporter, a, 1, l, rounds);
      const Pair many = Collect(reporter, a, large_keys, l, rounds);
      if (one.layer < 0 && many.layer < 0) continue;
      const double ratio =
          one.layer > 0 && many.layer >= 0 ? many.layer / one.layer : -1;
      const double raw_ratio =
          one.raw > 0 && many.raw >= 0 ? many.raw / one.raw : -1;
      const double layer_share = one.Ratio() > 0 && many.Ratio() >= 0
                                     ? many.Ratio() / one.Ratio()
                                     : -1;
      std::printf("%-6s %-7s %3d %9s %9s %9s  %-10s %8s %15s\n", AlgName(a),
                  l.Name().c_str(), l.threads(), Fmt(one.layer, 0).c_str(),
                  Fmt(many.layer, 0).c_str(), Fmt(ratio, 3).c_str(),
                  Verdict(ratio, kKeysGoal), Fmt(raw_ratio, 3).c_str(),
                  Fmt(layer_share, 3).c_str());
    }
  }
  std::printf(
      "(layer 1 / layer N: signs/s with 1 and %d keys on the token. raw N/1 "
      "is what the HSM itself does with more objects; (l/r N)/(l/r 1) is the "
      "part of N/1 due to hsm/, with the HSM's and the machine's drift "
      "divided out.)\n",
      large_keys);
}

}  // namespace
}  // namespace signet::bench

int main(int argc, char** argv) {
  using signet::bench::BenchEnv;
  using signet::bench::Case;
  using signet::bench::Layout;
  using signet::bench::Path;
  using signet::hsm::SignatureAlgorithm;

  // Short runs, many rounds: a shorter --benchmark_min_time than the
  // library's 0.5 s unless one is given.
  std::vector<char*> args(argv, argv + argc);
  std::string default_min_time = "--benchmark_min_time=0.25";
  if (std::none_of(args.begin(), args.end(), [](const char* a) {
        return absl::string_view(a).substr(0, 20) == "--benchmark_min_time";
      })) {
    args.insert(args.begin() + 1, default_min_time.data());
  }
  args.push_back(nullptr);
  argc = static_cast<int>(args.size()) - 1;
  argv = args.data();
  benchmark::Initialize(&argc, argv);
  absl::ParseCommandLine(argc, argv);
  const int large_keys = std::max(3, absl::GetFlag(FLAGS_large_token_keys));
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  const std::vector<Layout> layouts =
      signet::bench::Layouts(std::max(1, absl::GetFlag(FLAGS_max_sessions)));

  // Registration order is run order: every 1-key case before the token is
  // filled; within a case raw and layer alternate, round after round, so
  // both see the same machine.
  for (int keys : {1, large_keys}) {
    for (SignatureAlgorithm alg : {SignatureAlgorithm::kEcdsaP256Sha256,
                                   SignatureAlgorithm::kRsaPkcs1Sha256}) {
      for (const Layout& layout : layouts) {
        for (int round = 1; round <= rounds; ++round) {
          for (Path path : {Path::kRaw, Path::kLayer}) {
            const Case c{alg, keys, layout, path, round};
            benchmark::RegisterBenchmark(signet::bench::CaseName(c).c_str(),
                                         signet::bench::RunCase, c)
                ->Threads(layout.threads())
                ->UseRealTime()
                ->Unit(benchmark::kMicrosecond);
          }
        }
      }
    }
  }

  const auto t0 = std::chrono::steady_clock::now();
  signet::bench::CollectingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  const double total =
      signet::bench::Seconds(std::chrono::steady_clock::now() - t0);

  signet::bench::PrintTable(reporter, large_keys, layouts, rounds);
  std::printf("\n-- setup --\n");
  for (const std::string& note : BenchEnv::Get().Notes()) {
    std::printf("%s\n", note.c_str());
  }
  std::printf("whole run: %.1f s\n", total);
  for (const std::string& e : reporter.Errors()) {
    std::printf("ERROR %s\n", e.c_str());
  }
  std::fflush(stdout);
  BenchEnv::Get().Shutdown();
  benchmark::Shutdown();
  return 0;
}
