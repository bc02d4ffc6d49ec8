#include "server/jwks_http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "base/log.h"
#include "server/jwt.h"

namespace signet::server {
namespace {

// GnuTLS priorities: TLS 1.2 and 1.3 only (relying parties are often
// older HTTP stacks than signet's own gRPC clients, which get 1.3 only),
// and for TLS 1.2 only AEAD ciphers with ephemeral ECDH (no CBC, no static
// RSA key exchange, no SHA-1 MACs).
constexpr char kTlsPriorities[] =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:"
    "-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:+CHACHA20-POLY1305:"
    "-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA";

// Leaves the URL exactly as sent: paths are matched byte for byte, so no
// encoded form can reach a document by another spelling.
size_t NoUnescape(void*, MHD_Connection*, char* s) { return strlen(s); }

// `close`: the response says "Connection: close", and libmicrohttpd closes
// the connection once it is sent.
int Queue(MHD_Connection* connection, unsigned int status,
          absl::string_view body, absl::string_view content_type, bool close) {
  MHD_Response* response = MHD_create_response_from_buffer(
      body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  if (close) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONNECTION, "close");
  }
  if (!content_type.empty()) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE,
                            std::string(content_type).c_str());
  }
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  }
  int ret = MHD_queue_response(connection, status, response);
  MHD_destroy_response(response);
  return ret;
}

// Marks a request whose first handler call passed CheckRequest.
char kHeadersChecked;

// Connection deadlines are in-process intervals: monotonic time, so a wall
// clock stepped back never stretches one (docs/architecture.md, "Code
// conventions").
int64_t MonotonicNowNs() {
  return absl::ToInt64Nanoseconds(base::MonotonicNow());
}

// The client's address for a log line ("?" when libmicrohttpd has none).
std::string ClientAddress(MHD_Connection* connection) {
  const MHD_ConnectionInfo* info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (info == nullptr || info->client_addr == nullptr) return "?";
  char text[INET6_ADDRSTRLEN] = "?";
  const sockaddr* addr = info->client_addr;
  if (addr->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(addr)->sin_addr,
              text, sizeof(text));
  } else if (addr->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(addr)->sin6_addr,
              text, sizeof(text));
  }
  return text;
}

// What a request's header lines say about its framing.
struct HeaderCensus {
  int hosts = 0;
  int lengths = 0;        // Content-Length lines
  int encodings = 0;      // Transfer-Encoding lines
  bool bad_name = false;  // a name that is not an RFC 9110 token
};

// RFC 9110 section 5.6.2 tchar.
bool IsTokenChar(char c) {
  return absl::ascii_isalnum(c) ||
         absl::string_view("!#$%&'*+-.^_`|~").find(c) !=
             absl::string_view::npos;
}

