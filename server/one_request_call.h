// Calls that carry one request message, received as streams so that signet
// sees each call from its headers on and bounds the wait for its message.
//
// Why: gRPC 1.51 holds a unary call from the moment its headers arrive until
// its message has come, before any handler runs, outside the ResourceQuota
// (about 13 KB a call) and with no time limit but the client's own
// deadline. 100 connections x 256 calls that never sent their message held
// 1.35 GB of signetd. A stream and a unary call look the same on the wire
// (HTTP/2 headers, messages, trailers), so signet registers its unary and
// server-streaming methods as bidirectional streams: the handler runs at the
// headers, reads the one message itself, and the calls still waiting for it
// are bounded in number (`max_waiting`: beyond it the call that has waited
// longest is ended RESOURCE_EXHAUSTED) and in time (`timeout`: then
// DEADLINE_EXCEEDED). docs/architecture.md, "Health, overload and
// shutdown"; the README's "Hostile traffic" has the measurements.
//
// Thread-safety: RequestWaits is thread-safe. A OneRequestCall is driven by
// gRPC's reactions and the watchdog thread; see its comments.
#ifndef SIGNET_SERVER_ONE_REQUEST_CALL_H_
#define SIGNET_SERVER_ONE_REQUEST_CALL_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/server_callback_handlers.h>
#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/impl/service_type.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"
#include "google/protobuf/message.h"
#include "server/grpc_status.h"
#include "server/pending_call.h"

namespace signet::server {

// Parses a request the way gRPC would, but says why it failed
// (INVALID_ARGUMENT): a message that is well-formed protobuf yet does not
// parse has a string field that is not UTF-8 (the one check proto3 adds to
// the wire format).
absl::Status ParseMessage(const grpc::ByteBuffer& bytes,
                          google::protobuf::Message* message);
// Serializes `message` into `out`; false if it cannot be.
bool SerializeMessage(const google::protobuf::Message& message,
                      grpc::ByteBuffer* out);

struct RequestWaitLimits {
  int max_waiting = 4096;
  absl::Duration timeout = absl::Seconds(10);
  // HTTP/2 "rapid reset": a client that opens streams and resets them
  // before sending their message makes the server set up a call for each,
  // as fast as it can send frames (gRPC 1.51 has no defence: two
  // connections grew signetd to 3 GB and stalled it for a minute). Honest
  // clients send the message with the headers and reset, if ever, later. A
  // connection that resets more than this many calls before their message
  // within `reset_window` is closed. Only a reset within `rapid_reset_age`
  // of the call's start counts: a client whose deadline ends a slow upload,
  // or whose connection drops with calls open for longer, is not an
  // attacker (an outside attack tripped the limit that way). Nor is a
  // reset at the call's own deadline when the client allowed at least
  // `min_honest_deadline`: a busy replica may not read an honest client's
  // message before a tight deadline (a third attack saw clients with 20-30 ms
  // deadlines closed and their address banned). A deadline shorter than
  // that counts, or a client could reset at will by asking for 1 ms.
  int max_early_resets = 32;
  absl::Duration min_honest_deadline = absl::Milliseconds(10);
  absl::Duration reset_window = absl::Seconds(10);
  absl::Duration rapid_reset_age = absl::Seconds(1);
  // The largest request message handled; a larger one is refused
  // RESOURCE_EXHAUSTED (and audited by the service). 0: no limit. signet,
  // not gRPC, checks it: gRPC 1.51 receives a message whole before its own
  // limit refuses it anyway, and refuses it where no handler can see why,
  // so the refusal could not be audited with the status the client got.
  int64_t max_request_bytes = 0;
};

// The budget and the timer shared by every call still waiting for its
// request message.
class RequestWaits {
 public:
  // `close_connection` closes the connection gRPC names by a peer string
  // (the connection acceptor's); it may be empty (nothing is closed).
  explicit RequestWaits(
      RequestWaitLimits limits,
      std::function<bool(const std::string& peer)> close_connection = {})
      : limits_(limits), close_connection_(std::move(close_connection)) {}

  // Counts a call that starts waiting. When `max_waiting` are waiting
  // already, the one that has waited longest is ended RESOURCE_EXHAUSTED to
  // make room: an honest client sends its message with the headers, so its
  // calls wait for microseconds and are never the oldest, while calls that
  // never send theirs are. (Refusing the newest instead would let whoever
  // holds `max_waiting` calls lock every other client out.)
  void Enter();
  void Leave() { waiting_.fetch_sub(1); }
  void CountTimeout() { timed_out_.fetch_add(1); }
  // A call on the connection `peer` was reset before its message came;
  // closes the connection when it is over max_early_resets.
  void CountEarlyReset(const std::string& peer) ABSL_LOCKS_EXCLUDED(mu_);
  // Connections closed for resetting calls early, since the start.
  uint64_t reset_closes() const { return reset_closes_.load(); }

  // Every call still waiting at `at` is answered UNAVAILABLE then: for a
  // shutdown, which should not wait out the timeout.
  void CutOff(base::MonotonicDeadline at) { watchdog_.CutOff(at); }

  const RequestWaitLimits& limits() const { return limits_; }
  DeadlineWatchdog& watchdog() { return watchdog_; }
  // Since the start: calls ended to make room, and calls whose message did
  // not come in time.
  uint64_t evicted() const { return evicted_.load(); }
  uint64_t timed_out() const { return timed_out_.load(); }

