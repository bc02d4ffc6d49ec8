// The audit line scanner against the JSON library's reading of the same
// rules: every line one accepts the other accepts, with the same members.
#include "server/audit_line.h"

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace signet::server {
namespace {

using audit_line_internal::ParseWithJsonLibrary;
using audit_line_internal::ScanCanonical;
using ::testing::HasSubstr;

constexpr absl::string_view kHash =
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
// 64 bytes of base64url: 85 characters and a last one with 4 zero bits.
const std::string kSig = absl::StrCat(std::string(85, 'A'), "Q");

std::string Line(absl::string_view seq, absl::string_view time,
                 absl::string_view event, absl::string_view middle) {
  return absl::StrCat(R"({"seq":)", seq, R"(,"time":")", time, R"(","event":")",
                      event, "\"", middle, R"(,"prev":")", kHash, R"("})");
}

std::string SignLine(absl::string_view detail) {
  return Line("42", "2026-11-23T16:42:50.123Z", "sign",
              absl::StrCat(R"(,"caller":"uri:spiffe://signet.test/idp",)",
                           R"("scope":"demo","kid":"abc","alg":"ES256",)",
                           R"("input_sha256":")", kHash,
                           R"(","result":"OK","detail":")", detail, "\""));
}

std::string CheckpointLine(absl::string_view sig) {
  return Line(
      "2001", "2026-11-23T16:42:50.123Z", "checkpoint",
      absl::StrCat(R"(,"head":")", kHash, R"(","count":2000,)",
                   R"("kid":"NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",)",
                   R"("sig":")", sig, "\""));
}

// The two readings agree on `line`; returns whether it was accepted.
bool Agree(const std::string& line) {
  AuditLineView view;
  const bool scanned = ScanCanonical(line, view);
  absl::StatusOr<AuditLineInfo> parsed = ParseWithJsonLibrary(line);
  EXPECT_EQ(scanned, parsed.ok())
      << line << "\nJSON library: " << parsed.status();
  if (scanned && parsed.ok()) {
    EXPECT_EQ(view.seq, parsed->seq) << line;
    EXPECT_EQ(view.prev, parsed->prev) << line;
    EXPECT_EQ(view.head, parsed->head) << line;
    EXPECT_EQ(view.count, parsed->count) << line;
    EXPECT_EQ(view.sig, parsed->sig) << line;
    // Views keep JSON escapes; the library decodes them.
    if (view.event.find('\\') == absl::string_view::npos) {
      EXPECT_EQ(view.event, parsed->event) << line;
    }
    if (view.kid.find('\\') == absl::string_view::npos) {
      EXPECT_EQ(view.kid, parsed->kid) << line;
    }
  }
  return scanned;
}

TEST(AuditLineTest, AcceptsWhatTheLogWrites) {
  for (const std::string& line :
       {SignLine("plain"), SignLine(R"(\u00e9 \ud83d\ude00 \u007f \u0000)"),
        SignLine(R"(\" \\ \b \f \n \r \t \u001f /)"), SignLine(""),
        CheckpointLine(kSig),
        Line("7", "2026-11-23T16:42:50.123Z", "refusal_summary",
             R"(,"count":18446744073709551615,"detail":"x")"),
        Line("9", "2024-02-29T23:59:59.999Z", "segment", ""),
        Line("3", "2000-02-29T00:00:00.000Z", "audit_key",
             R"(,"kid":"k","detail":"d")")}) {
    EXPECT_TRUE(Agree(line)) << line;
    absl::StatusOr<AuditLineInfo> info = ParseAuditLine(line);
    EXPECT_TRUE(info.ok()) << line << ": " << info.status();
  }
  absl::StatusOr<AuditLineInfo> info = ParseAuditLine(CheckpointLine(kSig));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->seq, 2001u);
  EXPECT_EQ(info->event, "checkpoint");
  EXPECT_EQ(info->count, 2000u);
  EXPECT_EQ(info->head, kHash);
  EXPECT_EQ(info->sig, kSig);
  EXPECT_EQ(info->kid, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
}

