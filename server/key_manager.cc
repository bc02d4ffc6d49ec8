#include "server/key_manager.h"

#include <signal.h>

#include <algorithm>
#include <set>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/log.h"
#include "base/quote.h"
#include "base/status_macros.h"
#include "crypto/digest.h"
#include "google/protobuf/util/message_differencer.h"
#include "rotation/schedule.h"
#include "server/config.h"

namespace signet::server {
AuditEvent AuditEventOf(const rotation::KeyEvent& event,
                        const std::string& caller) {
  AuditEvent line;
  line.event = event.event;
  line.caller = caller;
  line.scope = event.scope;
  line.kid = event.kid;
  line.result = event.ok ? "OK" : "FAILED";
  line.detail = event.detail;
  return line;
}

rotation::ScopeKeyPolicy KeyPolicyFor(const signet::v1::ScopeConfig& scope) {
  rotation::ScopeKeyPolicy policy;
  policy.scope = scope.name();
  policy.algorithm = JoseAlgorithmName(scope.algorithm());
  policy.key_spec = KeySpecFor(scope);
  policy.timings.rotation_period =
      absl::Seconds(scope.rotation_period_seconds());
  policy.timings.publish_grace = absl::Seconds(scope.publish_grace_seconds());
  policy.timings.destroy_delay = absl::Seconds(scope.destroy_delay_seconds());
  policy.timings.min_publish_lead =
      absl::Seconds(scope.min_publish_lead_seconds());
  policy.timings.tombstone_retention =
      absl::Seconds(scope.tombstone_retention_seconds());
  return policy;
}

absl::StatusOr<ScopeKeysMap> BuildScopeKeys(
    const signet::v1::SignetConfig& config,
    const std::map<std::string, rotation::ScopeKeySet>& sets,
    const ScopeKeysMap& previous, absl::Time now) {
  ScopeKeysMap out;
  for (const signet::v1::ScopeConfig& scope : config.scopes()) {
    auto set = sets.find(scope.name());
    if (set == sets.end()) continue;
    std::map<std::string, std::shared_ptr<const ScopeState>> reusable;
    if (auto old = previous.find(scope.name()); old != previous.end()) {
      for (const auto& version : old->second->versions()) {
        reusable[version->record.key_id()] = version;
      }
    }
    std::vector<std::shared_ptr<const ScopeState>> versions;
    for (const rotation::KeyRecord& record : set->second.records) {
      auto loaded = set->second.loaded.find(record.key_id());
      if (loaded == set->second.loaded.end()) continue;
      auto old = reusable.find(record.key_id());
      if (old != reusable.end() &&
          google::protobuf::util::MessageDifferencer::Equals(
              old->second->record, record)) {
        versions.push_back(old->second);
        continue;
      }
      absl::StatusOr<std::shared_ptr<const ScopeState>> state =
          MakeScopeState(scope, record, loaded->second);
      if (!state.ok()) return state.status();
      versions.push_back(*std::move(state));
    }
    out[scope.name()] = std::make_shared<const ScopeKeys>(
        scope, JoseAlgorithmName(scope.algorithm()), set->second.records,
        std::move(versions), KeyPolicyFor(scope).timings, now,
        set->second.unusable);
  }
  return out;
}

NextTransition NextTransitionOf(const ScopeKeys& keys, absl::Time now) {
  const std::vector<rotation::KeyRecord>& records = keys.records();
  const rotation::ScopeView view = rotation::ViewScope(records, now);
  NextTransition next;
  if (view.signing >= 0) {
    const absl::Time retire =
        rotation::TimeFromProto(records[view.signing].retire_at());
    next.at = retire;
    next.what = view.standby >= 0 ? "standby activates"
                                  : "key retires (no standby yet)";
    if (view.standby >= 0) {
      next.at = std::min(
          retire, rotation::TimeFromProto(records[view.standby].activate_at()));
    }
  } else if (view.standby >= 0) {
    next.what = "standby activates";
    next.at = rotation::TimeFromProto(records[view.standby].activate_at());
  }
  return next;
}

KeyManager::KeyManager(hsm::KeyStore* store,
                       const signet::v1::SignetConfig& config, AuditLog* audit,
                       const base::Clock& clock, OnKeys on_keys,
                       int kill_at_write, std::vector<InternalScope> internal,
                       const base::ElapsedWallTime* seen)
    : store_(store),
      config_(config),
      audit_(audit),
      clock_(clock),
      own_seen_(seen == nullptr
                    ? std::make_unique<const base::ElapsedWallTime>(clock)
                    : nullptr),
      seen_(seen != nullptr ? *seen : *own_seen_),
      on_keys_(std::move(on_keys)),
      writer_(!config.never_create_keys()),
      interval_(absl::Seconds(config.never_create_keys()
                                  ? config.key_refresh_interval_seconds()
                                  : config.reconcile_interval_seconds())),
      internal_(std::move(internal)) {
  for (const auto& scope : config_.scopes()) {
    policies_.push_back(KeyPolicyFor(scope));
  }
  for (const InternalScope& scope : internal_) {
    policies_.push_back(scope.policy);
  }
  reconciler_ = std::make_unique<rotation::KeyReconciler>(
      store_, policies_, writer_, [this](const rotation::KeyEvent& e) {
        if (e.ok) {
          SIGNET_LOG_INFO("{}: {}", e.event, e.detail);
        } else {
          SIGNET_LOG_ERROR("{}: {}", e.event, e.detail);
        }
        Audit(AuditEventOf(e, acting_admin_.empty() ? "signetd" : acting_admin_));
      },
      kill_at_write <= 0 ? std::function<void()>()
                         : [kill_at_write, writes = 0]() mutable {
                             if (++writes == kill_at_write) raise(SIGKILL);
                           });
  // Write-ahead: a durable audit line before a scope's token writes, so no
  // key changes while the audit log cannot be written (the events of the
  // writes follow). An outside attack revoked and rotated keys with the
  // log unwritable: the token changed and no line said so.
  reconciler_->SetChangeGate(
      [this](absl::string_view scope, absl::string_view what) {
        // Events of earlier changes first, so the log keeps their order.
        absl::Status written = WriteUnwrittenEvents();
        AuditEvent line;
        line.event = "key_changes";
        line.caller = acting_admin_.empty() ? "signetd" : acting_admin_;
        line.scope = std::string(scope);
        line.result = "STARTING";
        line.detail = std::string(what);
        if (written.ok()) written = audit_->Append(line);
        if (!written.ok()) {
          SIGNET_LOG_ERROR(
              "key changes{}{} held back: the audit log cannot be written ({})",
              scope.empty() ? "" : " of scope ", scope, written.message());
          return absl::UnavailableError(absl::StrCat(
              "the audit log cannot be written, so no key change is made (each "
              "is audited first): ",
              written.message(), "; retry once health says SERVING"));
        }
        return absl::OkStatus();
      });
}

KeyManager::~KeyManager() { Stop(); }

absl::Status KeyManager::Start() {
  if (absl::Status first = PassAndPublish(/*notify=*/false); !first.ok()) {
    return first;
  }
  // A scope that cannot sign does not keep the others from serving: it is
  // NOT_SERVING (health, GetStatus) and refused with why, and each pass
  // tries its keys again.
  const absl::Time now = clock_.Now();
  for (const auto& [name, keys] : Scopes()) {
    absl::Status can_sign = keys->CanSignAt(now);
    if (can_sign.ok()) continue;
    SIGNET_LOG_ERROR("{}{}", can_sign.message(),
                     writer_ ? ""
                             : " (this replica does not create keys, "
                               "never_create_keys: the writer makes them)");
  }
  return absl::OkStatus();
}

void KeyManager::AuditKeysAtStart(absl::string_view why) {
  const absl::Time now = clock_.Now();
  const std::map<std::string, rotation::ScopeKeySet> sets =
      reconciler_->KnownSets();
  for (const auto& scope : config_.scopes()) {
    auto set = sets.find(scope.name());
    if (set == sets.end()) continue;
    const std::vector<rotation::KeyRecord>& records = set->second.records;
    const rotation::ScopeView view = rotation::ViewScope(records, now);
    // Newest first (the records are in generation order) and compact: an
    // audit field holds 1024 bytes, so on a scope with many tombstones the
    // oldest are what is cut.
    std::vector<std::string> keys;
    for (size_t i = records.size(); i-- > 0;) {
      const rotation::KeyRecord& r = records[i];
      std::string key =
          absl::StrCat("gen ", r.key_generation(), " ",
                       r.kid().empty() ? "(no kid)" : r.kid(), " ",
                       rotation::KeyStateName(view.states[i]));
      if (static_cast<int>(i) == view.standby) key += " standby";
      if (r.has_revocation()) {
        absl::StrAppend(&key, " at ",
                        rotation::FormatInstant(rotation::TimeFromProto(
                            r.revocation().revoked_at())));
      }
      if (r.private_key_destroyed()) key += " destroyed";
      keys.push_back(std::move(key));
    }
    AuditEvent line;
    line.event = "keys_at_start";
    line.caller = "signetd";
    line.scope = scope.name();
    line.result = "OK";
    line.detail = absl::StrCat(
        why, "; the token holds ", records.size(), " key(s), newest first: ",
        keys.empty() ? "none" : absl::StrJoin(keys, "; "));
    Audit(std::move(line));
  }
}

void KeyManager::StartLoop() {
  thread_ = std::thread([this] {
    Loop();
    loop_done_.Notify();
  });
}

bool KeyManager::Stop(absl::Duration timeout) {
  std::deque<std::function<void()>> abandoned;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) {
    // A loop stuck in the HSM keeps its queued operator calls: their
    // callers are answered by the request watchdog at the stop's cut-off
    // (server/admin_service.cc), which does not wait for the audit log.
    if (!loop_done_.WaitForNotificationWithTimeout(timeout)) return false;
    thread_.join();
  }
  {
    absl::MutexLock lock(&mu_);
    abandoned.swap(tasks_);
  }
  // Queued operator calls are answered (UNAVAILABLE) by their tasks, which
  // see stopping_.
  for (auto& task : abandoned) task();
  // The loop is over: its events are this thread's now. Tried once: the
  // audit log may be gone by a second call (the destructor's).
  if (!WriteUnwrittenEvents().ok()) {
    SIGNET_LOG_ERROR(
        "{} key event(s) were never written to the audit log (it could not "
        "be written); the lines above have them",
        unwritten_events_.size() + unwritten_events_dropped_);
  }
  unwritten_events_.clear();
  unwritten_events_dropped_ = 0;
  return true;
}

