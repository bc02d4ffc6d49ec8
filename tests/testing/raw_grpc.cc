#include "tests/testing/raw_grpc.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "crypto/public_keys.h"

namespace signet::testing {
namespace {

constexpr uint8_t kData = 0x0, kHeaders = 0x1, kRstStream = 0x3,
                  kSettings = 0x4, kPing = 0x6, kGoAway = 0x7,
                  kWindowUpdate = 0x8;
constexpr uint8_t kEndStream = 0x1, kAck = 0x1, kEndHeaders = 0x4,
                  kPadded = 0x8;

struct SslDeleter {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
  void operator()(SSL* s) const { SSL_free(s); }
  void operator()(BIO* b) const { BIO_free(b); }
  void operator()(X509* x) const { X509_free(x); }
};
template <typename T>
using SslPtr = std::unique_ptr<T, SslDeleter>;

std::string OpenSslError(absl::string_view what) {
  const unsigned long e = ERR_get_error();
  char buf[256] = {0};
  if (e != 0) ERR_error_string_n(e, buf, sizeof(buf));
  return absl::StrCat(what, ": ", buf);
}

// HPACK integer with an N-bit prefix (RFC 7541 5.1), first byte `high`.
void AppendHpackInt(std::string* out, uint8_t high, int prefix_bits,
                    uint64_t value) {
  const uint64_t max = (uint64_t{1} << prefix_bits) - 1;
  if (value < max) {
    out->push_back(static_cast<char>(high | value));
    return;
  }
  out->push_back(static_cast<char>(high | max));
  value -= max;
  while (value >= 128) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// A literal header field without indexing, new name, no Huffman (6.2.2).
void AppendLiteral(std::string* out, absl::string_view name,
                   absl::string_view value) {
  out->push_back('\0');
  AppendHpackInt(out, 0, 7, name.size());
  out->append(name.data(), name.size());
  AppendHpackInt(out, 0, 7, value.size());
  out->append(value.data(), value.size());
}

std::string Frame(uint8_t type, uint8_t flags, uint32_t stream,
                  absl::string_view payload) {
  std::string f;
  const size_t n = payload.size();
  f.push_back(static_cast<char>((n >> 16) & 0xff));
  f.push_back(static_cast<char>((n >> 8) & 0xff));
  f.push_back(static_cast<char>(n & 0xff));
  f.push_back(static_cast<char>(type));
  f.push_back(static_cast<char>(flags));
  for (int shift = 24; shift >= 0; shift -= 8) {
    f.push_back(static_cast<char>((stream >> shift) & 0xff));
  }
  f.append(payload.data(), payload.size());
  return f;
}

class TlsConnection {
 public:
  absl::Status Open(const RawGrpcCall& call) {
    ctx_.reset(SSL_CTX_new(TLS_client_method()));
    if (ctx_ == nullptr)
      return absl::InternalError(OpenSslError("SSL_CTX_new"));
    SSL_CTX_set_min_proto_version(ctx_.get(), TLS1_2_VERSION);
    SslPtr<BIO> cert_bio(BIO_new_mem_buf(
        call.cert_pem.data(), static_cast<int>(call.cert_pem.size())));
    SslPtr<X509> cert(
        PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
    SslPtr<BIO> key_bio(BIO_new_mem_buf(call.key_pem.data(),
                                        static_cast<int>(call.key_pem.size())));
    crypto::EvpPkeyPtr key(
        PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr || key == nullptr ||
        SSL_CTX_use_certificate(ctx_.get(), cert.get()) != 1 ||
        SSL_CTX_use_PrivateKey(ctx_.get(), key.get()) != 1) {
      return absl::InvalidArgumentError(OpenSslError("client certificate"));
    }
    static const unsigned char kAlpn[] = {2, 'h', '2'};
    SSL_CTX_set_alpn_protos(ctx_.get(), kAlpn, sizeof(kAlpn));

    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) return absl::InternalError("socket failed");
    const timeval tv = absl::ToTimeval(absl::Seconds(1));
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(call.port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return absl::UnavailableError(
          absl::StrCat("connect to port ", call.port, " failed"));
    }
    ssl_.reset(SSL_new(ctx_.get()));
    SSL_set_fd(ssl_.get(), fd_);
    SSL_set_tlsext_host_name(ssl_.get(), call.authority.c_str());
    if (SSL_connect(ssl_.get()) != 1) {
      return absl::UnavailableError(OpenSslError("TLS handshake"));
    }
    const unsigned char* alpn = nullptr;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl_.get(), &alpn, &alpn_len);
    if (alpn_len != 2 || alpn[0] != 'h' || alpn[1] != '2') {
      return absl::UnavailableError("the server did not select ALPN h2");
    }
    return absl::OkStatus();
  }

  ~TlsConnection() {
    ssl_.reset();
    if (fd_ >= 0) close(fd_);
  }

  bool Write(absl::string_view bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      const int n = SSL_write(ssl_.get(), bytes.data() + done,
                              static_cast<int>(bytes.size() - done));
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads exactly `n` bytes before `deadline`.
  absl::StatusOr<std::string> Read(size_t n, absl::Time deadline) {
    std::string out(n, '\0');
    size_t done = 0;
    while (done < n) {
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError("no answer in time");
      }
      const int got =
          SSL_read(ssl_.get(), out.data() + done, static_cast<int>(n - done));
      if (got > 0) {
        done += static_cast<size_t>(got);
        continue;
      }
      const int err = SSL_get_error(ssl_.get(), got);
      if (err == SSL_ERROR_WANT_READ ||
          (err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EINTR))) {
        continue;  // the 1 s receive timeout: check the deadline again
      }
      return absl::UnavailableError("the connection closed");
    }
    return out;
  }

