#include "base/log.h"

#include <spdlog/sinks/stdout_sinks.h>

#include <memory>

namespace signet::log {

void Init(bool json_lines) {
  auto logger = spdlog::stderr_logger_mt("signetd");
  if (json_lines) {
    // Messages are ours and never carry quotes from requests unescaped:
    // request data is logged only as hashes.
    logger->set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l","msg":"%v"})",
        spdlog::pattern_time_type::utc);
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %n: %v",
                        spdlog::pattern_time_type::utc);
  }
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace signet::log
