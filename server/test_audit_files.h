// Test-only: a per-test directory, whole-file and line helpers for the audit
// log tests, which read, edit and rewrite log files byte for byte.
#ifndef SIGNET_SERVER_TEST_AUDIT_FILES_H_
#define SIGNET_SERVER_TEST_AUDIT_FILES_H_

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "crypto/digest.h"
#include "gtest/gtest.h"

namespace signet::server::audit_testing {

// The "prev" of a log's first line.
inline constexpr char kZeroHash[] =
    "0000000000000000000000000000000000000000000000000000000000000000";

// A per-test directory under the test temp dir, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "signet_audit_test.XXXXXX";
    char* made = mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr);
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string File(absl::string_view name) const {
    return absl::StrCat(path_, "/", name);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteFile(const std::string& path, absl::string_view content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
}

inline std::vector<std::string> ReadLines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path, std::ios::binary);
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  return lines;
}

// Audit lines keep their member order when parsed.
using Json = nlohmann::ordered_json;

// A parsed line; discarded (is_discarded()) if it is not JSON.
inline Json Parse(absl::string_view line) {
  return Json::parse(line.begin(), line.end(), nullptr, false);
}

// Lowercase hex SHA-256, as the log writes input and line hashes.
inline std::string HexSha256(absl::string_view data) {
  absl::StatusOr<std::string> d = crypto::Sha256(data);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? absl::BytesToHexString(*d) : std::string();
}

// RLIMIT_FSIZE makes a regular file stop growing mid-run: the write that
// crosses the limit is cut short, the next one fails with EFBIG. Process-wide
// (every file this process writes), while it lives; SIGXFSZ is ignored.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    EXPECT_EQ(getrlimit(RLIMIT_FSIZE, &saved_), 0);
    old_handler_ = signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    EXPECT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  }
  ~FileSizeLimit() {
    EXPECT_EQ(setrlimit(RLIMIT_FSIZE, &saved_), 0);
    signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit saved_;
  sighandler_t old_handler_;
};

}  // namespace signet::server::audit_testing

#endif  // SIGNET_SERVER_TEST_AUDIT_FILES_H_
