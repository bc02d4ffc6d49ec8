#include "server/refusal_summary.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace signet::server {

void RefusalSummary::Add(std::function<uint64_t()> count, std::string result,
                         std::string what,
                         std::function<std::string()> detail) {
  counted_.push_back({std::move(count), std::move(result), std::move(what),
                      std::move(detail)});
}

std::map<std::string, std::string> RefusalSummary::Take() {
  std::map<std::string, std::vector<std::string>> by_result;
  for (Counted& c : counted_) {
    const uint64_t now = c.count();
    if (now == c.reported) continue;
    std::string detail = c.detail ? c.detail() : std::string();
    by_result[c.result].push_back(
        absl::StrCat(now - c.reported, " ", c.what,
                     detail.empty() ? "" : absl::StrCat(" (", detail, ")")));
    c.reported = now;
  }
  std::map<std::string, std::string> report;
  for (const auto& [result, parts] : by_result) {
    report[result] =
        absl::StrCat(absl::StrJoin(parts, ", "), " since the last report");
  }
  return report;
}

}  // namespace signet::server
