#include "jose/strict_json.h"

#include <cmath>
#include <exception>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "nlohmann/json.hpp"

namespace signet::jose {
namespace {

using Json = nlohmann::json;

// Receives nlohmann's SAX events; the first problem stops the parse (a
// callback returns false) and is kept.
class StrictSax : public nlohmann::json_sax<Json> {
 public:
  explicit StrictSax(const StrictJsonOptions& options) : options_(options) {}

  std::optional<JsonRefusal>& refusal() { return refusal_; }

  bool null() override { return OnValue(Of(JsonValue::Kind::kNull)); }
  bool boolean(bool) override { return OnValue(Of(JsonValue::Kind::kBool)); }
  bool number_integer(number_integer_t value) override {
    // nlohmann only calls this for a token that starts with '-'.
    JsonValue v = Of(JsonValue::Kind::kNegative);
    v.negative_value = value;
    if (options_.refuse_inexact_integers &&
        value < -static_cast<int64_t>(kMaxExactInteger)) {
      return RefuseInexact(std::move(v));
    }
    return OnValue(std::move(v));
  }
  bool number_unsigned(number_unsigned_t value) override {
    JsonValue v = Of(JsonValue::Kind::kUnsigned);
    v.unsigned_value = value;
    if (options_.refuse_inexact_integers && value > kMaxExactInteger) {
      return RefuseInexact(std::move(v));
    }
    return OnValue(std::move(v));
  }
  bool number_float(number_float_t value, const string_t& token) override {
    // nlohmann usually refuses these first (error 406, in parse_error).
    if (!std::isfinite(value)) {
      return Refuse(JsonRefusal::Reason::kNumberOverflow);
    }
    JsonValue v = Of(JsonValue::Kind::kFloat);
    v.text = token;
    // Digits only, yet a float: too big for 64 bits, so beyond 2^53 too.
    if (options_.refuse_inexact_integers &&
        token.find_first_of(".eE") == std::string::npos) {
      return RefuseInexact(std::move(v));
    }
    return OnValue(std::move(v));
  }
  bool string(string_t& value) override {
    if (absl::StrContains(value, absl::string_view("\0", 1))) {
      return Refuse(JsonRefusal::Reason::kNulInString);
    }
    JsonValue v = Of(JsonValue::Kind::kString);
    v.text = std::move(value);
    return OnValue(std::move(v));
  }
  bool binary(binary_t&) override {
    return Refuse(JsonRefusal::Reason::kBinary);
  }
  bool start_object(std::size_t) override {
    if (!OnValue(Of(JsonValue::Kind::kObject))) return false;
    return Push(/*object=*/true);
  }
  bool key(string_t& name) override {
    if (absl::StrContains(name, absl::string_view("\0", 1))) {
      return Refuse(JsonRefusal::Reason::kNulInName, name);
    }
    if (frames_.size() == 1) top_member_ = name;
    if (!frames_.back().names.insert(name).second) {
      return Refuse(JsonRefusal::Reason::kDuplicateMember, name);
    }
    return true;
  }
  bool end_object() override { return Pop(); }
  bool start_array(std::size_t) override {
    if (!OnValue(Of(JsonValue::Kind::kArray))) return false;
    return Push(/*object=*/false);
  }
  bool end_array() override { return Pop(); }

  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& e) override {
    // `position` counts the bytes read, the offending one included.
    if (refusal_.has_value()) return false;  // a callback refused first
    const size_t offset = position > 0 ? position - 1 : 0;
    JsonRefusal::Reason reason = JsonRefusal::Reason::kSyntax;
    const absl::string_view what = e.what();
    if (top_done_) {
      reason = JsonRefusal::Reason::kTrailingData;
    } else if (e.id == 406) {  // out_of_range.406: "number overflow parsing"
      reason = JsonRefusal::Reason::kNumberOverflow;
    } else if (absl::StrContains(what, "surrogate U+")) {
      reason = JsonRefusal::Reason::kLoneSurrogate;
    }
    Refuse(reason);
    refusal_->offset = offset;
    if (reason == JsonRefusal::Reason::kSyntax) {
      // nlohmann's description, without its "last read: '...'" echo of the
      // input.
      absl::string_view description = what;
      if (size_t start = description.find("syntax error");
          start != absl::string_view::npos) {
        description.remove_prefix(start);
      } else {
        description = "the parser refused it";
      }
      if (size_t echo = description.find("; last read");
          echo != absl::string_view::npos) {
        description = description.substr(0, echo);
      }
      refusal_->description = std::string(description);
    }
    return false;
  }

