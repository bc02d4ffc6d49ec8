#include "server/refusal_summary.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace signet::server {

void RefusalSummary::Add(std::function<uint64_t()> count, std::string result,
                         std::string what) {
  counted_.push_back(
      {std::move(count), std::move(result), std::move(what), {}});
}

void RefusalSummary::AddTally(std::function<Tally()> take, std::string result,
                              std::string what) {
  counted_.push_back({{}, std::move(result), std::move(what), std::move(take)});
}

std::map<std::string, std::string> RefusalSummary::Take() {
  std::map<std::string, std::vector<std::string>> by_result;
  for (Counted& c : counted_) {
    if (c.take) {
      const Tally tally = c.take();
      if (tally.count == 0) continue;
      by_result[c.result].push_back(absl::StrCat(
          tally.count, " ", c.what,
          tally.detail.empty() ? "" : absl::StrCat(" (", tally.detail, ")")));
      continue;
    }
    const uint64_t now = c.count();
    if (now == c.reported) continue;
    by_result[c.result].push_back(absl::StrCat(now - c.reported, " ", c.what));
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
