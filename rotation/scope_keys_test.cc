#include "rotation/scope_keys.h"

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::rotation {
namespace {

using ::testing::ElementsAre;
using ::testing::Key;
using ::testing::SizeIs;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

TEST(ParseRecordsTest, RecordsThatDoNotDescribeTheirKeyAreIgnored) {
  const std::string key_id("\x0a\x0b", 2);
  const KeyRecord record = NewActiveKeyRecord("demo-consumer", "0a0b", "ES256",
                                              0, kNow, KeyTimings());
  KeyRecord forged = record;
  forged.set_key_id("00ff");  // claims another key than the one it is beside

  // A record beside the key it describes is kept, keyed by hex key id.
  int unreadable = -1;
  EXPECT_THAT(
      ParseRecords({{key_id, {1, SerializeKeyRecord(record)}}}, &unreadable),
      ElementsAre(Key("0a0b")));
  EXPECT_EQ(unreadable, 0);

  std::map<std::string, hsm::StoredRecord> stored = {
      {key_id, {1, SerializeKeyRecord(forged)}},
      {std::string("\x01\x02", 2), {1, "not a record"}}};
  EXPECT_THAT(ParseRecords(stored, &unreadable), SizeIs(0));
  EXPECT_EQ(unreadable, 2);
}

}  // namespace
}  // namespace signet::rotation