// Each of these is a form the log never writes; both readings refuse it,
// and the reason comes from the JSON library's reading.
TEST(AuditLineTest, RefusesEveryOtherForm) {
  struct Case {
    std::string line;
    std::string why;
  };
  const std::string t = "2026-11-23T16:42:50.123Z";
  const std::vector<Case> cases = {
      // Escapes the writer would not make.
      {SignLine(R"(\u0041)"), "not in the form signet writes"},
      {SignLine(R"(\/)"), "not in the form signet writes"},
      {SignLine(R"(\u00E9)"), "not in the form signet writes"},
      {SignLine(R"(\u0008)"), "not in the form signet writes"},
      {SignLine(R"(\u0022)"), "not in the form signet writes"},
      {SignLine(R"(\ud83d)"), "not valid JSON"},
      {SignLine(R"(\ude00)"), "not valid JSON"},
      {SignLine(R"(\ud83d\u0041)"), "not valid JSON"},
      {SignLine(R"(\x41)"), "not valid JSON"},
      {SignLine("\t"), "not printable ASCII"},
      // Numbers.
      {Line("01", t, "sign", ""), "not valid JSON"},
      {Line("-1", t, "sign", ""), "\"seq\" is not an unsigned integer"},
      {Line("1.0", t, "sign", ""), "\"seq\" is not an unsigned integer"},
      {Line("1e3", t, "sign", ""), "not in the form signet writes"},
      {Line("18446744073709551616", t, "sign", ""),
       "not in the form signet writes"},
      {Line("0", t, "sign", ""), "seq is 0"},
      {Line("\"1\"", t, "sign", ""), "\"seq\" is not an unsigned integer"},
      // Times.
      {Line("1", "2023-02-29T00:00:00.000Z", "sign", ""), "\"time\""},
      {Line("1", "1900-02-29T00:00:00.000Z", "sign", ""), "\"time\""},
      {Line("1", "2026-11-23T23:59:60.000Z", "sign", ""), "\"time\""},
      {Line("1", "2026-11-23T24:00:00.000Z", "sign", ""), "\"time\""},
      {Line("1", "0999-11-23T00:00:00.000Z", "sign", ""), "\"time\""},
      {Line("1", "2026-11-23T16:42:50.12Z", "sign", ""), "\"time\""},
      {Line("1", "2026-11-23T16:42:50Z", "sign", ""), "\"time\""},
      {Line("1", "2026-13-23T16:42:50.123Z", "sign", ""), "\"time\""},
      // Members.
      {Line("1", t, "", ""), "\"event\" is empty"},
      {Line("1", t, "sign", R"(,"caller":1)"), "\"caller\" is not a string"},
      {Line("1", t, "sign", R"(,"caller":null)"), "\"caller\" is not a string"},
      {Line("1", t, "sign", R"(,"caller":"a","caller":"b")"),
       "not in the form signet writes"},
      {Line("1", t, "sign", R"(,"extra":"a")"), "unknown member \"extra\""},
      {Line("1", t, "sign", R"(,"se\u0071":"a")"),
       "not in the form signet writes"},
      {absl::StrCat(R"({"seq":1,"time":")", t, R"(","event":"sign"})"),
       "too few members"},
      {absl::StrCat(R"({"time":")", t, R"(","seq":1,"event":"s","prev":")",
                    kHash, R"("})"),
       "the first member is not \"seq\""},
      {absl::StrCat(R"({"seq":1,"event":"s","time":")", t, R"(","prev":")",
                    kHash, R"("})"),
       "the second member is not \"time\""},
      {absl::StrCat(R"({"seq":1,"time":")", t, R"(","event":"s","prev":")",
                    kHash, R"(","caller":"c"})"),
       "the last member is not \"prev\""},
      {absl::StrCat(R"({"seq":1,"time":")", t, R"(","event":"s","prev":")",
                    kHash, R"("} )"),
       "not in the form signet writes"},
      {absl::StrCat(R"({"seq":1,"time":")", t, R"(","event":"s","prev":")",
                    kHash, R"("}{})"),
       "not valid JSON"},
      {absl::StrCat(R"({"seq":1,"time":")", t, R"(","event":"s","prev":")",
                    absl::AsciiStrToUpper(kHash), R"("})"),
       "\"prev\" is not 64 lower-case hex digits"},
      {"[1,2]", "not a JSON object"},
      {"", "not valid JSON"},
      // Checkpoints.
      {CheckpointLine(absl::StrCat(std::string(85, 'A'), "B")),
       "not base64url (no padding) of 64 bytes"},
      {CheckpointLine(absl::StrCat(std::string(85, 'A'), "Q==")),
       "not base64url (no padding) of 64 bytes"},
      {CheckpointLine(absl::StrCat(std::string(84, 'A'), "+Q")),
       "not base64url (no padding) of 64 bytes"},
      {Line("2", t, "checkpoint",
            absl::StrCat(R"(,"head":")", kHash, R"(","count":1,"kid":"k")")),
       "checkpoint without \"sig\""},
      {Line("2", t, "checkpoint",
            absl::StrCat(R"(,"head":"ab","count":1,"kid":"k","sig":")", kSig,
                         "\"")),
       "checkpoint \"head\" is not 64 lower-case hex digits"},
      {std::string(kMaxAuditLineBytes + 1, 'x'), "longer than"},
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(Agree(c.line)) << c.line;
    AuditLineView view;
    absl::Status status = ScanAuditLine(c.line, view);
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << c.line;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.why)) << c.line;
  }
}

// Random edits of lines the log writes: the scanner accepts exactly what
// the JSON library's reading accepts.
TEST(AuditLineTest, AgreesWithTheJsonLibraryOnEditedLines) {
  const std::vector<std::string> seeds = {
      SignLine(R"(a\u00e9\n\ud83d\ude00)"), CheckpointLine(kSig),
      Line("7", "2026-11-23T16:42:50.123Z", "refusal_summary",
           R"(,"count":12,"detail":"x")"),
      Line("9", "2024-02-29T23:59:59.999Z", "segment", "")};
  // Characters an edit brings in: structure, digits, escapes, hex.
  const std::string alphabet = R"({}[]":,\/ubfnrt0123456789aAeEfF.-+Q_xz)";
  std::mt19937_64 random(20261205);
  int accepted = 0;
  int refused = 0;
  for (int round = 0; round < 300000; ++round) {
    std::string line = seeds[random() % seeds.size()];
    const int edits = 1 + static_cast<int>(random() % 3);
    for (int e = 0; e < edits && !line.empty(); ++e) {
      const size_t at = random() % line.size();
      const char c = alphabet[random() % alphabet.size()];
      switch (random() % 5) {
        case 0:
          line[at] = c;
          break;
        case 1:
          line.erase(at, 1);
          break;
        case 2:
          line.insert(at, 1, c);
          break;
        case 3: {  // repeat a piece (a member, a digit run, an escape)
          const size_t len = 1 + random() % 12;
          line.insert(at, line.substr(at, len));
          break;
        }
        default: {  // swap two characters
          const size_t other = random() % line.size();
          std::swap(line[at], line[other]);
          break;
        }
      }
    }
    (Agree(line) ? accepted : refused)++;
  }
  // The edits reach both sides of the rules.
  EXPECT_GT(accepted, 1000);
  EXPECT_GT(refused, 1000);
  std::printf("%d edited lines accepted, %d refused\n", accepted, refused);
}

}  // namespace
}  // namespace signet::server
