#include "server/audit_verify.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/digest.h"
#include "hsm/public_key.h"
#include "jose/jwk.h"
#include "server/audit_log.h"
#include "server/test_audit_files.h"
#include "server/test_audit_key.h"

namespace signet::server {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

using audit_testing::HexSha256;
using audit_testing::Json;
using audit_testing::kZeroHash;
using audit_testing::Parse;
using audit_testing::ReadFile;
using audit_testing::ReadLines;
using audit_testing::TempDir;
using audit_testing::WriteFile;

void WriteLines(const std::string& path, const std::vector<std::string>& v) {
  std::string content;
  for (const std::string& line : v) {
    absl::StrAppend(&content, line, "\n");
  }
  WriteFile(path, content);
}

std::string Dump(const Json& j) {
  return j.dump(-1, ' ', true, Json::error_handler_t::replace);
}

// What someone who can write the file, but not sign, does after an edit:
// recompute every prev (and checkpoint head and count), optionally
// renumbering seq.
std::vector<std::string> Rechain(const std::vector<std::string>& lines,
                                 bool renumber = false) {
  std::vector<std::string> out;
  std::string prev = kZeroHash;
  for (size_t i = 0; i < lines.size(); ++i) {
    Json j = Parse(lines[i]);
    if (renumber) {
      j["seq"] = i + 1;
    }
    if (j["event"] == "checkpoint") {
      j["head"] = prev;
      j["count"] = j["seq"].get<uint64_t>() - 1;
    }
    j["prev"] = prev;
    out.push_back(Dump(j));
    prev = HexSha256(out.back());
  }
  return out;
}

using audit_testing::TestAuditKey;

// A log of 13 lines written by AuditLog: events 1-4, checkpoint 5, events
// 6-9, checkpoint 10, events 11-12, and the final checkpoint 13.
class AuditVerifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.File("audit.log");
    AuditLogOptions o;
    o.path = path_;
    o.syslog = false;
    o.checkpoint_kid = "audit-kid";
    o.sign_checkpoint = [this](absl::string_view digest) {
      return key_.Sign(digest);
    };
    absl::StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(o);
    ASSERT_TRUE(log.ok()) << log.status();
    for (int i = 1; i <= 10; ++i) {
      AuditEvent e;
      e.event = "sign";
      e.caller = absl::StrCat("cn:tenant-", i % 3);
      e.scope = "consumer-demo";
      e.kid = "kid-1";
      e.alg = "ES256";
      e.input_sha256 = HexSha256(absl::StrCat("claims ", i));
      e.result = "OK";
      ASSERT_TRUE((*log)->Append(e).ok());
      if (i == 4 || i == 8) {
        ASSERT_TRUE((*log)->Checkpoint().ok());
      }
    }
    log->reset();
    lines_ = ReadLines(path_);
    ASSERT_EQ(lines_.size(), 13u);
    ASSERT_EQ(Parse(lines_[12])["event"], "checkpoint");
  }

  absl::StatusOr<AuditVerifyResult> Verify(absl::string_view expected = "") {
    return VerifyAuditLog(path_, &public_key_, expected);
  }

  // The last checkpoint as syslog shows it.
  std::string SyslogCopy(size_t line_number) const {
    return absl::StrCat("Nov 23 16:42:50 host signetd[4242]: audit-checkpoint ",
                        lines_[line_number - 1], "\n");
  }

  TempDir dir_;
  std::string path_;
  TestAuditKey key_;
  hsm::PublicKey public_key_ = key_.PublicKey();
  std::vector<std::string> lines_;
};

void ExpectDataLoss(const absl::StatusOr<AuditVerifyResult>& r,
                    absl::string_view message) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(message));
}

TEST_F(AuditVerifyTest, AGoodLogVerifies) {
  absl::StatusOr<AuditVerifyResult> r = Verify();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->lines, 13u);
  EXPECT_EQ(r->checkpoints, 3u);
  EXPECT_EQ(r->last_checkpoint_seq, 13u);

  EXPECT_TRUE(VerifyAuditLog(path_, nullptr).ok());
  r = Verify(SyslogCopy(13));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(Verify(lines_[4]).ok());  // the bare line works too
}

