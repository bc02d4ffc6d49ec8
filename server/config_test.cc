#include "server/config.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::server {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kValid[] = R"pb(
  grpc_listen_address: "127.0.0.1:7443"
  hsm {
    module_path: "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
    p11_kit_server_address: "unix:path=/var/lib/signet/run/hsm.sock"
    token_uri: "pkcs11:token=signet"
    pin_file: "/var/lib/signet/secrets/user.pin"
  }
  scopes {
    name: "demo-consumer"
    audience_class: CONSUMER
    purpose: JWT
    issuer: "https://consumer.signet.example"
    algorithm: ES256
  }
  scopes {
    name: "demo-enterprise"
    audience_class: ENTERPRISE
    purpose: JWT
    issuer: "https://enterprise.signet.example"
    algorithm: RS256
  }
  tls {
    cert_file: "/var/lib/signet/tls/server.pem"
    key_file: "/var/lib/signet/tls/server.key"
    client_ca_file: "/var/lib/signet/tls/ca.pem"
  }
  tenants {
    identity: "uri:spiffe://signet.example/tenant/demo-consumer"
    scopes: "demo-consumer"
  }
  admins: "uri:spiffe://signet.example/admin/demo"
  audit_log_path: "/var/lib/signet/audit/audit.log"
)pb";

absl::Status ParseWith(absl::string_view from, absl::string_view to) {
  std::string text = absl::StrReplaceAll(kValid, {{from, to}});
  EXPECT_NE(text, kValid) << "replacement did not apply: " << from;
  return ParseConfig(text).status();
}

TEST(ConfigTest, ParsesTheEmbeddedDefaultShapeAndFillsDefaults) {
  auto config = ParseConfig(kValid);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->scopes_size(), 2);
  EXPECT_EQ(config->hsm().connections(), 2u);
  EXPECT_EQ(config->hsm().sessions_per_connection(), 2u);
  EXPECT_EQ(config->scopes(1).rsa_bits(), 2048u);
  EXPECT_EQ(KeySpecFor(config->scopes(1)).algorithm,
            hsm::SignatureAlgorithm::kRsaPkcs1Sha256);
  EXPECT_EQ(JoseAlgorithmName(config->scopes(0).algorithm()), "ES256");
  EXPECT_EQ(config->scopes(0).max_token_lifetime_seconds(), 3600u);
  EXPECT_EQ(config->tenants(0).max_concurrent_requests(), 64u);
  EXPECT_EQ(config->tenants(0).max_answer_memory_mib(), 128u);
  EXPECT_EQ(config->serving().max_answer_memory_mib(), 512u);
  EXPECT_EQ(config->serving().worker_threads(), 4u);
  EXPECT_EQ(config->serving().queue_size(), 1024u);
  EXPECT_EQ(config->serving().iat_skew_seconds(), 60u);
  EXPECT_EQ(config->serving().audit_group_commit_delay_us(), 2000u);
  EXPECT_EQ(config->serving().audit_segment_max_mib(), 1024u);
  EXPECT_EQ(config->audit_key_rotation_days(), 365u);
  EXPECT_EQ(config->serving().audit_segment_max_age_hours(), 24u);
  EXPECT_EQ(config->scopes(0).rotation_period_seconds(), 30u * 24 * 3600);
  // Token lifetime 3600 + iat skew 60 + verifier leeway 60 + key refresh
  // 60 + an hour.
  EXPECT_EQ(config->scopes(0).publish_grace_seconds(),
            3600u + 60 + 60 + 60 + 3600);
  EXPECT_EQ(config->scopes(0).destroy_delay_seconds(), 24u * 3600);
  // 2 x JWKS max-age 300 + key refresh 60.
  EXPECT_EQ(config->scopes(0).min_publish_lead_seconds(), 660u);
  EXPECT_EQ(config->scopes(0).tombstone_retention_seconds(), 30u * 24 * 3600);
  EXPECT_EQ(config->reconcile_interval_seconds(), 10u);
  EXPECT_EQ(config->key_refresh_interval_seconds(), 60u);
}