 private:
  struct Resets {
    // base::MonotonicNow(); none yet: a new entry starts a window.
    absl::Duration window_start_monotonic = -absl::InfiniteDuration();
    int count = 0;
  };
  const RequestWaitLimits limits_;
  const std::function<bool(const std::string&)> close_connection_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Resets> resets_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> reset_closes_{0};
  std::atomic<int> waiting_{0};
  std::atomic<uint64_t> evicted_{0};
  std::atomic<uint64_t> timed_out_{0};
  DeadlineWatchdog watchdog_;
};

// One call with one request message. Construct it in the method's handler,
// call Start(), and return it to gRPC. It deletes itself when gRPC is done
// with it.
//
// Exactly one of OnRequest() and OnNoRequest() runs, and the subclass must
// end the call (Finish, or StartWriteAndFinish) exactly once after it.
class OneRequestCall
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  ~OneRequestCall() override = default;

  // Counts the call among the waiting ones and starts reading the request.
  void Start();

  void OnReadDone(bool ok) final;
  void OnDone() override { delete this; }

 protected:
  OneRequestCall(RequestWaits* waits, grpc::CallbackServerContext* context)
      : waits_(waits), context_(context), started_(base::MonotonicNow()) {}

  grpc::CallbackServerContext* context() const { return context_; }

  // The request arrived (bytes, within max_request_bytes, not parsed). On a
  // gRPC thread.
  virtual void OnRequest(const grpc::ByteBuffer& request) = 0;
  // The request is refused for what the client sent, and `status` says why
  // (a refusal the service audits):
  //   INVALID_ARGUMENT    the client half-closed without sending one;
  //   RESOURCE_EXHAUSTED  it is over max_request_bytes.
  // On a gRPC thread. The default answers `status`.
  virtual void OnRefusedRequest(const absl::Status& status);
  // No request will be handled, for a reason that is not the request's
  // content, and `status` says why:
  //   RESOURCE_EXHAUSTED  it waited longest when too many were waiting;
  //   DEADLINE_EXCEEDED   it did not come within the timeout;
  //   CANCELLED           the client went away;
  //   UNAVAILABLE         signetd is shutting down.
  // These come in floods and are counted (RequestWaits), not audited one by
  // one. On a gRPC thread or the watchdog's. The default answers `status`;
  // a subclass that also ends the call elsewhere (OnCancel) overrides both
  // this and OnRefusedRequest, so that it finishes the call only once.
  virtual void OnNoRequest(const grpc::Status& status) { Finish(status); }

 private:
  RequestWaits* const waits_;
  grpc::CallbackServerContext* const context_;
  const absl::Duration started_;  // base::MonotonicNow() at the call's start
  grpc::ByteBuffer request_;
  // The wait's timer: whichever of OnReadDone and the watchdog finishes it
  // first decides whether the request is handled.
  std::shared_ptr<PendingCall> wait_;
};

// A service whose methods each take one request message, received as
// streams.
class OneRequestService : public grpc::Service {
 protected:
  // Registers the method `name` ("/package.Service/Method"). `make` returns
  // a new OneRequestCall for each call; it is started here.
  template <typename Make>
  void AddOneRequestMethod(const char* name, Make make) {
    using Reactor = grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>;
    AddMethod(new grpc::internal::RpcServiceMethod(
        name, grpc::internal::RpcMethod::BIDI_STREAMING, nullptr));
    MarkMethodRawCallback(
        methods_++,
        new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer,
                                                grpc::ByteBuffer>(
            [make](grpc::CallbackServerContext* context) -> Reactor* {
              OneRequestCall* call = make(context);
              call->Start();
              return call;
            }));
  }

 private:
  int methods_ = 0;
};

// A call of a unary method: parses its one request message as a Request
// and hands it to `handler` with a Response to fill and `answer`, which ends
// the call (sending the response when the status is OK) and may be called
// from any thread, once. A request that does not parse, or never comes, goes
// to `refuse` with the status to answer (after auditing, say).
template <typename Request, typename Response>
class TypedOneRequestCall final : public OneRequestCall {
 public:
  using Answer = std::function<void(const grpc::Status&)>;
  using Handler = std::function<void(grpc::CallbackServerContext*,
                                     const Request&, Response*, Answer)>;
  using Refuser = std::function<void(grpc::CallbackServerContext*,
                                     const absl::Status&, Answer)>;

  TypedOneRequestCall(RequestWaits* waits, grpc::CallbackServerContext* context,
                      Handler handler, Refuser refuse)
      : OneRequestCall(waits, context),
        handler_(std::move(handler)),
        refuse_(std::move(refuse)) {}

 private:
  // Owns the response until the call is done with it.
  struct Reply {
    Response response;
    grpc::ByteBuffer out;
  };

  void OnRequest(const grpc::ByteBuffer& bytes) override {
    auto reply = std::make_shared<Reply>();
    Answer answer = [this, reply](const grpc::Status& status) {
      if (!status.ok()) {
        Finish(status);
      } else if (!SerializeMessage(reply->response, &reply->out)) {
        Finish(ToGrpcStatus(
            absl::InternalError("the response could not be serialized")));
      } else {
        reply_ = reply;  // kept until OnDone
        StartWriteAndFinish(&reply->out, grpc::WriteOptions(), status);
      }
    };
    Request request;
    if (absl::Status st = ParseMessage(bytes, &request); !st.ok()) {
      refuse_(context(), st, answer);
      return;
    }
    handler_(context(), request, &reply->response, answer);
  }
  void OnRefusedRequest(const absl::Status& status) override {
    refuse_(context(), status,
            [this](const grpc::Status& answer) { Finish(answer); });
  }

  const Handler handler_;
  const Refuser refuse_;
  std::shared_ptr<Reply> reply_;
};

}  // namespace signet::server

#endif  // SIGNET_SERVER_ONE_REQUEST_CALL_H_