TEST_F(AuditVerifyTest, AnEditedLineIsNamed) {
  std::vector<std::string> edited = lines_;
  Json j = Parse(edited[2]);
  j["scope"] = "enterprise-demo";
  edited[2] = Dump(j);
  WriteLines(path_, edited);
  ExpectDataLoss(Verify(),
                 "line 4: prev does not match the hash of line 3 (line 3 or "
                 "this line was changed)");
}

TEST_F(AuditVerifyTest, AnEditThatBreaksTheJsonIsNamed) {
  std::vector<std::string> edited = lines_;
  edited[5].pop_back();
  WriteLines(path_, edited);
  ExpectDataLoss(Verify(), "line 6: not valid JSON");
}

TEST_F(AuditVerifyTest, ARecomputedChainFailsTheCheckpointSignature) {
  std::vector<std::string> edited = lines_;
  Json j = Parse(edited[1]);
  j["input_sha256"] = HexSha256("other claims");
  edited[1] = Dump(j);
  WriteLines(path_, Rechain(edited));

  ExpectDataLoss(Verify(), "line 5: checkpoint signature does not verify");
  // Without the key a recomputed chain looks whole...
  EXPECT_TRUE(VerifyAuditLog(path_, nullptr).ok());
  // ...but not next to the checkpoint syslog kept.
  ExpectDataLoss(VerifyAuditLog(path_, nullptr, SyslogCopy(13)),
                 "line 13: differs from the checkpoint recorded off-host");
}

TEST_F(AuditVerifyTest, ARecomputedChainWithoutCheckpointsIsFoundBySyslog) {
  std::vector<std::string> stripped;
  for (const std::string& line : lines_) {
    if (Parse(line)["event"] != "checkpoint") {
      stripped.push_back(line);
    }
  }
  WriteLines(path_, Rechain(stripped, /*renumber=*/true));
  EXPECT_TRUE(Verify().ok());  // a chain with no checkpoint at all
  ExpectDataLoss(Verify(SyslogCopy(13)),
                 "the file ends at line 10, before the checkpoint at line 13 "
                 "recorded off-host (the tail was cut off)");
}

TEST_F(AuditVerifyTest, ACutOffTailIsFound) {
  std::vector<std::string> cut(lines_.begin(), lines_.begin() + 7);
  WriteLines(path_, cut);
  EXPECT_TRUE(Verify().ok());  // the chain alone cannot tell
  ExpectDataLoss(Verify(SyslogCopy(13)),
                 "the file ends at line 7, before the checkpoint at line 13 "
                 "recorded off-host (the tail was cut off)");
  // Lines after the last checkpoint syslog has are bounded by it only.
  std::vector<std::string> after(lines_.begin(), lines_.begin() + 11);
  WriteLines(path_, after);
  EXPECT_TRUE(Verify(SyslogCopy(10)).ok());
}

// A hand-written "segment" line that continues the chain from an earlier
// line marks every later line of the segment before as never durable
// (superseded); with a checkpoint syslog holds among them, that passed
// --expected_checkpoint (fifth outside attack).
TEST_F(AuditVerifyTest, AForgedSegmentLineCannotSupersedeARecordedCheckpoint) {
  ASSERT_EQ(rename(path_.c_str(), ClosedSegmentPath(path_, 1).c_str()), 0);
  Json forged = Parse(lines_[0]);
  for (const char* member : {"caller", "scope", "kid", "alg", "input_sha256"}) {
    forged.erase(member);
  }
  forged.erase("prev");  // the last member, after detail
  forged["seq"] = 8;
  forged["event"] = "segment";
  forged["detail"] =
      "continues the chain from audit.log.00000000000000000001 (its lines 1 "
      "to 7): writing the previous segment failed (No space left on device)";
  forged["prev"] = HexSha256(lines_[6]);
  WriteLines(path_, {Dump(forged)});
  absl::StatusOr<AuditVerifyResult> alone = Verify();
  ASSERT_TRUE(alone.ok()) << alone.status();  // the chain alone cannot tell
  EXPECT_EQ(alone->superseded_lines, 6u);
  ExpectDataLoss(Verify(SyslogCopy(13)),
                 "the checkpoint at line 13 recorded off-host is among them");
  ExpectDataLoss(Verify(SyslogCopy(10)),
                 "the checkpoint at line 10 recorded off-host is among them");
  // A checkpoint before the seam is not affected.
  EXPECT_TRUE(Verify(SyslogCopy(5)).ok());
}