MHD_Result CountHeader(void* census_ptr, MHD_ValueKind, const char* key,
                       const char*) {
  HeaderCensus& census = *static_cast<HeaderCensus*>(census_ptr);
  const absl::string_view name = key == nullptr ? "" : key;
  // "Content-Length : 74" is a header named "Content-Length " to
  // libmicrohttpd, so the length goes unseen here while a proxy in front
  // may honour it (RFC 9112 section 5.1: whitespace before the colon is a
  // 400).
  if (name.empty() || !std::all_of(name.begin(), name.end(), IsTokenChar)) {
    census.bad_name = true;
  }
  if (absl::EqualsIgnoreCase(name, MHD_HTTP_HEADER_HOST)) ++census.hosts;
  if (absl::EqualsIgnoreCase(name, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
    ++census.lengths;
  }
  if (absl::EqualsIgnoreCase(name, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
    ++census.encodings;
  }
  return MHD_YES;
}

// If-None-Match (RFC 9110 section 13.1.2): "*" or a comma-separated list
// of entity tags, compared weakly (a W/ prefix is ignored).
bool EtagMatches(absl::string_view if_none_match, absl::string_view etag) {
  for (absl::string_view tag : absl::StrSplit(if_none_match, ',')) {
    tag = absl::StripAsciiWhitespace(tag);
    if (tag == "*") return true;
    absl::ConsumePrefix(&tag, "W/");
    if (tag == etag) return true;
  }
  return false;
}

// Every If-None-Match line, joined with commas: RFC 9110 section 5.3 lets a
// list be split over several lines (libmicrohttpd's lookup gives the first).
MHD_Result JoinIfNoneMatch(void* joined_ptr, MHD_ValueKind, const char* key,
                           const char* value) {
  std::string& joined = *static_cast<std::string*>(joined_ptr);
  if (key != nullptr && value != nullptr &&
      absl::EqualsIgnoreCase(key, MHD_HTTP_HEADER_IF_NONE_MATCH)) {
    absl::StrAppend(&joined, joined.empty() ? "" : ",", value);
  }
  return MHD_YES;
}

}  // namespace

// libmicrohttpd's C callbacks; `cls` is the server.
struct MhdCallbacks {
  static MHD_Result HandleRequest(void* cls, MHD_Connection* connection,
                                  const char* url, const char* method,
                                  const char* version,
                                  const char* /*upload_data*/,
                                  size_t* upload_data_size,
                                  void** request_state) {
    auto* server = static_cast<JwksHttpServer*>(cls);
    // The first call, headers complete: check the request and refuse it
    // before any body is read (libmicrohttpd will not queue a response
    // while a body is arriving). A response queued now closes the
    // connection afterwards, so an accepted GET or HEAD is answered on the
    // second call, which keeps the connection alive.
    if (*request_state != &kHeadersChecked) {
      const char* target_end = static_cast<const char*>(*request_state);
      *request_state = &kHeadersChecked;
      server->HeadersIn(connection);
      return server->CheckRequest(connection, method, version, target_end)
                 ? MHD_YES
                 : MHD_NO;
    }
    *upload_data_size = 0;
    return server->Respond(connection, url) ? MHD_YES : MHD_NO;
  }

  // Called once the request line is parsed, before libmicrohttpd cuts the
  // query off: returns where the request target's first NUL byte is, which
  // the handler receives as the request's state. Without a NUL byte in the
  // target, that is the one libmicrohttpd wrote over the space before the
  // HTTP version.
  static void* UriLog(void* /*cls*/, const char* uri, MHD_Connection*) {
    if (uri == nullptr) return nullptr;
    return const_cast<char*>(uri + strlen(uri));
  }

  static void RequestCompleted(void* cls, MHD_Connection* connection,
                               void** /*request_state*/,
                               MHD_RequestTerminationCode) {
    static_cast<const JwksHttpServer*>(cls)->Rearm(connection);
  }

  static void NotifyConnection(void* cls, MHD_Connection* connection,
                               void** socket_context,
                               MHD_ConnectionNotificationCode code) {
    auto* server = static_cast<JwksHttpServer*>(cls);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      server->Track(connection, socket_context);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
      server->Untrack(*socket_context);
      *socket_context = nullptr;
    }
  }

  static void Log(void* cls, const char* format, va_list ap) {
    char text[512];
    vsnprintf(text, sizeof(text), format, ap);
    std::string line(absl::StripTrailingAsciiWhitespace(text));
    // One message, one line, whatever a client managed to put into it.
    for (char& c : line) {
      if (absl::ascii_iscntrl(static_cast<unsigned char>(c))) c = '?';
    }
    static_cast<JwksHttpServer*>(cls)->log_->Warn(
        [&] { return absl::StrCat("libmicrohttpd: ", line); });
  }
};

JwksHttpServer::JwksHttpServer(const JwksHttpOptions& options)
    : options_(options),
      deadline_ns_(absl::ToInt64Nanoseconds(options.request_deadline)),
      headers_ns_(absl::ToInt64Nanoseconds(
          std::min(options.request_deadline, kCrowdedHeaderTime))),
      log_(std::make_unique<log::ThrottledLog>(
          "JWKS HTTP: ", kThrottledLogLines, kThrottledLogWindow)) {}