 private:
  SslPtr<SSL_CTX> ctx_;
  SslPtr<SSL> ssl_;
  int fd_ = -1;
};

// The fields of a frame's 9-byte header.
struct FrameHeader {
  size_t length = 0;
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t stream = 0;
};

FrameHeader ParseFrameHeader(absl::string_view head) {
  const auto* h = reinterpret_cast<const unsigned char*>(head.data());
  FrameHeader f;
  f.length = (size_t{h[0]} << 16) | (size_t{h[1]} << 8) | h[2];
  f.type = h[3];
  f.flags = h[4];
  f.stream = ((uint32_t{h[5]} & 0x7f) << 24) | (uint32_t{h[6]} << 16) |
             (uint32_t{h[7]} << 8) | h[8];
  return f;
}

uint32_t BigEndian32(absl::string_view bytes) {
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) |
         (uint32_t{b[2]} << 8) | b[3];
}

struct Http2Frame {
  FrameHeader header;
  std::string payload;
};

// Reads one frame from the server, waiting for its header until `deadline`.
// A frame begun is read whole, or the connection's framing is lost. Every
// reader answers the server's SETTINGS (acknowledged) and PING here; the
// frame is returned all the same.
absl::StatusOr<Http2Frame> ReadServerFrame(TlsConnection& tls,
                                           absl::Time deadline) {
  SIGNET_ASSIGN_OR_RETURN(std::string head, tls.Read(9, deadline));
  Http2Frame frame{ParseFrameHeader(head), ""};
  SIGNET_ASSIGN_OR_RETURN(
      frame.payload,
      tls.Read(frame.header.length,
               std::max(deadline, absl::Now() + absl::Seconds(5))));
  const bool ack = (frame.header.flags & kAck) != 0;
  if (frame.header.type == kSettings && !ack &&
      !tls.Write(Frame(kSettings, kAck, 0, ""))) {
    return absl::UnavailableError("acknowledging SETTINGS failed");
  }
  if (frame.header.type == kPing && !ack &&
      !tls.Write(Frame(kPing, kAck, 0, frame.payload))) {
    return absl::UnavailableError("answering PING failed");
  }
  return frame;
}

// The request's headers as HPACK literals.
std::string RequestHeaders(const RawGrpcCall& call) {
  std::string headers;
  AppendLiteral(&headers, ":method", "POST");
  AppendLiteral(&headers, ":scheme", "https");
  AppendLiteral(&headers, ":path", call.path);
  AppendLiteral(&headers, ":authority", call.authority);
  AppendLiteral(&headers, "content-type", "application/grpc");
  AppendLiteral(&headers, "te", "trailers");
  for (const auto& [name, value] : call.headers) {
    AppendLiteral(&headers, name, value);
  }
  return headers;
}

