#include "hsm/session_pool.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/status_macros.h"
#include "hsm/ckr.h"

namespace signet::hsm {
namespace {

std::atomic<uint64_t> next_connection_id{1};

bool IsMisconfiguration(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition ||
         status.code() == absl::StatusCode::kInvalidArgument;
}

}  // namespace

Connection::~Connection() {
  // Closing sessions and finalizing is the module's job (LoadedModule);
  // C_Finalize closes every session of this load.
}

std::optional<CK_OBJECT_HANDLE> Connection::CachedHandle(
    absl::string_view key_id) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = handles_.find(key_id);
  if (it == handles_.end()) return std::nullopt;
  return it->second;
}

void Connection::CacheHandle(absl::string_view key_id,
                             CK_OBJECT_HANDLE handle) {
  absl::MutexLock lock(&mu_);
  handles_[std::string(key_id)] = handle;
  warm_up_misses_.erase(std::string(key_id));
}

void Connection::DropHandles(absl::string_view key_id) {
  absl::MutexLock lock(&mu_);
  handles_.erase(std::string(key_id));
  warm_up_misses_.erase(std::string(key_id));
}

void Connection::NoteWarmUpMiss(absl::string_view key_id, absl::Status why) {
  absl::MutexLock lock(&mu_);
  warm_up_misses_[std::string(key_id)] = std::move(why);
}

std::optional<absl::Status> Connection::WarmUpMiss(
    absl::string_view key_id) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = warm_up_misses_.find(key_id);
  if (it == warm_up_misses_.end()) return std::nullopt;
  return it->second;
}

SessionPool::Lease::Lease(Lease&& other) noexcept
    : pool_(other.pool_),
      index_(other.index_),
      connection_(std::move(other.connection_)),
      session_(other.session_),
      id_(other.id_),
      lost_(other.lost_) {
  other.pool_ = nullptr;
}

SessionPool::Lease::~Lease() {
  if (pool_ != nullptr) pool_->Release(*this);
}

absl::Status SessionPool::Lease::Check(CK_RV rv, absl::string_view operation) {
  if (rv == CKR_OK) return absl::OkStatus();
  if (IsConnectionLost(rv)) {
    lost_ = true;
    return absl::UnavailableError(
        absl::StrCat(operation, ": ", CkrName(rv),
                     " (the HSM connection was lost; reconnecting)"));
  }
  return CkrStatus(rv, operation);
}

SessionPool::SessionPool(std::unique_ptr<Connector> connector, TokenUri token,
                         Pin pin, SessionPoolOptions options)
    : connector_(std::move(connector)),
      token_(std::move(token)),
      pin_(std::move(pin)),
      options_(options) {
  absl::MutexLock lock(&mu_);
  slots_.resize(options_.connections);
  for (ConnectionSlot& slot : slots_) slot.backoff = options_.initial_backoff;
}

SessionPool::~SessionPool() {
  std::vector<std::shared_ptr<Connection>> to_close;
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
  }
  // A reconnect in progress finishes first (bounded by the module's own
  // connect behaviour).
  if (recovery_.joinable()) recovery_.join();
  {
    absl::MutexLock lock(&mu_);
    idle_.clear();
    for (ConnectionSlot& slot : slots_) {
      if (slot.connection) to_close.push_back(std::move(slot.connection));
    }
  }
  // Connections finalize as the last reference goes, outside the lock.
}

absl::StatusOr<std::unique_ptr<SessionPool>> SessionPool::Create(
    std::unique_ptr<Connector> connector, TokenUri token, Pin pin,
    SessionPoolOptions options) {
  if (options.connections < 1 || options.sessions_per_connection < 1) {
    return absl::InvalidArgumentError(
        "session pool needs at least one connection and one session each");
  }
  std::unique_ptr<SessionPool> pool(new SessionPool(
      std::move(connector), std::move(token), std::move(pin), options));
  absl::Status last;
  int up = 0;
  // One after another: simultaneous logins through p11-kit server can fail
  // with CKR_GENERAL_ERROR (docs/architecture.md, "The HSM boundary as it
  // behaves").
  for (int i = 0; i < options.connections; ++i) {
    absl::Duration backoff = options.initial_backoff;
    for (int attempt = 0; attempt < options.open_attempts; ++attempt) {
      last = pool->BringUp(i);
      if (last.ok()) {
        ++up;
        break;
      }
      // A wrong PIN or a missing token will not fix itself: do not retry.
      if (IsMisconfiguration(last)) return last;
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, options.max_backoff);
    }
    if (!last.ok()) {
      absl::MutexLock lock(&pool->mu_);
      pool->MarkDown(pool->slots_[i], last);
    }
  }
  if (up == 0) return last;
  pool->recovery_ = std::thread([p = pool.get()] { p->RecoveryLoop(); });
  return pool;
}