absl::StatusOr<std::unique_ptr<JwksHttpServer>> JwksHttpServer::Start(
    const JwksHttpOptions& options) {
  const std::string& address = options.listen_address;
  size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("http.listen_address \"", address, "\" is not host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host == "localhost") host = "127.0.0.1";
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "http.listen_address host \"", host, "\" must be an IPv4 address"));
  }
  const bool tls =
      !options.tls_cert_pem.empty() || !options.tls_key_pem.empty();
  if (tls && (options.tls_cert_pem.empty() || options.tls_key_pem.empty())) {
    return absl::InvalidArgumentError(
        "HTTP TLS needs both a certificate and a key");
  }
  if (options.connection_limit == 0) {
    return absl::InvalidArgumentError("http.max_connections must not be 0");
  }
  if (options.request_deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "http.request_deadline_seconds must be positive");
  }
  // Each slot is a descriptor; below the slot count, libmicrohttpd would
  // stop accepting at EMFILE. signetd raises the soft limit to the hard one
  // at start and keeps these slots out of the gRPC listener's budget.
  const rlim_t wanted = rlim_t{options.connection_limit} + 1024;
  rlimit files = {};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < wanted) {
    SIGNET_LOG_WARN(
        "JWKS HTTP endpoint: the open file limit ({}) is below "
        "http.max_connections + 1024 ({}): connections beyond it wait",
        static_cast<uint64_t>(files.rlim_cur), static_cast<uint64_t>(wanted));
  }
  std::unique_ptr<JwksHttpServer> server(new JwksHttpServer(options));
  {
    absl::MutexLock lock(&server->mu_);
    server->snapshot_ = std::make_shared<const Snapshot>();
  }
  // The daemon's own copy of the key is the only one kept: ours is zeroed
  // below, whatever happens.
  std::string key_pem = options.tls_key_pem;
  OPENSSL_cleanse(server->options_.tls_key_pem.data(),
                  server->options_.tls_key_pem.size());
  server->options_.tls_key_pem.clear();

  unsigned flags =
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
  // Options that depend on the configuration; the fixed ones are passed
  // directly below (an MHD_OptionItem carries one-pointer options in
  // ptr_value and unsigned ones in value).
  std::vector<MHD_OptionItem> items;
  if (options.threads > 1) {
    items.push_back({MHD_OPTION_THREAD_POOL_SIZE, options.threads, nullptr});
  }
  if (options.per_client_connection_limit > 0) {
    items.push_back({MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                     options.per_client_connection_limit, nullptr});
  }
  if (tls) {
    flags |= MHD_USE_TLS;
    items.push_back({MHD_OPTION_HTTPS_MEM_CERT, 0,
                     const_cast<char*>(options.tls_cert_pem.c_str())});
    items.push_back(
        {MHD_OPTION_HTTPS_MEM_KEY, 0, const_cast<char*>(key_pem.c_str())});
    items.push_back(
        {MHD_OPTION_HTTPS_PRIORITIES, 0, const_cast<char*>(kTlsPriorities)});
  }
  items.push_back({MHD_OPTION_END, 0, nullptr});
  JwksHttpServer* self = server.get();
  // The logger goes first so that option errors reach it too.
  server->daemon_ = MHD_start_daemon(
      flags, 0, nullptr, nullptr, &MhdCallbacks::HandleRequest, self,
      MHD_OPTION_EXTERNAL_LOGGER, &MhdCallbacks::Log, self,
      MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_CONNECTION_LIMIT,
      options.connection_limit, MHD_OPTION_CONNECTION_TIMEOUT,
      static_cast<unsigned>(absl::ToInt64Seconds(options.connection_timeout)),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, options.connection_memory_limit,
      MHD_OPTION_UNESCAPE_CALLBACK, &NoUnescape, nullptr,
      MHD_OPTION_URI_LOG_CALLBACK, &MhdCallbacks::UriLog, self,
      MHD_OPTION_NOTIFY_CONNECTION, &MhdCallbacks::NotifyConnection, self,
      MHD_OPTION_NOTIFY_COMPLETED, &MhdCallbacks::RequestCompleted, self,
      MHD_OPTION_ARRAY, items.data(), MHD_OPTION_END);
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  if (server->daemon_ == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen for HTTP", tls ? "S" : "", " on ", address,
        tls ? " (in use, or the TLS certificate or key does not load)"
            : " (in use?)"));
  }
  const MHD_DaemonInfo* info =
      MHD_get_daemon_info(server->daemon_, MHD_DAEMON_INFO_BIND_PORT);
  server->port_ = info != nullptr ? info->port : port;
  server->tls_ = tls;
  server->sweeper_ = std::thread([self] { self->SweepLoop(); });
  return server;
}

