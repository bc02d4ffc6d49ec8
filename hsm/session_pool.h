// A pool of logged-in PKCS#11 sessions spread over several module
// connections, with RAII leases and recovery when the HSM goes away.
//
// Why several connections: each connection to `p11-kit server` is its own
// remote process, and throughput grows with connections as well as sessions
// (measured through p11-kit server and SoftHSM2). Connections are opened one
// after another, with retry, because opening several at the same moment can
// fail C_Login with CKR_GENERAL_ERROR.
//
// Stalls: a lease held past stall_threshold abandons its connection (see
// SessionPoolOptions). When the stuck call returns, the old connection is
// closed like any other.
//
// Recovery: a lease whose call answered a connection-lost CK_RV (see
// IsConnectionLost) marks its connection down. A recovery thread owned by
// the pool re-establishes down connections (a new module load: initialize,
// find the token, open sessions, log in) with exponential backoff, so a dead
// HSM is retried gently, a wrong PIN is never retried hot, and no caller of
// Acquire() ever blocks on a reconnect. While every connection is down and
// none is due for a retry, Acquire() answers UNAVAILABLE at once rather than
// waiting for its deadline. Handles cached on a connection die with it: a
// handle is only valid on the connection that found it.
//
// Warm-up: the pool knows nothing of keys, but runs the connection warmers
// registered with it (AddConnectionWarmer; Pkcs11KeyStore registers one that
// finds every loaded key's private-key handle) on every connection it opens
// — at start-up, on recovery, and when it replaces an abandoned stalled
// connection — before any of the connection's sessions is handed out, so
// that signing never has to look a handle up. A warm-up that fails keeps the
// connection down, retried with the usual backoff. WarmLiveConnections()
// runs a warm-up on the connections already up (when a key is loaded); a
// connection that comes up meanwhile is warmed again before it serves, so
// none misses it. A warm-up runs outside any lease, so like a C_Login into a
// stalled HSM, one stuck there holds up the recovery thread until it returns.
//
// Thread-safety: thread-safe. A lease is used by one thread at a time, and a
// session is leased to one lease at a time (PKCS#11 sessions are not
// reentrant).
#ifndef SIGNET_HSM_SESSION_POOL_H_
#define SIGNET_HSM_SESSION_POOL_H_

#include <p11-kit/pkcs11.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/throttled_log.h"
#include "hsm/module.h"
#include "hsm/pin.h"
#include "hsm/token_uri.h"

namespace signet::hsm {

struct SessionPoolOptions {
  int connections = 2;
  int sessions_per_connection = 2;
  // Attempts to open each connection at start-up before giving up.
  int open_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  // Backoff after a PIN or configuration failure: never retried hot, since
  // SoftHSM has no PIN lockout of its own.
  absl::Duration misconfigured_backoff = absl::Seconds(60);
  // A lease held longer than this means its connection is stalled (a
  // stopped HSM blocks a call with no timeout, and the call cannot be
  // cancelled): the connection is abandoned — no new work goes to it, it is
  // never finalized while the call is stuck — and a replacement is opened.
  // Generous, because generating an RSA-4096 key takes seconds.
  absl::Duration stall_threshold = absl::Seconds(10);
  // A probe (Probe, AcquireForProbe) prefers a connection with no lease
  // held longer than this: one stuck connection (its HSM process stopped)
  // must not make a probe that lands on it report the whole HSM stalled
  // while the other connections serve. A signature holds a lease for
  // milliseconds. Failing that, it takes a session of a connection whose
  // long lease is not a probe's (a key generation takes seconds; if the
  // HSM is stalled, the probe sticks there and the stall shows). When
  // every live connection holds a probe that long, it takes none
  // (DEADLINE_EXCEEDED at once, as when no session is free): the HSM as a
  // whole is likely stalled, the prober already counts that stall, and
  // another stuck probe would only hold a session the signers need.
  absl::Duration probe_avoids_held_past = absl::Seconds(1);
};

class Connection;

// Finds and caches handles on a connection that no signer uses yet, with
// `session`, one of its sessions, lent for this call only. An error keeps the
// connection down (retried with backoff): return UNAVAILABLE unless it is a
// misconfiguration. Called on the pool's recovery thread (or, at start-up,
// in Create()), never with a pool lock held.
using ConnectionWarmer = std::function<absl::Status(Connection& connection,
                                                    CK_SESSION_HANDLE session)>;

// One established module connection: a token found, sessions open, user
// logged in, and the handles found on it. Thread-safe.
class Connection {
 public:
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  Pkcs11Api& api() { return *api_; }
  CK_SLOT_ID slot() const { return slot_; }
  // Unique for every (re)connection in the process.
  uint64_t id() const { return id_; }