TEST_F(AuditVerifyTest, LinesNoCheckpointCoversAreReportedAndCanBeAnError) {
  // Line 11 follows the checkpoint at line 10: the chain alone protects it
  // (it could be a correctly chained line appended after a cut).
  std::vector<std::string> after(lines_.begin(), lines_.begin() + 11);
  WriteLines(path_, after);
  absl::StatusOr<AuditVerifyResult> r = Verify();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->last_checkpoint_seq, 10u);
  EXPECT_EQ(r->uncovered_lines(), 1u);
  AuditVerifyOptions strict;
  strict.require_covered = true;
  ExpectDataLoss(VerifyAuditLog(path_, &public_key_, "", strict),
                 "lines 11 to 11 are covered by no checkpoint");
  // The whole log ends with a checkpoint: nothing uncovered.
  WriteLines(path_, lines_);
  r = VerifyAuditLog(path_, &public_key_, "", strict);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->uncovered_lines(), 0u);
}

TEST_F(AuditVerifyTest, AGapInTheSequenceIsNamed) {
  std::vector<std::string> gap = lines_;
  gap.erase(gap.begin() + 3);
  WriteLines(path_, Rechain(gap));
  ExpectDataLoss(Verify(), "line 4: seq is 5, expected 4 (lines are missing)");

  std::vector<std::string> repeated = lines_;
  repeated.insert(repeated.begin() + 2, lines_[1]);
  WriteLines(path_, Rechain(repeated));
  ExpectDataLoss(Verify(), "line 3: seq is 2, expected 3 (lines are repeated)");
}

TEST_F(AuditVerifyTest, ABadCheckpointSignatureIsFound) {
  std::vector<std::string> edited = lines_;
  Json j = Parse(edited[9]);
  std::string sig;
  ASSERT_TRUE(absl::WebSafeBase64Unescape(j["sig"].get<std::string>(), &sig));
  sig[10] = static_cast<char>(sig[10] ^ 0x01);
  j["sig"] = absl::WebSafeBase64Escape(sig);
  edited[9] = Dump(j);
  WriteLines(path_, Rechain(edited));
  ExpectDataLoss(Verify(), "line 10: checkpoint signature does not verify");

  // The untouched log, checked against another key.
  WriteLines(path_, lines_);
  TestAuditKey other;
  hsm::PublicKey other_public = other.PublicKey();
  ExpectDataLoss(VerifyAuditLog(path_, &other_public),
                 "line 5: checkpoint signature does not verify");
}

// Rewrites line `index` with `edit`, keeping every prev right (but not
// checkpoint heads or counts), so only the edited member is wrong.
std::vector<std::string> EditKeepingPrevs(
    std::vector<std::string> lines, size_t index,
    const std::function<void(Json&)>& edit) {
  Json j = Parse(lines[index]);
  edit(j);
  lines[index] = Dump(j);
  std::string prev = kZeroHash;
  for (std::string& line : lines) {
    Json k = Parse(line);
    k["prev"] = prev;
    line = Dump(k);
    prev = HexSha256(line);
  }
  return lines;
}

TEST_F(AuditVerifyTest, ACheckpointWithTheWrongHeadOrCountIsFound) {
  WriteLines(path_,
             EditKeepingPrevs(lines_, 4, [](Json& j) { j["count"] = 3; }));
  ExpectDataLoss(Verify(), "line 5: checkpoint count is 3, expected 4");
  WriteLines(path_, EditKeepingPrevs(lines_, 4, [](Json& j) {
               j["head"] = std::string(64, 'a');
             }));
  ExpectDataLoss(Verify(),
                 "line 5: checkpoint head does not match the hash of line 4");
}

