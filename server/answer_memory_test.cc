#include "server/answer_memory.h"

#include <gtest/gtest.h>

namespace signet::server {
namespace {

TEST(AnswerMemoryTest, HoldsUpToItsLimitAndNoFurther) {
  AnswerMemory memory(100);
  EXPECT_TRUE(memory.TryHold(60));
  EXPECT_TRUE(memory.TryHold(40));
  EXPECT_FALSE(memory.TryHold(1));
  EXPECT_EQ(memory.held(), 100);
  memory.Release(40);
  EXPECT_TRUE(memory.TryHold(30));
  EXPECT_EQ(memory.held(), 90);
}

// A request whose answer alone is over the limit is still served when
// nothing else is held: the limit bounds answers piling up, not one legal
// request.
TEST(AnswerMemoryTest, AnEmptyAccountTakesOneAnswerLargerThanItsLimit) {
  AnswerMemory memory(100);
  EXPECT_TRUE(memory.TryHold(500));
  EXPECT_FALSE(memory.TryHold(1));
  memory.Release(500);
  EXPECT_EQ(memory.held(), 0);
}

TEST(AnswerHoldTest, HoldsInBothAccountsFromAdmissionUntilReleased) {
  AnswerMemory tenant(1000);
  AnswerMemory all(5000);
  {
    AnswerHold hold;
    EXPECT_EQ(hold.Hold(&tenant, &all, 800), nullptr);
    EXPECT_EQ(tenant.held(), 800);
    EXPECT_EQ(all.held(), 800);
    // Written smaller than its bound: the hold shrinks to the real size.
    hold.Written(300);
    EXPECT_EQ(tenant.held(), 300);
    EXPECT_EQ(all.held(), 300);
  }  // destroyed: released
  EXPECT_EQ(tenant.held(), 0);
  EXPECT_EQ(all.held(), 0);
}

TEST(AnswerHoldTest, NamesTheAccountThatRefusedAndHoldsNothingThen) {
  AnswerMemory tenant(1000);
  AnswerMemory other_tenant(1000);
  AnswerMemory all(1500);
  AnswerHold first;
  ASSERT_EQ(first.Hold(&tenant, &all, 900), nullptr);
  AnswerHold over_tenant;
  EXPECT_EQ(over_tenant.Hold(&tenant, &all, 200), &tenant);
  EXPECT_EQ(tenant.held(), 900);
  EXPECT_EQ(all.held(), 900);
  // Another tenant under its own limit, but all tenants together are full.
  AnswerHold over_all;
  EXPECT_EQ(over_all.Hold(&other_tenant, &all, 700), &all);
  EXPECT_EQ(other_tenant.held(), 0) << "the tenant's hold was not undone";
  EXPECT_EQ(all.held(), 900);
  over_all.Release();  // holds nothing: no change
  EXPECT_EQ(all.held(), 900);
  first.Release();
  first.Release();  // idempotent
  EXPECT_EQ(tenant.held(), 0);
  EXPECT_EQ(all.held(), 0);
  EXPECT_EQ(over_all.Hold(&other_tenant, &all, 700), nullptr);
}

}  // namespace
}  // namespace signet::server
