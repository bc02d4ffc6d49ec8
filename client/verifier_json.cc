#include "client/verifier_json.h"

#include <cmath>
#include <cstddef>
#include <exception>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/quote.h"
#include "jose/strict_json.h"
#include "nlohmann/json.hpp"

namespace signet::verifier_internal {
namespace {

using Json = nlohmann::json;

using base::Quote;  // member names: escaped, cut short

// The verifier's words for a document jose::CheckStrictJsonObject refused.
std::string Why(const jose::JsonRefusal& r) {
  using Reason = jose::JsonRefusal::Reason;
  switch (r.reason) {
    case Reason::kNotAnObject:
      return "not a JSON object";
    case Reason::kNulInString:
      return "a string contains U+0000";
    case Reason::kNulInName:
      return "a member name contains U+0000";
    case Reason::kDuplicateMember:
      return absl::StrCat("duplicate member ", Quote(r.name));
    case Reason::kTooDeep:
      return absl::StrCat("nested deeper than ", kMaxJsonDepth);
    case Reason::kNumberOverflow:
      if (!r.offset.has_value()) return "a number overflows a double";
      break;
    case Reason::kInexactInteger:  // not asked for here
      return "an integer beyond 2^53";
    case Reason::kBinary:
      return "binary value";
    case Reason::kInternal:
      return "not valid JSON";
    case Reason::kTrailingData:
    case Reason::kLoneSurrogate:
    case Reason::kSyntax:
      break;
  }
  return absl::StrCat("not valid JSON at byte ", r.offset.value_or(0) + 1);
}

}  // namespace

std::optional<Json> ParseStrictJsonObject(absl::string_view text,
                                          absl::string_view what,
                                          JsonProblem* problem) {
  auto fail = [&](absl::string_view why) -> std::optional<Json> {
    problem->message = absl::StrCat(what, ": ", why);
    return std::nullopt;
  };
  if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") {
    return fail("starts with a byte order mark");
  }
  if (text.find('\0') != absl::string_view::npos) {
    return fail("contains a NUL byte");
  }
  for (char c : text) {
    // Outside strings JSON is ASCII; inside them nlohmann checks UTF-8.
    // A quick first look: the top level must open with '{'.
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    if (c != '{') return fail("not a JSON object");
    break;
  }
  jose::StrictJsonOptions options;
  options.max_depth = kMaxJsonDepth;
  if (std::optional<jose::JsonRefusal> refusal =
          jose::CheckStrictJsonObject(text, options)) {
    problem->duplicate_member =
        refusal->reason == jose::JsonRefusal::Reason::kDuplicateMember;
    return fail(Why(*refusal));
  }
  Json parsed = Json::parse(text.begin(), text.end(), nullptr,
                            /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    return fail("not a JSON object");
  }
  return parsed;
}

}  // namespace signet::verifier_internal
