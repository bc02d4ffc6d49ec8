// For tests: every line logged while a LogCapture lives, instead of stderr.
#ifndef SIGNET_BASE_LOG_CAPTURE_H_
#define SIGNET_BASE_LOG_CAPTURE_H_

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace signet::log {

class LogCapture {
 public:
  LogCapture()
      : sink_(std::make_shared<Sink>()), previous_(spdlog::default_logger()) {
    spdlog::set_default_logger(
        std::make_shared<spdlog::logger>("capture", sink_));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  // The messages so far, one per line.
  std::string Text() { return sink_->Text(); }

  // Waits until a line containing `text` is logged, for at most `limit`;
  // true if it was. For lines another thread logs after the event a test
  // waits on (the line follows the event, so the test cannot simply read).
  bool WaitFor(const std::string& text,
               std::chrono::milliseconds limit = std::chrono::seconds(30)) {
    return sink_->WaitFor(text, limit);
  }

 private:
  class Sink : public spdlog::sinks::base_sink<std::mutex> {
   public:
    std::string Text() {
      std::lock_guard<std::mutex> lock(mutex_);
      return text_;
    }
    bool WaitFor(const std::string& text, std::chrono::milliseconds limit) {
      std::unique_lock<std::mutex> lock(mutex_);
      return logged_.wait_for(
          lock, limit, [&] { return text_.find(text) != std::string::npos; });
    }

   protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
      text_.append(msg.payload.data(), msg.payload.size());
      text_.push_back('\n');
      logged_.notify_all();
    }
    void flush_() override {}

   private:
    std::string text_;
    std::condition_variable logged_;
  };

  std::shared_ptr<Sink> sink_;
  std::shared_ptr<spdlog::logger> previous_;
};

}  // namespace signet::log

#endif  // SIGNET_BASE_LOG_CAPTURE_H_
