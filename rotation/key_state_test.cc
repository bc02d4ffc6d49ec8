#include "rotation/key_state.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "gmock/gmock.h"
#include "google/protobuf/timestamp.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "rotation/key_record.pb.h"

namespace signet::rotation {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::signet::base::SimulatedClock;
using ::testing::HasSubstr;

// 2024-03-01T00:00:00Z, an arbitrary instant.
constexpr absl::Time kT0 = absl::FromUnixSeconds(1709251200);
constexpr absl::Duration kOneNs = absl::Nanoseconds(1);

// The schedule of a successor key: a PENDING hour before it activates, and
// boundaries with sub-second parts so the nanosecond conversions are
// exercised at every boundary.
struct Schedule {
  absl::Time created = kT0;
  absl::Time activate = kT0 + absl::Hours(1) + absl::Nanoseconds(123456789);
  absl::Time retire = activate + absl::Hours(24 * 30);
  absl::Time unpublish = retire + absl::Hours(2) + absl::Nanoseconds(7);
  absl::Time destroy = unpublish + absl::Hours(24);
};

KeyRecord MakeRecord(const Schedule& s) {
  KeyRecord record;
  record.set_scope("consumer-main");
  record.set_key_id("0a1b2c3d");
  record.set_algorithm("ES256");
  record.set_key_generation(2);
  *record.mutable_created_at() = TimeToProto(s.created);
  *record.mutable_activate_at() = TimeToProto(s.activate);
  *record.mutable_retire_at() = TimeToProto(s.retire);
  *record.mutable_unpublish_at() = TimeToProto(s.unpublish);
  *record.mutable_destroy_at() = TimeToProto(s.destroy);
  record.set_kid("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
  return record;
}

void Revoke(KeyRecord& record, absl::Time at) {
  KeyRecord::Revocation* revocation = record.mutable_revocation();
  *revocation->mutable_revoked_at() = TimeToProto(at);
  revocation->set_reason("key material suspected exposed");
  revocation->set_revoked_by("uri:spiffe://example.org/admin/alice");
}

constexpr KeyState kAllStates[] = {
    KeyState::kPending,     KeyState::kActive,    KeyState::kRetired,
    KeyState::kUnpublished, KeyState::kDestroyed, KeyState::kRevoked,
};

// --- StateAt -----------------------------------------------------------------

TEST(StateAtTest, EachBoundaryInstantBelongsToTheLaterState) {
  const Schedule s;
  const KeyRecord record = MakeRecord(s);
  ASSERT_TRUE(ValidateKeyRecord(record).ok()) << ValidateKeyRecord(record);

  struct Boundary {
    const char* name;
    absl::Time at;
    KeyState before;
    KeyState from;
  };
  const Boundary boundaries[] = {
      {"activate_at", s.activate, KeyState::kPending, KeyState::kActive},
      {"retire_at", s.retire, KeyState::kActive, KeyState::kRetired},
      {"unpublish_at", s.unpublish, KeyState::kRetired, KeyState::kUnpublished},
      {"destroy_at", s.destroy, KeyState::kUnpublished, KeyState::kDestroyed},
  };

  SimulatedClock clock(s.created);
  EXPECT_EQ(StateAt(record, clock.Now()), KeyState::kPending);
  for (const Boundary& b : boundaries) {
    SCOPED_TRACE(b.name);
    clock.SetTime(b.at - kOneNs);
    EXPECT_EQ(StateAt(record, clock.Now()), b.before);
    clock.Advance(kOneNs);
    ASSERT_EQ(clock.Now(), b.at);
    EXPECT_EQ(StateAt(record, clock.Now()), b.from);
    clock.Advance(kOneNs);
    EXPECT_EQ(StateAt(record, clock.Now()), b.from);
  }
}

TEST(StateAtTest, WalkVisitsEveryStateOnceInOrder) {
  const Schedule s;
  const KeyRecord record = MakeRecord(s);
  SimulatedClock clock(s.created - absl::Hours(1));

  std::vector<KeyState> seen;
  while (clock.Now() <= s.destroy + absl::Hours(1)) {
    const KeyState state = StateAt(record, clock.Now());
    if (seen.empty() || seen.back() != state) {
      seen.push_back(state);
    }
    clock.Advance(absl::Minutes(17));
  }
  EXPECT_THAT(seen,
              ::testing::ElementsAre(KeyState::kPending, KeyState::kActive,
                                     KeyState::kRetired, KeyState::kUnpublished,
                                     KeyState::kDestroyed));
}

TEST(StateAtTest, InfiniteEnds) {
  const KeyRecord record = MakeRecord(Schedule{});
  EXPECT_EQ(StateAt(record, absl::InfinitePast()), KeyState::kPending);
  EXPECT_EQ(StateAt(record, absl::InfiniteFuture()), KeyState::kDestroyed);
}

TEST(StateAtTest, EqualBoundariesSkipTheEmptyState) {
  Schedule s;
  s.retire = s.activate;  // never ACTIVE
  const KeyRecord never_active = MakeRecord(s);
  ASSERT_TRUE(ValidateKeyRecord(never_active).ok());
  EXPECT_EQ(StateAt(never_active, s.activate - kOneNs), KeyState::kPending);
  EXPECT_EQ(StateAt(never_active, s.activate), KeyState::kRetired);

  Schedule all_equal;
  all_equal.activate = all_equal.retire = all_equal.unpublish =
      all_equal.destroy = all_equal.created;
  const KeyRecord instant = MakeRecord(all_equal);
  ASSERT_TRUE(ValidateKeyRecord(instant).ok());
  EXPECT_EQ(StateAt(instant, kT0 - kOneNs), KeyState::kPending);
  EXPECT_EQ(StateAt(instant, kT0), KeyState::kDestroyed);
}

TEST(StateAtTest, OutOfOrderRecordNeverSignsPastAnyBoundary) {
  // retire_at before activate_at: invalid, but StateAt must still not let the
  // key sign after it should have retired.
  Schedule s;
  s.activate = kT0 + absl::Hours(2);
  s.retire = kT0 + absl::Hours(1);
  s.unpublish = kT0 + absl::Hours(3);
  s.destroy = kT0 + absl::Hours(4);
  const KeyRecord record = MakeRecord(s);
  ASSERT_EQ(ValidateKeyRecord(record).code(),
            absl::StatusCode::kInvalidArgument);
  for (absl::Time t = kT0; t <= s.destroy; t += absl::Minutes(10)) {
    EXPECT_FALSE(CanSign(StateAt(record, t))) << t;
  }
  EXPECT_EQ(StateAt(record, kT0 + absl::Minutes(150)), KeyState::kRetired);
}

TEST(StateAtTest, RevocationWinsFromRevokedAtInEveryState) {
  const Schedule s;
  struct Phase {
    KeyState state;
    absl::Time revoke_at;
  };
  // One instant inside each phase, and each phase's first instant.
  const Phase phases[] = {
      {KeyState::kPending, s.created},
      {KeyState::kPending, s.created + absl::Minutes(30)},
      {KeyState::kActive, s.activate},
      {KeyState::kActive, s.activate + absl::Hours(24 * 10)},
      {KeyState::kRetired, s.retire},
      {KeyState::kRetired, s.retire + absl::Hours(1)},
      {KeyState::kUnpublished, s.unpublish},
      {KeyState::kUnpublished, s.unpublish + absl::Hours(12)},
      {KeyState::kDestroyed, s.destroy},
      {KeyState::kDestroyed, s.destroy + absl::Hours(24 * 365)},
  };
  for (const Phase& phase : phases) {
    SCOPED_TRACE(absl::StrCat(KeyStateName(phase.state), " revoked at ",
                              absl::FormatTime(phase.revoke_at)));
    KeyRecord record = MakeRecord(s);
    ASSERT_EQ(StateAt(record, phase.revoke_at), phase.state);
    Revoke(record, phase.revoke_at);
    ASSERT_TRUE(ValidateKeyRecord(record).ok()) << ValidateKeyRecord(record);

    SimulatedClock clock(phase.revoke_at - kOneNs);
    // Not yet revoked: the schedule still decides.
    EXPECT_NE(StateAt(record, clock.Now()), KeyState::kRevoked);
    clock.Advance(kOneNs);
    EXPECT_EQ(StateAt(record, clock.Now()), KeyState::kRevoked);
    // And it stays revoked past every later boundary.
    for (absl::Time later : {s.activate, s.retire, s.unpublish, s.destroy,
                             absl::InfiniteFuture()}) {
      if (later >= phase.revoke_at) {
        EXPECT_EQ(StateAt(record, later), KeyState::kRevoked);
      }
    }
  }
}

TEST(StateAtTest, RevokedBeforeCreationIsRevokedThroughout) {
  const Schedule s;
  KeyRecord record = MakeRecord(s);
  Revoke(record, s.created - absl::Hours(1));
  ASSERT_TRUE(ValidateKeyRecord(record).ok()) << ValidateKeyRecord(record);
  for (absl::Time t :
       {s.created, s.activate, s.retire, s.unpublish, s.destroy}) {
    EXPECT_EQ(StateAt(record, t), KeyState::kRevoked);
  }
}

// --- State properties --------------------------------------------------------

TEST(KeyStatePropertiesTest, PublishedAndSigningStates) {
  for (KeyState state : kAllStates) {
    SCOPED_TRACE(KeyStateName(state));
    EXPECT_EQ(IsPublished(state), state == KeyState::kPending ||
                                      state == KeyState::kActive ||
                                      state == KeyState::kRetired);
    EXPECT_EQ(CanSign(state), state == KeyState::kActive);
  }
}

TEST(KeyStatePropertiesTest, Names) {
  EXPECT_EQ(KeyStateName(KeyState::kPending), "PENDING");
  EXPECT_EQ(KeyStateName(KeyState::kActive), "ACTIVE");
  EXPECT_EQ(KeyStateName(KeyState::kRetired), "RETIRED");
  EXPECT_EQ(KeyStateName(KeyState::kUnpublished), "UNPUBLISHED");
  EXPECT_EQ(KeyStateName(KeyState::kDestroyed), "DESTROYED");
  EXPECT_EQ(KeyStateName(KeyState::kRevoked), "REVOKED");
}

// --- Timestamp conversion ----------------------------------------------------

TEST(TimeConversionTest, RoundTripsToTheNanosecond) {
  const absl::Time times[] = {
      absl::UnixEpoch(),
      kT0,
      kT0 + absl::Nanoseconds(999999999),
      absl::UnixEpoch() - kOneNs,
      absl::FromUnixSeconds(-62135596800),  // 0001-01-01
      absl::FromUnixSeconds(253402300799) + absl::Nanoseconds(999999999),
  };
  for (absl::Time t : times) {
    EXPECT_EQ(TimeFromProto(TimeToProto(t)), t) << t;
  }
}

TEST(TimeConversionTest, NanosStayNonNegativeBefore1970) {
  const google::protobuf::Timestamp ts =
      TimeToProto(absl::UnixEpoch() - absl::Milliseconds(1500));
  EXPECT_EQ(ts.seconds(), -2);
  EXPECT_EQ(ts.nanos(), 500000000);

  const google::protobuf::Timestamp just_before =
      TimeToProto(absl::UnixEpoch() - kOneNs);
  EXPECT_EQ(just_before.seconds(), -1);
  EXPECT_EQ(just_before.nanos(), 999999999);
}

TEST(TimeConversionTest, InfiniteTimeIsNotSilentlyClamped) {
  KeyRecord record = MakeRecord(Schedule{});
  *record.mutable_destroy_at() = TimeToProto(absl::InfiniteFuture());
  const absl::Status status = ValidateKeyRecord(record);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("KeyRecord.destroy_at"));
}

// --- NewActiveKeyRecord ------------------------------------------------------

TEST(NewActiveKeyRecordTest, FirstKeyIsActiveAtCreation) {
  const absl::Time now = kT0 + absl::Nanoseconds(42);
  KeyTimings timings;
  timings.rotation_period = absl::Hours(24 * 7);
  timings.publish_grace = absl::Hours(3);
  timings.destroy_delay = absl::Hours(48);

  const KeyRecord record =
      NewActiveKeyRecord("enterprise-rsa", "00ff", "PS256", 3072, now, timings);
  ASSERT_TRUE(ValidateKeyRecord(record).ok()) << ValidateKeyRecord(record);
  EXPECT_EQ(record.scope(), "enterprise-rsa");
  EXPECT_EQ(record.key_id(), "00ff");
  EXPECT_EQ(record.algorithm(), "PS256");
  EXPECT_EQ(record.rsa_bits(), 3072u);
  EXPECT_EQ(record.key_generation(), 1u);
  EXPECT_FALSE(record.has_revocation());
  EXPECT_TRUE(record.kid().empty());

  const absl::Time retire = now + absl::Hours(24 * 7);
  const absl::Time unpublish = retire + absl::Hours(3);
  const absl::Time destroy = unpublish + absl::Hours(48);
  EXPECT_EQ(TimeFromProto(record.created_at()), now);
  EXPECT_EQ(TimeFromProto(record.activate_at()), now);
  EXPECT_EQ(TimeFromProto(record.retire_at()), retire);
  EXPECT_EQ(TimeFromProto(record.unpublish_at()), unpublish);
  EXPECT_EQ(TimeFromProto(record.destroy_at()), destroy);

  SimulatedClock clock(now);
  EXPECT_TRUE(CanSign(StateAt(record, clock.Now())));
  clock.SetTime(retire - kOneNs);
  EXPECT_EQ(StateAt(record, clock.Now()), KeyState::kActive);
  clock.SetTime(retire);
  EXPECT_EQ(StateAt(record, clock.Now()), KeyState::kRetired);
  clock.SetTime(unpublish);
  EXPECT_EQ(StateAt(record, clock.Now()), KeyState::kUnpublished);
  clock.SetTime(destroy);
  EXPECT_EQ(StateAt(record, clock.Now()), KeyState::kDestroyed);
}

TEST(NewActiveKeyRecordTest, DefaultTimings) {
  const KeyRecord record =
      NewActiveKeyRecord("consumer-main", "01", "ES256", 0, kT0, KeyTimings{});
  ASSERT_TRUE(ValidateKeyRecord(record).ok()) << ValidateKeyRecord(record);
  EXPECT_EQ(TimeFromProto(record.retire_at()), kT0 + absl::Hours(24 * 30));
  EXPECT_EQ(TimeFromProto(record.unpublish_at()),
            kT0 + absl::Hours(24 * 30 + 2));
  EXPECT_EQ(TimeFromProto(record.destroy_at()), kT0 + absl::Hours(24 * 31 + 2));
}

TEST(NewActiveKeyRecordTest, NegativeDurationGivesARecordValidationRefuses) {
  KeyTimings timings;
  timings.publish_grace = -absl::Hours(1);
  const KeyRecord record =
      NewActiveKeyRecord("consumer-main", "01", "ES256", 0, kT0, timings);
  const absl::Status status = ValidateKeyRecord(record);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("KeyRecord.unpublish_at"));
}