absl::StatusOr<std::shared_ptr<Connection>> SessionPool::OpenConnection() {
  SIGNET_ASSIGN_OR_RETURN(std::unique_ptr<ModuleConnection> api,
                          connector_->Connect());

  std::vector<CK_SLOT_ID> slot_ids;
  absl::Status st =
      CkrStatus(api->GetSlotList(true, &slot_ids), "C_GetSlotList");
  if (!st.ok()) return absl::UnavailableError(st.message());
  if (slot_ids.empty()) {
    // p11-kit-client answers C_Initialize fine and lists zero slots when the
    // server socket is missing: that is "HSM unavailable", never "no keys".
    return absl::UnavailableError(
        "the PKCS#11 module shows no token at all: the HSM (p11-kit server) "
        "is unavailable");
  }
  std::vector<std::string> seen;
  std::optional<CK_SLOT_ID> chosen;
  for (CK_SLOT_ID id : slot_ids) {
    CK_TOKEN_INFO info;
    CK_RV rv = api->GetTokenInfo(id, &info);
    if (rv != CKR_OK) continue;
    seen.push_back(TokenLabel(info));
    if (token_.Matches(info)) {
      chosen = id;
      break;
    }
  }
  if (!chosen) {
    return absl::FailedPreconditionError(
        absl::StrCat("no token matches ", token_.text(),
                     " (tokens present: ", absl::StrJoin(seen, ", "), ")"));
  }

  std::shared_ptr<Connection> conn(
      new Connection(std::move(api), *chosen, next_connection_id++));
  for (int i = 0; i < options_.sessions_per_connection; ++i) {
    CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
    CK_RV rv = conn->api().OpenSession(
        *chosen, CKF_SERIAL_SESSION | CKF_RW_SESSION, &session);
    if (rv != CKR_OK) {
      absl::Status s = CkrStatus(rv, "C_OpenSession");
      return IsConnectionLost(rv) ? absl::UnavailableError(s.message()) : s;
    }
    conn->sessions_.push_back(session);
  }
  // Login state is per application (per connection): one C_Login suffices.
  CK_RV rv = conn->api().Login(conn->sessions_.front(), CKU_USER, pin_.data(),
                               pin_.size());
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID ||
        rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_LOCKED ||
        rv == CKR_PIN_EXPIRED || rv == CKR_USER_PIN_NOT_INITIALIZED) {
      return absl::FailedPreconditionError(absl::StrCat(
          "C_Login: ", CkrName(rv), ": the configured user PIN for ",
          token_.text(), " was refused; check hsm.pin_file / hsm.pin_env"));
    }
    // CKR_GENERAL_ERROR here is the concurrent-login race: retryable.
    return absl::UnavailableError(CkrStatus(rv, "C_Login").message());
  }
  return conn;
}

absl::Status SessionPool::BringUp(size_t index) {
  SIGNET_ASSIGN_OR_RETURN(std::shared_ptr<Connection> conn, OpenConnection());
  uint64_t epoch;
  std::vector<ConnectionWarmer> warmers;
  {
    absl::MutexLock lock(&mu_);
    epoch = warm_epoch_;
    for (const auto& [id, warmer] : warmers_) warmers.push_back(warmer);
  }
  for (;;) {
    for (const ConnectionWarmer& warmer : warmers) {
      absl::Status st = warmer(*conn, conn->sessions_.front());
      // `conn` goes with the returned status: closed here, unlocked.
      if (!st.ok()) {
        return absl::Status(st.code(), absl::StrCat("warming up a new HSM "
                                                    "connection: ",
                                                    st.message()));
      }
    }
    absl::Status miss;
    {
      absl::ReaderMutexLock conn_lock(&conn->mu_);
      for (const auto& [key_id, why] : conn->warm_up_misses_) {
        miss = absl::Status(
            why.code(),
            absl::StrCat("HSM connection ", conn->id(),
                         " came up without a loaded key: ", why.message()));
      }
    }
    absl::MutexLock lock(&mu_);
    if (warm_epoch_ != epoch) {
      // A warmer was added, or a key loaded, while this one warmed up: run
      // the warmers again, with what they know now.
      epoch = warm_epoch_;
      warmers.clear();
      for (const auto& [id, warmer] : warmers_) warmers.push_back(warmer);
      continue;
    }
    if (!miss.ok()) last_warm_up_miss_ = miss;
    ConnectionSlot& slot = slots_[index];
    slot.connection = conn;
    slot.backoff = options_.initial_backoff;
    slot.last_error = absl::OkStatus();
    for (CK_SESSION_HANDLE h : conn->sessions_) {
      idle_.push_back({index, conn, h});
      ++idle_added_;
    }
    return absl::OkStatus();
  }
}

