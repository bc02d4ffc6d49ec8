#!/usr/bin/env bash
# The README's run command as a supervisor, for real: scripts/run on a state
# directory of its own (SIGNET_STATE_DIR) and free ports, then
#   1. kill -9 of the HSM's whole process group: scripts/run restarts the
#      HSM, signetd (still running) reconnects, and signing works again;
#   2. SIGTERM to the script and at once to its process group (what
#      `timeout` and systemd do): everything stops, no process is left.
# Needs root (scripts/run does). Usage: run_script_test.sh <repo> <build dir>
set -euo pipefail
repo="$1"
build="$2"
[[ "$(id -u)" -eq 0 ]] || { echo "SKIP: scripts/run needs root"; exit 77; }

work="$(mktemp -d /tmp/signet-run-test.XXXXXX)"
chmod 0755 "$work"
log="$work/run.log"
script_pid=""
fail() {
  echo "FAIL: $*"
  echo "--- scripts/run output (last 40 lines):"
  tail -40 "$log" || true
  exit 1
}
cleanup() {
  if [[ -n "$script_pid" ]]; then kill -KILL -- "-$script_pid" 2>/dev/null || true; fi
  local pid
  for pid in $(pgrep -f "$work" || true); do
    kill -KILL -- "-$(ps -o pgid= -p "$pid" | tr -d ' ')" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
grpc_port="$(free_port)"
http_port="$(free_port)"
[[ "$grpc_port" != "$http_port" ]] || http_port="$(free_port)"

# Waits up to $1 seconds for `$2` (a command) to succeed.
await() {
  local seconds="$1" i
  shift
  for ((i = 0; i < seconds * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  return 1
}

SIGNET_STATE_DIR="$work/var" SIGNET_SKIP_BUILD=1 SIGNET_BUILD_DIR="$build" \
  SIGNET_GRPC_PORT="$grpc_port" SIGNET_HTTP_PORT="$http_port" \
  setsid "$repo/scripts/run" >"$log" 2>&1 &
script_pid=$!
await 120 grep -q "signetd ready" "$log" || fail "signetd not ready within 120 s"

tls="$work/var/tls"
export SIGNET_TARGET="localhost:$grpc_port" SIGNET_CA="$tls/ca.pem"
export SIGNET_CERT="$tls/clients/demo-consumer.pem" SIGNET_KEY="$tls/clients/demo-consumer.key"
signetctl="$build/client/signetctl"
sign() {
  "$signetctl" claims --iss https://consumer.signet.example --sub alice |
    "$signetctl" sign-jwt --scope demo-consumer | grep -q '^ey'
}
sign || fail "signing failed before the HSM was killed"

hsm_group="$(grep -o 'p11-kit server (process group [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')"
[[ -n "$hsm_group" ]] || fail "no HSM process group in the output"
kill -KILL -- "-$hsm_group"
await 30 grep -q "restarting the HSM" "$log" || fail "the HSM was not restarted"
new_group() {
  local g
  g="$(grep -o 'p11-kit server (process group [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')"
  [[ -n "$g" && "$g" != "$hsm_group" ]]
}
await 30 new_group || fail "no new HSM process group"
await 60 sign || fail "signing did not work again within 60 s of the HSM's restart"
kill -0 "$script_pid" 2>/dev/null || fail "scripts/run exited"
grep -q "exited with status" <(grep "signetd (pid" "$log") &&
  fail "signetd was restarted: it should have reconnected"
echo "ok: HSM killed, restarted, signing again"

# Two SIGTERMs, as `timeout` sends them: the script, then its group.
kill -TERM "$script_pid"
kill -TERM -- "-$script_pid" 2>/dev/null || true
await 30 bash -c "! kill -0 $script_pid 2>/dev/null" || fail "scripts/run did not stop within 30 s"
sleep 0.5
left="$(pgrep -af "$work" || true)"
[[ -z "$left" ]] || fail "processes left behind: $left"
grep -q "stopping the HSM" "$log" || fail "the HSM was not stopped by scripts/run"
script_pid=""
echo "ok: two SIGTERMs stopped everything; no process left"
