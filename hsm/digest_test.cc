#include "hsm/digest.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/algorithm.h"

namespace signet::hsm {
namespace {

std::string Hex(absl::string_view bytes) {
  return absl::BytesToHexString(bytes);
}

// FIPS 180-4 example vectors (NIST CSRC "Examples with intermediate values").
constexpr char kSha256Abc[] =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
constexpr char kSha384Abc[] =
    "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded163"
    "1a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7";
constexpr char kSha256Empty[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

TEST(DigestForTest, Sha256KnownAnswer) {
  for (SignatureAlgorithm a : {SignatureAlgorithm::kEcdsaP256Sha256,
                               SignatureAlgorithm::kRsaPkcs1Sha256,
                               SignatureAlgorithm::kRsaPssSha256}) {
    absl::StatusOr<std::string> d = DigestFor(a, "abc");
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(Hex(*d), kSha256Abc) << AlgorithmName(a);
    EXPECT_EQ(d->size(), DigestLength(a));
  }
}

TEST(DigestForTest, Sha384KnownAnswer) {
  absl::StatusOr<std::string> d =
      DigestFor(SignatureAlgorithm::kEcdsaP384Sha384, "abc");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(Hex(*d), kSha384Abc);
  EXPECT_EQ(d->size(), DigestLength(SignatureAlgorithm::kEcdsaP384Sha384));
}

TEST(DigestForTest, EmptyInputAndEmbeddedNul) {
  absl::StatusOr<std::string> empty =
      DigestFor(SignatureAlgorithm::kEcdsaP256Sha256, "");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(Hex(*empty), kSha256Empty);

  // The whole string_view is hashed, not a C string.
  absl::StatusOr<std::string> with_nul = DigestFor(
      SignatureAlgorithm::kEcdsaP256Sha256, absl::string_view("abc\0", 4));
  ASSERT_TRUE(with_nul.ok()) << with_nul.status();
  EXPECT_NE(Hex(*with_nul), kSha256Abc);
}

TEST(DigestForTest, UnknownAlgorithmIsInvalidArgument) {
  absl::StatusOr<std::string> d =
      DigestFor(static_cast<SignatureAlgorithm>(99), "abc");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Sha256DigestInfoTest, KnownDerPrefix) {
  const std::string digest = absl::HexStringToBytes(kSha256Abc);
  absl::StatusOr<std::string> info = Sha256DigestInfo(digest);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(Hex(*info),
            std::string("3031300d060960864801650304020105000420") + kSha256Abc);
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