ScopeKeysMap KeyManager::Scopes() const {
  absl::MutexLock lock(&mu_);
  return scopes_;
}

std::string KeyManager::TokenWriteProblem() const {
  absl::MutexLock lock(&mu_);
  return token_write_problem_;
}

void KeyManager::CheckTokenWritableIfDue() {
  if (!writer_) return;
  const bool failing = token_unwritable_since_ != absl::InfinitePast();
  if (!failing && clock_.Elapsed() < next_token_write_check_) return;
  const absl::Status writable = store_->CheckWritable();
  next_token_write_check_ = clock_.Elapsed() + kTokenWriteCheckInterval;
  if (writable.ok() == !failing) return;  // no change
  AuditEvent line;
  line.caller = "signetd";
  std::string problem;
  if (writable.ok()) {
    token_unwritable_since_ = absl::InfinitePast();
    SIGNET_LOG_INFO("the HSM token takes writes again");
    line.event = "token_writable_again";
    line.result = "OK";
    line.detail = "the HSM token takes writes again";
  } else {
    token_unwritable_since_ = clock_.Now();
    problem = absl::StrCat(
        "the HSM token takes no writes (since ",
        rotation::FormatInstant(token_unwritable_since_),
        "; checked again after every pass): ", writable.ToString(),
        "; signing goes on, but rotations, revocations and new standbys fail "
        "until it does");
    SIGNET_LOG_ERROR("{}", problem);
    line.event = "token_unwritable";
    line.result = absl::StatusCodeToString(writable.code());
    line.detail = problem;
  }
  Audit(std::move(line));
  absl::MutexLock lock(&mu_);
  token_write_problem_ = std::move(problem);
}