// The request message with gRPC's length prefix.
std::string LengthPrefixed(absl::string_view message) {
  std::string data;
  data.push_back('\0');  // not compressed
  const uint32_t n = static_cast<uint32_t>(message.size());
  for (int shift = 24; shift >= 0; shift -= 8) {
    data.push_back(static_cast<char>((n >> shift) & 0xff));
  }
  data.append(message.data(), message.size());
  return data;
}

}  // namespace

absl::StatusOr<RawGrpcAnswer> RawGrpcUnary(const RawGrpcCall& call) {
  const absl::Time deadline = absl::Now() + call.timeout;
  TlsConnection tls;
  SIGNET_RETURN_IF_ERROR(tls.Open(call));

  const std::string out = absl::StrCat(
      "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Frame(kSettings, 0, 0, ""),
      Frame(kHeaders, kEndHeaders, 1, RequestHeaders(call)),
      Frame(kData, kEndStream, 1, LengthPrefixed(call.message)));
  if (!tls.Write(out)) return absl::UnavailableError("sending the call failed");

  RawGrpcAnswer answer;
  std::string body;  // stream 1's DATA so far
  while (!answer.has_message && !answer.ended) {
    SIGNET_ASSIGN_OR_RETURN(Http2Frame frame, ReadServerFrame(tls, deadline));
    const auto& [length, type, flags, stream] = frame.header;
    const std::string& payload = frame.payload;
    switch (type) {
      case kGoAway:
        answer.ended = true;
        break;
      case kRstStream:
        if (stream == 1) answer.ended = true;
        break;
      case kHeaders:
        if (stream == 1 && (flags & kEndStream) != 0) answer.ended = true;
        break;
      case kData: {
        if (stream != 1) break;
        absl::string_view p = payload;
        if ((flags & kPadded) != 0 && !p.empty()) {
          const size_t pad = static_cast<unsigned char>(p[0]);
          p.remove_prefix(1);
          if (pad <= p.size()) p.remove_suffix(pad);
        }
        body.append(p.data(), p.size());
        if (body.size() >= 5) {
          const auto* b = reinterpret_cast<const unsigned char*>(body.data());
          const size_t size = (size_t{b[1]} << 24) | (size_t{b[2]} << 16) |
                              (size_t{b[3]} << 8) | b[4];
          if (body.size() >= 5 + size) {
            answer.has_message = true;
            answer.message = body.substr(5, size);
          }
        }
        if ((flags & kEndStream) != 0) answer.ended = true;
        break;
      }
      default:
        break;  // WINDOW_UPDATE and the rest: nothing to do for one call
    }
  }
  return answer;
}