// --- ValidateKeyRecord
// ---------------------------------------------------------

TEST(ValidateKeyRecordTest, AcceptsValidRecords) {
  EXPECT_TRUE(ValidateKeyRecord(MakeRecord(Schedule{})).ok());

  // Only the fields StateAt and the reconcile loop rely on are checked.
  KeyRecord minimal = MakeRecord(Schedule{});
  minimal.clear_kid();
  minimal.set_rsa_bits(0);
  EXPECT_TRUE(ValidateKeyRecord(minimal).ok());

  KeyRecord revoked = MakeRecord(Schedule{});
  *revoked.mutable_revocation()->mutable_revoked_at() = TimeToProto(kT0);
  EXPECT_TRUE(ValidateKeyRecord(revoked).ok());  // reason, revoked_by: free
}

struct InvalidCase {
  std::string name;
  std::function<void(KeyRecord&)> mutate;
  // The field the error message must name, as "KeyRecord.<field>".
  std::string field;
};

class InvalidRecordTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(InvalidRecordTest, ValidateRefusesNamingTheField) {
  KeyRecord record = MakeRecord(Schedule{});
  GetParam().mutate(record);
  const absl::Status status = ValidateKeyRecord(record);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("KeyRecord." + GetParam().field));
}

TEST_P(InvalidRecordTest, ParseRefusesNamingTheField) {
  KeyRecord record = MakeRecord(Schedule{});
  GetParam().mutate(record);
  const absl::StatusOr<KeyRecord> parsed =
      ParseKeyRecord(SerializeKeyRecord(record));
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(parsed.status().message(),
              HasSubstr("KeyRecord." + GetParam().field));
}