KeyManager::PassStatus KeyManager::LastPass() const {
  absl::MutexLock lock(&mu_);
  return last_pass_;
}

absl::Status KeyManager::LoopCondition(absl::Duration stuck_after) const {
  const int64_t since = busy_since_ns_.load();
  if (since == kIdle) return absl::OkStatus();
  const absl::Duration busy = base::MonotonicNow() - absl::Nanoseconds(since);
  if (busy <= stuck_after) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(
      "the key manager has been on one change or pass for ",
      absl::FormatDuration(absl::Trunc(busy, absl::Seconds(1))),
      " (an HSM call that has not returned: a stalled HSM, or a connection "
      "the pool abandoned); key changes are refused until it returns, while "
      "signing goes on"));
}

void KeyManager::RequestPass() {
  absl::MutexLock lock(&mu_);
  pass_asked_ = true;
}

void KeyManager::Tick() {
  // Releasing mu_ re-evaluates the loop's wait condition (absl::Mutex).
  absl::MutexLock lock(&mu_);
}

void KeyManager::Audit(AuditEvent line) {
  if (WriteUnwrittenEvents().ok()) {
    absl::Status written = audit_->Append(line);
    if (written.ok()) return;
    if (!absl::IsUnavailable(written)) {
      // Not a broken log (a line the log refuses): keeping it would hold
      // back every line after it.
      SIGNET_LOG_ERROR("the {} line was refused by the audit log: {}",
                       line.event, written.ToString());
      return;
    }
    SIGNET_LOG_ERROR(
        "the audit log cannot be written ({}): the {} line is kept to be "
        "written once it can",
        written.message(), line.event);
  }
  if (unwritten_events_.size() >= kMaxUnwrittenEvents) {
    ++unwritten_events_dropped_;
    return;
  }
  line.detail = absl::StrCat(
      line.detail, line.detail.empty() ? "" : " ",
      "(written late: the audit log could not be written at ",
      absl::FormatTime(absl::RFC3339_full, clock_.Now(), absl::UTCTimeZone()),
      ", when this happened)");
  unwritten_events_.push_back(std::move(line));
}

absl::Status KeyManager::WriteUnwrittenEvents() {
  while (!unwritten_events_.empty()) {
    absl::Status written = audit_->Append(unwritten_events_.front());
    if (absl::IsUnavailable(written)) return written;
    if (!written.ok()) {
      SIGNET_LOG_ERROR("the {} line was refused by the audit log: {}",
                       unwritten_events_.front().event, written.ToString());
    }
    unwritten_events_.pop_front();
  }
  if (unwritten_events_dropped_ > 0) {
    AuditEvent line;
    line.event = "key_events_lost";
    line.caller = "signetd";
    line.result = "DATA_LOSS";
    line.detail = absl::StrCat(
        unwritten_events_dropped_,
        " key event(s) after the ones above were not kept while the audit "
        "log could not be written (at most ",
        kMaxUnwrittenEvents, " are kept); signetd's own log has them");
    SIGNET_RETURN_IF_ERROR(audit_->Append(line));
    unwritten_events_dropped_ = 0;
  }
  return absl::OkStatus();
}

bool KeyManager::Post(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || tasks_.size() >= kMaxQueuedCalls) return false;
  tasks_.push_back(std::move(task));
  return true;
}

absl::Status KeyManager::PassAndPublish(bool notify) {
  const absl::Time at = clock_.Now();
  const absl::Duration at_elapsed = clock_.Elapsed();
  // Destroying and pruning keys follow the time seen pass when the wall
  // clock reads well ahead of it (set forward since the anchor).
  const absl::Time irreversible_at = seen_.IrreversibleStepsAt(at);
  const absl::Duration ahead = at - irreversible_at;
  const bool clock_ahead = ahead > absl::ZeroDuration();
  if (clock_ahead != clock_ahead_) {
    if (clock_ahead) {
      SIGNET_LOG_ERROR(
          "clock anomaly: the wall clock reads {} ahead of the time signetd "
          "has seen pass since {} (it was set forward; or it was set back "
          "earlier, which lowers that time, and is right again); destroying "
          "and pruning keys wait until that time has really passed (if the "
          "clock is right, start signetd once with --accept_wall_clock)",
          absl::FormatDuration(absl::Trunc(ahead, absl::Seconds(1))),
          absl::FormatTime(absl::RFC3339_sec, seen_.anchor_wall(),
                           absl::UTCTimeZone()));
    } else {
      SIGNET_LOG_INFO(
          "the wall clock agrees again with the time signetd has seen pass");
    }
  }
  clock_ahead_ = clock_ahead;
  absl::StatusOr<std::map<std::string, rotation::ScopeKeySet>> sets =
      reconciler_->RunOnce(at, irreversible_at);
  if (sets.ok()) {
    absl::flat_hash_set<std::string> revoked;
    for (const auto& [name, set] : *sets) {
      for (const rotation::KeyRecord& record : set.records) {
        if (record.has_revocation()) revoked.insert(record.key_id());
      }
    }
    revoked_->Reset(std::move(revoked));
  }
  absl::StatusOr<ScopeKeysMap> built =
      sets.ok() ? BuildScopeKeys(config_, *sets, Scopes(), at) : sets.status();
  if (built.ok()) {
    SwapIn(*built, notify);
    // Before the pass is reported, so a status read after it has the
    // check's answer too.
    CheckTokenWritableIfDue();
  }
  {
    // After the keys are handed on: a pass GetStatus reports is one whose
    // keys are served and published.
    absl::MutexLock lock(&mu_);
    last_pass_ = PassStatus{at, at_elapsed, built.status(), ""};
    if (clock_ahead) {
      last_pass_.wall_clock_anomaly = absl::StrCat(
          "reads ", absl::FormatDuration(absl::Trunc(ahead, absl::Seconds(1))),
          " ahead of the time seen pass since ",
          absl::FormatTime(absl::RFC3339_sec, seen_.anchor_wall(),
                           absl::UTCTimeZone()),
          "; ", reconciler_->held_count(),
          " key destruction(s) or prune(s) held until their time really "
          "passes");
    }
  }
  if (!built.ok()) return built.status();
  for (const InternalScope& scope : internal_) {
    auto set = sets->find(scope.policy.scope);
    if (set == sets->end()) continue;
    if (absl::Status st = scope.on_pass(set->second, at); !st.ok()) {
      absl::MutexLock lock(&mu_);
      last_pass_.status = st;
      return st;
    }
  }
  return absl::OkStatus();
}

