// Test-only: the claims corpus in tests/corpus/claims, shared by the unit
// test of CheckClaims and its replay over real gRPC.
#ifndef SIGNET_TESTS_TESTING_CLAIMS_CORPUS_H_
#define SIGNET_TESTS_TESTING_CLAIMS_CORPUS_H_

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace signet::testing {

struct CorpusEntry {
  std::string file;
  std::string status;     // "OK" or "INVALID_ARGUMENT"
  std::string substring;  // of the expected message, or "-"
};

// expected.txt, one line per file:
// "<file> <OK|INVALID_ARGUMENT> <message substring, or ->" (the substring
// is everything after the second space).
inline std::vector<CorpusEntry> ReadClaimsCorpus(
    const std::filesystem::path& dir) {
  std::ifstream in(dir / "expected.txt");
  EXPECT_TRUE(in.good()) << "cannot read " << (dir / "expected.txt");
  std::vector<CorpusEntry> entries;
  std::string line;
  while (std::getline(in, line)) {
    const size_t first = line.find(' ');
    const size_t second =
        first == std::string::npos ? first : line.find(' ', first + 1);
    if (second == std::string::npos) {
      ADD_FAILURE() << "malformed expected.txt line: " << line;
      continue;
    }
    entries.push_back({line.substr(0, first),
                       line.substr(first + 1, second - first - 1),
                       line.substr(second + 1)});
  }
  return entries;
}

}  // namespace signet::testing

#endif  // SIGNET_TESTS_TESTING_CLAIMS_CORPUS_H_