// Moves a timestamp field by `d` relative to another field's value.
std::function<void(KeyRecord&)> SetRelative(
    google::protobuf::Timestamp* (KeyRecord::*target)(),
    const google::protobuf::Timestamp& (KeyRecord::*base)() const,
    absl::Duration d) {
  return [=](KeyRecord& r) {
    *(r.*target)() = TimeToProto(TimeFromProto((r.*base)()) + d);
  };
}

INSTANTIATE_TEST_SUITE_P(
    PerField, InvalidRecordTest,
    ::testing::Values(
        InvalidCase{"EmptyScope", [](KeyRecord& r) { r.clear_scope(); },
                    "scope"},
        InvalidCase{"EmptyKeyId", [](KeyRecord& r) { r.clear_key_id(); },
                    "key_id"},
        InvalidCase{"OddLengthKeyId", [](KeyRecord& r) { r.set_key_id("abc"); },
                    "key_id"},
        InvalidCase{"UppercaseKeyId",
                    [](KeyRecord& r) { r.set_key_id("0A1B"); }, "key_id"},
        InvalidCase{"NonHexKeyId", [](KeyRecord& r) { r.set_key_id("key1"); },
                    "key_id"},
        InvalidCase{"EmptyAlgorithm", [](KeyRecord& r) { r.clear_algorithm(); },
                    "algorithm"},
        InvalidCase{"GenerationZero",
                    [](KeyRecord& r) { r.set_key_generation(0); },
                    "key_generation"},
        InvalidCase{"MissingCreatedAt",
                    [](KeyRecord& r) { r.clear_created_at(); }, "created_at"},
        InvalidCase{"MissingActivateAt",
                    [](KeyRecord& r) { r.clear_activate_at(); }, "activate_at"},
        InvalidCase{"MissingRetireAt",
                    [](KeyRecord& r) { r.clear_retire_at(); }, "retire_at"},
        InvalidCase{"MissingUnpublishAt",
                    [](KeyRecord& r) { r.clear_unpublish_at(); },
                    "unpublish_at"},
        InvalidCase{"MissingDestroyAt",
                    [](KeyRecord& r) { r.clear_destroy_at(); }, "destroy_at"},
        InvalidCase{"NegativeNanos",
                    [](KeyRecord& r) { r.mutable_retire_at()->set_nanos(-1); },
                    "retire_at"},
        InvalidCase{"NanosOfAWholeSecond",
                    [](KeyRecord& r) {
                      r.mutable_unpublish_at()->set_nanos(1000000000);
                    },
                    "unpublish_at"},
        InvalidCase{"SecondsAfterYear9999",
                    [](KeyRecord& r) {
                      r.mutable_destroy_at()->set_seconds(253402300800);
                    },
                    "destroy_at"},
        InvalidCase{"SecondsBeforeYear1",
                    [](KeyRecord& r) {
                      r.mutable_created_at()->set_seconds(-62135596801);
                    },
                    "created_at"},
        InvalidCase{"ActivateBeforeCreated",
                    SetRelative(&KeyRecord::mutable_activate_at,
                                &KeyRecord::created_at, -kOneNs),
                    "activate_at"},
        InvalidCase{"RetireBeforeActivate",
                    SetRelative(&KeyRecord::mutable_retire_at,
                                &KeyRecord::activate_at, -kOneNs),
                    "retire_at"},
        InvalidCase{"UnpublishBeforeRetire",
                    SetRelative(&KeyRecord::mutable_unpublish_at,
                                &KeyRecord::retire_at, -kOneNs),
                    "unpublish_at"},
        InvalidCase{"DestroyBeforeUnpublish",
                    SetRelative(&KeyRecord::mutable_destroy_at,
                                &KeyRecord::unpublish_at, -kOneNs),
                    "destroy_at"},
        InvalidCase{"RevocationWithoutRevokedAt",
                    [](KeyRecord& r) {
                      r.mutable_revocation()->set_reason("compromised");
                    },
                    "revocation.revoked_at"},
        InvalidCase{"RevocationWithInvalidRevokedAt",
                    [](KeyRecord& r) {
                      r.mutable_revocation()->mutable_revoked_at()->set_nanos(
                          -5);
                    },
                    "revocation.revoked_at"}),
    [](const ::testing::TestParamInfo<InvalidCase>& info) {
      return info.param.name;
    });

