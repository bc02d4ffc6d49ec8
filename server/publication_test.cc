#include "server/publication.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rotation/key_state.h"

#ifndef SIGNET_GOLDEN_DIR
#error "SIGNET_GOLDEN_DIR must name tests/golden/publication"
#endif

namespace signet::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::shared_ptr<const ScopeState> Scope(const std::string& name,
                                        signet::v1::AudienceClass cls,
                                        signet::v1::Purpose purpose,
                                        signet::v1::Algorithm alg,
                                        const std::string& key_file) {
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
  loaded.thumbprint = *loaded.public_key->JwkThumbprint();
  rotation::KeyRecord record = rotation::NewActiveKeyRecord(
      name, "00", alg == signet::v1::RS256 ? "RS256" : "ES256", 0,
      absl::FromUnixSeconds(1'800'000'000), {});
  auto state = MakeScopeState(config, record, loaded);
  EXPECT_TRUE(state.ok()) << state.status();
  return *state;
}

std::map<std::string, std::shared_ptr<const ScopeState>> Scopes() {
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
  auto docs = BuildPublishedDocuments(scopes, "https://keys.signet.test");
  ASSERT_TRUE(docs.ok()) << docs.status();
  const std::string& a = scopes["consumer-a"]->key.thumbprint;
  const std::string& b = scopes["consumer-b"]->key.thumbprint;
  const std::string& e = scopes["enterprise"]->key.thumbprint;
  const std::string& r = scopes["raw"]->key.thumbprint;
  EXPECT_THAT(docs->consumer_jwks, HasSubstr(a));
  EXPECT_THAT(docs->consumer_jwks, HasSubstr(b));
  EXPECT_THAT(docs->consumer_jwks, Not(HasSubstr(e)));
  EXPECT_THAT(docs->enterprise_jwks, HasSubstr(e));
  EXPECT_THAT(docs->enterprise_jwks, Not(HasSubstr(a)));
  for (const std::string* doc : {&docs->consumer_jwks, &docs->enterprise_jwks}) {
    EXPECT_THAT(*doc, Not(HasSubstr(r)));
  }
  EXPECT_EQ(docs->scope_jwks.count("raw"), 0u);
  EXPECT_EQ(docs->scope_discovery.count("raw"), 0u);
  EXPECT_THAT(docs->scope_keys_pem["raw"], HasSubstr("BEGIN PUBLIC KEY"));
  // Each issuer is bound to its own scope's set, not to the class set.
  EXPECT_THAT(docs->scope_jwks["consumer-a"], HasSubstr(a));
  EXPECT_THAT(docs->scope_jwks["consumer-a"], Not(HasSubstr(b)));
  EXPECT_THAT(docs->scope_discovery["consumer-a"],
              HasSubstr(R"("jwks_uri":"https://keys.signet.test/scopes/consumer-a/.well-known/jwks.json")"));
  EXPECT_THAT(docs->scope_discovery["consumer-a"],
              HasSubstr(R"("issuer":"https://consumer-a.signet.test")"));
}

TEST(PublicationTest, ABaseUrlIsRequired) {
  EXPECT_EQ(BuildPublishedDocuments(Scopes(), "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      BuildPublishedDocuments(Scopes(), "https://k.test/").status().code(),
      absl::StatusCode::kInvalidArgument);
}

// Byte for byte what every replica serves for these keys; a change to the
// format shows up here. SIGNET_UPDATE_GOLDEN=1 rewrites the files.
TEST(PublicationTest, DocumentsMatchTheGoldenFiles) {
  auto docs = BuildPublishedDocuments(Scopes(), "https://keys.signet.test");
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
  auto again = BuildPublishedDocuments(Scopes(), "https://keys.signet.test");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->consumer_jwks, docs->consumer_jwks);
  EXPECT_EQ(again->scope_discovery, docs->scope_discovery);
}

}  // namespace
}  // namespace signet::server