JwksHttpServer::~JwksHttpServer() {
  if (sweeper_.joinable()) {
    {
      absl::MutexLock lock(&connections_mu_);
      stopping_ = true;
    }
    sweeper_.join();
  }
  // Its close notifications still reach connections_.
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
}

void JwksHttpServer::Track(MHD_Connection* connection, void** socket_context) {
  auto tracked = std::make_unique<Tracked>();
  const MHD_ConnectionInfo* info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
  tracked->fd = info != nullptr ? info->connect_fd : -1;
  const int64_t now = MonotonicNowNs();
  tracked->deadline_ns.store(now + deadline_ns_, std::memory_order_relaxed);
  tracked->headers_due_ns.store(now + headers_ns_, std::memory_order_relaxed);
  *socket_context = tracked.get();
  open_connections_.fetch_add(1, std::memory_order_relaxed);
  absl::MutexLock lock(&connections_mu_);
  connections_[tracked.get()] = std::move(tracked);
}

void JwksHttpServer::Untrack(void* socket_context) {
  if (socket_context == nullptr) return;
  // Under the lock, so that the sweep never shuts down a descriptor that
  // libmicrohttpd has closed (it closes it after this notification).
  open_connections_.fetch_sub(1, std::memory_order_relaxed);
  absl::MutexLock lock(&connections_mu_);
  connections_.erase(static_cast<const Tracked*>(socket_context));
}

void JwksHttpServer::Rearm(MHD_Connection* connection) const {
  const MHD_ConnectionInfo* info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  if (info == nullptr || info->socket_context == nullptr) return;
  auto* tracked = static_cast<Tracked*>(info->socket_context);
  int64_t deadline = tracked->deadline_ns.load(std::memory_order_relaxed);
  if (deadline == std::numeric_limits<int64_t>::max()) return;  // closing
  const int64_t now = MonotonicNowNs();
  tracked->deadline_ns.store(now + deadline_ns_, std::memory_order_relaxed);
  tracked->headers_due_ns.store(now + headers_ns_, std::memory_order_relaxed);
}

