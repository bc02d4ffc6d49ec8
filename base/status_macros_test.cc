#include "base/status_macros.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace signet::base {
namespace {

// Counts the calls of the functions below, and how far a function got.
struct Trace {
  int calls = 0;
  bool reached_end = false;
};

absl::Status Step(Trace& trace, absl::Status result) {
  ++trace.calls;
  return result;
}

template <typename T>
absl::StatusOr<T> Produce(Trace& trace, absl::StatusOr<T> result) {
  ++trace.calls;
  return result;
}

// A value that counts how often it was copied and moved.
struct Counted {
  Counted() = default;
  Counted(const Counted& other)
      : copies(other.copies + 1), moves(other.moves) {}
  Counted(Counted&& other) noexcept
      : copies(other.copies), moves(other.moves + 1) {}
  Counted& operator=(const Counted& other) {
    copies = other.copies + 1;
    moves = other.moves;
    return *this;
  }
  Counted& operator=(Counted&& other) noexcept {
    copies = other.copies;
    moves = other.moves + 1;
    return *this;
  }
  int copies = 0;
  int moves = 0;
};

// --- SIGNET_RETURN_IF_ERROR ------------------------------------------------

absl::Status TwoSteps(Trace& trace, absl::Status first, absl::Status second) {
  SIGNET_RETURN_IF_ERROR(Step(trace, first));
  SIGNET_RETURN_IF_ERROR(Step(trace, second));
  trace.reached_end = true;
  return absl::OkStatus();
}

TEST(ReturnIfErrorTest, ContinuesOnOk) {
  Trace trace;
  EXPECT_TRUE(TwoSteps(trace, absl::OkStatus(), absl::OkStatus()).ok());
  EXPECT_EQ(trace.calls, 2);
  EXPECT_TRUE(trace.reached_end);
}

TEST(ReturnIfErrorTest, ReturnsTheFirstErrorUnchanged) {
  Trace trace;
  const absl::Status got = TwoSteps(trace, absl::NotFoundError("no key 7"),
                                    absl::InternalError("not this one"));
  EXPECT_EQ(got, absl::NotFoundError("no key 7"));
  EXPECT_EQ(trace.calls, 1);  // the second step never ran
  EXPECT_FALSE(trace.reached_end);
}

TEST(ReturnIfErrorTest, ReturnsALaterError) {
  Trace trace;
  const absl::Status got = TwoSteps(trace, absl::OkStatus(),
                                    absl::UnavailableError("token removed"));
  EXPECT_EQ(got, absl::UnavailableError("token removed"));
  EXPECT_EQ(trace.calls, 2);
  EXPECT_FALSE(trace.reached_end);
}

absl::StatusOr<int> StepThenValue(Trace& trace, absl::Status first) {
  SIGNET_RETURN_IF_ERROR(Step(trace, first));
  return 42;
}

TEST(ReturnIfErrorTest, ReturnsIntoAStatusOr) {
  Trace trace;
  absl::StatusOr<int> got =
      StepThenValue(trace, absl::PermissionDeniedError("not yours"));
  EXPECT_EQ(got.status(), absl::PermissionDeniedError("not yours"));
  EXPECT_EQ(trace.calls, 1);

  got = StepThenValue(trace, absl::OkStatus());
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, 42);
  EXPECT_EQ(trace.calls, 2);
}

absl::Status FromAnExistingStatus(const absl::Status& existing, Trace& trace) {
  SIGNET_RETURN_IF_ERROR(existing);
  trace.reached_end = true;
  return absl::OkStatus();
}

TEST(ReturnIfErrorTest, TakesAnLvalue) {
  Trace trace;
  const absl::Status failed = absl::DataLossError("torn line");
  EXPECT_EQ(FromAnExistingStatus(failed, trace), failed);
  EXPECT_EQ(failed, absl::DataLossError("torn line"));  // not moved from
  EXPECT_FALSE(trace.reached_end);
  EXPECT_TRUE(FromAnExistingStatus(absl::OkStatus(), trace).ok());
  EXPECT_TRUE(trace.reached_end);
}

// One statement: it may be the body of an unbraced if/else.
absl::Status InAnUnbracedIf(bool check, Trace& trace, absl::Status result) {
  if (check)
    SIGNET_RETURN_IF_ERROR(Step(trace, result));
  else
    trace.calls += 100;
  trace.reached_end = true;
  return absl::OkStatus();
}

TEST(ReturnIfErrorTest, IsOneStatement) {
  Trace trace;
  EXPECT_EQ(InAnUnbracedIf(true, trace, absl::AbortedError("x")),
            absl::AbortedError("x"));
  EXPECT_EQ(trace.calls, 1);
  EXPECT_FALSE(trace.reached_end);

  Trace other;
  EXPECT_TRUE(InAnUnbracedIf(false, other, absl::AbortedError("x")).ok());
  EXPECT_EQ(other.calls, 100);
  EXPECT_TRUE(other.reached_end);
}