class UnreadingGrpcConnection::Impl {
 public:
  absl::Status Open(const RawGrpcCall& base) {
    SIGNET_RETURN_IF_ERROR(tls_.Open(base));
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0: no answer's DATA may come.
    const std::string settings("\0\x04\0\0\0\0", 6);
    if (!tls_.Write(absl::StrCat("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                                 Frame(kSettings, 0, 0, settings)))) {
      return absl::UnavailableError("sending the preface failed");
    }
    return absl::OkStatus();
  }

  absl::Status Start(const RawGrpcCall& call) {
    const uint32_t stream = next_stream_;
    next_stream_ += 2;
    stream_windows_[stream] = initial_stream_window_;
    if (!tls_.Write(
            Frame(kHeaders, kEndHeaders, stream, RequestHeaders(call)))) {
      return absl::UnavailableError("sending a call's headers failed");
    }
    const absl::Time deadline = absl::Now() + call.timeout;
    const std::string data = LengthPrefixed(call.message);
    absl::string_view rest = data;
    while (!rest.empty()) {
      const int64_t room =
          std::min<int64_t>({connection_window_, stream_windows_[stream],
                             static_cast<int64_t>(max_frame_size_)});
      if (room <= 0) {
        // Wait for the server's WINDOW_UPDATE.
        SIGNET_RETURN_IF_ERROR(ReadFrame(deadline));
        continue;
      }
      const size_t n = std::min(rest.size(), static_cast<size_t>(room));
      const bool last = n == rest.size();
      if (!tls_.Write(
              Frame(kData, last ? kEndStream : 0, stream, rest.substr(0, n)))) {
        return absl::UnavailableError("sending a call's message failed");
      }
      connection_window_ -= static_cast<int64_t>(n);
      stream_windows_[stream] -= static_cast<int64_t>(n);
      rest.remove_prefix(n);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Answers> Await(int calls, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (static_cast<int>(answered_.size() + ended_.size()) < calls &&
           absl::Now() < deadline) {
      if (absl::Status st = ReadFrame(deadline); !st.ok()) {
        if (st.code() == absl::StatusCode::kDeadlineExceeded) break;
        return st;
      }
    }
    return Answers{static_cast<int>(answered_.size()),
                   static_cast<int>(ended_.size())};
  }

 private:
  // Reads and handles one frame from the server.
  absl::Status ReadFrame(absl::Time deadline) {
    SIGNET_ASSIGN_OR_RETURN(Http2Frame frame, ReadServerFrame(tls_, deadline));
    const FrameHeader& f = frame.header;
    const std::string& payload = frame.payload;
    switch (f.type) {
      case kSettings:
        if ((f.flags & kAck) != 0) break;
        for (size_t at = 0; at + 6 <= payload.size(); at += 6) {
          const uint16_t id = static_cast<uint16_t>(
              (static_cast<unsigned char>(payload[at]) << 8) |
              static_cast<unsigned char>(payload[at + 1]));
          const uint32_t value =
              BigEndian32(absl::string_view(payload).substr(at + 2, 4));
          if (id == 0x4) {
            for (auto& [stream, window] : stream_windows_) {
              window += static_cast<int64_t>(value) - initial_stream_window_;
            }
            initial_stream_window_ = value;
          } else if (id == 0x5) {
            max_frame_size_ = value;
          }
        }
        break;
      case kWindowUpdate: {
        if (payload.size() != 4) break;
        const int64_t increment = BigEndian32(payload) & 0x7fffffff;
        if (f.stream == 0) {
          connection_window_ += increment;
        } else {
          stream_windows_[f.stream] += increment;
        }
        break;
      }
      case kHeaders:
        if ((f.flags & kEndStream) != 0) {
          answered_.erase(f.stream);
          ended_.insert(f.stream);
        } else if (!ended_.contains(f.stream)) {
          answered_.insert(f.stream);
        }
        break;
      case kRstStream:
        answered_.erase(f.stream);
        ended_.insert(f.stream);
        break;
      case kGoAway:
        return absl::UnavailableError("the server sent GOAWAY");
      default:
        break;
    }
    return absl::OkStatus();
  }

  TlsConnection tls_;
  uint32_t next_stream_ = 1;
  // Send windows (RFC 9113 6.9): the connection's and each stream's.
  int64_t connection_window_ = 65535;
  int64_t initial_stream_window_ = 65535;
  absl::flat_hash_map<uint32_t, int64_t> stream_windows_;
  uint32_t max_frame_size_ = 16384;
  absl::flat_hash_set<uint32_t> answered_;
  absl::flat_hash_set<uint32_t> ended_;
};

UnreadingGrpcConnection::UnreadingGrpcConnection(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

UnreadingGrpcConnection::~UnreadingGrpcConnection() = default;

absl::StatusOr<std::unique_ptr<UnreadingGrpcConnection>>
UnreadingGrpcConnection::Open(const RawGrpcCall& base) {
  auto impl = std::make_unique<Impl>();
  SIGNET_RETURN_IF_ERROR(impl->Open(base));
  return std::unique_ptr<UnreadingGrpcConnection>(
      new UnreadingGrpcConnection(std::move(impl)));
}

absl::Status UnreadingGrpcConnection::Start(const RawGrpcCall& call) {
  return impl_->Start(call);
}

absl::StatusOr<UnreadingGrpcConnection::Answers> UnreadingGrpcConnection::Await(
    int calls, absl::Duration timeout) {
  return impl_->Await(calls, timeout);
}

}  // namespace signet::testing