 private:
  struct Frame {
    bool object;
    std::set<std::string, std::less<>> names;
  };

  static JsonValue Of(JsonValue::Kind kind) {
    JsonValue v;
    v.kind = kind;
    return v;
  }

  // Every value, containers included, before their content.
  bool OnValue(JsonValue value) {
    if (frames_.empty()) {
      if (value.kind != JsonValue::Kind::kObject) {
        Refuse(JsonRefusal::Reason::kNotAnObject);
        refusal_->got = value.kind;
        return false;
      }
      return true;
    }
    if (frames_.size() == 1 && options_.on_top_level_value) {
      options_.on_top_level_value(top_member_, value);
    }
    return true;
  }

  bool Push(bool object) {
    if (static_cast<int>(frames_.size()) >= options_.max_depth) {
      return Refuse(JsonRefusal::Reason::kTooDeep);
    }
    frames_.push_back(Frame{object, {}});
    return true;
  }

  bool Pop() {
    frames_.pop_back();
    if (frames_.empty()) top_done_ = true;
    return true;
  }

  // Keeps the first refusal; always false (the parse stops).
  bool Refuse(JsonRefusal::Reason reason, const std::string& name = "") {
    if (refusal_.has_value()) return false;
    JsonRefusal r;
    r.reason = reason;
    r.name = name;
    r.depth = static_cast<int>(frames_.size());
    r.top_member = top_member_;
    refusal_ = std::move(r);
    return false;
  }

  bool RefuseInexact(JsonValue value) {
    if (refusal_.has_value()) return false;
    Refuse(JsonRefusal::Reason::kInexactInteger);
    refusal_->value = std::move(value);
    return false;
  }

  const StrictJsonOptions& options_;
  std::optional<JsonRefusal> refusal_;
  std::vector<Frame> frames_;
  std::string top_member_;  // the last member name of the top-level object
  bool top_done_ = false;   // the top-level object has been closed
};

}  // namespace

absl::string_view KindName(JsonValue::Kind kind) {
  switch (kind) {
    case JsonValue::Kind::kString:
      return "a string";
    case JsonValue::Kind::kUnsigned:
    case JsonValue::Kind::kNegative:
    case JsonValue::Kind::kFloat:
      return "a number";
    case JsonValue::Kind::kBool:
      return "a boolean";
    case JsonValue::Kind::kNull:
      return "null";
    case JsonValue::Kind::kObject:
      return "an object";
    case JsonValue::Kind::kArray:
      return "an array";
  }
  return "an unknown value";
}

std::optional<JsonRefusal> CheckStrictJsonObject(
    absl::string_view text, const StrictJsonOptions& options) {
  StrictSax sax(options);
  bool ok = false;
  try {
    ok = Json::sax_parse(text.begin(), text.end(), &sax,
                         Json::input_format_t::json, /*strict=*/true);
  } catch (const std::exception&) {
    ok = false;  // std::bad_alloc at least; never the input's bytes
  }
  if (ok) return std::nullopt;
  if (sax.refusal().has_value()) return std::move(sax.refusal());
  JsonRefusal refusal;
  refusal.reason = JsonRefusal::Reason::kInternal;
  return refusal;
}

}  // namespace signet::jose
