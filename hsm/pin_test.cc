#include "hsm/pin.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::hsm {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class PinFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/signet-pin-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::string cmd = "rm -rf " + dir_;
    ASSERT_EQ(system(cmd.c_str()), 0);
  }
  std::string Write(absl::string_view name, absl::string_view content,
                    mode_t mode) {
    std::string path = dir_ + "/" + std::string(name);
    int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, mode);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(write(fd, content.data(), content.size()),
              static_cast<ssize_t>(content.size()));
    close(fd);
    chmod(path.c_str(), mode);
    return path;
  }
  std::string dir_;
};

absl::string_view Bytes(const Pin& pin) {
  return absl::string_view(reinterpret_cast<const char*>(pin.data()),
                           pin.size());
}

TEST_F(PinFileTest, ReadsTheFirstLineWithoutItsNewline) {
  auto pin = Pin::FromFile(Write("pin", "s3cret-pin\r\nsecond line\n", 0600));
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(Bytes(*pin), "s3cret-pin");
}

TEST_F(PinFileTest, MissingFileIsNotFoundAndNamesThePathNotThePin) {
  auto pin = Pin::FromFile(dir_ + "/absent");
  EXPECT_EQ(pin.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(pin.status().message(), HasSubstr("absent"));
}

TEST_F(PinFileTest, WorldReadableFileIsRefusedWithoutShowingThePin) {
  auto pin = Pin::FromFile(Write("pin", "leaky-pin\n", 0644));
  EXPECT_EQ(pin.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(pin.status().message(), Not(HasSubstr("leaky-pin")));
}

TEST_F(PinFileTest, EmptyAndOverlongPinsAreInvalid) {
  EXPECT_EQ(Pin::FromFile(Write("empty", "\n", 0600)).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto long_pin = Pin::FromFile(Write("long", std::string(300, 'x'), 0600));
  EXPECT_EQ(long_pin.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(long_pin.status().message(), Not(HasSubstr("xxxx")));
}

TEST(PinEnvTest, ReadsTheVariableAndRefusesAnUnsetOne) {
  setenv("SIGNET_TEST_PIN", "env-pin", 1);
  auto pin = Pin::FromEnv("SIGNET_TEST_PIN");
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(Bytes(*pin), "env-pin");
  unsetenv("SIGNET_TEST_PIN");
  EXPECT_EQ(Pin::FromEnv("SIGNET_TEST_PIN").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(PinTest, MovedFromPinIsEmpty) {
  Pin a = Pin::FromBytes("1234");
  Pin b = std::move(a);
  EXPECT_EQ(a.size(), 0u);  // NOLINT(bugprone-use-after-move): the contract
  EXPECT_EQ(Bytes(b), "1234");
  Pin c = Pin::FromBytes("x");
  c = std::move(b);
  EXPECT_EQ(b.size(), 0u);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(Bytes(c), "1234");
}

}  // namespace
}  // namespace signet::hsm