void SessionPool::MarkDown(ConnectionSlot& slot, absl::Status why) {
  slot.connection.reset();
  slot.last_error = why;
  last_error_ = why;
  const absl::Duration now = base::MonotonicNow();
  if (IsMisconfiguration(why)) {
    slot.next_attempt = now + options_.misconfigured_backoff;
  } else {
    slot.next_attempt = now + slot.backoff;
    slot.backoff = std::min(slot.backoff * 2, options_.max_backoff);
  }
  recovery_kick_ = true;
}

void SessionPool::DropIdleOf(const std::shared_ptr<Connection>& connection) {
  idle_.erase(std::remove_if(idle_.begin(), idle_.end(),
                             [&](const IdleSession& s) {
                               return s.connection == connection;
                             }),
              idle_.end());
}

std::vector<std::shared_ptr<Connection>> SessionPool::AbandonStalled() {
  std::vector<std::shared_ptr<Connection>> dropped;
  // Monotonic: a wall clock stepped forward makes no call look stalled.
  const absl::Duration now = base::MonotonicNow();
  for (const auto& [id, info] : leases_) {
    ConnectionSlot& slot = slots_[info.index];
    if (now - info.since < options_.stall_threshold ||
        slot.connection.get() != info.connection) {
      continue;
    }
    // Never finalized here: the stuck lease keeps the connection alive,
    // and it closes normally if the call ever returns.
    dropped.push_back(slot.connection);
    DropIdleOf(slot.connection);
    MarkDown(slot, absl::UnavailableError(absl::StrCat(
                       "a PKCS#11 call has not returned for ",
                       absl::FormatDuration(now - info.since),
                       ": the HSM connection is stalled and was abandoned")));
    slot.next_attempt = now;  // replace it right away
    ++abandoned_;
  }
  return dropped;
}

void SessionPool::RecoveryLoop() {
  absl::MutexLock lock(&mu_);
  while (!shutdown_) {
    std::vector<std::shared_ptr<Connection>> abandoned = AbandonStalled();
    if (!abandoned.empty()) {
      mu_.Unlock();
      SIGNET_LOG_WARN(
          "HSM: {} connection(s) abandoned: a PKCS#11 call on each has not "
          "returned for {}; opening replacements (the stuck calls keep them "
          "until they return)",
          abandoned.size(), absl::FormatDuration(options_.stall_threshold));
      abandoned.clear();  // drops our references, outside the lock
      mu_.Lock();
    }
    if (MaybeReconnect()) continue;
    // Also a periodic look at the leases, for stalls.
    const absl::Duration now = base::MonotonicNow();
    absl::Duration wait =
        std::min(options_.stall_threshold / 4, absl::Seconds(1));
    for (const ConnectionSlot& slot : slots_) {
      if (!slot.connection && !slot.reconnecting) {
        wait = std::min(wait, slot.next_attempt - now);
      }
    }
    recovery_kick_ = false;
    auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return shutdown_ || recovery_kick_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&woken),
                         std::max(wait, absl::ZeroDuration()));
  }
}

void SessionPool::Release(Lease& lease) {
  std::shared_ptr<Connection> dropped;
  // The lease's reference may be the last one (the slot let the connection
  // go meanwhile: lost, abandoned or re-opened): it goes outside the lock,
  // since its destruction finalizes the module (a remote call).
  std::shared_ptr<Connection> last;
  bool lost_now = false;
  {
    absl::MutexLock lock(&mu_);
    leases_.erase(lease.id_);
    ConnectionSlot& slot = slots_[lease.index_];
    bool current = slot.connection == lease.connection_;
    if (lease.lost_) {
      if (current) {
        // First retry right away: a restarted HSM should come back quickly.
        dropped =
            LetGo(slot, absl::UnavailableError(
                            "the HSM connection was lost (device error)"));
        lost_now = true;
      }
      // Sessions of the lost connection are not reused.
      DropIdleOf(lease.connection_);
    } else if (current) {
      idle_.push_back({lease.index_, lease.connection_, lease.session_});
      ++idle_added_;
    }
    last = std::move(lease.connection_);
  }
  if (lost_now) {
    SIGNET_LOG_WARN("HSM: connection {} of {} was lost; reconnecting",
                    lease.index_ + 1, options_.connections);
  }
  // `dropped` and `last` (and with them C_Finalize of a connection let go)
  // go here, outside the lock.
}

