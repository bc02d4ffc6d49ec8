#include "server/publication.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jose/jwk.h"
#include "rotation/key_state.h"
#include "server/serving_publisher.h"

#ifndef SIGNET_GOLDEN_DIR
#error "SIGNET_GOLDEN_DIR must name tests/golden/publication"
#endif

namespace signet::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The test keys activate at kActivated (NewActiveKeyRecord's default
// schedule: active 30 days, published 2 hours more); documents are built an
// hour later unless a test says otherwise.
const absl::Time kActivated = absl::FromUnixSeconds(1'800'000'000);
const absl::Time kNow = kActivated + absl::Hours(1);

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::shared_ptr<const ScopeState> Version(
    const std::string& name, signet::v1::AudienceClass cls,
    signet::v1::Purpose purpose, signet::v1::Algorithm alg,
    const std::string& key_file, bool revoked = false,
    absl::Time activated = kActivated, uint64_t generation = 1) {
  signet::v1::ScopeConfig config;
  config.set_name(name);
  config.set_audience_class(cls);
  config.set_purpose(purpose);
  config.set_issuer("https://" + name + ".signet.test");
  config.set_algorithm(alg);
  auto key = hsm::PublicKey::FromSpkiPem(
      Read(std::string(SIGNET_GOLDEN_DIR) + "/keys/" + key_file));
  EXPECT_TRUE(key.ok()) << key.status();
  hsm::LoadedKey loaded;
  loaded.key_id = name;
  loaded.public_key = std::make_shared<const hsm::PublicKey>(std::move(*key));
  rotation::KeyRecord record = rotation::NewActiveKeyRecord(
      name, absl::StrCat("0", generation),
      alg == signet::v1::RS256 ? "RS256" : "ES256", 0, activated, {});
  record.set_key_generation(generation);
  // As rotation/ records it when it generates the key.
  record.set_kid(*jose::JwkThumbprint(loaded.public_key->get()));
  if (revoked) {
    *record.mutable_revocation()->mutable_revoked_at() =
        rotation::TimeToProto(kActivated + absl::Hours(3));
  }
  auto state = MakeScopeState(config, record, loaded);
  EXPECT_TRUE(state.ok()) << state.status();
  return *state;
}

std::shared_ptr<const ScopeKeys> Keys(
    std::vector<std::shared_ptr<const ScopeState>> versions) {
  std::vector<rotation::KeyRecord> records;
  for (const auto& v : versions) records.push_back(v->record);
  return std::make_shared<const ScopeKeys>(
      versions[0]->config, versions[0]->alg, std::move(records), versions,
      rotation::KeyTimings{}, kNow);
}

std::shared_ptr<const ScopeKeys> Scope(const std::string& name,
                                       signet::v1::AudienceClass cls,
                                       signet::v1::Purpose purpose,
                                       signet::v1::Algorithm alg,
                                       const std::string& key_file,
                                       bool revoked = false) {
  return Keys({Version(name, cls, purpose, alg, key_file, revoked)});
}

std::map<std::string, std::shared_ptr<const ScopeKeys>> Scopes() {
  using signet::v1::CONSUMER;
  using signet::v1::ENTERPRISE;
  return {
      {"consumer-a", Scope("consumer-a", CONSUMER, signet::v1::JWT,
                           signet::v1::ES256, "ec-00.pem")},
      {"consumer-b", Scope("consumer-b", CONSUMER, signet::v1::JWT,
                           signet::v1::ES256, "ec-01.pem")},
      {"enterprise", Scope("enterprise", ENTERPRISE, signet::v1::JWT,
                           signet::v1::RS256, "rsa-00.pem")},
      {"raw", Scope("raw", ENTERPRISE, signet::v1::RAW, signet::v1::ES256,
                    "ec-02.pem")},
  };
}

TEST(PublicationTest, ClassesNeverMixAndRawKeysAreNeverJwks) {
  auto scopes = Scopes();
  auto docs = BuildPublishedDocuments(scopes, "https://keys.signet.test", kNow);
  ASSERT_TRUE(docs.ok()) << docs.status();
  const std::string& a = scopes["consumer-a"]->versions()[0]->kid;
  const std::string& b = scopes["consumer-b"]->versions()[0]->kid;
  const std::string& e = scopes["enterprise"]->versions()[0]->kid;
  const std::string& r = scopes["raw"]->versions()[0]->kid;
  EXPECT_THAT(docs->consumer_jwks, HasSubstr(a));
  EXPECT_THAT(docs->consumer_jwks, HasSubstr(b));
  EXPECT_THAT(docs->consumer_jwks, Not(HasSubstr(e)));
  EXPECT_THAT(docs->enterprise_jwks, HasSubstr(e));
  EXPECT_THAT(docs->enterprise_jwks, Not(HasSubstr(a)));
  for (const std::string* doc :
       {&docs->consumer_jwks, &docs->enterprise_jwks}) {
    EXPECT_THAT(*doc, Not(HasSubstr(r)));
  }
  EXPECT_EQ(docs->scope_jwks.count("raw"), 0u);
  EXPECT_EQ(docs->scope_discovery.count("raw"), 0u);
  EXPECT_THAT(docs->scope_keys_pem["raw"], HasSubstr("BEGIN PUBLIC KEY"));
  // Each issuer is bound to its own scope's set, not to the class set.
  EXPECT_THAT(docs->scope_jwks["consumer-a"], HasSubstr(a));
  EXPECT_THAT(docs->scope_jwks["consumer-a"], Not(HasSubstr(b)));
  EXPECT_THAT(
      docs->scope_discovery["consumer-a"],
      HasSubstr(
          R"("jwks_uri":"https://keys.signet.test/scopes/consumer-a/.well-known/jwks.json")"));
  EXPECT_THAT(docs->scope_discovery["consumer-a"],
              HasSubstr(R"("issuer":"https://consumer-a.signet.test")"));
}

TEST(PublicationTest, WithoutABaseUrlThereIsNoDiscovery) {
  auto docs = BuildPublishedDocuments(Scopes(), "", kNow);
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_THAT(docs->scope_discovery, ::testing::IsEmpty());
  EXPECT_EQ(docs->scope_jwks.size(), 3u);
  EXPECT_EQ(BuildPublishedDocuments(Scopes(), "https://k.test/", kNow)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// A key is published while PENDING, ACTIVE and RETIRED, and leaves every
// set (its scope's, its class's, its PEM document) once UNPUBLISHED or
// REVOKED.
TEST(PublicationTest, KeysLeaveTheSetsWhenTheirStateSaysSo) {
  auto scopes = Scopes();
  const std::string a = scopes["consumer-a"]->versions()[0]->kid;
  const std::string e = scopes["enterprise"]->versions()[0]->kid;
  struct Case {
    absl::Time at;
    bool published;
  };
  const Case cases[] = {
      {kActivated - absl::Hours(1), true},             // PENDING
      {kActivated + absl::Hours(24), true},            // ACTIVE
      {kActivated + absl::Hours(24 * 30), true},       // RETIRED
      {kActivated + absl::Hours(24 * 30 + 2), false},  // UNPUBLISHED
      {kActivated + absl::Hours(24 * 30 + 2) - absl::Nanoseconds(1), true},
      {kActivated + absl::Hours(24 * 40), false},  // DESTROYED
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::FormatTime(c.at));
    auto docs = BuildPublishedDocuments(scopes, "https://k.test", c.at);
    ASSERT_TRUE(docs.ok()) << docs.status();
    EXPECT_EQ(absl::StrContains(docs->consumer_jwks, a), c.published);
    EXPECT_EQ(absl::StrContains(docs->scope_jwks["consumer-a"], a),
              c.published);
    EXPECT_EQ(absl::StrContains(docs->enterprise_jwks, e), c.published);
    EXPECT_EQ(docs->scope_keys_pem["raw"].empty(), !c.published);
    if (!c.published) {
      EXPECT_EQ(docs->scope_jwks["consumer-a"], R"({"keys":[]})");
      // Discovery stays: the issuer still exists, its set is just empty.
      EXPECT_EQ(docs->scope_discovery.count("consumer-a"), 1u);
    }
  }
  // A revoked key is out whatever its schedule, and even at an instant
  // before its recorded revocation (a clock set back does not bring it
  // back).
  std::map<std::string, std::shared_ptr<const ScopeKeys>> revoked = {
      {"consumer-a", Scope("consumer-a", signet::v1::CONSUMER, signet::v1::JWT,
                           signet::v1::ES256, "ec-00.pem", /*revoked=*/true)}};
  auto before = BuildPublishedDocuments(revoked, "https://k.test",
                                        kActivated + absl::Hours(2));
  auto after = BuildPublishedDocuments(revoked, "https://k.test",
                                       kActivated + absl::Hours(3));
  ASSERT_TRUE(before.ok() && after.ok());
  EXPECT_THAT(before->consumer_jwks, Not(HasSubstr(a)));
  EXPECT_THAT(after->consumer_jwks, Not(HasSubstr(a)));
  EXPECT_EQ(revoked["consumer-a"]->SigningAt(kActivated + absl::Hours(2)),
            nullptr);
}

// A wall clock set forward past a retired key's grace does not withdraw
// it: while the time really seen pass (`seen`) is inside the grace, its
// tokens may still be valid, and it stays in every set; a revoked key
// stays out whatever either time says (a fifteenth outside attack: a
// relying party lost the key that had signed seconds before).
TEST(PublicationTest, AClockSetForwardDoesNotWithdrawAKeyBeforeItsTime) {
  auto scopes = Scopes();
  const std::string a = scopes["consumer-a"]->versions()[0]->kid;
  const absl::Time retired = kActivated + absl::Hours(24 * 30);
  const absl::Time unpublished = kActivated + absl::Hours(24 * 30 + 2);
  auto ahead = BuildPublishedDocuments(scopes, "https://k.test", unpublished,
                                       /*seen=*/retired);
  ASSERT_TRUE(ahead.ok()) << ahead.status();
  EXPECT_THAT(ahead->consumer_jwks, HasSubstr(a));
  EXPECT_THAT(ahead->scope_jwks["consumer-a"], HasSubstr(a));
  EXPECT_THAT(ahead->scope_keys_pem["raw"], HasSubstr("BEGIN PUBLIC KEY"));
  // Its time has really passed: out.
  auto passed = BuildPublishedDocuments(scopes, "https://k.test", unpublished,
                                        /*seen=*/unpublished);
  ASSERT_TRUE(passed.ok()) << passed.status();
  EXPECT_THAT(passed->consumer_jwks, Not(HasSubstr(a)));
  std::map<std::string, std::shared_ptr<const ScopeKeys>> revoked = {
      {"consumer-a", Scope("consumer-a", signet::v1::CONSUMER, signet::v1::JWT,
                           signet::v1::ES256, "ec-00.pem", /*revoked=*/true)}};
  auto revoked_ahead = BuildPublishedDocuments(
      revoked, "https://k.test", unpublished, /*seen=*/kActivated);
  ASSERT_TRUE(revoked_ahead.ok()) << revoked_ahead.status();
  EXPECT_THAT(revoked_ahead->consumer_jwks, Not(HasSubstr(a)));
}

// Fault 1 of the single-key schedule: the set holds every published key of
// a scope (retired, active, standby) in generation order, not the one that
// signs.
TEST(PublicationTest, EveryPublishedKeyOfAScopeIsInItsSets) {
  using signet::v1::CONSUMER;
  const absl::Duration period = absl::Hours(24 * 30);
  auto keys = Keys({
      Version("consumer-a", CONSUMER, signet::v1::JWT, signet::v1::ES256,
              "ec-00.pem", false, kActivated - period, 1),
      Version("consumer-a", CONSUMER, signet::v1::JWT, signet::v1::ES256,
              "ec-01.pem", false, kActivated, 2),
      Version("consumer-a", CONSUMER, signet::v1::JWT, signet::v1::ES256,
              "ec-02.pem", false, kActivated + period, 3),
  });
  std::map<std::string, std::shared_ptr<const ScopeKeys>> scopes = {
      {"consumer-a", keys}};
  // An hour after generation 1 retired: 1 RETIRED, 2 ACTIVE, 3 PENDING.
  auto docs = BuildPublishedDocuments(scopes, "", kNow);
  ASSERT_TRUE(docs.ok());
  const std::string& set = docs->scope_jwks["consumer-a"];
  const size_t k1 = set.find(keys->versions()[0]->kid);
  const size_t k2 = set.find(keys->versions()[1]->kid);
  const size_t k3 = set.find(keys->versions()[2]->kid);
  ASSERT_NE(k1, std::string::npos);
  ASSERT_NE(k2, std::string::npos);
  ASSERT_NE(k3, std::string::npos);
  EXPECT_LT(k1, k2);
  EXPECT_LT(k2, k3);
  EXPECT_EQ(keys->SigningAt(kNow), keys->versions()[1]);
  // Two hours after: generation 1 has left.
  auto later = BuildPublishedDocuments(scopes, "", kActivated + absl::Hours(2));
  ASSERT_TRUE(later.ok());
  EXPECT_THAT(later->scope_jwks["consumer-a"],
              Not(HasSubstr(keys->versions()[0]->kid)));
}

// Byte for byte what every replica serves for these keys; a change to the
// format shows up here. SIGNET_UPDATE_GOLDEN=1 rewrites the files.
TEST(PublicationTest, DocumentsMatchTheGoldenFiles) {
  auto docs =
      BuildPublishedDocuments(Scopes(), "https://keys.signet.test", kNow);
  ASSERT_TRUE(docs.ok());
  std::map<std::string, std::string> files = {
      {"consumer.jwks.json", docs->consumer_jwks},
      {"enterprise.jwks.json", docs->enterprise_jwks},
  };
  for (const auto& [name, body] : docs->scope_jwks) {
    files["scope-" + name + ".jwks.json"] = body;
  }
  for (const auto& [name, body] : docs->scope_discovery) {
    files["scope-" + name + ".openid-configuration.json"] = body;
  }
  for (const auto& [name, body] : docs->scope_keys_pem) {
    files["scope-" + name + ".keys.pem"] = body;
  }
  const bool update = getenv("SIGNET_UPDATE_GOLDEN") != nullptr;
  for (const auto& [name, body] : files) {
    const std::string path = std::string(SIGNET_GOLDEN_DIR) + "/" + name;
    if (update) {
      std::ofstream(path) << body;
      continue;
    }
    EXPECT_EQ(Read(path), body) << path;
  }
  // Built twice: the same bytes.
  auto again =
      BuildPublishedDocuments(Scopes(), "https://keys.signet.test", kNow);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->consumer_jwks, docs->consumer_jwks);
  EXPECT_EQ(again->scope_discovery, docs->scope_discovery);
}

// The publisher hands each pass's state on, and the documents only when
// their bytes changed: a pass that changed nothing publishes nothing, a
// revocation takes the key out of every set at once, and the rest of the
// state (store, workers, audit log) is kept.
TEST(ServingPublisherTest, EachPassIsServedAndChangedDocumentsArePublished) {
  base::SimulatedClock clock(kNow);
  std::vector<std::shared_ptr<const ServingState>> served;
  std::vector<std::shared_ptr<const PublishedDocuments>> published;
  auto first = std::make_shared<ServingState>();
  first->scopes = Scopes();
  // Never dereferenced: it shows the rest of the state is carried over.
  auto* const workers = reinterpret_cast<WorkerPool*>(uintptr_t{0x1000});
  first->workers = workers;
  auto publisher = ServingPublisher::Create(
      first, "https://k.test", &clock,
      {.serving = [&](auto state) { served.push_back(state); },
       .documents = [&](auto docs) { published.push_back(docs); }});
  ASSERT_TRUE(publisher.ok()) << publisher.status();
  ASSERT_EQ(served.size(), 1u);
  ASSERT_EQ(published.size(), 1u);
  EXPECT_EQ(served[0], first);
  const std::string a = first->scopes["consumer-a"]->versions()[0]->kid;
  EXPECT_THAT(published[0]->consumer_jwks, HasSubstr(a));
  EXPECT_EQ((*publisher)->documents(), published[0]);

  // The same keys: served again, nothing published.
  (*publisher)->OnKeys(Scopes());
  EXPECT_EQ(served.size(), 2u);
  EXPECT_EQ(published.size(), 1u);

  // consumer-a's key is revoked (at kActivated + 3 h): it leaves the sets.
  clock.SetTime(kActivated + absl::Hours(4));
  auto scopes = Scopes();
  scopes["consumer-a"] =
      Scope("consumer-a", signet::v1::CONSUMER, signet::v1::JWT,
            signet::v1::ES256, "ec-00.pem", /*revoked=*/true);
  (*publisher)->OnKeys(scopes);
  ASSERT_EQ(served.size(), 3u);
  ASSERT_EQ(published.size(), 2u);
  EXPECT_THAT(published[1]->consumer_jwks, Not(HasSubstr(a)));
  EXPECT_EQ(served[2]->scopes.at("consumer-a"), scopes["consumer-a"]);
  EXPECT_EQ(served[2]->workers, workers);
  EXPECT_EQ((*publisher)->serving(), served[2]);
  EXPECT_EQ((*publisher)->documents(), published[1]);
}

TEST(ServingPublisherTest, ABaseUrlThatCannotBeUsedFailsAtCreate) {
  base::SimulatedClock clock(kNow);
  auto first = std::make_shared<ServingState>();
  first->scopes = Scopes();
  int calls = 0;
  auto publisher = ServingPublisher::Create(
      first, "https://k.test/", &clock,
      {.serving = [&](auto) { ++calls; }, .documents = [&](auto) { ++calls; }});
  EXPECT_EQ(publisher.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace signet::server