// --- Carried operator changes
// ------------------------------------------------------

OperatorChange Change(const std::string& id, absl::Time made_at,
                      size_t response_bytes = 16) {
  OperatorChange c;
  c.set_request_id(id);
  c.set_request_sha256(std::string(32, 'h'));
  c.set_response(std::string(response_bytes, 'r'));
  *c.mutable_made_at() = TimeToProto(made_at);
  return c;
}

std::vector<std::string> CarriedIds(const KeyRecord& r) {
  std::vector<std::string> ids;
  for (const OperatorChange& c : r.carried_changes()) {
    ids.push_back(c.request_id());
  }
  return ids;
}

TEST(CarryOperatorChangesTest, KeepsTheLastDaysChangesOnceEach) {
  KeyRecord into = MakeRecord(Schedule{});
  *into.add_operator_changes() = Change("own", kT0);
  const absl::Time now = kT0 + absl::Hours(2);
  EXPECT_TRUE(CarryOperatorChanges(
      {Change("own", kT0), Change("a", kT0 + absl::Hours(1)),
       Change("stale", now - kChangeRetention - absl::Seconds(1)),
       Change("b", kT0)},
      now, &into));
  // Oldest first; the one it holds already and the stale one are not added.
  EXPECT_THAT(CarriedIds(into), ::testing::ElementsAre("b", "a"));
  // Nothing new: nothing added, and the record is unchanged.
  const std::string before = SerializeKeyRecord(into);
  EXPECT_FALSE(CarryOperatorChanges({Change("a", kT0)}, now, &into));
  EXPECT_EQ(SerializeKeyRecord(into), before);
  // A day after "a", adding one drops those made before that day ("b").
  const absl::Time later = kT0 + absl::Hours(1) + kChangeRetention;
  EXPECT_TRUE(CarryOperatorChanges({Change("c", later)}, later, &into));
  EXPECT_THAT(CarriedIds(into), ::testing::ElementsAre("a", "c"));
}