absl::Status KeyManager::PublishKnown() {
  const absl::Time at = clock_.Now();
  const ScopeKeysMap previous = Scopes();
  absl::StatusOr<ScopeKeysMap> built =
      BuildScopeKeys(config_, reconciler_->KnownSets(), previous, at);
  if (!built.ok()) return built.status();
  for (const auto& [name, keys] : previous) built->try_emplace(name, keys);
  SwapIn(*built, /*notify=*/true);
  return absl::OkStatus();
}

void KeyManager::SwapIn(const ScopeKeysMap& scopes, bool notify) {
  {
    absl::MutexLock lock(&mu_);
    scopes_ = scopes;
  }
  if (notify && on_keys_) on_keys_(scopes);
}

void KeyManager::Loop() {
  absl::Duration backoff = absl::Seconds(1);
  bool failing = false;
  absl::Time failing_since;
  int64_t failed_passes = 0;
  // Scopes whose clock anomaly has been logged (its text names the clock's
  // reading, so it differs at every pass: logged when it starts and ends).
  std::set<std::string> anomalous;
  // Asked-for passes (RequestPass) are heard from this base::MonotonicNow()
  // time on, at most one per kMinAskedPassSpacing.
  absl::Duration hear_asks_from_monotonic = -absl::InfiniteDuration();
  while (true) {
    (void)WriteUnwrittenEvents();
    const bool events_waiting = !unwritten_events_.empty();
    // The next pass: a millisecond past the next schedule boundary after
    // the last pass, so it sees the new state, or one interval on, on the
    // clock. From the last pass, not now: a clock set forward between the
    // two must not skip what fell due meanwhile (now, if the clock was set
    // back, so the wait is not the step's length).
    const absl::Time from = std::min(clock_.Now(), LastPass().at);
    const absl::Time next_pass =
        std::min(reconciler_->NextBoundary(from) + absl::Milliseconds(1),
                 from + interval_);
    std::deque<std::function<void()>> tasks;
    {
      absl::MutexLock lock(&mu_);
      const bool hear_asks = base::MonotonicNow() >= hear_asks_from_monotonic;
      auto ready = [this, hear_asks]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !tasks_.empty() || (hear_asks && pass_asked_);
      };
      // Each wait's own end is part of its condition too, so a Tick ends
      // it when the timed end was stretched by a clock step.
      if (failing || events_waiting) {
        // Backoff is an interval of real time, whatever the clock says.
        // Events the audit log could not take are tried again every second.
        const absl::Duration wait = failing ? backoff : absl::Seconds(1);
        const absl::Duration until_monotonic = base::MonotonicNow() + wait;
        auto over = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return ready() || base::MonotonicNow() >= until_monotonic;
        };
        mu_.AwaitWithTimeout(absl::Condition(&over), wait);
        if (!failing && !ready() && clock_.Now() < next_pass) continue;
      } else if (!hear_asks) {
        // Not longer than the spacing, so an ask made meanwhile is heard.
        auto over = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return ready() || base::MonotonicNow() >= hear_asks_from_monotonic ||
                 clock_.Now() >= next_pass;
        };
        mu_.AwaitWithTimeout(absl::Condition(&over),
                             hear_asks_from_monotonic - base::MonotonicNow());
        if (!ready() && clock_.Now() < next_pass) continue;
      } else {
        auto over = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return ready() || clock_.Now() >= next_pass;
        };
        clock_.AwaitUntil(mu_, absl::Condition(&over), next_pass);
      }
      if (stopping_) return;
      tasks.swap(tasks_);
      if (tasks.empty() && pass_asked_) {
        hear_asks_from_monotonic = base::MonotonicNow() + kMinAskedPassSpacing;
      }
      pass_asked_ = false;  // any pass now answers the asks so far
    }
    // Each piece of work is timed on its own (a review: a burst of queued
    // changes, timed as one, read as a held loop).
    auto take_up = [this] {
      busy_since_ns_.store(absl::ToInt64Nanoseconds(base::MonotonicNow()));
    };
    absl::Cleanup idle = [this] { busy_since_ns_.store(kIdle); };
    if (!tasks.empty()) {
      // Operator calls run their own pass.
      for (auto& task : tasks) {
        take_up();
        task();
      }
      continue;
    }
    take_up();
    absl::Status pass = PassAndPublish();
    if (!pass.ok()) {
      // Never kills the loop: the replica keeps the keys it has, and the
      // pass is retried with backoff. Logged every time; audited once per
      // run of failures (and once when it ends), so an HSM outage of a day
      // is two audit lines, not thousands.
      SIGNET_LOG_ERROR("the key reconcile pass failed (retrying in {}): {}",
                       absl::FormatDuration(backoff), pass.ToString());
      if (!failing) {
        failing_since = clock_.Now();
        failed_passes = 0;
        AuditEvent line;
        line.event = "key_reconcile_failed";
        line.caller = "signetd";
        line.result = absl::StatusCodeToString(pass.code());
        line.detail = absl::StrCat(
            std::string(pass.message()),
            " (retried with backoff; the next line says when it works again)");
        Audit(std::move(line));
      }
      ++failed_passes;
      failing = true;
      backoff = std::min(backoff * 2, interval_);
      continue;
    }
    if (failing) {
      SIGNET_LOG_INFO(
          "the key reconcile pass works again after {} failed "
          "pass(es)",
          failed_passes);
      AuditEvent line;
      line.event = "key_reconcile_recovered";
      line.caller = "signetd";
      line.result = "OK";
      line.detail =
          absl::StrCat("the key reconcile pass works again after ",
                       failed_passes, " failed pass(es) over ",
                       absl::FormatDuration(absl::Trunc(
                           clock_.Now() - failing_since, absl::Seconds(1))));
      Audit(std::move(line));
    }
    failing = false;
    backoff = absl::Seconds(1);
    for (const auto& [name, keys] : Scopes()) {
      // A clock set back behind a recorded activation: loud, once.
      const std::string anomaly = keys->ClockAnomalyAt(clock_.Now());
      if (anomaly.empty() == anomalous.contains(name)) {
        if (anomaly.empty()) {
          SIGNET_LOG_INFO("scope {}: the clock anomaly has cleared", name);
          anomalous.erase(name);
        } else {
          SIGNET_LOG_ERROR("clock anomaly: {}", anomaly);
          anomalous.insert(name);
        }
      }
    }
  }
}