bool SessionPool::MaybeReconnect() {
  const absl::Duration now = base::MonotonicNow();
  for (size_t i = 0; i < slots_.size(); ++i) {
    ConnectionSlot& slot = slots_[i];
    if (slot.connection || slot.reconnecting || now < slot.next_attempt) {
      continue;
    }
    slot.reconnecting = true;
    mu_.Unlock();
    absl::Status up = BringUp(i);
    if (up.ok()) {
      SIGNET_LOG_INFO("HSM: connection {} of {} is up again", i + 1,
                      options_.connections);
    } else {
      reconnect_log_.Warn([&] {
        return absl::StrCat("connection ", i + 1, " of ", options_.connections,
                            " could not reconnect: ", up.message(),
                            "; retrying with backoff");
      });
    }
    mu_.Lock();
    ConnectionSlot& s = slots_[i];
    s.reconnecting = false;
    if (!up.ok()) {
      s.backoff = std::max(s.backoff, options_.initial_backoff);
      MarkDown(s, up);
    }
    return true;
  }
  return false;
}

SessionPool::Lease SessionPool::LeaseIdle(std::deque<IdleSession>::iterator it,
                                          bool probe) {
  IdleSession s = std::move(*it);
  idle_.erase(it);
  const uint64_t id = next_lease_id_++;
  leases_[id] =
      LeaseInfo{s.index, s.connection.get(), base::MonotonicNow(), probe};
  return Lease(this, s.index, std::move(s.connection), s.session, id);
}

namespace {

// One wait for a session: at most 50 ms (the waiter polls) and never past
// the deadline. Its end is part of the wait's condition too: Debian's
// Abseil (20220623) ends a timed wait at an absolute CLOCK_REALTIME
// instant, so a wall clock set back during the wait would stretch it by
// the step, and the condition is evaluated whenever another thread
// releases mu_ (every lease, return and probe).
class WaitSlice {
 public:
  explicit WaitSlice(base::MonotonicDeadline until)
      : length_(std::min(until.left(), absl::Milliseconds(50))),
        end_(base::MonotonicNow() + length_) {}
  absl::Duration length() const { return length_; }
  bool over() const { return base::MonotonicNow() >= end_; }

 private:
  absl::Duration length_;
  absl::Duration end_;
};

}  // namespace