  // The private key handle of `key_id` on this connection, if found before.
  std::optional<CK_OBJECT_HANDLE> CachedHandle(absl::string_view key_id) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Also forgets any warm-up miss of `key_id`.
  void CacheHandle(absl::string_view key_id, CK_OBJECT_HANDLE handle)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets `key_id`'s handle and any warm-up miss of it.
  void DropHandles(absl::string_view key_id) ABSL_LOCKS_EXCLUDED(mu_);

  // Records that the warm-up of this freshly opened connection did not find
  // `key_id` (`why`: NOT_FOUND, or FAILED_PRECONDITION for an ambiguous id).
  // Such a key is not searched for again on this connection.
  void NoteWarmUpMiss(absl::string_view key_id, absl::Status why)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Why the warm-up of this connection did not find `key_id`, if it did not.
  std::optional<absl::Status> WarmUpMiss(absl::string_view key_id) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // Held across one signature's C_SignInit + C_Sign. p11-kit-client sends
  // a connection's sessions over one socket, and threads waiting on it at
  // the same time pass its reader role back and forth (a futex wait and
  // wake-up per answer). The remote end answers one call at a time anyway,
  // so taking turns here saves that churn (measured: README, "Benchmarks").
  absl::Mutex& sign_mu() { return sign_mu_; }

 private:
  friend class SessionPool;
  absl::Mutex sign_mu_;
  Connection(std::unique_ptr<ModuleConnection> api, CK_SLOT_ID slot,
             uint64_t id)
      : api_(std::move(api)), slot_(slot), id_(id) {}

  std::unique_ptr<ModuleConnection> api_;
  CK_SLOT_ID slot_;
  uint64_t id_;
  std::vector<CK_SESSION_HANDLE> sessions_;  // set once at open
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, CK_OBJECT_HANDLE> handles_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::Status> warm_up_misses_
      ABSL_GUARDED_BY(mu_);
};

class SessionPool {
 public:
  // A leased session. Move-only; returns the session on destruction.
  class Lease {
   public:
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) = delete;
    Lease(const Lease&) = delete;
    ~Lease();

    Pkcs11Api& api() { return connection_->api(); }
    CK_SESSION_HANDLE session() const { return session_; }
    Connection& connection() { return *connection_; }

    // CkrStatus(rv, operation); when `rv` says the connection is lost, also
    // marks it down so it is re-established, and the status is UNAVAILABLE.
    absl::Status Check(CK_RV rv, absl::string_view operation);

    // Marks the connection down (to be re-established) without a CK_RV:
    // for a connection whose view of the token is known to be stale.
    void MarkLost() { lost_ = true; }

   private:
    friend class SessionPool;
    Lease(SessionPool* pool, size_t index, std::shared_ptr<Connection> conn,
          CK_SESSION_HANDLE session, uint64_t id)
        : pool_(pool),
          index_(index),
          connection_(std::move(conn)),
          session_(session),
          id_(id) {}

    SessionPool* pool_;
    size_t index_;
    std::shared_ptr<Connection> connection_;
    CK_SESSION_HANDLE session_;
    uint64_t id_;
    bool lost_ = false;
  };

  // Opens every connection (one after another, each with retry). Fails when
  // none can be opened: UNAVAILABLE when the HSM is unreachable (zero
  // slots), FAILED_PRECONDITION for a wrong PIN or no matching token.
  // Connections that fail while at least one succeeds are retried later.
  static absl::StatusOr<std::unique_ptr<SessionPool>> Create(
      std::unique_ptr<Connector> connector, TokenUri token, Pin pin,
      SessionPoolOptions options);