// The tamper cases not pinned above, each found with its message: a byte
// flipped in place, lines swapped, a line duplicated as it was, a forged
// line inserted with the chain recomputed after it, and a checkpoint signed
// by another key (an unknown audit key).
TEST_F(AuditVerifyTest, EveryOtherTamperCaseIsFound) {
  {
    SCOPED_TRACE("one byte flipped");
    std::string content = ReadFile(path_);
    const size_t at = content.find("input_sha256\":\"") + 20;
    content[at] = content[at] == 'a' ? 'b' : 'a';
    WriteFile(path_, content);
    ExpectDataLoss(Verify(), "line 2: prev does not match the hash of line 1");
  }
  {
    SCOPED_TRACE("two lines swapped");
    std::vector<std::string> swapped = lines_;
    std::swap(swapped[1], swapped[2]);
    WriteLines(path_, swapped);
    ExpectDataLoss(Verify(), "line 2: seq is 3, expected 2");
    WriteLines(path_, Rechain(swapped));  // even with the chain recomputed
    ExpectDataLoss(Verify(), "line 2: seq is 3, expected 2");
  }
  {
    SCOPED_TRACE("a line duplicated as it was");
    std::vector<std::string> duplicated = lines_;
    duplicated.insert(duplicated.begin() + 6, lines_[5]);
    WriteLines(path_, duplicated);
    ExpectDataLoss(Verify(),
                   "line 7: seq is 6, expected 7 (lines are repeated)");
  }
  {
    SCOPED_TRACE("a forged line inserted, renumbered and rechained");
    std::vector<std::string> inserted = lines_;
    Json forged = Parse(lines_[1]);
    forged["scope"] = "enterprise-demo";
    inserted.insert(inserted.begin() + 2, Dump(forged));
    WriteLines(path_, Rechain(inserted, /*renumber=*/true));
    ExpectDataLoss(Verify(), "line 6: checkpoint signature does not verify");
  }
  {
    SCOPED_TRACE("a checkpoint signed by an unknown key");
    TestAuditKey forger;
    std::vector<std::string> forged = lines_;
    Json cp = Parse(forged[9]);
    absl::StatusOr<std::string> digest = CheckpointDigest(
        cp["seq"].get<uint64_t>(), cp["head"].get<std::string>());
    ASSERT_TRUE(digest.ok()) << digest.status();
    absl::StatusOr<std::string> sig = forger.Sign(*digest);
    ASSERT_TRUE(sig.ok()) << sig.status();
    cp["sig"] = absl::WebSafeBase64Escape(*sig);
    forged[9] = Dump(cp);
    WriteLines(path_, Rechain(forged));
    ExpectDataLoss(Verify(), "line 10: checkpoint signature does not verify");
  }
}

// One run of signetd with `key` as its audit key: opens the log at `path`,
// writes an audit_key line for each of `introduce` (its own kid and, as
// signetd does, the standby that follows it), a sign line if `sign`, and a
// checkpoint.
void RunWithAuditKey(const std::string& path, const TestAuditKey& key,
                     const std::string& kid,
                     const std::vector<std::string>& introduce,
                     bool sign = true) {
  AuditLogOptions o;
  o.path = path;
  o.syslog = false;
  o.checkpoint_kid = kid;
  o.sign_checkpoint = key.Signer();
  absl::StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(o);
  ASSERT_TRUE(log.ok()) << log.status();
  for (const std::string& introduced : introduce) {
    AuditEvent intro;
    intro.event = "audit_key";
    intro.kid = introduced;
    intro.result = "OK";
    ASSERT_TRUE((*log)->Append(intro).ok());
  }
  if (sign) {
    AuditEvent e;
    e.event = "sign";
    e.result = "OK";
    ASSERT_TRUE((*log)->Append(e).ok());
  }
  ASSERT_TRUE((*log)->Checkpoint().ok());
}

