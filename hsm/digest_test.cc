#include "hsm/digest.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "crypto/digest.h"
#include "gtest/gtest.h"
#include "hsm/algorithm.h"

namespace signet::hsm {
namespace {

// Which hash each algorithm signs. The hashes themselves are crypto/'s,
// checked against FIPS 180-4's vectors in crypto/digest_test.cc.
TEST(DigestForTest, Es256Rs256AndPs256SignSha256) {
  absl::StatusOr<std::string> want = crypto::Sha256("abc");
  ASSERT_TRUE(want.ok()) << want.status();
  for (SignatureAlgorithm a : {SignatureAlgorithm::kEcdsaP256Sha256,
                               SignatureAlgorithm::kRsaPkcs1Sha256,
                               SignatureAlgorithm::kRsaPssSha256}) {
    absl::StatusOr<std::string> d = DigestFor(a, "abc");
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(*d, *want) << AlgorithmName(a);
    EXPECT_EQ(d->size(), DigestLength(a));
  }
}

TEST(DigestForTest, Es384SignsSha384) {
  absl::StatusOr<std::string> want = crypto::Sha384("abc");
  ASSERT_TRUE(want.ok()) << want.status();
  absl::StatusOr<std::string> d =
      DigestFor(SignatureAlgorithm::kEcdsaP384Sha384, "abc");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, *want);
  EXPECT_EQ(d->size(), DigestLength(SignatureAlgorithm::kEcdsaP384Sha384));
}

TEST(DigestForTest, UnknownAlgorithmIsInvalidArgument) {
  absl::StatusOr<std::string> d =
      DigestFor(static_cast<SignatureAlgorithm>(99), "abc");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Sha256DigestInfoTest, KnownDerPrefix) {
  const std::string digest(32, '\xab');
  absl::StatusOr<std::string> info = Sha256DigestInfo(digest);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(absl::BytesToHexString(*info),
            "3031300d060960864801650304020105000420" +
                absl::BytesToHexString(digest));
  EXPECT_EQ(info->size(), 51u);
}

TEST(Sha256DigestInfoTest, WrongLengthIsInvalidArgument) {
  EXPECT_EQ(Sha256DigestInfo("").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sha256DigestInfo(std::string(31, 'a')).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sha256DigestInfo(std::string(48, 'a')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace signet::hsm
