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
  // plural form "call(s) of …". `detail`, if given, is asked once each
  // time the counter moved and says more ("by …"): it follows `what`, in
  // parentheses, unless empty.
  void Add(std::function<uint64_t()> count, std::string result,
           std::string what, std::function<std::string()> detail = {});

  // By result: "N what, M other-what since the last report", for every
  // counter that moved since the last Take(). Empty when none moved.
  std::map<std::string, std::string> Take();

 private:
  struct Counted {
    std::function<uint64_t()> count;
    std::string result;
    std::string what;
    std::function<std::string()> detail;
    uint64_t reported = 0;
  };
  std::vector<Counted> counted_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_REFUSAL_SUMMARY_H_