TEST(ConfigTest, TheGraceCoversATokensLifeSkewAndVerifierLeeway) {
  auto at_least = [](absl::string_view extra) {
    return ParseConfig(absl::StrReplaceAll(
        kValid,
        {{"algorithm: ES256", absl::StrCat("algorithm: ES256 ", extra)}}));
  };
  // 600 s tokens, 60 s skew, 60 s leeway, replicas re-reading every 60 s:
  // 780 s is the least grace.
  EXPECT_TRUE(at_least("max_token_lifetime_seconds: 600 "
                       "publish_grace_seconds: 780")
                  .ok());
  auto short_grace = at_least(
      "max_token_lifetime_seconds: 600 "
      "publish_grace_seconds: 779");
  EXPECT_EQ(short_grace.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(short_grace.status().message());
  EXPECT_THAT(message, HasSubstr("scopes[0]"));
  EXPECT_THAT(message, HasSubstr("publish_grace_seconds"));
  EXPECT_THAT(message, HasSubstr("at least 780"));
  EXPECT_THAT(message, HasSubstr("G >= T + S + V + R"));
  // The least grace above, with `top` added to the configuration.
  auto least_grace_with = [](absl::string_view top) {
    return ParseConfig(absl::StrCat(
        absl::StrReplaceAll(kValid, {{"algorithm: ES256",
                                      "algorithm: ES256 "
                                      "max_token_lifetime_seconds: 600 "
                                      "publish_grace_seconds: 780"}}),
        "\n", top, "\n"));
  };
  // A wider iat skew needs a longer grace.
  EXPECT_THAT(std::string(least_grace_with("serving { iat_skew_seconds: 300 }")
                              .status()
                              .message()),
              HasSubstr("at least 1020"));
  // So does a replica that re-reads the records less often (fifth outside
  // attack: after an immediate rotation on the writer a replica signs with
  // the retired key for up to R).
  EXPECT_THAT(std::string(least_grace_with("key_refresh_interval_seconds: 300")
                              .status()
                              .message()),
              HasSubstr("at least 1020"));
}

TEST(ConfigTest, TheLeadCoversTwoCachesAndTheRefreshAndIsShorterThanThePeriod) {
  auto with = [](absl::string_view extra, absl::string_view top = "") {
    return ParseConfig(absl::StrCat(
        absl::StrReplaceAll(
            kValid,
            {{"algorithm: ES256", absl::StrCat("algorithm: ES256 ", extra)}}),
        "\n", top));
  };
  EXPECT_TRUE(with("min_publish_lead_seconds: 660").ok());
  auto short_lead = with("min_publish_lead_seconds: 659");
  EXPECT_EQ(short_lead.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      std::string(short_lead.status().message()),
      HasSubstr("min_publish_lead_seconds: must be at least 660 (L >= 2C + R"));
  // A slower replica refresh needs a longer lead.
  EXPECT_THAT(std::string(with("min_publish_lead_seconds: 660",
                               "key_refresh_interval_seconds: 120")
                              .status()
                              .message()),
              HasSubstr("at least 720"));
  // P > L.
  auto long_lead =
      with("rotation_period_seconds: 3600 min_publish_lead_seconds: 3600");
  EXPECT_THAT(std::string(long_lead.status().message()),
              HasSubstr("rotation_period_seconds: must be longer than "
                        "min_publish_lead_seconds"));
  EXPECT_TRUE(
      with("rotation_period_seconds: 3600 min_publish_lead_seconds: 3599")
          .ok());
}

TEST(ConfigTest, ShortRotationPeriodsNeedTheTopLevelSwitch) {
  const std::string shorter = absl::StrReplaceAll(
      kValid, {{"algorithm: ES256",
                "algorithm: ES256 rotation_period_seconds: 6 "
                "min_publish_lead_seconds: 3"}});
  auto refused = ParseConfig(shorter);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("allow_short_key_schedules"));
  // With it, and a lead the cache and refresh allow.
  auto allowed = ParseConfig(absl::StrCat(
      shorter,
      "\nallow_short_key_schedules: true key_refresh_interval_seconds: 1\n"
      "http { listen_address: \"127.0.0.1:8080\" public_base_url: "
      "\"https://k.example\" cache_max_age_seconds: 1 }\n"));
  EXPECT_TRUE(allowed.ok()) << allowed.status();
}