const rotation::ScopeKeyPolicy* KeyManager::PolicyFor(
    const std::string& scope) const {
  for (const InternalScope& internal : internal_) {
    if (internal.policy.scope == scope) return nullptr;  // never an operator's
  }
  return reconciler_->PolicyFor(scope);
}

absl::StatusOr<std::vector<rotation::KeyRecord>> KeyManager::ReadScope(
    const std::string& scope) {
  absl::StatusOr<std::map<std::string, hsm::StoredRecord>> stored =
      store_->ReadAllRecords();
  if (!stored.ok()) return stored.status();
  return rotation::RecordsOf(rotation::ParseRecords(*stored), scope);
}

namespace {

// The token's records could not be read (the HSM went away, say). An
// outside attack that killed the HSM during a rotation was answered with
// the bare PKCS#11 error, which left it unsure whether the change was
// made. `outcome` says what is known: after the request id was looked up,
// nothing was written, "so it is not made" (what signetctl looks for);
// before, an earlier call with the same id (before a restart) may have
// made the change, so that would not be true (a review).
absl::Status RecordsUnread(const absl::Status& read,
                           absl::string_view outcome) {
  return absl::Status(
      read.code(),
      absl::StrCat("the key records could not be read from the HSM (",
                   read.message(), ")", outcome,
                   "; retry with the same request_id once the HSM answers "
                   "(health says when)"));
}

}  // namespace

absl::StatusOr<std::string> KeyManager::Change(
    const google::protobuf::Message& request, const std::string& request_id,
    const std::function<
        absl::StatusOr<std::string>(const std::string& fingerprint)>& change) {
  const std::string fingerprint = request.SerializeAsString();
  auto reused = [&request_id] {
    return absl::InvalidArgumentError(absl::StrCat(
        "request_id \"", request_id,
        "\" was already used for another request; use a new id for a new "
        "change"));
  };
  if (auto seen = remembered_.find(request_id); seen != remembered_.end()) {
    if (seen->second.request != fingerprint) return reused();
    return seen->second.response;
  }
  // Not in memory (a restart since, or another writer before a promotion):
  // the token keeps each applied change with its first record write.
  absl::StatusOr<std::optional<rotation::OperatorChange>> recorded =
      RecordedChange(request_id);
  if (!recorded.ok()) {
    return RecordsUnread(recorded.status(),
                         ": this call wrote nothing, and whether an earlier "
                         "call with this request_id made the change is not "
                         "known");
  }
  absl::StatusOr<std::string> response;
  if (recorded->has_value()) {
    absl::StatusOr<std::string> digest = crypto::Sha256(fingerprint);
    if (!digest.ok()) return digest.status();
    if ((*recorded)->request_sha256() != *digest) return reused();
    // Made by an earlier call whose outcome was not known: the pass below
    // makes it take effect here now (a revoked key out of service).
    response = (*recorded)->response();
  } else {
    response = change(fingerprint);
    if (response.ok()) {
      // What was written is served at once: the pass below may first make
      // the next standby (seconds for an RSA-4096 key, more in a network
      // HSM), and until it swaps in, a revoked active key was still the
      // one served and every call of its scope was refused (a thirteenth
      // outside attack), though its successor's activation was written.
      if (absl::Status known = PublishKnown(); !known.ok()) {
        SIGNET_LOG_WARN(
            "the records an operator's change wrote could not be served "
            "before the pass after it: {}",
            known.ToString());
      }
    }
  }
  // Only an applied change is remembered: a refusal changed nothing, and a
  // change that failed midway is planned again from the token's records
  // when retried (a revocation already written then answers "already
  // revoked", and the reconcile loop completes the rest).
  if (response.ok()) {
    if (remembered_order_.size() >= kMaxRememberedRequests) {
      remembered_.erase(remembered_order_.front());
      remembered_order_.pop_front();
    }
    remembered_order_.push_back(request_id);
    remembered_[request_id] = Remembered{fingerprint, *response};
  }
  // The change (or what part of it happened) takes effect in this replica
  // now, not at the next interval.
  if (absl::Status pass = PassAndPublish(); !pass.ok()) {
    // Tried again soon, not at the next interval: a change whose later
    // writes failed may have left the scope without a signing key.
    RequestPass();
    // The token cannot be read now (the HSM connection dropped, say), but
    // what was written is known: it takes effect all the same, or a revoked
    // key would sign until a pass succeeds (a seventh outside attack saw
    // thousands of tokens so, after the revocation was answered).
    absl::Status known = PublishKnown();
    SIGNET_LOG_ERROR(
        "the pass after an operator's change failed: {}; {}", pass.ToString(),
        known.ok() ? "the change takes effect from the records written"
                   : absl::StrCat("and so did serving the records written: ",
                                  known.ToString()));
  }
  return response;
}