TEST(CarryOperatorChangesTest, DropsTheOldestToFitItsBytes) {
  KeyRecord into = MakeRecord(Schedule{});
  std::vector<OperatorChange> many;
  for (int i = 0; i < 100; ++i) {
    many.push_back(Change(absl::StrCat("id-", 100 + i), kT0 + absl::Seconds(i),
                          /*response_bytes=*/300));
  }
  EXPECT_TRUE(CarryOperatorChanges(many, kT0 + absl::Minutes(5), &into));
  size_t bytes = 0;
  for (const OperatorChange& c : into.carried_changes()) {
    bytes += c.ByteSizeLong();
  }
  EXPECT_LE(bytes, kMaxCarriedChangeBytes);
  EXPECT_GT(bytes + 400, kMaxCarriedChangeBytes);  // filled, not emptied
  const std::vector<std::string> ids = CarriedIds(into);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.back(), "id-199");  // the newest stay
  EXPECT_NE(ids.front(), "id-100");
  // The record still fits what the HSM layer stores (16 KiB).
  EXPECT_LT(SerializeKeyRecord(into).size(), 16u * 1024);
}

// --- Serialization
// -------------------------------------------------------------

TEST(SerializationTest, RoundTrip) {
  KeyRecord record = MakeRecord(Schedule{});
  record.set_rsa_bits(4096);
  Revoke(record, kT0 + absl::Hours(5));

  const std::string bytes = SerializeKeyRecord(record);
  const absl::StatusOr<KeyRecord> parsed = ParseKeyRecord(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*parsed, record))
      << parsed->DebugString();
  EXPECT_EQ(StateAt(*parsed, kT0 + absl::Hours(5)), KeyState::kRevoked);
  // Deterministic: re-encoding what was read gives the same bytes.
  EXPECT_EQ(SerializeKeyRecord(*parsed), bytes);
  EXPECT_EQ(SerializeKeyRecord(record), bytes);
}

