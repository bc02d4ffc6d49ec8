#include "base/net.h"

#include "gtest/gtest.h"

namespace signet::base {
namespace {

TEST(NetTest, LoopbackLiteralsAndLocalhost) {
  EXPECT_TRUE(IsLoopbackHost("127.0.0.1"));
  EXPECT_TRUE(IsLoopbackHost("127.255.0.9"));
  EXPECT_TRUE(IsLoopbackHost("[::1]"));
  EXPECT_TRUE(IsLoopbackHost("::1"));
  EXPECT_TRUE(IsLoopbackHost("localhost"));
  EXPECT_TRUE(IsLoopbackHost("LocalHost"));
}

// A name that starts like a loopback address resolves wherever its owner
// wants: plain http:// to it is not local.
TEST(NetTest, NamesThatOnlyLookLoopbackAreNot) {
  EXPECT_FALSE(IsLoopbackHost("127.evil.example"));
  EXPECT_FALSE(IsLoopbackHost("127.0.0.1.evil.example"));
  EXPECT_FALSE(IsLoopbackHost("localhost.evil.example"));
  EXPECT_FALSE(IsLoopbackHost("10.0.0.1"));
  EXPECT_FALSE(IsLoopbackHost("[::2]"));
  EXPECT_FALSE(IsLoopbackHost("::ffff:10.0.0.1"));
  EXPECT_FALSE(IsLoopbackHost(""));
  EXPECT_FALSE(IsLoopbackHost("[]"));
}

}  // namespace
}  // namespace signet::base