namespace {

absl::Status CheckRequestId(absl::string_view id) {
  if (id.empty()) {
    return absl::InvalidArgumentError(
        "request_id is required: 1 to 128 printable ASCII characters without "
        "spaces, new for each intended change (a retry reuses it)");
  }
  if (id.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id is ", id.size(), " bytes long; at most 128"));
  }
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          "request_id must be printable ASCII without spaces");
    }
  }
  return absl::OkStatus();
}

// Text shown to other operators (signetctl's tables) must not carry
// terminal control sequences, fake lines or hidden text. Refused: C0 and
// DEL; C1 (U+0080-U+009F, which terminals take for escape sequences); the
// bidirectional controls (U+061C, U+200E, U+200F, U+202A-U+202E,
// U+2066-U+2069), which make a table show other text than it holds; the
// line and paragraph separators (U+2028, U+2029), which start a fake
// line; and what shows as nothing (an eighth outside attack hid text with
// U+200B; a fourteenth with tag characters, fillers and soft hyphens):
// Unicode's default-ignorable code points (DerivedCoreProperties.txt:
// U+00AD, U+034F, U+115F-U+1160, U+17B4-U+17B5, U+180B-U+180F,
// U+200B-U+200F, U+202A-U+202E, U+2060-U+206F, U+3164, U+FE00-U+FE0F,
// U+FEFF, U+FFA0, U+FFF0-U+FFF8, U+1BCA0-U+1BCA3, U+1D173-U+1D17A,
// U+E0000-U+E0FFF), the interlinear annotation controls and object
// replacement marks (U+FFF9-U+FFFC) and the braille blank (U+2800). The
// text is valid UTF-8 (protobuf checked it).
bool IsHiddenOrControl(uint32_t c) {
  constexpr std::pair<uint32_t, uint32_t> kRefused[] = {
      {0x0000, 0x001F},   {0x007F, 0x009F},   {0x00AD, 0x00AD},
      {0x034F, 0x034F},   {0x061C, 0x061C},   {0x115F, 0x1160},
      {0x17B4, 0x17B5},   {0x180B, 0x180F},   {0x200B, 0x200F},
      {0x2028, 0x202E},   {0x2060, 0x206F},   {0x2800, 0x2800},
      {0x3164, 0x3164},   {0xFE00, 0xFE0F},   {0xFEFF, 0xFEFF},
      {0xFFA0, 0xFFA0},   {0xFFF0, 0xFFFC},   {0x1BCA0, 0x1BCA3},
      {0x1D173, 0x1D17A}, {0xE0000, 0xE0FFF},
  };
  for (const auto& [first, last] : kRefused) {
    if (c >= first && c <= last) return true;
  }
  return false;
}

bool HasControlCharacters(absl::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const unsigned char lead = static_cast<unsigned char>(text[i]);
    const size_t length = lead < 0x80   ? 1
                          : lead < 0xE0 ? 2
                          : lead < 0xF0 ? 3
                                        : 4;
    if (i + length > text.size()) return true;  // not UTF-8 after all
    uint32_t c = length == 1   ? lead
                 : length == 2 ? lead & 0x1F
                 : length == 3 ? lead & 0x0F
                               : lead & 0x07;
    for (size_t k = 1; k < length; ++k) {
      c = (c << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
    }
    if (IsHiddenOrControl(c)) return true;
    i += length;
  }
  return false;
}

// A change is not started with less of its call's deadline left: it takes
// a few token writes (tens of milliseconds, more on a busy HSM), and the
// caller's own deadline passes a little before the server's (which counts
// from the request's arrival), so one started at the last moment would be
// made after its caller was told it failed.
constexpr absl::Duration kMinTimeForAChange = absl::Seconds(1);

absl::Status DeadlinePassed() {
  return absl::DeadlineExceededError(
      "the call's deadline passed, or was less than 1 s away, before the "
      "change could be made (the HSM is slow or stalled, or other changes "
      "were ahead): nothing was changed, so it is not made; retry with the "
      "same request_id");
}

}  // namespace

absl::StatusOr<std::optional<rotation::OperatorChange>>
KeyManager::RecordedChange(const std::string& request_id) {
  // Every scope's records: a request id names one change, whichever scope
  // it was for.
  absl::StatusOr<std::map<std::string, hsm::StoredRecord>> stored =
      store_->ReadAllRecords();
  if (!stored.ok()) return stored.status();
  for (const auto& [key_id, record] : rotation::ParseRecords(*stored)) {
    for (const auto* changes :
         {&record.operator_changes(), &record.carried_changes()}) {
      for (const rotation::OperatorChange& change : *changes) {
        if (change.request_id() == request_id) {
          return std::optional<rotation::OperatorChange>(change);
        }
      }
    }
  }
  return std::optional<rotation::OperatorChange>();
}

