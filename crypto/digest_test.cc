#include "crypto/digest.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "gtest/gtest.h"

namespace signet::crypto {
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

TEST(Sha256Test, KnownAnswers) {
  absl::StatusOr<std::string> abc = Sha256("abc");
  ASSERT_TRUE(abc.ok()) << abc.status();
  EXPECT_EQ(Hex(*abc), kSha256Abc);
  absl::StatusOr<std::string> empty = Sha256("");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(Hex(*empty), kSha256Empty);
}

TEST(Sha256Test, HashesTheWholeViewNotACString) {
  absl::StatusOr<std::string> with_nul = Sha256(absl::string_view("abc\0", 4));
  ASSERT_TRUE(with_nul.ok()) << with_nul.status();
  EXPECT_EQ(with_nul->size(), 32u);
  EXPECT_NE(Hex(*with_nul), kSha256Abc);
}

TEST(Sha384Test, KnownAnswer) {
  absl::StatusOr<std::string> d = Sha384("abc");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(Hex(*d), kSha384Abc);
}

// One context hashes input after input, each from a fresh start.
TEST(Sha256HasherTest, ReusedContextGivesEachInputItsOwnHash) {
  Sha256Hasher hasher;
  Sha256Hasher::Digest out;
  for (absl::string_view input : {"abc", "", "abc", "a longer input"}) {
    ASSERT_TRUE(hasher.Hash(input, out).ok());
    const std::string got(reinterpret_cast<const char*>(out.data()),
                          out.size());
    absl::StatusOr<std::string> want = Sha256(input);
    ASSERT_TRUE(want.ok());
    EXPECT_EQ(Hex(got), Hex(*want)) << input;
    if (input == "abc") {
      EXPECT_EQ(Hex(got), kSha256Abc);
    }
    if (input.empty()) {
      EXPECT_EQ(Hex(got), kSha256Empty);
    }
  }
}

}  // namespace
}  // namespace signet::crypto