TEST(ConfigTest, AuditKeyRotationInSecondsIsForTestsAndDemos) {
  auto short_audit =
      ParseConfig(absl::StrCat(kValid, "\naudit_key_rotation_seconds: 8\n"));
  EXPECT_THAT(std::string(short_audit.status().message()),
              AllOf(HasSubstr("audit_key_rotation_seconds"),
                    HasSubstr("allow_short_key_schedules")));
  auto allowed = ParseConfig(absl::StrCat(
      kValid,
      "\naudit_key_rotation_seconds: 8 allow_short_key_schedules: true\n"));
  ASSERT_TRUE(allowed.ok()) << allowed.status();
  EXPECT_EQ(allowed->audit_key_rotation_seconds(), 8u);
  auto hour =
      ParseConfig(absl::StrCat(kValid, "\naudit_key_rotation_seconds: 3600\n"));
  EXPECT_TRUE(hour.ok()) << hour.status();
  auto too_long = ParseConfig(
      absl::StrCat(kValid, "\naudit_key_rotation_seconds: 400000000\n"));
  EXPECT_THAT(std::string(too_long.status().message()),
              HasSubstr("at most 315360000"));
}

TEST(ConfigTest, ScheduleFieldBounds) {
  auto at_least = [](absl::string_view extra) {
    return ParseConfig(absl::StrReplaceAll(
        kValid,
        {{"algorithm: ES256", absl::StrCat("algorithm: ES256 ", extra)}}));
  };
  EXPECT_THAT(
      std::string(at_least("rotation_period_seconds: 60").status().message()),
      HasSubstr("rotation_period_seconds"));
  EXPECT_THAT(
      std::string(
          at_least("destroy_delay_seconds: 40000000").status().message()),
      HasSubstr("destroy_delay_seconds"));
}

TEST(ConfigTest, PlainTextNeedsTheFlagAndLoopback) {
  std::string no_tls = absl::StrReplaceAll(
      kValid, {{"client_ca_file: \"/var/lib/signet/tls/ca.pem\"", ""}});
  EXPECT_THAT(ParseConfig(no_tls).status().message(), HasSubstr("tls"));
  ConfigOptions plaintext;
  plaintext.insecure_plaintext = true;
  EXPECT_TRUE(ParseConfig(no_tls, plaintext).ok());
  std::string wide =
      absl::StrReplaceAll(no_tls, {{"127.0.0.1:7443", "0.0.0.0:7443"}});
  EXPECT_THAT(ParseConfig(wide, plaintext).status().message(),
              HasSubstr("grpc_listen_address"));
  // With mTLS any address is fine.
  EXPECT_TRUE(ParseConfig(absl::StrReplaceAll(
                              kValid, {{"127.0.0.1:7443", "0.0.0.0:7443"}}))
                  .ok());
}

TEST(ConfigTest, UnknownFieldIsRefusedWithItsPosition) {
  auto st = ParseConfig(absl::StrCat(kValid, "\nsopes { name: \"x\" }\n"));
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.status().message(), HasSubstr("sopes"));
  EXPECT_THAT(st.status().message(), HasSubstr("35:"));  // line number
}

// A file given as the configuration by mistake may be a secret: a PIN
// file's digits, or a hex PIN taken for a field name, were repeated in the
// error (seventh outside attack). Text that is no name of the schema is
// not shown; a typo of one is, with the name it is close to.
TEST(ConfigTest, ParseErrorsRepeatNoSecretFromTheFile) {
  for (const std::string pin :
       {"873441920517\n", "deadbeefcafe4a1b2c3d4e5f60718293\n",
        "scopes: 4711abcd\n", "grpc_listen_address: 9f8e7d6c5b4a\n"}) {
    auto st = ParseConfig(pin);
    ASSERT_FALSE(st.ok()) << pin;
    const std::string message(st.status().message());
    EXPECT_THAT(message, Not(HasSubstr("873441920517")));
    EXPECT_THAT(message, Not(HasSubstr("deadbeefcafe")));
    EXPECT_THAT(message, Not(HasSubstr("4711abcd")));
    EXPECT_THAT(message, Not(HasSubstr("9f8e7d6c5b4a")));
    EXPECT_THAT(message, HasSubstr("1:"));  // where, still
    EXPECT_THAT(message, HasSubstr("may hold a secret")) << message;
  }
  auto typo = ParseConfig(absl::StrCat(kValid, "\naudit_log_pth: \"/x\"\n"));
  ASSERT_FALSE(typo.ok());
  EXPECT_THAT(
      typo.status().message(),
      HasSubstr("\"audit_log_pth\" (did you mean \"audit_log_path\"?)"));
}