absl::StatusOr<std::string> KeyManager::ApplyChange(
    const std::string& scope, const std::string& admin,
    base::MonotonicDeadline deadline, const std::string& request_id,
    const std::string& fingerprint, const Planner& plan,
    const Responder& respond, std::string* warning) {
  const rotation::ScopeKeyPolicy* policy = PolicyFor(scope);
  if (policy == nullptr) {
    return absl::NotFoundError(absl::StrCat("no scope named \"", scope, "\""));
  }
  if (!writer_) {
    return absl::FailedPreconditionError(
        "this replica does not write keys (never_create_keys): call the "
        "replica that does");
  }
  absl::StatusOr<std::vector<rotation::KeyRecord>> records = ReadScope(scope);
  if (!records.ok()) {
    return RecordsUnread(records.status(),
                         " before anything was written, so it is not made");
  }
  const absl::Time now = clock_.Now();
  absl::StatusOr<std::vector<rotation::KeyAction>> actions =
      plan(*records, rotation::ScheduleOf(*policy), now);
  if (!actions.ok()) return actions.status();
  // The answer is fixed by the plan; it is written with the change's first
  // record write, so a retry after a restart finds it (Change).
  const std::string response = respond(*actions, now);
  absl::StatusOr<std::string> digest = crypto::Sha256(fingerprint);
  if (!digest.ok()) return digest.status();
  // The action whose record carries the change: once it is written, the
  // change is made (a retry finds it), whatever happens to the rest.
  size_t recorded_by = actions->size();
  for (size_t i = 0; i < actions->size(); ++i) {
    rotation::KeyAction& action = (*actions)[i];
    if (action.kind != rotation::KeyAction::Kind::kWriteRecord &&
        action.kind != rotation::KeyAction::Kind::kDestroyPrivateKey) {
      continue;
    }
    recorded_by = i;
    auto* changes = action.record.mutable_operator_changes();
    // The oldest beyond the few kept move to the record's carried changes
    // (recognized for a day), not away.
    std::vector<rotation::OperatorChange> pushed_out;
    while (changes->size() >= kMaxRecordedChanges) {
      pushed_out.push_back(changes->Get(0));
      changes->erase(changes->begin());
    }
    rotation::CarryOperatorChanges(pushed_out, now, &action.record);
    rotation::OperatorChange* change = changes->Add();
    change->set_request_id(request_id);
    change->set_request_sha256(*digest);
    change->set_response(response);
    *change->mutable_made_at() = rotation::TimeToProto(now);
    break;
  }
  // The last moment before the first token write: a caller that gave up
  // meanwhile (reading the records waits for the HSM) was told the change
  // failed, so it is not made.
  if (deadline.left() <= kMinTimeForAChange) return DeadlinePassed();
  // A key being revoked is out of service in this replica from before its
  // revocation is written: no signature made with it leaves from here on
  // (RevokedKeys), not only once the pass after the change has run.
  std::vector<std::string> revoking;
  for (const rotation::KeyAction& action : *actions) {
    if (action.kind == rotation::KeyAction::Kind::kWriteRecord &&
        action.record.has_revocation()) {
      revoking.push_back(action.record.key_id());
    }
  }
  for (const std::string& key_id : revoking) revoked_->Mark(key_id);
  acting_admin_ = admin;
  size_t completed = 0;
  absl::Status applied = reconciler_->Apply(*policy, *actions, &completed);
  acting_admin_.clear();
  if (!applied.ok() && completed <= recorded_by) {
    // Not known to be written: kept out of service until a pass reads the
    // records and settles it (RevokedKeys::Reset); Change asks for one.
    // A write the HSM reported failed may still have been made (its reply
    // lost): the retry finds out.
    return absl::UnavailableError(absl::StrCat(
        "the change was not made, or not known to be (", applied.message(),
        "); retry with the same request_id to make it or learn that it was"));
  }
  if (!applied.ok()) {
    // Made, as a retry would be told (the record that carries it is
    // written); the rest is the schedule's, which the loop's passes
    // complete as soon as the HSM answers (Change asks for one).
    *warning = absl::StrCat(
        "the change is made, but the last ", actions->size() - completed,
        " of its ", actions->size(), " token write(s) were not (",
        applied.message(),
        "): signetd makes them within seconds once the HSM answers; until "
        "then the scope may have no signing key (health says so)");
    SIGNET_LOG_ERROR("scope {}: {}", scope, *warning);
  }
  return response;
}

template <typename Request, typename Response>
void KeyManager::Submit(const Request& request, const std::string& admin,
                        base::MonotonicDeadline deadline,
                        std::function<void(absl::StatusOr<Response>)> done,
                        OnTurn on_turn, Planner plan, Responder respond) {
  auto task = [this, request, admin, deadline, done,
               on_turn = std::move(on_turn), plan = std::move(plan),
               respond = std::move(respond)]() {
    bool stopping;
    {
      absl::MutexLock lock(&mu_);
      stopping = stopping_;
    }
    if (stopping) {
      done(absl::UnavailableError(
          "signetd is stopping; retry with the same request_id"));
      return;
    }
    // The caller has been told DEADLINE_EXCEEDED already (an outside attack
    // saw three immediate rotations, queued behind a stalled HSM, applied
    // seconds after each answered "failed"). Monotonic, not clock_: the
    // watchdog that answered measures the same way.
    if (deadline.left() <= kMinTimeForAChange) {
      done(DeadlinePassed());
      return;
    }
    // Started only if its call was not answered first as never started (at
    // its deadline or a stop): both sides then say the same.
    if (on_turn && !on_turn()) {
      done(absl::DeadlineExceededError(
          "the call was answered before this change's turn came (its "
          "deadline, or a stop), so it is not made; retry with the same "
          "request_id"));
      return;
    }
    std::string warning;
    absl::StatusOr<std::string> answer = Change(
        request, request.request_id(), [&](const std::string& fingerprint) {
          return ApplyChange(request.scope(), admin, deadline,
                             request.request_id(), fingerprint, plan, respond,
                             &warning);
        });
    if (!answer.ok()) {
      done(answer.status());
      return;
    }
    Response response;
    response.ParseFromString(*answer);
    if (!warning.empty()) {
      response.set_warning(absl::StrCat(
          response.warning(), response.warning().empty() ? "" : "; ", warning));
    }
    done(response);
  };
  if (!Post(std::move(task))) {
    done(absl::ResourceExhaustedError(absl::StrCat(
        "too many key changes queued (", kMaxQueuedCalls,
        ") or signetd is stopping; retry with the same request_id")));
  }
}

absl::Status KeyManager::Check(const signet::v1::RotateKeyRequest& request) {
  if (absl::Status st = CheckRequestId(request.request_id()); !st.ok()) {
    return st;
  }
  if (request.mode() != signet::v1::PLANNED &&
      request.mode() != signet::v1::IMMEDIATE) {
    return absl::InvalidArgumentError("mode must be PLANNED or IMMEDIATE");
  }
  return absl::OkStatus();
}

