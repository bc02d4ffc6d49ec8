#include "client/jwks_fetcher.h"

#include <curl/curl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/net.h"
#include "base/quote.h"
#include "base/status_macros.h"

namespace signet {
namespace {

struct CurlUrlFree {
  void operator()(CURLU* p) const { curl_url_cleanup(p); }
};
struct CurlEasyFree {
  void operator()(CURL* p) const { curl_easy_cleanup(p); }
};
struct CurlStringFree {
  void operator()(char* p) const { curl_free(p); }
};
using CurlUrl = std::unique_ptr<CURLU, CurlUrlFree>;
using CurlString = std::unique_ptr<char, CurlStringFree>;

// A URL quoted for a message: escaped and cut short.
std::string Quote(absl::string_view url) { return base::Quote(url, 200); }

std::optional<std::string> UrlPart(CURLU* url, CURLUPart part) {
  char* raw = nullptr;
  if (curl_url_get(url, part, &raw, 0) != CURLUE_OK || raw == nullptr) {
    return std::nullopt;
  }
  CurlString owned(raw);
  return std::string(raw);
}

// Parses and checks `url`; on success the parsed handle (which the fetch
// then uses as is, so the URL checked is the URL fetched) and its scheme.
absl::StatusOr<std::pair<CurlUrl, std::string>> ParseUrl(
    absl::string_view url) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("JWKS URL ", Quote(url), ": ", why));
  };
  if (url.find('\0') != absl::string_view::npos) return bad("contains NUL");
  CurlUrl handle(curl_url());
  if (handle == nullptr) return absl::InternalError("libcurl: out of memory");
  std::string text(url);
  if (curl_url_set(handle.get(), CURLUPART_URL, text.c_str(), 0) != CURLUE_OK) {
    return bad("not an absolute URL that libcurl can parse");
  }
  std::optional<std::string> scheme = UrlPart(handle.get(), CURLUPART_SCHEME);
  std::optional<std::string> host = UrlPart(handle.get(), CURLUPART_HOST);
  if (!scheme.has_value() || !host.has_value() || host->empty()) {
    return bad("no scheme or host");
  }
  absl::AsciiStrToLower(&*scheme);
  if (UrlPart(handle.get(), CURLUPART_USER).has_value() ||
      UrlPart(handle.get(), CURLUPART_PASSWORD).has_value()) {
    return bad("credentials in the URL are not accepted");
  }
  if (*scheme == "https") return std::make_pair(std::move(handle), *scheme);
  if (*scheme == "http") {
    if (base::IsLoopbackHost(*host)) {
      return std::make_pair(std::move(handle), *scheme);
    }
    return bad(absl::StrCat(
        "plain http is accepted only for loopback hosts (127.0.0.0/8, ::1, "
        "localhost), not ",
        Quote(*host), ": use https"));
  }
  return bad(absl::StrCat("scheme ", Quote(*scheme),
                          " is not accepted (https, or http on loopback)"));
}

absl::Status GlobalInit() {
  static std::once_flag once;
  static CURLcode rc = CURLE_OK;
  std::call_once(once, [] { rc = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (rc != CURLE_OK) {
    return absl::InternalError(
        absl::StrCat("curl_global_init failed: ", curl_easy_strerror(rc)));
  }
  return absl::OkStatus();
}

struct Transfer {
  size_t max_bytes = 0;
  bool too_big = false;
  std::string body;
  std::vector<std::string> cache_control;
};

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  if (t->body.size() + n > t->max_bytes) {
    t->too_big = true;
    return 0;  // CURLE_WRITE_ERROR: stop the transfer
  }
  t->body.append(data, n);
  return n;
}

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  absl::string_view line(data, n);
  if (absl::StartsWith(line, "HTTP/")) {
    t->cache_control.clear();  // a new response (after a 1xx) starts
    return n;
  }
  size_t colon = line.find(':');
  if (colon != absl::string_view::npos &&
      absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(line.substr(0, colon)),
                             "cache-control")) {
    t->cache_control.emplace_back(
        absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return n;
}

}  // namespace

absl::Status CheckJwksUrl(absl::string_view url) {
  SIGNET_RETURN_IF_ERROR(GlobalInit());
  return ParseUrl(url).status();
}

