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
#include "nlohmann/json.hpp"

namespace signet::verifier_internal {
namespace {

using Json = nlohmann::json;

using base::Quote;  // member names: escaped, cut short

// Finds what the DOM parse would hide or accept silently: duplicate names,
// NUL in strings, excessive depth, numbers that overflow. The first problem
// found is kept in error_; returning false stops the parse.
class StrictSax : public nlohmann::json_sax<Json> {
 public:
  const std::string& error() const { return error_; }
  bool duplicate_member() const { return duplicate_member_; }

  bool null() override { return Value(); }
  bool boolean(bool) override { return Value(); }
  bool number_integer(number_integer_t) override { return Value(); }
  bool number_unsigned(number_unsigned_t) override { return Value(); }
  bool number_float(number_float_t value, const string_t&) override {
    if (!std::isfinite(value)) return Fail("a number overflows a double");
    return Value();
  }
  bool string(string_t& value) override {
    if (value.find('\0') != std::string::npos) {
      return Fail("a string contains U+0000");
    }
    return Value();
  }
  bool binary(binary_t&) override { return Fail("binary value"); }
  bool start_object(std::size_t) override {
    if (!Value()) return false;
    return Open(/*object=*/true);
  }
  bool key(string_t& name) override {
    if (name.find('\0') != std::string::npos) {
      return Fail("a member name contains U+0000");
    }
    if (!frames_.back().names.insert(name).second) {
      if (error_.empty()) duplicate_member_ = true;
      return Fail(absl::StrCat("duplicate member ", Quote(name)));
    }
    return true;
  }
  bool end_object() override {
    frames_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    if (!Value()) return false;
    return Open(/*object=*/false);
  }
  bool end_array() override {
    frames_.pop_back();
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& e) override {
    if (error_.empty()) {
      error_ = absl::StrCat("not valid JSON at byte ", position);
    }
    return false;
  }

 private:
  struct Frame {
    bool object;
    std::set<std::string> names;
  };

  bool Value() {
    if (frames_.empty()) {
      if (seen_top_) return Fail("more than one JSON value");
      seen_top_ = true;
    }
    return true;
  }
  bool Open(bool object) {
    if (frames_.empty() && !object) return Fail("not a JSON object");
    if (static_cast<int>(frames_.size()) >= kMaxJsonDepth) {
      return Fail(absl::StrCat("nested deeper than ", kMaxJsonDepth));
    }
    frames_.push_back(Frame{object, {}});
    return true;
  }
  bool Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }

  std::vector<Frame> frames_;
  bool seen_top_ = false;
  bool duplicate_member_ = false;
  std::string error_;
};

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
  StrictSax sax;
  bool ok = false;
  try {
    ok = Json::sax_parse(text.begin(), text.end(), &sax,
                         Json::input_format_t::json, /*strict=*/true);
  } catch (const std::exception&) {
    ok = false;
  }
  if (!ok) {
    problem->duplicate_member = sax.duplicate_member();
    return fail(sax.error().empty() ? std::string("not valid JSON")
                                    : sax.error());
  }
  Json parsed = Json::parse(text.begin(), text.end(), nullptr,
                            /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    return fail("not a JSON object");
  }
  return parsed;
}

}  // namespace signet::verifier_internal