absl::StatusOr<SessionPool::Lease> SessionPool::Acquire(absl::Time deadline) {
  return AcquireWith(deadline,
                     [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> PickIdle {
                       // Any session will do: the first one whose
                       // connection is still in its slot.
                       while (!idle_.empty() && !IsCurrent(idle_.front())) {
                         idle_.pop_front();
                       }
                       return idle_.begin();
                     });
}

absl::StatusOr<SessionPool::Lease> SessionPool::AcquireForProbe(
    absl::Time deadline) {
  return AcquireWith(
      deadline,
      [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> PickIdle {
        std::erase_if(
            idle_, [this](const IdleSession& s) ABSL_NO_THREAD_SAFETY_ANALYSIS {
              return !IsCurrent(s);
            });
        // Connections with a lease held past the threshold: suspect; and
        // those where it is a probe's: stuck, most likely.
        const absl::Duration now = base::MonotonicNow();
        absl::flat_hash_set<const Connection*> suspect, probe_held;
        for (const auto& [id, info] : leases_) {
          if (now - info.since > options_.probe_avoids_held_past) {
            suspect.insert(info.connection);
            if (info.probe) probe_held.insert(info.connection);
          }
        }
        int live = 0, clean = 0, without_probe = 0;
        for (const ConnectionSlot& slot : slots_) {
          if (slot.connection == nullptr) continue;
          ++live;
          clean += suspect.contains(slot.connection.get()) ? 0 : 1;
          without_probe += probe_held.contains(slot.connection.get()) ? 0 : 1;
        }
        if (live > 0 && without_probe == 0) {
          // Every connection up holds a probe stuck past the threshold: the
          // HSM as a whole is likely stalled, and the prober counts that
          // stall from those probes. Another one would only stick too,
          // holding a session the signers need (probes left behind every
          // 2 s took the sessions of a 4-session pool).
          return absl::DeadlineExceededError(absl::StrCat(
              "a probe has been held over ",
              absl::FormatDuration(options_.probe_avoids_held_past),
              " on every HSM connection; this probe takes none of their "
              "sessions"));
        }
        const auto& avoid = clean > 0 ? suspect : probe_held;
        for (auto it = idle_.begin(); it != idle_.end(); ++it) {
          if (!avoid.contains(it->connection.get())) return it;
        }
        return idle_.end();  // wait for a session of such a connection
      },
      /*probe=*/true);
}

absl::StatusOr<SessionPool::Lease> SessionPool::AcquireWith(
    absl::Time deadline, absl::FunctionRef<PickIdle()> pick, bool probe) {
  // Read once, then counted on the monotonic clock: a wall clock stepped
  // while this waits neither ends the wait early (a step forward failed
  // signatures DEADLINE_EXCEEDED at once) nor stretches it by the step.
  const base::MonotonicDeadline until =
      base::MonotonicDeadline::FromWallClock(deadline);
  absl::MutexLock lock(&mu_);
  for (;;) {
    PickIdle chosen = pick();
    if (!chosen.ok()) return chosen.status();
    if (*chosen != idle_.end()) return LeaseIdle(*chosen, probe);
    const absl::Duration monotonic_now = base::MonotonicNow();
    bool any_hope = false;  // up, reconnecting, or due for a retry
    for (const ConnectionSlot& slot : slots_) {
      any_hope |= slot.connection != nullptr || slot.reconnecting ||
                  slot.next_attempt <= monotonic_now;
    }
    if (!any_hope) {
      return absl::UnavailableError(
          absl::StrCat("HSM unavailable: ", last_error_.message(),
                       " (retrying with backoff)"));
    }
    if (until.passed()) {
      return absl::DeadlineExceededError(
          "no HSM session became free before the deadline");
    }
    // Wake on a released session, or when a reconnect settles (either adds
    // an idle session); also every 50 ms. A probe, which may refuse the
    // sessions idle now, waits for one added since. A signer waits for any
    // idle session: were it to wait for the counter too, each release
    // would wake every waiter in turn (the first takes the session, the
    // rest find none and wait again), a herd of wake-ups per signature at
    // high concurrency.
    const uint64_t added = idle_added_;
    const WaitSlice slice(until);
    auto ready = [this, added, probe,
                  &slice]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return (probe ? idle_added_ != added : !idle_.empty()) || slice.over();
    };
    mu_.AwaitWithTimeout(absl::Condition(&ready), slice.length());
  }
}

absl::StatusOr<SessionPool::Lease> SessionPool::AcquireOn(
    size_t index, const std::shared_ptr<Connection>& connection,
    absl::Time deadline) {
  // Read once, then counted on the monotonic clock: a wall clock stepped
  // while this waits neither ends the wait early (a step forward failed
  // signatures DEADLINE_EXCEEDED at once) nor stretches it by the step.
  const base::MonotonicDeadline until =
      base::MonotonicDeadline::FromWallClock(deadline);
  absl::MutexLock lock(&mu_);
  for (;;) {
    if (slots_[index].connection != connection) {
      return absl::AbortedError("the HSM connection went down");
    }
    auto it = std::find_if(
        idle_.begin(), idle_.end(),
        [&](const IdleSession& s) { return s.connection == connection; });
    if (it != idle_.end()) return LeaseIdle(it);
    if (until.passed()) {
      return absl::DeadlineExceededError(
          absl::StrCat("no session of HSM connection ", connection->id(),
                       " became free before the deadline"));
    }
    // Wake on any released session or slot change; poll besides.
    const uint64_t added = idle_added_;
    const WaitSlice slice(until);
    auto changed = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return idle_added_ != added || slots_[index].connection != connection ||
             slice.over();
    };
    mu_.AwaitWithTimeout(absl::Condition(&changed), slice.length());
  }
}

