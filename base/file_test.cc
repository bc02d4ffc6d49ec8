#include "base/file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::base {
namespace {

using ::testing::HasSubstr;

TEST(PathTest, ParentDirectoryAndBaseNameSplitAtTheLastSlash) {
  EXPECT_EQ(ParentDirectory("a/b/c.log"), "a/b");
  EXPECT_EQ(BaseName("a/b/c.log"), "c.log");
  EXPECT_EQ(ParentDirectory("/var/lib/signet/audit.log"), "/var/lib/signet");
  EXPECT_EQ(ParentDirectory("audit.log"), ".");
  EXPECT_EQ(BaseName("audit.log"), "audit.log");
  EXPECT_EQ(ParentDirectory("/audit.log"), "/");
  EXPECT_EQ(BaseName("/audit.log"), "audit.log");
  EXPECT_EQ(BaseName("dir/"), "");
}

class ReadSmallFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/signet-base-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::string cmd = "rm -rf " + dir_;
    (void)!system(cmd.c_str());
  }
  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  std::string dir_;
};

TEST_F(ReadSmallFileTest, ReadsTheWholeFileWithEveryByte) {
  const std::string content("line 1\n\0binary\xff", 15);
  auto got = ReadSmallFile(Write("f", content), "the test file");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, content);
  auto empty = ReadSmallFile(Write("empty", ""), "the test file");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "");
}

TEST_F(ReadSmallFileTest, ErrorsNameTheFileAndWhatItIs) {
  auto missing = ReadSmallFile(dir_ + "/none", "tls.key_file");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              HasSubstr("cannot read tls.key_file " + dir_ + "/none"));
  auto directory = ReadSmallFile(dir_, "tls.key_file");
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(directory.status().message(), HasSubstr("not a regular file"));
  auto large =
      ReadSmallFile(Write("large", std::string(100, 'x')), "tls.cert_file", 99);
  EXPECT_EQ(large.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(large.status().message(), HasSubstr("larger than 99 bytes"));
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto from_fifo = ReadSmallFile(fifo, "audit keyring");  // must not hang
  EXPECT_EQ(from_fifo.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(from_fifo.status().message(), HasSubstr("not a regular file"));
  if (geteuid() != 0) {  // root reads anything
    const std::string locked = Write("locked", "secret");
    chmod(locked.c_str(), 0);
    EXPECT_EQ(ReadSmallFile(locked, "tls.key_file").status().code(),
              absl::StatusCode::kPermissionDenied);
  }
}

TEST_F(ReadSmallFileTest, ReplaceFileDurablyReplacesWholeAndLeavesNoTemporary) {
  const std::string path = Write("state", "old content that is longer");
  ASSERT_TRUE(ReplaceFileDurably(path, "new", "the state file").ok());
  auto got = ReadSmallFile(path, "the state file");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "new");
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_NE(access((path + ".tmp").c_str(), F_OK), 0);

  // A directory that does not exist: nothing written, the error says what.
  const absl::Status missing =
      ReplaceFileDurably(dir_ + "/none/state", "x", "the state file");
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(missing.message(),
              HasSubstr("cannot write the state file " + dir_ + "/none/state"));
}

TEST_F(ReadSmallFileTest, SyncParentDirectorySaysWhichErrnoFailed) {
  EXPECT_EQ(SyncParentDirectory(Write("f", "x")), 0);
  EXPECT_EQ(SyncParentDirectory(dir_ + "/none/f"), ENOENT);
  EXPECT_EQ(SyncParentDirectory(Write("file", "x") + "/f"), ENOTDIR);
}

}  // namespace
}  // namespace signet::base