struct BadCase {
  const char* from;
  const char* to;
  const char* field;
};

class ConfigRejectTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(ConfigRejectTest, NamesTheField) {
  absl::Status st = ParseWith(GetParam().from, GetParam().to);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr(GetParam().field));
}

INSTANTIATE_TEST_SUITE_P(
    Fields, ConfigRejectTest,
    ::testing::Values(
        BadCase{"\"demo-enterprise\"", "\"demo-consumer\"",
                "duplicate scope name"},
        BadCase{"https://enterprise.signet.example",
                "https://consumer.signet.example", "same issuer"},
        BadCase{"\"demo-enterprise\"", "\"Demo/Enterprise\"", ".name"},
        BadCase{"https://consumer.signet.example", "http://consumer.example",
                "https://"},
        // Starts like 127/8 but is a name anyone can point anywhere.
        BadCase{"https://consumer.signet.example", "http://127.evil.example",
                "https://"},
        BadCase{"https://consumer.signet.example", "ftp://consumer.example",
                "issuer"},
        BadCase{"https://consumer.signet.example",
                "https://consumer.signet.example/", "must not end with '/'"},
        BadCase{"https://consumer.signet.example",
                "https://consumer.signet.example?x=1", "query"},
        BadCase{"audience_class: CONSUMER", "", "audience_class"},
        BadCase{"purpose: JWT\n    issuer: \"https://consumer",
                "issuer: \"https://consumer", "purpose"},
        BadCase{"algorithm: ES256", "", "algorithm"},
        BadCase{"algorithm: ES256", "algorithm: ES256 rsa_bits: 2048",
                "rsa_bits"},
        BadCase{"algorithm: RS256", "algorithm: RS256 rsa_bits: 1024",
                "rsa_bits"},
        BadCase{"127.0.0.1:7443", "127.0.0.1", "grpc_listen_address"},
        BadCase{"identity: \"uri:spiffe", "identity: \"spiffe",
                "tenants[0].identity"},
        BadCase{"scopes: \"demo-consumer\"", "scopes: \"nope\"",
                "unknown scope \"nope\""},
        BadCase{"admins: \"uri:", "admins: \"", "admins[0]"},
        BadCase{"audit_log_path: \"/var", "audit_log_path: \"var",
                "audit_log_path"},
        BadCase{"algorithm: ES256",
                "algorithm: ES256 max_token_lifetime_seconds: 9999999",
                "max_token_lifetime_seconds"},
        BadCase{"token_uri: \"pkcs11:token=signet\"", "", "hsm.token_uri"},
        BadCase{"pin_file: \"/var/lib/signet/secrets/user.pin\"",
                "pin_file: \"/x\" pin_env: \"PIN\"", "exactly one"},
        BadCase{"pin_file: \"/var/lib/signet/secrets/user.pin\"", "",
                "exactly one"}));

TEST(ConfigTest, AuditGroupCommitDelayZeroTurnsItOffAndIsBounded) {
  auto off = ParseConfig(
      absl::StrCat(kValid, "serving { audit_group_commit_delay_us: 0 }\n"));
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_TRUE(off->serving().has_audit_group_commit_delay_us());
  EXPECT_EQ(off->serving().audit_group_commit_delay_us(), 0u);
  absl::Status too_long =
      ParseConfig(
          absl::StrCat(kValid,
                       "serving { audit_group_commit_delay_us: 100001 }\n"))
          .status();
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_long.message(),
              HasSubstr("serving.audit_group_commit_delay_us"));
}