// The audit key rotates. With the keyring, each checkpoint is verified with
// the key its kid names; a key missing from the keyring, one that signs
// without an audit_key line introducing it, and one that no checkpoint by
// the key before it vouched for are found.
TEST(AuditKeyringTest, EachCheckpointIsVerifiedWithItsOwnKey) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  TestAuditKey first;
  TestAuditKey second;
  const std::string first_kid = *jose::JwkThumbprint(first.PublicKey().get());
  const std::string second_kid = *jose::JwkThumbprint(second.PublicKey().get());
  auto run = [&](const TestAuditKey& key, const std::string& kid,
                 const std::vector<std::string>& introduce) {
    RunWithAuditKey(path, key, kid, introduce);
  };
  run(first, first_kid, {first_kid, second_kid});
  run(second, second_kid, {second_kid});

  std::map<std::string, hsm::PublicKey> ring;
  ring.emplace(first_kid, first.PublicKey());
  ring.emplace(second_kid, second.PublicKey());
  AuditVerifyOptions with_ring;
  with_ring.keyring = &ring;
  absl::StatusOr<AuditVerifyResult> r =
      VerifyAuditLog(path, nullptr, "", with_ring);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->checkpoints, 2u);
  EXPECT_EQ(r->audit_keys, 2u);
  // One key for every checkpoint, as before the keyring, fails.
  hsm::PublicKey only_first = first.PublicKey();
  ExpectDataLoss(VerifyAuditLog(path, &only_first),
                 "checkpoint signature does not verify");
  // A keyring without the second key.
  std::map<std::string, hsm::PublicKey> partial;
  partial.emplace(first_kid, first.PublicKey());
  AuditVerifyOptions with_partial;
  with_partial.keyring = &partial;
  ExpectDataLoss(VerifyAuditLog(path, nullptr, "", with_partial),
                 absl::StrCat("checkpoint by audit key ", second_kid,
                              ", which is not in the keyring"));
  // A third key slipped into the keyring signs without an introduction.
  TestAuditKey slipped;
  const std::string slipped_kid =
      *jose::JwkThumbprint(slipped.PublicKey().get());
  run(slipped, slipped_kid, {});
  ring.emplace(slipped_kid, slipped.PublicKey());
  ExpectDataLoss(VerifyAuditLog(path, nullptr, "", with_ring),
                 absl::StrCat("checkpoint by audit key ", slipped_kid,
                              ", which no audit_key line before it "
                              "introduced"));
}

// A key that introduces itself (an attacker who added a key to the keyring
// and rewrote the tail after the last genuine checkpoint) was never vouched
// for by the key before it: refused, unless the log predates vouching.
TEST(AuditKeyringTest, AKeyNoEarlierKeyVouchedForIsRefused) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  TestAuditKey first;
  TestAuditKey second;
  const std::string first_kid = *jose::JwkThumbprint(first.PublicKey().get());
  const std::string second_kid = *jose::JwkThumbprint(second.PublicKey().get());
  auto run = [&](const TestAuditKey& key, const std::string& kid) {
    RunWithAuditKey(path, key, kid, {kid}, /*sign=*/false);
  };
  run(first, first_kid);
  run(second, second_kid);  // introduced only under its own checkpoint
  std::map<std::string, hsm::PublicKey> ring;
  ring.emplace(first_kid, first.PublicKey());
  ring.emplace(second_kid, second.PublicKey());
  AuditVerifyOptions options;
  options.keyring = &ring;
  ExpectDataLoss(VerifyAuditLog(path, nullptr, "", options),
                 absl::StrCat("checkpoint by audit key ", second_kid,
                              ", which the audit key before it never vouched "
                              "for"));
  options.allow_unvouched_keys = true;
  absl::StatusOr<AuditVerifyResult> r =
      VerifyAuditLog(path, nullptr, "", options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->audit_keys, 2u);
}