void JwksHttpServer::HeadersIn(MHD_Connection* connection) const {
  const MHD_ConnectionInfo* info =
      MHD_get_connection_info(connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  if (info == nullptr || info->socket_context == nullptr) return;
  static_cast<Tracked*>(info->socket_context)
      ->headers_due_ns.store(std::numeric_limits<int64_t>::max(),
                             std::memory_order_relaxed);
}

void JwksHttpServer::SweepLoop() {
  // A quarter of the shorter limit, so a connection lives at most 1.25 of
  // it.
  const absl::Duration period =
      std::clamp(std::min(options_.request_deadline, kCrowdedHeaderTime) / 4,
                 absl::Milliseconds(50), absl::Seconds(1));
  for (;;) {
    int closed = 0;
    {
      absl::MutexLock lock(&connections_mu_);
      if (connections_mu_.AwaitWithTimeout(absl::Condition(&stopping_),
                                           period)) {
        return;
      }
      const int64_t now = MonotonicNowNs();
      const bool crowded = Crowded();
      for (const auto& [key, tracked] : connections_) {
        int64_t due = tracked->deadline_ns.load(std::memory_order_relaxed);
        if (crowded) {
          due = std::min(
              due, tracked->headers_due_ns.load(std::memory_order_relaxed));
        }
        if (due > now) continue;
        tracked->deadline_ns.store(std::numeric_limits<int64_t>::max(),
                                   std::memory_order_relaxed);
        // libmicrohttpd then reads end-of-file and closes the connection
        // itself, in its own thread.
        if (tracked->fd >= 0) shutdown(tracked->fd, SHUT_RDWR);
        ++closed;
      }
    }
    if (closed > 0) {
      log_->Warn([&] {
        return absl::StrCat(
            "closed ", closed, " connection(s) past the request deadline (",
            absl::FormatDuration(options_.request_deadline), "; ",
            absl::FormatDuration(kCrowdedHeaderTime),
            " for the headers while more than half the slots are taken)");
      });
    }
    log_->Flush();
  }
}

JwksHttpServer::Document::~Document() {
  // Connections still sending hold their own references.
  for (MHD_Response* r : {ok, not_modified, ok_close, not_modified_close}) {
    if (r != nullptr) MHD_destroy_response(r);
  }
}

void JwksHttpServer::Publish(const PublishedDocuments& documents) {
  auto snapshot = std::make_shared<Snapshot>();
  const std::string cache = absl::StrCat(
      "public, max-age=", absl::ToInt64Seconds(options_.cache_max_age));
  auto add = [&](std::string path, const std::string& body,
                 const char* content_type) {
    auto doc = std::make_unique<Document>();
    doc->etag = absl::StrCat("\"", ContentVersion(body), "\"");
    // MUST_COPY: a response outlives this snapshot while a connection is
    // still sending it.
    for (MHD_Response** ok : {&doc->ok, &doc->ok_close}) {
      *ok = MHD_create_response_from_buffer(
          body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
      if (*ok != nullptr) {
        MHD_add_response_header(*ok, MHD_HTTP_HEADER_CONTENT_TYPE,
                                content_type);
      }
    }
    // The 304s are built on the body too, which they never send: then
    // libmicrohttpd's Content-Length is the 200's, as RFC 9110 section 8.6
    // requires of a 304 that carries one (built empty, it said 0).
    for (MHD_Response** not_modified :
         {&doc->not_modified, &doc->not_modified_close}) {
      *not_modified = MHD_create_response_from_buffer(
          body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
    }
    for (MHD_Response* r :
         {doc->ok, doc->not_modified, doc->ok_close, doc->not_modified_close}) {
      if (r == nullptr) continue;
      MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, doc->etag.c_str());
      MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, cache.c_str());
    }
    for (MHD_Response* r : {doc->ok_close, doc->not_modified_close}) {
      if (r != nullptr) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
      }
    }
    (*snapshot)[std::move(path)] = std::move(doc);
  };
  add("/consumer/.well-known/jwks.json", documents.consumer_jwks,
      "application/json");
  add("/enterprise/.well-known/jwks.json", documents.enterprise_jwks,
      "application/json");
  for (const auto& [name, body] : documents.scope_jwks) {
    add(absl::StrCat("/scopes/", name, "/.well-known/jwks.json"), body,
        "application/json");
  }
  for (const auto& [name, body] : documents.scope_discovery) {
    add(absl::StrCat("/scopes/", name, "/.well-known/openid-configuration"),
        body, "application/json");
  }
  for (const auto& [name, body] : documents.scope_keys_pem) {
    add(absl::StrCat("/scopes/", name, "/keys.pem"), body,
        "application/x-pem-file");
  }
  absl::MutexLock lock(&mu_);
  snapshot_ = std::move(snapshot);
}