TEST(SerializationTest, UnknownFieldsFromANewerWriterSurvive) {
  const std::string bytes = SerializeKeyRecord(MakeRecord(Schedule{}));
  // Field 1000, varint 1: tag (1000 << 3 | 0) = 8000 = 0xc0 0x3e.
  const std::string extra("\xc0\x3e\x01", 3);
  const absl::StatusOr<KeyRecord> parsed = ParseKeyRecord(bytes + extra);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(SerializeKeyRecord(*parsed), bytes + extra);
}

TEST(SerializationTest, GarbageIsRefused) {
  const std::string valid = SerializeKeyRecord(MakeRecord(Schedule{}));
  const std::string garbage[] = {
      "",  // decodes to an empty record, which validation refuses
      "not a protobuf",
      std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11),
      std::string("\x0a\x05"
                  "ab",
                  4),  // length 5, two bytes follow
      std::string("\x00\x00\x00\x00", 4),
      valid.substr(0, valid.size() - 1),  // truncated
      valid.substr(1),                    // misaligned
      std::string(64 * 1024 + 1, '\0'),   // oversized
  };
  for (const std::string& bytes : garbage) {
    const absl::StatusOr<KeyRecord> parsed = ParseKeyRecord(bytes);
    ASSERT_FALSE(parsed.ok()) << "accepted " << bytes.size() << " bytes";
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr("ParseKeyRecord"));
  }
}

}  // namespace
}  // namespace signet::rotation
