#include "server/hardening.h"

#include <dlfcn.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::server {
namespace {

using ::testing::HasSubstr;

TEST(HardeningTest, DisablesCoreDumpsAndDumpability) {
  ASSERT_TRUE(HardenProcess().ok());
  struct rlimit rl;
  ASSERT_EQ(getrlimit(RLIMIT_CORE, &rl), 0);
  EXPECT_EQ(rl.rlim_cur, 0u);
  EXPECT_EQ(rl.rlim_max, 0u);
  EXPECT_EQ(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
}

// The soft open-file limit goes to what is wanted, lower or higher, but
// never above the hard limit.
TEST(HardeningTest, SetsTheOpenFileLimitToWhatIsWantedWithinTheHardLimit) {
  struct rlimit original;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &original), 0);
  const int hard =
      original.rlim_max == RLIM_INFINITY || original.rlim_max > (1u << 30)
          ? (1 << 30)
          : static_cast<int>(original.rlim_max);
  int before = 0;
  EXPECT_EQ(SetOpenFileLimit(512, &before), std::min(512, hard));
  EXPECT_EQ(before,
            static_cast<int>(std::min<rlim_t>(original.rlim_cur, 1u << 30)));
  EXPECT_EQ(SetOpenFileLimit(1 << 30, &before), hard);
  EXPECT_EQ(before, std::min(512, hard));
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &original), 0);
}

TEST(HardeningTest, RefusesSoftHsmInTheMemoryMap) {
  const char kMaps[] =
      "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
      "7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/softhsm/libsofthsm2.so\n";
  absl::Status st = CheckNoHsmLibraryMapped(kMaps);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("libsofthsm2.so"));
  EXPECT_TRUE(CheckNoHsmLibraryMapped(
                  "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/pkcs11/"
                  "p11-kit-client.so\n")
                  .ok());
}

// This process's own memory map: clean, then SoftHSM loaded in (as a
// misconfigured module path would) and named.
TEST(HardeningTest, FindsSoftHsmLoadedIntoThisProcess) {
  EXPECT_TRUE(CheckNoHsmLibraryMappedInThisProcess().ok());
  void* softhsm = dlopen("/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW);
  ASSERT_NE(softhsm, nullptr) << dlerror();
  absl::Status st = CheckNoHsmLibraryMappedInThisProcess();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("libsofthsm2.so"));
  dlclose(softhsm);
}

}  // namespace
}  // namespace signet::server