// A whole log replaced and signed by a key added to the keyring: its first
// checkpoint is not by the key the keyring begins with.
TEST(AuditKeyringTest, ALogThatDoesNotBeginWithTheKeyringsFirstKeyIsRefused) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  TestAuditKey genuine;
  TestAuditKey added;
  const std::string genuine_kid =
      *jose::JwkThumbprint(genuine.PublicKey().get());
  const std::string added_kid = *jose::JwkThumbprint(added.PublicKey().get());
  RunWithAuditKey(path, added, added_kid, {added_kid});
  std::map<std::string, hsm::PublicKey> ring;
  ring.emplace(genuine_kid, genuine.PublicKey());
  ring.emplace(added_kid, added.PublicKey());
  AuditVerifyOptions options;
  options.keyring = &ring;
  ASSERT_TRUE(VerifyAuditLog(path, nullptr, "", options).ok());
  options.first_kid = genuine_kid;
  ExpectDataLoss(VerifyAuditLog(path, nullptr, "", options),
                 absl::StrCat("the log's first checkpoint is by audit key ",
                              added_kid, ", not by ", genuine_kid));
  options.first_kid = added_kid;
  EXPECT_TRUE(VerifyAuditLog(path, nullptr, "", options).ok());
  // The order comes from the keyring file.
  const std::string ring_path = dir.File("audit-keyring.pem");
  WriteFile(ring_path, absl::StrCat(*genuine.PublicKey().SpkiPem(),
                                    *added.PublicKey().SpkiPem()));
  std::vector<std::string> order;
  ASSERT_TRUE(ReadAuditKeyring(ring_path, &order).ok());
  EXPECT_THAT(order, ::testing::ElementsAre(genuine_kid, added_kid));
}

// Once a successor has signed, the key before it never signs again: a
// checkpoint by it later (a retired key, its private half still around)
// is refused.
TEST(AuditKeyringTest, ACheckpointByARetiredKeyIsRefused) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  TestAuditKey first;
  TestAuditKey second;
  const std::string first_kid = *jose::JwkThumbprint(first.PublicKey().get());
  const std::string second_kid = *jose::JwkThumbprint(second.PublicKey().get());
  auto run = [&](const TestAuditKey& key, const std::string& kid,
                 const std::vector<std::string>& introduce) {
    RunWithAuditKey(path, key, kid, introduce, /*sign=*/false);
  };
  run(first, first_kid, {first_kid, second_kid});
  run(second, second_kid, {second_kid});
  std::map<std::string, hsm::PublicKey> ring;
  ring.emplace(first_kid, first.PublicKey());
  ring.emplace(second_kid, second.PublicKey());
  AuditVerifyOptions options;
  options.keyring = &ring;
  ASSERT_TRUE(VerifyAuditLog(path, nullptr, "", options).ok());
  run(first, first_kid, {first_kid});
  ExpectDataLoss(VerifyAuditLog(path, nullptr, "", options),
                 absl::StrCat("checkpoint by audit key ", first_kid,
                              ", which a later audit key had already "
                              "replaced"));
}

// The key switched while the log stays open (AuditLog::SetCheckpointKey):
// checkpoints before name and are signed by the first key, after by the
// second.
TEST(AuditKeyringTest, TheCheckpointKeySwitchesWhileTheLogIsOpen) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  TestAuditKey first;
  TestAuditKey second;
  const std::string first_kid = *jose::JwkThumbprint(first.PublicKey().get());
  const std::string second_kid = *jose::JwkThumbprint(second.PublicKey().get());
  AuditLogOptions o;
  o.path = path;
  o.syslog = false;
  o.checkpoint_kid = first_kid;
  o.sign_checkpoint = first.Signer();
  absl::StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(o);
  ASSERT_TRUE(log.ok()) << log.status();
  for (const std::string& kid : {first_kid, second_kid}) {
    AuditEvent intro;
    intro.event = "audit_key";
    intro.kid = kid;
    intro.result = "OK";
    ASSERT_TRUE((*log)->Append(intro).ok());
  }
  ASSERT_TRUE((*log)->Checkpoint().ok());  // by the first: vouches
  EXPECT_EQ((*log)->SetCheckpointKey("", second.Signer()).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*log)->SetCheckpointKey(second_kid, second.Signer()).ok());
  EXPECT_EQ((*log)->checkpoint_kid(), second_kid);
  AuditEvent e;
  e.event = "sign";
  e.result = "OK";
  ASSERT_TRUE((*log)->Append(e).ok());
  ASSERT_TRUE((*log)->Checkpoint().ok());  // by the second
  log->reset();

  std::map<std::string, hsm::PublicKey> ring;
  ring.emplace(first_kid, first.PublicKey());
  ring.emplace(second_kid, second.PublicKey());
  AuditVerifyOptions options;
  options.keyring = &ring;
  options.require_covered = true;
  absl::StatusOr<AuditVerifyResult> r =
      VerifyAuditLog(path, nullptr, "", options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->audit_keys, 2u);
  // The checkpoints name the key that signed them.
  const std::vector<std::string> lines = ReadLines(path);
  std::vector<std::string> kids;
  for (const std::string& line : lines) {
    absl::StatusOr<AuditLineInfo> info = ParseAuditLine(line);
    ASSERT_TRUE(info.ok());
    if (info->event == "checkpoint") kids.push_back(info->kid);
  }
  EXPECT_THAT(kids, ::testing::ElementsAre(first_kid, second_kid));
  // Without the first key's vouching checkpoint the switch is refused: the
  // same log from the switch on, with the first key unknown.
  std::map<std::string, hsm::PublicKey> only_second;
  only_second.emplace(second_kid, second.PublicKey());
  options.keyring = &only_second;
  ExpectDataLoss(VerifyAuditLog(path, nullptr, "", options),
                 "which is not in the keyring");
}