// --- SIGNET_ASSIGN_OR_RETURN -----------------------------------------------

absl::StatusOr<std::string> Joined(Trace& trace,
                                   absl::StatusOr<std::string> first,
                                   absl::StatusOr<std::string> second) {
  SIGNET_ASSIGN_OR_RETURN(std::string a, Produce(trace, std::move(first)));
  SIGNET_ASSIGN_OR_RETURN(auto b, Produce(trace, std::move(second)));
  trace.reached_end = true;
  return a + "." + b;
}

TEST(AssignOrReturnTest, DeclaresTheValues) {
  Trace trace;
  absl::StatusOr<std::string> got =
      Joined(trace, std::string("header"), std::string("claims"));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "header.claims");
  EXPECT_EQ(trace.calls, 2);  // each expression evaluated once
  EXPECT_TRUE(trace.reached_end);
}

TEST(AssignOrReturnTest, ReturnsTheFirstErrorUnchanged) {
  Trace trace;
  absl::StatusOr<std::string> got =
      Joined(trace, absl::InvalidArgumentError("bad header"),
             absl::InternalError("not this one"));
  EXPECT_EQ(got.status(), absl::InvalidArgumentError("bad header"));
  EXPECT_EQ(trace.calls, 1);
  EXPECT_FALSE(trace.reached_end);

  Trace later;
  got = Joined(later, std::string("header"),
               absl::ResourceExhaustedError("full"));
  EXPECT_EQ(got.status(), absl::ResourceExhaustedError("full"));
  EXPECT_EQ(later.calls, 2);
  EXPECT_FALSE(later.reached_end);
}

absl::Status AssignExisting(Trace& trace, absl::StatusOr<int> result,
                            int& out) {
  SIGNET_ASSIGN_OR_RETURN(out, Produce(trace, std::move(result)));
  trace.reached_end = true;
  return absl::OkStatus();
}

TEST(AssignOrReturnTest, AssignsAnExistingVariable) {
  Trace trace;
  int out = -1;
  EXPECT_TRUE(AssignExisting(trace, 7, out).ok());
  EXPECT_EQ(out, 7);
  EXPECT_EQ(trace.calls, 1);
  EXPECT_TRUE(trace.reached_end);

  Trace failed;
  EXPECT_EQ(AssignExisting(failed, absl::NotFoundError("gone"), out),
            absl::NotFoundError("gone"));
  EXPECT_EQ(out, 7);  // left as it was
  EXPECT_EQ(failed.calls, 1);
  EXPECT_FALSE(failed.reached_end);
}

absl::StatusOr<int> Dereferenced(absl::StatusOr<std::unique_ptr<int>> p) {
  SIGNET_ASSIGN_OR_RETURN(std::unique_ptr<int> owned, std::move(p));
  return *owned;
}

TEST(AssignOrReturnTest, TakesMoveOnlyValues) {
  absl::StatusOr<int> got = Dereferenced(std::make_unique<int>(5));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, 5);
  EXPECT_EQ(Dereferenced(absl::UnavailableError("hsm down")).status(),
            absl::UnavailableError("hsm down"));
}

absl::Status MovesTheValue(Counted& declared, Counted& assigned) {
  SIGNET_ASSIGN_OR_RETURN(Counted fresh, absl::StatusOr<Counted>(Counted()));
  declared = std::move(fresh);
  SIGNET_ASSIGN_OR_RETURN(assigned, absl::StatusOr<Counted>(Counted()));
  return absl::OkStatus();
}

TEST(AssignOrReturnTest, MovesTheValueNeverCopies) {
  Counted declared;
  Counted assigned;
  ASSERT_TRUE(MovesTheValue(declared, assigned).ok());
  EXPECT_EQ(declared.copies, 0);
  EXPECT_GT(declared.moves, 0);
  EXPECT_EQ(assigned.copies, 0);
  EXPECT_GT(assigned.moves, 0);
}

absl::StatusOr<std::pair<int, int>> APair(Trace& trace) {
  ++trace.calls;
  return std::pair<int, int>(3, 4);
}

// Two uses on one line, and a comma inside the expression's template
// arguments.
#define SIGNET_TEST_TWO_ON_ONE_LINE(trace)       \
  SIGNET_ASSIGN_OR_RETURN(auto p, APair(trace)); \
  SIGNET_ASSIGN_OR_RETURN(auto q, absl::StatusOr<std::pair<int, int>>(p))

absl::StatusOr<int> TwoOnOneLine(Trace& trace) {
  SIGNET_TEST_TWO_ON_ONE_LINE(trace);
  return p.first + q.second;
}

#undef SIGNET_TEST_TWO_ON_ONE_LINE

TEST(AssignOrReturnTest, TemporariesHaveUniqueNames) {
  Trace trace;
  absl::StatusOr<int> got = TwoOnOneLine(trace);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, 7);
  EXPECT_EQ(trace.calls, 1);
}

}  // namespace
}  // namespace signet::base
