#include "server/jwks_http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>

#include <openssl/crypto.h>

#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
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
  const bool tls = !options.tls_cert_pem.empty() || !options.tls_key_pem.empty();
  if (tls && (options.tls_cert_pem.empty() || options.tls_key_pem.empty())) {
    return absl::InvalidArgumentError(
        "HTTP TLS needs both a certificate and a key");
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
  if (tls) {
    flags |= MHD_USE_TLS;
    items.push_back({MHD_OPTION_HTTPS_MEM_CERT, 0,
                     const_cast<char*>(options.tls_cert_pem.c_str())});
    items.push_back(
        {MHD_OPTION_HTTPS_MEM_KEY, 0, const_cast<char*>(key_pem.c_str())});
    items.push_back({MHD_OPTION_HTTPS_PRIORITIES, 0,
                     const_cast<char*>(kTlsPriorities)});
  }
  items.push_back({MHD_OPTION_END, 0, nullptr});
  server->daemon_ = MHD_start_daemon(
      flags, 0, nullptr, nullptr, &HandleRequest, server.get(),
      MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_CONNECTION_LIMIT,
      options.connection_limit, MHD_OPTION_CONNECTION_TIMEOUT,
      static_cast<unsigned>(absl::ToInt64Seconds(options.connection_timeout)),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, options.connection_memory_limit,
      MHD_OPTION_UNESCAPE_CALLBACK, &NoUnescape, nullptr, MHD_OPTION_ARRAY,
      items.data(), MHD_OPTION_END);
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
  return server;
}

JwksHttpServer::~JwksHttpServer() {
  if (daemon_ != nullptr) MHD_stop_daemon(daemon_);
}

JwksHttpServer::Document::~Document() {
  // Connections still sending hold their own references.
  if (ok != nullptr) MHD_destroy_response(ok);
  if (not_modified != nullptr) MHD_destroy_response(not_modified);
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
    doc->ok = MHD_create_response_from_buffer(
        body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
    doc->not_modified =
        MHD_create_response_from_buffer(0, nullptr, MHD_RESPMEM_PERSISTENT);
    if (doc->ok != nullptr) {
      MHD_add_response_header(doc->ok, MHD_HTTP_HEADER_CONTENT_TYPE,
                              content_type);
    }
    for (MHD_Response* r : {doc->ok, doc->not_modified}) {
      if (r == nullptr) continue;
      MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, doc->etag.c_str());
      MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, cache.c_str());
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
  const Document& doc = *it->second;
  if (doc.ok == nullptr || doc.not_modified == nullptr) return MHD_NO;
  const char* if_none_match = MHD_lookup_connection_value(
      connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
  if (if_none_match != nullptr && EtagMatches(if_none_match, doc.etag)) {
    return MHD_queue_response(connection, MHD_HTTP_NOT_MODIFIED,
                              doc.not_modified);
  }
  return MHD_queue_response(connection, MHD_HTTP_OK, doc.ok);
}

}  // namespace signet::server