TEST(ConfigTest, GrpcLimitsHaveDefaultsAndBounds) {
  auto defaults = ParseConfig(kValid);
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  const auto& grpc = defaults->grpc();
  EXPECT_EQ(grpc.max_concurrent_streams(), 256u);
  EXPECT_EQ(grpc.max_memory_mib(), 1024u);
  EXPECT_EQ(grpc.handshake_timeout_seconds(), 10u);
  EXPECT_EQ(grpc.max_health_watchers(), 1024u);
  EXPECT_EQ(grpc.reserved_file_descriptors(), 256u);
  EXPECT_EQ(grpc.request_timeout_seconds(), 10u);
  EXPECT_EQ(grpc.max_calls_awaiting_request(), 4096u);
  EXPECT_EQ(grpc.max_connections_per_address(), 256u);
  EXPECT_FALSE(grpc.reflection());
  for (const char* bad :
       {"grpc { handshake_timeout_seconds: 121 }",
        "grpc { request_timeout_seconds: 301 }", "grpc { max_memory_mib: 63 }",
        "grpc { reserved_file_descriptors: 31 }",
        "grpc { max_concurrent_streams: 65537 }"}) {
    absl::Status st = ParseConfig(absl::StrCat(kValid, bad, "\n")).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(st.message(), HasSubstr("grpc.")) << bad;
    EXPECT_THAT(st.message(), HasSubstr("out of range")) << bad;
  }
}

TEST(ConfigTest, AnswerMemoryHasBoundedLimits) {
  EXPECT_TRUE(ParseWith("scopes: \"demo-consumer\"\n",
                        "scopes: \"demo-consumer\" "
                        "max_answer_memory_mib: 65536\n")
                  .ok());
  absl::Status st = ParseWith("scopes: \"demo-consumer\"\n",
                              "scopes: \"demo-consumer\" "
                              "max_answer_memory_mib: 65537\n");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("tenants[0].max_answer_memory_mib"));
  EXPECT_THAT(st.message(), HasSubstr("out of range"));
  for (const char* bad : {"serving { max_answer_memory_mib: 15 }",
                          "serving { max_answer_memory_mib: 65537 }"}) {
    absl::Status all = ParseConfig(absl::StrCat(kValid, bad, "\n")).status();
    EXPECT_EQ(all.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(all.message(), HasSubstr("serving.max_answer_memory_mib"))
        << bad;
    EXPECT_THAT(all.message(), HasSubstr("out of range")) << bad;
  }
  EXPECT_TRUE(
      ParseConfig(
          absl::StrCat(kValid, "serving { max_answer_memory_mib: 16 }\n"))
          .ok());
}

TEST(ConfigTest, PlainHttpIssuerOnlyOnLoopback) {
  EXPECT_TRUE(
      ParseWith("https://consumer.signet.example", "http://127.0.0.1:8080")
          .ok());
  EXPECT_TRUE(ParseWith("https://consumer.signet.example",
                        "http://localhost:8080/tenant")
                  .ok());
}

// The HTTP endpoint: plain HTTP on loopback, HTTPS anywhere.
absl::StatusOr<signet::v1::SignetConfig> WithHttp(absl::string_view http) {
  return ParseConfig(absl::StrCat(kValid, "\nhttp { ", http, " }\n"));
}