TEST(AuditKeyringTest, AKeyringFileIsReadByKid) {
  TempDir dir;
  TestAuditKey a;
  TestAuditKey b;
  const std::string path = dir.File("audit-keyring.pem");
  WriteFile(path, absl::StrCat("# signet audit checkpoint key\n# kid: x\n",
                               *a.PublicKey().SpkiPem(), "# another\n",
                               *b.PublicKey().SpkiPem()));
  absl::StatusOr<std::map<std::string, hsm::PublicKey>> ring =
      ReadAuditKeyring(path);
  ASSERT_TRUE(ring.ok()) << ring.status();
  EXPECT_EQ(ring->size(), 2u);
  EXPECT_TRUE(ring->contains(*jose::JwkThumbprint(a.PublicKey().get())));
  EXPECT_TRUE(ring->contains(*jose::JwkThumbprint(b.PublicKey().get())));
  WriteFile(path, "# nothing here\n");
  EXPECT_EQ(ReadAuditKeyring(path).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(AuditVerifyTest, AnIncompleteLastLineIsNamed) {
  const std::string whole = ReadFile(path_);
  WriteFile(path_, whole.substr(0, whole.size() - 1));
  ExpectDataLoss(Verify(), "line 13: incomplete");
}

TEST_F(AuditVerifyTest, ALineNotInTheWrittenFormIsNamed) {
  std::vector<std::string> edited = lines_;
  edited[5] = absl::StrCat("{ ", absl::string_view(edited[5]).substr(1));
  WriteLines(path_, edited);
  ExpectDataLoss(Verify(), "line 6: not in the form signet writes");
}

TEST_F(AuditVerifyTest, AFileThatDoesNotStartAChainIsFound) {
  std::vector<std::string> headless(lines_.begin() + 1, lines_.end());
  WriteLines(path_, headless);
  ExpectDataLoss(Verify(), "line 1: seq is 2, expected 1");
  WriteLines(path_, Rechain(headless, /*renumber=*/true));
  // Renumbered and rechained, but the checkpoints no longer verify.
  ExpectDataLoss(Verify(), "line 4: checkpoint signature does not verify");
}

TEST_F(AuditVerifyTest, AnOverlongLineIsNamed) {
  std::vector<std::string> edited = lines_;
  edited[2] = std::string(kMaxAuditLineBytes + 10, 'x');
  WriteLines(path_, edited);
  ExpectDataLoss(Verify(), "line 3: longer than");
}

TEST_F(AuditVerifyTest, TheExpectedCheckpointMustBeACheckpointLine) {
  absl::StatusOr<AuditVerifyResult> r = Verify(lines_[0]);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("not a checkpoint"));
  r = Verify("audit-checkpoint {garbage");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(AuditVerifyFileTest, AMissingFileIsNotFound) {
  EXPECT_EQ(VerifyAuditLog("/nonexistent/audit.log", nullptr).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(AuditVerifyFileTest, AnEmptyFileIsAnErrorUnlessAllowed) {
  TempDir dir;
  const std::string path = dir.File("audit.log");
  WriteFile(path, "");
  ExpectDataLoss(VerifyAuditLog(path, nullptr), "the file is empty");
  AuditVerifyOptions allow;
  allow.allow_empty = true;
  absl::StatusOr<AuditVerifyResult> r =
      VerifyAuditLog(path, nullptr, "", allow);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->lines, 0u);
  const std::string checkpoint = absl::StrCat(
      R"({"seq":2,"time":"2026-11-23T16:42:50.123Z","event":"checkpoint",)",
      R"("head":")", kZeroHash, R"(","count":1,"kid":"k","sig":")",
      absl::WebSafeBase64Escape(std::string(64, 'x')), R"(","prev":")",
      kZeroHash, R"("})");
  ExpectDataLoss(VerifyAuditLog(path, nullptr, checkpoint, allow),
                 "the file ends at line 0, before the checkpoint at line 2");
}

TEST(ParseAuditLineTest, AcceptsWhatTheLogWrites) {
  const std::string line = absl::StrCat(
      R"({"seq":7,"time":"2026-11-23T16:42:50.123Z","event":"sign",)",
      R"("caller":"cn:x","result":"OK","prev":")", kZeroHash, R"("})");
  absl::StatusOr<AuditLineInfo> info = ParseAuditLine(line);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->seq, 7u);
  EXPECT_EQ(info->event, "sign");
  EXPECT_EQ(info->prev, kZeroHash);
}