absl::Status SessionPool::WarmLiveConnections(
    absl::FunctionRef<absl::Status(Lease&)> warm, absl::Time deadline) {
  std::vector<std::pair<size_t, std::shared_ptr<Connection>>> live;
  {
    absl::MutexLock lock(&mu_);
    // A connection coming up now warms again after this (see BringUp).
    ++warm_epoch_;
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i].connection) live.emplace_back(i, slots_[i].connection);
    }
  }
  absl::Status first;
  for (const auto& [index, connection] : live) {
    absl::StatusOr<Lease> lease = AcquireOn(index, connection, deadline);
    if (lease.status().code() == absl::StatusCode::kAborted) {
      continue;  // down: warmed when it comes back
    }
    if (!lease.ok()) {
      first.Update(lease.status());
      continue;
    }
    first.Update(warm(*lease));
  }
  return first;
}

absl::Status SessionPool::LastWarmUpMiss() const {
  absl::MutexLock lock(&mu_);
  return last_warm_up_miss_;
}

uint64_t SessionPool::AddConnectionWarmer(ConnectionWarmer warmer) {
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_warmer_id_++;
  warmers_.emplace(id, std::move(warmer));
  ++warm_epoch_;
  return id;
}

void SessionPool::RemoveConnectionWarmer(uint64_t id) {
  ConnectionWarmer removed;  // destroyed outside the lock
  absl::MutexLock lock(&mu_);
  auto it = warmers_.find(id);
  if (it == warmers_.end()) return;
  removed = std::move(it->second);
  warmers_.erase(it);
}

void SessionPool::DropCachedHandles(absl::string_view key_id) {
  std::vector<std::shared_ptr<Connection>> conns;
  {
    absl::MutexLock lock(&mu_);
    for (ConnectionSlot& slot : slots_) {
      if (slot.connection) conns.push_back(slot.connection);
    }
  }
  for (auto& c : conns) c->DropHandles(key_id);
}

std::shared_ptr<Connection> SessionPool::LetGo(ConnectionSlot& slot,
                                               absl::Status why) {
  std::shared_ptr<Connection> connection = std::move(slot.connection);
  MarkDown(slot, std::move(why));
  slot.next_attempt = base::MonotonicNow();
  DropIdleOf(connection);
  return connection;
}

void SessionPool::ReopenConnectionsThatMissed(absl::string_view key_id) {
  std::vector<std::pair<size_t, std::shared_ptr<Connection>>> up;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i].connection) up.emplace_back(i, slots_[i].connection);
    }
  }
  // A connection's own lock is never taken under mu_.
  std::erase_if(up, [key_id](const auto& entry) {
    return !entry.second->WarmUpMiss(key_id).has_value();
  });
  std::vector<std::shared_ptr<Connection>> dropped;
  std::vector<size_t> reopened;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [index, connection] : up) {
      ConnectionSlot& slot = slots_[index];
      if (slot.connection != connection) continue;  // already re-opened
      dropped.push_back(
          LetGo(slot, absl::UnavailableError(
                          "re-opened: its view of the token missed a key the "
                          "token holds")));
      reopened.push_back(index);
    }
  }
  for (size_t index : reopened) {
    SIGNET_LOG_WARN(
        "HSM: connection {} of {} did not see a key the token holds when it "
        "opened (a stale view); reconnecting it",
        index + 1, options_.connections);
  }
  // `dropped` goes here, outside the lock (leases still out release
  // theirs outside it too: Release).
}

int SessionPool::LiveConnections() const {
  absl::MutexLock lock(&mu_);
  int up = 0;
  for (const ConnectionSlot& slot : slots_) up += slot.connection != nullptr;
  return up;
}

absl::Status SessionPool::Probe(absl::Time deadline) {
  SIGNET_ASSIGN_OR_RETURN(Lease lease, AcquireForProbe(deadline));
  CK_TOKEN_INFO info;
  return lease.Check(lease.api().GetTokenInfo(lease.connection().slot(), &info),
                     "C_GetTokenInfo");
}

int SessionPool::SessionsInUse() const {
  absl::MutexLock lock(&mu_);
  int sessions = 0;
  for (const ConnectionSlot& slot : slots_) {
    if (slot.connection != nullptr)
      sessions += options_.sessions_per_connection;
  }
  for (const IdleSession& idle : idle_) {
    if (IsCurrent(idle)) --sessions;
  }
  return std::max(sessions, 0);
}

int SessionPool::AbandonedConnections() const {
  absl::MutexLock lock(&mu_);
  return abandoned_;
}

absl::Status SessionPool::LastError() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

}  // namespace signet::hsm