TEST(ConfigTest, HttpPlainOnlyOnLoopbackAndTlsAnywhere) {
  auto plain = WithHttp(
      R"(listen_address: "127.0.0.1:8080" public_base_url: "https://k.example")");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->http().threads(), 1u);
  EXPECT_EQ(plain->http().cache_max_age_seconds(), 300u);

  auto wide = WithHttp(
      R"(listen_address: "0.0.0.0:8443" public_base_url: "https://k.example")");
  EXPECT_EQ(wide.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wide.status().message(), HasSubstr("http.listen_address"));
  EXPECT_THAT(wide.status().message(), HasSubstr("http.tls_cert_file"));

  EXPECT_TRUE(WithHttp(R"(listen_address: "0.0.0.0:8443"
                          public_base_url: "https://k.example"
                          tls_cert_file: "/etc/signet/http.pem"
                          tls_key_file: "/etc/signet/http.key")")
                  .ok());
}

TEST(ConfigTest, HttpTlsFilesGoTogetherAndAreAbsolute) {
  auto cert_only = WithHttp(R"(listen_address: "127.0.0.1:8443"
                               public_base_url: "https://k.example"
                               tls_cert_file: "/etc/signet/http.pem")");
  EXPECT_EQ(cert_only.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cert_only.status().message(), HasSubstr("http.tls_key_file"));
  auto key_only = WithHttp(R"(listen_address: "127.0.0.1:8443"
                              public_base_url: "https://k.example"
                              tls_key_file: "/etc/signet/http.key")");
  EXPECT_THAT(key_only.status().message(), HasSubstr("http.tls_cert_file"));
  auto relative = WithHttp(R"(listen_address: "127.0.0.1:8443"
                              public_base_url: "https://k.example"
                              tls_cert_file: "/etc/signet/http.pem"
                              tls_key_file: "http.key")");
  EXPECT_THAT(relative.status().message(), HasSubstr("http.tls_key_file"));
  auto threads = WithHttp(R"(listen_address: "127.0.0.1:8080"
                             public_base_url: "https://k.example"
                             threads: 65)");
  EXPECT_THAT(threads.status().message(), HasSubstr("http.threads"));
}

// The JWKS endpoint's hostile-client bounds: slots, a per-client limit and a
// whole-request deadline, with defaults when unset.
TEST(ConfigTest, HttpConnectionLimitsAndDeadlineDefaults) {
  auto plain = WithHttp(
      R"(listen_address: "127.0.0.1:8080" public_base_url: "https://k.example")");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->http().max_connections(), 4096u);
  EXPECT_EQ(plain->http().max_connections_per_client(), 1024u);
  EXPECT_EQ(plain->http().request_deadline_seconds(), 10u);

  // The per-client default follows max_connections (a quarter, at least 1).
  auto small = WithHttp(R"(listen_address: "127.0.0.1:8080"
                           public_base_url: "https://k.example"
                           max_connections: 64)");
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->http().max_connections_per_client(), 16u);
  auto tiny = WithHttp(R"(listen_address: "127.0.0.1:8080"
                          public_base_url: "https://k.example"
                          max_connections: 3)");
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ(tiny->http().max_connections_per_client(), 1u);

  auto set = WithHttp(R"(listen_address: "127.0.0.1:8080"
                         public_base_url: "https://k.example"
                         max_connections: 100 max_connections_per_client: 100
                         request_deadline_seconds: 300)");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->http().max_connections(), 100u);
  EXPECT_EQ(set->http().max_connections_per_client(), 100u);
  EXPECT_EQ(set->http().request_deadline_seconds(), 300u);
}

TEST(ConfigTest, HttpConnectionLimitsAndDeadlineOutOfRangeNameTheField) {
  struct Case {
    const char* fields;
    const char* field;
  };
  for (const Case& c : {
           Case{"max_connections: 65537", "http.max_connections"},
           Case{"max_connections: 10 max_connections_per_client: 11",
                "http.max_connections_per_client"},
           Case{"max_connections_per_client: 4097",
                "http.max_connections_per_client"},
           Case{"request_deadline_seconds: 301",
                "http.request_deadline_seconds"},
       }) {
    SCOPED_TRACE(c.fields);
    auto config = WithHttp(
        absl::StrCat(R"(listen_address: "127.0.0.1:8080" )",
                     R"(public_base_url: "https://k.example" )", c.fields));
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(config.status().message(), HasSubstr(c.field));
  }
  // The error for the per-client limit says what the bound is.
  auto over = WithHttp(R"(listen_address: "127.0.0.1:8080"
                          public_base_url: "https://k.example"
                          max_connections: 10 max_connections_per_client: 11)");
  EXPECT_THAT(over.status().message(),
              HasSubstr("at most http.max_connections (10)"));
}

// The configuration the signetd container image ships (docker/), writer
// and replica, as Dockerfile.signetd fills it in.
TEST(ConfigTest, TheContainerConfigurationIsValid) {
  std::ifstream in(SIGNET_DOCKER_CONFIG);
  ASSERT_TRUE(in) << SIGNET_DOCKER_CONFIG;
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string writer = absl::StrReplaceAll(
      buf.str(), {{"@P11_KIT_CLIENT@",
                   "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"}});
  auto config = ParseConfig(writer);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->never_create_keys());
  EXPECT_FALSE(config->http().tls_cert_file().empty());
  auto replica = ParseConfig(absl::StrCat(writer, "never_create_keys: true\n"));
  ASSERT_TRUE(replica.ok()) << replica.status();
  EXPECT_TRUE(replica->never_create_keys());
}

TEST(ConfigTest, MissingFileIsNotFound) {
  EXPECT_EQ(LoadConfigFile("/nonexistent/signetd.textproto").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace signet::server