  ~SessionPool();

  // A session, waiting until `deadline` for one to be free. The deadline is
  // read once against the wall clock, then counted on the monotonic clock
  // (a later wall clock step neither shortens nor stretches the wait).
  // DEADLINE_EXCEEDED when none frees up in time; UNAVAILABLE when every
  // connection is down (with the last connection error).
  absl::StatusOr<Lease> Acquire(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);

  // A cheap call through the boundary (C_GetTokenInfo on a leased
  // session): is the HSM answering? Waits until `deadline` for a session;
  // the errors are Acquire's, or the call's.
  absl::Status Probe(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);
  // The session Probe uses: as Acquire, but on a connection with no lease
  // held past options.probe_avoids_held_past (waiting for one of its
  // sessions rather than taking a suspect connection's); with no such
  // connection up, on one where no probe's lease is held that long;
  // DEADLINE_EXCEEDED at once when every live connection has one.
  absl::StatusOr<Lease> AcquireForProbe(absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Drops `key_id`'s cached handles on every connection (after destroy).
  void DropCachedHandles(absl::string_view key_id) ABSL_LOCKS_EXCLUDED(mu_);

  // Re-opens every connection up now whose warm-up missed `key_id`, a key
  // since found exactly once (that connection's view of the token was
  // stale, or a duplicate has gone): each is marked down as a lost one is,
  // so it reconnects and warms afresh instead of refusing the key until
  // something else breaks it.
  void ReopenConnectionsThatMissed(absl::string_view key_id)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Registers `warmer` to run on every connection opened from now on, before
  // its sessions are leased (see the file comment). Returns an id for
  // RemoveConnectionWarmer. A warmer must stay callable until removed, and
  // may run once more while RemoveConnectionWarmer returns: capture shared
  // state, not a `this` that may go away.
  uint64_t AddConnectionWarmer(ConnectionWarmer warmer)
      ABSL_LOCKS_EXCLUDED(mu_);
  void RemoveConnectionWarmer(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);

  // Runs `warm` once on each connection up right now, with a session of
  // that connection leased to it (waiting until `deadline` for one to be
  // free), and returns the first error `warm` returned, or
  // DEADLINE_EXCEEDED when a connection had no free session in time. A
  // connection that goes down meanwhile is skipped, and one that comes up
  // meanwhile runs the registered warmers again before it serves: so
  // whatever the warmers will find when this is called is found on every
  // connection that serves after it returns.
  absl::Status WarmLiveConnections(absl::FunctionRef<absl::Status(Lease&)> warm,
                                   absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The last key a warm-up did not find on a new connection (NOT_FOUND or
  // FAILED_PRECONDITION, naming the connection), or OK.
  absl::Status LastWarmUpMiss() const ABSL_LOCKS_EXCLUDED(mu_);

  // Number of connections up right now.
  int LiveConnections() const ABSL_LOCKS_EXCLUDED(mu_);
  // Sessions of connections up right now that are leased.
  int SessionsInUse() const ABSL_LOCKS_EXCLUDED(mu_);
  // Connections abandoned because a call on them stalled, since start.
  int AbandonedConnections() const ABSL_LOCKS_EXCLUDED(mu_);
  int Capacity() const {
    return options_.connections * options_.sessions_per_connection;
  }
  // The error that took the last connection down, or OK.
  absl::Status LastError() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct ConnectionSlot {
    std::shared_ptr<Connection> connection;  // null while down
    bool reconnecting = false;
    // When a reconnect may next be tried, in base::MonotonicNow() time (a
    // wall clock stepped back must not hold a reconnect back).
    absl::Duration next_attempt = -absl::InfiniteDuration();
    absl::Duration backoff;
    absl::Status last_error;
  };
  struct IdleSession {
    size_t index;
    std::shared_ptr<Connection> connection;
    CK_SESSION_HANDLE session;
  };

  SessionPool(std::unique_ptr<Connector> connector, TokenUri token, Pin pin,
              SessionPoolOptions options);

  // One connection attempt: load, find the token, open sessions, log in.
  absl::StatusOr<std::shared_ptr<Connection>> OpenConnection();
  // OpenConnection, then every registered warmer on it (again if warmers
  // were added or live connections warmed meanwhile), then the connection
  // goes into slot `index` and its sessions into the idle list. Called
  // without mu_; on failure nothing changes and the new connection is
  // closed.
  absl::Status BringUp(size_t index) ABSL_LOCKS_EXCLUDED(mu_);
  // A session of `connection` (in slot `index`), waiting until `deadline`.
  // ABORTED when the connection leaves its slot meanwhile.
  absl::StatusOr<Lease> AcquireOn(size_t index,
                                  const std::shared_ptr<Connection>& connection,
                                  absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);
  // Whether `idle`'s connection is still the one in its slot (a replaced
  // or dropped connection's sessions are stale).
  bool IsCurrent(const IdleSession& idle) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return slots_[idle.index].connection == idle.connection;
  }
  // A lease of the idle session at `it`, which is removed from idle_.
  Lease LeaseIdle(std::deque<IdleSession>::iterator it, bool probe = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Acquire's loop; `pick`, run with mu_ held, chooses an idle session
  // among idle_ (dropping stale ones it meets): idle_.end() to wait for
  // another, or an error to answer at once.
  using PickIdle = absl::StatusOr<std::deque<IdleSession>::iterator>;
  absl::StatusOr<Lease> AcquireWith(absl::Time deadline,
                                    absl::FunctionRef<PickIdle()> pick,
                                    bool probe = false)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Release(Lease& lease) ABSL_LOCKS_EXCLUDED(mu_);
  // The recovery thread: brings down connections back when their backoff
  // has passed, until the pool is destroyed.
  void RecoveryLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // Tries to bring up one down connection whose backoff has passed.
  // Returns true if it tried. Called with mu_ held; releases it meanwhile.
  bool MaybeReconnect() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `slot`'s connection down for a reconnect at once (MarkDown, no
  // backoff, its idle sessions dropped) and returns it, to be released
  // outside mu_ (its destruction finalizes the module).
  std::shared_ptr<Connection> LetGo(ConnectionSlot& slot, absl::Status why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkDown(ConnectionSlot& slot, absl::Status why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Abandons connections with a lease held past stall_threshold. Returns
  // the connections to drop (outside the lock).
  std::vector<std::shared_ptr<Connection>> AbandonStalled()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropIdleOf(const std::shared_ptr<Connection>& connection)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::unique_ptr<Connector> connector_;
  const TokenUri token_;
  const Pin pin_;
  const SessionPoolOptions options_;

  mutable absl::Mutex mu_;
  std::vector<ConnectionSlot> slots_ ABSL_GUARDED_BY(mu_);
  std::deque<IdleSession> idle_ ABSL_GUARDED_BY(mu_);
  // Sessions ever added to idle_ (released or brought up): what a waiter
  // for a session wakes on.
  uint64_t idle_added_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
  struct LeaseInfo {
    size_t index;
    Connection* connection;
    absl::Duration since;  // base::MonotonicNow() when leased
    bool probe = false;    // leased by AcquireForProbe
  };
  absl::flat_hash_map<uint64_t, LeaseInfo> leases_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_id_ ABSL_GUARDED_BY(mu_) = 1;
  int abandoned_ ABSL_GUARDED_BY(mu_) = 0;
  // Failed reconnects: an HSM that stays away for hours is a few lines a
  // minute, not one per attempt.
  log::ThrottledLog reconnect_log_{"HSM: ", 4, absl::Minutes(1)};
  bool recovery_kick_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, ConnectionWarmer> warmers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_warmer_id_ ABSL_GUARDED_BY(mu_) = 1;
  // Bumped when a warmer is added and when live connections are warmed: a
  // connection whose warm-up began before a bump is warmed again.
  uint64_t warm_epoch_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status last_warm_up_miss_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  std::thread recovery_;
};

}  // namespace signet::hsm

#endif  // SIGNET_HSM_SESSION_POOL_H_
