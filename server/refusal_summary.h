// Refusals signetd counts rather than audits one by one, because they come
// in floods (connections closed by the acceptor, calls whose request never
// came, refused health watches, unknown methods): each has a counter, and a
// report says what each counted since the last report, grouped by the
// status code the clients got, for one log line and one audit line each.
//
// Thread-safety: the counters may move on any thread; Take() is called from
// one thread (signetd's health loop).
#ifndef SIGNET_SERVER_REFUSAL_SUMMARY_H_
#define SIGNET_SERVER_REFUSAL_SUMMARY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace signet::server {

class RefusalSummary {
 public:
  // `count` reads a counter that only grows; `result` is the status code
  // name the refused clients got; `what` says what is counted, in the
  // plural form "call(s) of …".
  void Add(std::function<uint64_t()> count, std::string result,
           std::string what);

  // What a source that keeps its own tally hands over at each report: how
  // many since the last one, and, in the same snapshot, a detail ("by …")
  // that follows `what` in parentheses unless empty.
  struct Tally {
    uint64_t count = 0;
    std::string detail;
  };
  // For a source whose count and detail must agree: `take` is called once
  // per report and returns what it counted since its last call.
  void AddTally(std::function<Tally()> take, std::string result,
                std::string what);

  // By result: "N what, M other-what since the last report", for every
  // counter that moved since the last Take(). Empty when none moved.
  std::map<std::string, std::string> Take();

 private:
  struct Counted {
    std::function<uint64_t()> count;
    std::string result;
    std::string what;
    std::function<Tally()> take;  // set instead of `count` by AddTally
    uint64_t reported = 0;
  };
  std::vector<Counted> counted_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_REFUSAL_SUMMARY_H_