std::shared_ptr<const JwksHttpServer::Snapshot> JwksHttpServer::Current()
    const {
  absl::MutexLock lock(&mu_);
  return snapshot_;
}

int JwksHttpServer::CheckRequest(MHD_Connection* connection, const char* method,
                                 const char* version, const char* target_end) {
  // libmicrohttpd 0.9.75 parses the request line by length but hands the
  // target on as a C string: a NUL byte would cut it and serve the prefix.
  if (target_end == nullptr || version == nullptr ||
      target_end + 1 != version) {
    return Refuse(connection, MHD_HTTP_BAD_REQUEST,
                  "a NUL byte in the request target");
  }
  // RFC 9112 section 3.2: 400 for an HTTP/1.1 request without a Host, and
  // for any request with more than one.
  HeaderCensus census;
  MHD_get_connection_values(connection, MHD_HEADER_KIND, &CountHeader, &census);
  if (census.bad_name) {
    return Refuse(connection, MHD_HTTP_BAD_REQUEST,
                  "a header name that is not a token (whitespace before the "
                  "colon?)");
  }
  // Two lengths (even "0" and "74") are where a proxy and this server can
  // disagree about where the request ends (RFC 9112 section 6.3).
  if (census.lengths > 1 || census.encodings > 1) {
    return Refuse(connection, MHD_HTTP_BAD_REQUEST,
                  "more than one Content-Length or Transfer-Encoding");
  }
  const int hosts = census.hosts;
  if (hosts > 1) {
    return Refuse(connection, MHD_HTTP_BAD_REQUEST, "more than one Host");
  }
  if (hosts == 0 && strcmp(version, MHD_HTTP_VERSION_1_0) != 0) {
    return Refuse(connection, MHD_HTTP_BAD_REQUEST,
                  absl::StrCat(version, " without Host"));
  }
  if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
      strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
    return Queue(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n",
                 "text/plain", Crowded());
  }
  // Content on a GET or HEAD has no meaning (RFC 9110 sections 9.3.1 and
  // 9.3.2), and content left unread is where request smuggling hides:
  // refuse it before it is read.
  const char* length = MHD_lookup_connection_value(
      connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  if ((length != nullptr && strcmp(length, "0") != 0) ||
      MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                  MHD_HTTP_HEADER_TRANSFER_ENCODING) !=
          nullptr) {
    return Refuse(connection, MHD_HTTP_BAD_REQUEST,
                  absl::StrCat(method, " with content"));
  }
  return MHD_YES;  // answered on the next call
}

int JwksHttpServer::Refuse(MHD_Connection* connection, unsigned int status,
                           absl::string_view reason) {
  log_->Warn([&] {
    return absl::StrCat("refused a request from ", ClientAddress(connection),
                        " (", status, "): ", reason);
  });
  return Queue(connection, status, "bad request\n", "text/plain", Crowded());
}

int JwksHttpServer::Respond(MHD_Connection* connection, const char* url) {
  std::shared_ptr<const Snapshot> snapshot = Current();
  auto it = snapshot->find(absl::string_view(url));
  if (it == snapshot->end()) {
    return Queue(connection, MHD_HTTP_NOT_FOUND, "not found\n", "text/plain",
                 Crowded());
  }
  const Document& doc = *it->second;
  const bool close = Crowded();
  MHD_Response* ok = close ? doc.ok_close : doc.ok;
  MHD_Response* not_modified =
      close ? doc.not_modified_close : doc.not_modified;
  if (ok == nullptr || not_modified == nullptr) return MHD_NO;
  std::string if_none_match;
  MHD_get_connection_values(connection, MHD_HEADER_KIND, &JoinIfNoneMatch,
                            &if_none_match);
  if (!if_none_match.empty() && EtagMatches(if_none_match, doc.etag)) {
    return MHD_queue_response(connection, MHD_HTTP_NOT_MODIFIED, not_modified);
  }
  return MHD_queue_response(connection, MHD_HTTP_OK, ok);
}

}  // namespace signet::server