TEST(ParseAuditLineTest, RefusesMalformedLines) {
  const std::string time = R"("time":"2026-11-23T16:42:50.123Z")";
  const std::string prev = absl::StrCat(R"("prev":")", kZeroHash, R"(")");
  struct Case {
    std::string line;
    std::string why;
  };
  const std::vector<Case> cases = {
      {"[1,2]", "not a JSON object"},
      {absl::StrCat(R"({"seq":1,)", time, R"(,"event":"sign","x":"y",)", prev,
                    "}"),
       "unknown member \"x\""},
      {absl::StrCat(R"({)", time, R"(,"seq":1,"event":"sign",)", prev, "}"),
       "the first member is not \"seq\""},
      {absl::StrCat(R"({"seq":1,)", time, R"(,"event":"sign",)", prev,
                    R"(,"result":"OK"})"),
       "the last member is not \"prev\""},
      {absl::StrCat(R"({"seq":-1,)", time, R"(,"event":"sign",)", prev, "}"),
       "\"seq\" is not an unsigned integer"},
      {absl::StrCat(R"({"seq":0,)", time, R"(,"event":"sign",)", prev, "}"),
       "seq is 0"},
      {absl::StrCat(R"({"seq":1,"time":"2026-11-23 16:42:50","event":"sign",)",
                    prev, "}"),
       "\"time\" is not RFC 3339"},
      {absl::StrCat(R"({"seq":1,)", time, R"(,"event":"sign","prev":"ab"})"),
       "\"prev\" is not 64 lower-case hex digits"},
      {absl::StrCat(R"({"seq":1,)", time,
                    R"(,"event":"sign","caller":"a","caller":"b",)", prev, "}"),
       "not in the form signet writes"},
      {absl::StrCat(R"({"seq":1,)", time, R"(,"event":"checkpoint","head":")",
                    kZeroHash, R"(","count":0,"kid":"k",)", prev, "}"),
       "checkpoint without \"sig\""},
      {absl::StrCat(R"({"seq":1,)", time, R"(,"event":"checkpoint","head":")",
                    kZeroHash, R"(","count":0,"kid":"k","sig":"AAAA",)", prev,
                    "}"),
       "not base64url (no padding) of 64 bytes"},
      {absl::StrCat(R"({"seq":1,)", time,
                    R"(,"event":"sign","detail":"\u00e9",)", prev, "}"),
       ""},  // accepted: escaped non-ASCII
      {absl::StrCat(R"({"seq":1,)", time,
                    ","
                    R"("event":"sign","detail":"é",)",
                    prev, "}"),
       "not printable ASCII"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<AuditLineInfo> info = ParseAuditLine(c.line);
    if (c.why.empty()) {
      EXPECT_TRUE(info.ok()) << c.line << ": " << info.status();
      continue;
    }
    EXPECT_EQ(info.status().code(), absl::StatusCode::kDataLoss) << c.line;
    EXPECT_THAT(std::string(info.status().message()), HasSubstr(c.why))
        << c.line;
  }
}

}  // namespace
}  // namespace signet::server
