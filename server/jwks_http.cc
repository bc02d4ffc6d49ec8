#include "server/jwks_http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "server/jwt.h"

namespace signet::server {
namespace {

// Leaves the URL exactly as sent: paths are matched byte for byte, so no
// encoded form can reach a document by another spelling.
size_t NoUnescape(void*, MHD_Connection*, char* s) { return strlen(s); }

int Queue(MHD_Connection* connection, unsigned int status,
          absl::string_view body, absl::string_view content_type) {
  MHD_Response* response = MHD_create_response_from_buffer(
      body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
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

MHD_Result HandleRequest(void* self, MHD_Connection* connection,
                         const char* url, const char* method,
                         const char* /*version*/, const char* /*upload_data*/,
                         size_t* upload_data_size, void** request_state) {
  // Other methods are refused at once, before any body they carry is read
  // (libmicrohttpd will not queue a response while a body is arriving).
  const bool readable = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
                        strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
  // For GET/HEAD the first call only announces the request; answer on the
  // second.
  if (*request_state == nullptr && readable) {
    *request_state = self;
    return MHD_YES;
  }
  *upload_data_size = 0;
  return static_cast<JwksHttpServer*>(self)->Respond(connection, url, method)
             ? MHD_YES
             : MHD_NO;
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

}  // namespace

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
  std::unique_ptr<JwksHttpServer> server(new JwksHttpServer(options));
  {
    absl::MutexLock lock(&server->mu_);
    server->snapshot_ = std::make_shared<const Snapshot>();
  }
  server->daemon_ = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
          MHD_USE_ERROR_LOG,
      0, nullptr, nullptr,
      &HandleRequest, server.get(), MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_CONNECTION_LIMIT,
      options.connection_limit, MHD_OPTION_CONNECTION_TIMEOUT,
      static_cast<unsigned>(absl::ToInt64Seconds(options.connection_timeout)),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, options.connection_memory_limit,
      MHD_OPTION_UNESCAPE_CALLBACK, &NoUnescape, nullptr, MHD_OPTION_END);
  if (server->daemon_ == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for HTTP on ", address));
  }
  const MHD_DaemonInfo* info =
      MHD_get_daemon_info(server->daemon_, MHD_DAEMON_INFO_BIND_PORT);
  server->port_ = info != nullptr ? info->port : port;
  return server;
}

JwksHttpServer::~JwksHttpServer() {
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
}

void JwksHttpServer::Publish(const PublishedDocuments& documents) {
  auto snapshot = std::make_shared<Snapshot>();
  auto add = [&](std::string path, const std::string& body,
                 const char* content_type) {
    (*snapshot)[std::move(path)] =
        Document{body, content_type, absl::StrCat("\"", ContentVersion(body),
                                                  "\"")};
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

int JwksHttpServer::Respond(MHD_Connection* connection, const char* url,
                            const char* method) {
  if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
      strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
    return Queue(connection, MHD_HTTP_METHOD_NOT_ALLOWED,
                 "only GET and HEAD\n", "text/plain");
  }
  std::shared_ptr<const Snapshot> snapshot = Current();
  auto it = snapshot->find(absl::string_view(url));
  if (it == snapshot->end()) {
    return Queue(connection, MHD_HTTP_NOT_FOUND, "not found\n", "text/plain");
  }
  const Document& doc = it->second;
  const char* if_none_match = MHD_lookup_connection_value(
      connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
  const bool not_modified =
      if_none_match != nullptr && EtagMatches(if_none_match, doc.etag);
  MHD_Response* response = MHD_create_response_from_buffer(
      not_modified ? 0 : doc.body.size(),
      not_modified ? nullptr : const_cast<char*>(doc.body.data()),
      MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  if (!not_modified) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE,
                            doc.content_type.c_str());
  }
  MHD_add_response_header(response, MHD_HTTP_HEADER_ETAG, doc.etag.c_str());
  const std::string cache = absl::StrCat(
      "public, max-age=", absl::ToInt64Seconds(options_.cache_max_age));
  MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL,
                          cache.c_str());
  int ret = MHD_queue_response(
      connection, not_modified ? MHD_HTTP_NOT_MODIFIED : MHD_HTTP_OK,
      response);
  MHD_destroy_response(response);
  return ret;
}

}  // namespace signet::server
