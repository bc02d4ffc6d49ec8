#include "server/one_request_call.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/unknown_field_set.h"
#include "server/call_deadline.h"
#include "server/grpc_status.h"

namespace signet::server {

absl::Status ParseMessage(const grpc::ByteBuffer& bytes,
                          google::protobuf::Message* message) {
  grpc::ByteBuffer copy(bytes);  // shares the slices; the reader consumes it
  grpc::ProtoBufferReader reader(&copy);
  if (message->ParseFromZeroCopyStream(&reader)) return absl::OkStatus();
  const std::string name = message->GetDescriptor()->full_name();
  grpc::ByteBuffer again(bytes);
  grpc::ProtoBufferReader reread(&again);
  google::protobuf::UnknownFieldSet fields;
  if (fields.ParseFromZeroCopyStream(&reread)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request is not a valid ", name,
                     ": a string field is not valid UTF-8"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "the request is not a valid ", name,
      ": it is not well-formed protobuf (truncated or corrupted)"));
}

bool SerializeMessage(const google::protobuf::Message& message,
                      grpc::ByteBuffer* out) {
  grpc::ProtoBufferWriter writer(out, grpc::kProtoBufferWriterMaxBufferLength,
                                 static_cast<int>(message.ByteSizeLong()));
  return message.SerializeToZeroCopyStream(&writer);
}

void RequestWaits::Enter() {
  if (waiting_.fetch_add(1) + 1 <= limits_.max_waiting) return;
  std::shared_ptr<PendingCall> oldest;
  {
    WatchList& list = *watchdog_.list();
    absl::MutexLock lock(&list.mu);
    if (list.calls.empty()) return;  // all of them are being answered
    oldest = std::move(list.calls.begin()->second);
    list.calls.erase(list.calls.begin());
  }
  if (oldest->Finish(absl::ResourceExhaustedError(
          absl::StrCat("signetd has ", limits_.max_waiting,
                       " calls waiting for their request message, its limit "
                       "(grpc.max_calls_awaiting_request), and this one had "
                       "waited longest; send the request with the call")))) {
    evicted_.fetch_add(1);
  }
}

void RequestWaits::CountEarlyReset(const std::string& peer) {
  const absl::Duration now = base::MonotonicNow();
  bool close = false;
  {
    absl::MutexLock lock(&mu_);
    // Bounded: forget every count rather than grow with connections.
    if (resets_.size() >= 65536) resets_.clear();
    Resets& r = resets_[peer];
    if (now - r.window_start_monotonic > limits_.reset_window) {
      r = Resets{now, 0};
    }
    close = ++r.count == limits_.max_early_resets + 1;
  }
  if (close && close_connection_ && close_connection_(peer)) {
    reset_closes_.fetch_add(1);
  }
}

void OneRequestCall::Start() {
  if (context_->IsCancelled()) {
    // Reset before its handler even ran (a backlog of calls under a rapid
    // reset flood): counted at once, so the connection is cut while the
    // backlog is still short.
    waits_->CountEarlyReset(context_->peer());
    OnNoRequest(grpc::Status::CANCELLED);
    return;
  }
  waits_->Enter();
  const absl::Duration timeout = waits_->limits().timeout;
  // The watchdog answers only with an error; OnReadDone claims the timer
  // with OK, which answers nothing.
  wait_ = std::make_shared<PendingCall>(
      [this, timeout](const absl::Status& status) {
        if (status.ok()) return;
        if (status.code() == absl::StatusCode::kUnavailable) {
          // The shutdown's cut-off.
          OnNoRequest(ToGrpcStatus(
              absl::UnavailableError("signetd is shutting down; retry")));
          return;
        }
        if (status.code() != absl::StatusCode::kDeadlineExceeded) {
          OnNoRequest(ToGrpcStatus(status));  // made room for a newer call
          return;
        }
        waits_->CountTimeout();
        OnNoRequest(ToGrpcStatus(absl::DeadlineExceededError(absl::StrCat(
            "no request message came within ", absl::FormatDuration(timeout),
            " of the call's headers "
            "(grpc.request_timeout_seconds); send the request "
            "with the call"))));
      },
      base::MonotonicDeadline::In(timeout), std::function<void()>{},
      waits_->watchdog().list());
  StartRead(&request_);
  waits_->watchdog().Watch(wait_);
}

void OneRequestCall::OnRefusedRequest(const absl::Status& status) {
  Finish(ToGrpcStatus(status));
}

void OneRequestCall::OnReadDone(bool ok) {
  waits_->Leave();
  // Lost: the watchdog has answered (or is answering) the call.
  if (!wait_->Finish(absl::OkStatus())) return;
  const int64_t limit = waits_->limits().max_request_bytes;
  if (ok && limit > 0 && static_cast<int64_t>(request_.Length()) > limit) {
    const size_t size = request_.Length();
    request_.Clear();
    OnRefusedRequest(absl::ResourceExhaustedError(absl::StrCat(
        "the request message is ", size, " bytes, over signetd's limit of ",
        limit,
        " bytes (the largest legal request, a full SignJwtBatch); split it")));
    return;
  }
  if (ok) {
    OnRequest(request_);
    // Parsed by now: the bytes are not kept while the call is served and its
    // answer waits for a client that may never read it (a full batch is
    // 16 MB).
    request_.Clear();
    return;
  }
  if (context_->IsCancelled()) {
    // The client reset the stream: it asked for nothing, but too many such
    // resets on one connection, each right after its call began, are an
    // attack.
    // Whether the client's own deadline ended it, and how long that
    // deadline gave the call (read here, not for every call).
    const RequestWaitLimits& limits = waits_->limits();
    const absl::Duration age = base::MonotonicNow() - started_;
    const absl::Duration left = CallDeadline(*context_).left();
    const bool at_its_deadline = left <= absl::Milliseconds(2);
    const absl::Duration time_allowed = left + age;
    if (age < limits.rapid_reset_age &&
        (!at_its_deadline || time_allowed < limits.min_honest_deadline)) {
      waits_->CountEarlyReset(context_->peer());
    }
    OnNoRequest(grpc::Status::CANCELLED);
    return;
  }
  // The client half-closed without a whole message: none was sent, or its
  // length prefix promised more bytes than came (gRPC reports both alike).
  // (gRPC's own receive limit is off, so a message over it is not refused
  // here unseen.)
  OnRefusedRequest(absl::InvalidArgumentError(
      "the call ended without a whole request message (none was sent, or "
      "its length prefix promised more bytes than came); send one request "
      "with the call"));
}

}  // namespace signet::server