absl::Status KeyManager::Check(const signet::v1::RevokeKeyRequest& request) {
  if (absl::Status st = CheckRequestId(request.request_id()); !st.ok()) {
    return st;
  }
  if (request.kid().empty()) {
    return absl::InvalidArgumentError(
        "kid is required (at most 128 characters)");
  }
  if (request.kid().size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kid is ", request.kid().size(), " bytes long; at most 128"));
  }
  if (request.reason().empty()) {
    return absl::InvalidArgumentError(
        "reason is required (1 to 512 bytes): it is recorded with the key "
        "and audited");
  }
  if (request.reason().size() > 512) {
    return absl::InvalidArgumentError(
        absl::StrCat("reason is ", request.reason().size(),
                     " bytes long; at most 512 (it is recorded with the key "
                     "and audited)"));
  }
  if (HasControlCharacters(request.reason())) {
    return absl::InvalidArgumentError(
        "reason must not contain control characters (newlines, escape "
        "sequences, C1 or bidirectional controls, line separators, "
        "invisible characters such as zero-width spaces, soft hyphens, "
        "fillers or tag characters): operators read it in tables");
  }
  return absl::OkStatus();
}

void KeyManager::RotateKey(
    const signet::v1::RotateKeyRequest& request, const std::string& admin,
    base::MonotonicDeadline deadline,
    std::function<void(absl::StatusOr<signet::v1::RotateKeyResponse>)> done,
    OnTurn on_turn) {
  if (absl::Status st = Check(request); !st.ok()) {
    done(st);
    return;
  }
  const rotation::RotateMode mode = request.mode() == signet::v1::IMMEDIATE
                                        ? rotation::RotateMode::kImmediate
                                        : rotation::RotateMode::kPlanned;
  Submit<signet::v1::RotateKeyRequest, signet::v1::RotateKeyResponse>(
      request, admin, deadline, std::move(done), std::move(on_turn),
      [this, mode](
          const std::vector<rotation::KeyRecord>& records,
          const rotation::SchedulePolicy& schedule,
          absl::Time now) -> absl::StatusOr<std::vector<rotation::KeyAction>> {
        absl::StatusOr<std::vector<rotation::KeyAction>> plan =
            rotation::PlanRotateNow(records, schedule, mode, now);
        if (!plan.ok() || plan->empty()) return plan;
        // Never rotate to a standby the last pass could not load (gone
        // from the token, failing a check): the scope would stop signing.
        const rotation::KeyRecord& next = plan->front().record;
        const ScopeKeysMap scopes = Scopes();
        auto scope = scopes.find(schedule.scope);
        if (scope == scopes.end()) return plan;
        auto why = scope->second->unusable().find(next.key_id());
        if (why == scope->second->unusable().end()) return plan;
        return absl::FailedPreconditionError(absl::StrCat(
            "scope ", schedule.scope, ": its standby ", next.kid(),
            " cannot sign (", why->second,
            "), so rotating to it would stop the scope; revoke the standby "
            "first (signetctl keys revoke ",
            schedule.scope, " ", next.kid(),
            "): the writer makes a new one, which relying parties hold once "
            "it has been published for min_publish_lead_seconds"));
      },
      [](const std::vector<rotation::KeyAction>& actions, absl::Time) {
        signet::v1::RotateKeyResponse response;
        const rotation::KeyRecord& next = actions[0].record;
        response.set_active_kid(next.kid());
        response.set_activates_at(rotation::FormatInstant(
            rotation::TimeFromProto(next.activate_at())));
        response.set_retiring_kid(actions[1].record.kid());
        if (actions[0].detail.find("unknown kid") != std::string::npos) {
          response.set_warning(actions[0].detail);
        }
        return response.SerializeAsString();
      });
}

void KeyManager::RevokeKey(
    const signet::v1::RevokeKeyRequest& request, const std::string& admin,
    base::MonotonicDeadline deadline,
    std::function<void(absl::StatusOr<signet::v1::RevokeKeyResponse>)> done,
    OnTurn on_turn) {
  if (absl::Status st = Check(request); !st.ok()) {
    done(st);
    return;
  }
  const std::string kid = request.kid();
  const std::string reason = request.reason();
  // Whether the plan revokes the key that signs now (the responder sees
  // only the plan).
  auto revokes_signing = std::make_shared<bool>(false);
  Submit<signet::v1::RevokeKeyRequest, signet::v1::RevokeKeyResponse>(
      request, admin, deadline, std::move(done), std::move(on_turn),
      [kid, reason, admin, revokes_signing](
          const std::vector<rotation::KeyRecord>& records,
          const rotation::SchedulePolicy& schedule,
          absl::Time now) -> absl::StatusOr<std::vector<rotation::KeyAction>> {
        const int signing = rotation::ViewScope(records, now).signing;
        for (size_t i = 0; i < records.size(); ++i) {
          const rotation::KeyRecord& r = records[i];
          if (r.kid() != kid) continue;
          *revokes_signing = signing == static_cast<int>(i);
          return rotation::PlanRevoke(records, schedule, r.key_id(), reason,
                                      admin, now);
        }
        return absl::NotFoundError(absl::StrCat("scope ", schedule.scope,
                                                " has no key with kid ",
                                                base::Quote(kid)));
      },
      [kid, revokes_signing](const std::vector<rotation::KeyAction>& actions,
                             absl::Time now) {
        signet::v1::RevokeKeyResponse response;
        response.set_revoked_kid(kid);
        response.set_revoked_at(rotation::FormatInstant(now));
        if (actions.size() > 1) {
          response.set_active_kid(actions[1].record.kid());
          if (actions[1].detail.find("unknown kid") != std::string::npos) {
            response.set_warning(actions[1].detail);
          }
        } else if (*revokes_signing) {
          response.set_warning(
              "the revoked key was the one that signs and no standby could "
              "take over: the scope signs again once signetd has made and "
              "published a new key (its next pass, within seconds; health "
              "says NOT_SERVING until then)");
        }
        return response.SerializeAsString();
      });
}

}  // namespace signet::server