absl::Duration ParseCacheControl(absl::string_view cache_control) {
  std::optional<int64_t> max_age;
  bool repeated = false;
  for (absl::string_view directive : absl::StrSplit(cache_control, ',')) {
    directive = absl::StripAsciiWhitespace(directive);
    absl::string_view name = directive;
    absl::string_view value;
    bool has_value = false;
    if (size_t eq = directive.find('='); eq != absl::string_view::npos) {
      name = absl::StripAsciiWhitespace(directive.substr(0, eq));
      value = absl::StripAsciiWhitespace(directive.substr(eq + 1));
      has_value = true;
    }
    if (absl::EqualsIgnoreCase(name, "no-store") ||
        absl::EqualsIgnoreCase(name, "no-cache")) {
      return absl::ZeroDuration();
    }
    if (!absl::EqualsIgnoreCase(name, "max-age")) continue;
    if (max_age.has_value()) repeated = true;
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    int64_t seconds = -1;
    bool digits = has_value && !value.empty() && value.size() <= 18 &&
                  absl::c_all_of(value, absl::ascii_isdigit);
    if (!digits || !absl::SimpleAtoi(value, &seconds)) {
      return absl::ZeroDuration();  // malformed: stale (RFC 9111 4.2.1)
    }
    max_age = seconds;
  }
  if (!max_age.has_value() || repeated) return absl::ZeroDuration();
  return absl::Seconds(*max_age);
}

absl::StatusOr<std::unique_ptr<CurlJwksSource>> CurlJwksSource::Create(
    const CurlJwksSourceOptions& options) {
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("JWKS fetch timeout must be positive");
  }
  if (options.max_body_bytes == 0) {
    return absl::InvalidArgumentError("JWKS size cap must be positive");
  }
  if (!options.ca_file.empty() && access(options.ca_file.c_str(), R_OK) != 0) {
    const int err = errno;
    std::string message =
        absl::StrCat("CA file ", Quote(options.ca_file), ": ", strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES) return absl::PermissionDeniedError(message);
    return absl::InvalidArgumentError(message);
  }
  SIGNET_RETURN_IF_ERROR(GlobalInit());
  return std::unique_ptr<CurlJwksSource>(new CurlJwksSource(options));
}

absl::StatusOr<JwksDocument> CurlJwksSource::Fetch(const std::string& url) {
  SIGNET_ASSIGN_OR_RETURN(auto parsed, ParseUrl(url));
  std::unique_ptr<CURL, CurlEasyFree> curl(curl_easy_init());
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  CURL* h = curl.get();
  Transfer transfer;
  transfer.max_bytes = options_.max_body_bytes;
  char error[CURL_ERROR_SIZE] = {0};
  const long timeout_ms = static_cast<long>(
      std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.timeout)));
  bool set =
      curl_easy_setopt(h, CURLOPT_CURLU, parsed.first.get()) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, parsed.second.c_str()) ==
          CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_SSLVERSION, CURL_SSLVERSION_TLSv1_2) ==
          CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE,
                       static_cast<curl_off_t>(options_.max_body_bytes)) ==
          CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &OnBody) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_WRITEDATA, &transfer) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &OnHeader) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_HEADERDATA, &transfer) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error) == CURLE_OK &&
      curl_easy_setopt(h, CURLOPT_USERAGENT, "signet-verifier") == CURLE_OK;
  if (set && !options_.ca_file.empty()) {
    set = curl_easy_setopt(h, CURLOPT_CAINFO, options_.ca_file.c_str()) ==
          CURLE_OK;
  }
  if (!set) return absl::InternalError("libcurl: cannot set an option");

  CURLcode rc = curl_easy_perform(h);
  if (transfer.too_big || rc == CURLE_FILESIZE_EXCEEDED) {
    return absl::UnavailableError(
        absl::StrCat("JWKS fetch ", Quote(url), ": the body is larger than ",
                     options_.max_body_bytes, " bytes"));
  }
  if (rc != CURLE_OK) {
    return absl::UnavailableError(absl::StrCat(
        "JWKS fetch ", Quote(url), ": ", curl_easy_strerror(rc),
        error[0] != '\0' ? absl::StrCat(" (", error, ")") : std::string()));
  }
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200) {
    return absl::UnavailableError(absl::StrCat(
        "JWKS fetch ", Quote(url), ": HTTP status ", status, ", not 200"));
  }
  JwksDocument doc;
  doc.body = std::move(transfer.body);
  doc.cache_control = absl::StrJoin(transfer.cache_control, ", ");
  return doc;
}

}  // namespace signet
