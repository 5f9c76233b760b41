#!/usr/bin/env bash
# Churn and soak: a real chatd with every protocol takes `loadgen mix` traffic for a bounded time
# while `loadgen churn` opens and drops short-lived connections beside it (signing in, then
# leaving cleanly, by reset, mid-frame or before signing in), CONNECTS of them in all, twice.
# Then it checks that nothing was lost (both loadgens exit 0 both times), that chatd's open
# descriptors are back to their baseline, that the heap did not grow from the first run to the
# second, that its resident memory is back near its baseline, and that SIGTERM makes chatd exit 0.
#
# The leak check: the same load twice, chatd's heap in use (the admin port's
# chatd_heap_in_use_bytes: bytes allocated and not freed, so free pages the allocator keeps do
# not blur it) read when each run is over. Whatever the first run grew for good (tables at their
# working size) the second reuses, so a leak shows as growth from the first to the second: more
# than HEAP_SLACK_BYTES_PER_CONNECT (default 128) bytes per connect fails the run (seen: about
# 20 without a leak; a planted leak of 1 KiB per connection grew it by about 1,100). Resident memory, which free pages blur, is only checked
# loosely: at most RSS_SLACK_KIB (default 16 MiB) above the baseline taken after a short warm-up.
# The figures are printed either way.
#
# Usage: scripts/soak.sh [CONNECTS] [DURATION]      (defaults: 100000 connects, 60s, each run)
# Environment: MIX_CLIENTS (default 1000), RSS_SLACK_KIB (default 16384),
# HEAP_SLACK_BYTES_PER_CONNECT (default 128).
# Builds release binaries if needed. Loopback only; bounded in time; stops by itself.
set -euo pipefail
script_name=soak
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

case ${1:-} in -h | --help) usage; exit 0 ;; -*) usage_error "unknown option $1" ;; esac
[ $# -le 2 ] || usage_error "at most two arguments, CONNECTS and DURATION"
connects=${1:-100000}
duration=${2:-60s}
mix_clients=${MIX_CLIENTS:-1000}
rss_slack_kib=${RSS_SLACK_KIB:-16384}
heap_slack_per_connect=${HEAP_SLACK_BYTES_PER_CONNECT:-128}
is_count "$connects" || usage_error "CONNECTS $connects is not a positive integer"
[[ $duration =~ ^[0-9]+(ms|s|m)?$ ]] || usage_error "DURATION $duration: expected e.g. 60s, 2m, 500ms"
is_count "$mix_clients" || usage_error "MIX_CLIENTS $mix_clients is not a positive integer"
is_count "$rss_slack_kib" || usage_error "RSS_SLACK_KIB $rss_slack_kib is not a positive integer"
is_count "$heap_slack_per_connect" ||
  usage_error "HEAP_SLACK_BYTES_PER_CONNECT $heap_slack_per_connect is not a positive integer"

# Seconds in DURATION (accepts 90, 90s, 2m, 500ms).
seconds_of() {
  case "$1" in
    *ms) echo $(( (${1%ms} + 999) / 1000 )) ;;
    *s) echo "${1%s}" ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *) echo "$1" ;;
  esac
}
duration_s=$(seconds_of "$duration")
[ "$duration_s" -ge 1 ] || usage_error "DURATION must be at least 1s"
# Churn spreads its connects over the mix's duration.
connect_rate=$(( (connects + duration_s - 1) / duration_s ))
[ "$connect_rate" -le 100000 ] || usage_error "CONNECTS/DURATION above 100000/s"

cd "$(dirname "$0")/.."
build_release

room_port=$(free_port); bin24_port=$(free_port); ccm_port=$(free_port); matou_port=$(free_port)
ocm_tcp_port=$(free_port); ocm_udp_port=$(free_udp_port); ocm_relay_port=$(free_udp_port)
web_port=$(free_port); admin_port=$(free_port)
ports=(--room-port "$room_port" --bin24-port "$bin24_port" --ccm-port "$ccm_port"
       --matou-port "$matou_port" --ocm-tcp-port "$ocm_tcp_port" --web-port "$web_port")
data_dir=$(mktemp -d)
log=$(mktemp)
ulimit -n 20000 2>/dev/null || true

echo "+ $chatd ${ports[*]} --ocm-udp-port $ocm_udp_port --ocm-relay-port $ocm_relay_port --admin-port $admin_port --connections-max 15000 --data-dir $data_dir"
"$chatd" "${ports[@]}" --ocm-udp-port "$ocm_udp_port" --ocm-relay-port "$ocm_relay_port" \
  --admin-port "$admin_port" --connections-max 15000 --data-dir "$data_dir" \
  --stats-interval-ms 5000 2>"$log" &
chatd_pid=$!
cleanup() { kill -9 "$chatd_pid" 2>/dev/null || true; rm -rf "$log" "$data_dir"; }
trap cleanup EXIT

# Every protocol listens: six TCP listeners, two UDP sockets, and the admin port.
wait_listening "$log" "$chatd_pid" 9

fds() { find "/proc/$chatd_pid/fd" -mindepth 1 -maxdepth 1 | wc -l; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$chatd_pid/status"; }
# chatd's heap in use, in bytes, from its admin port (bash's /dev/tcp: no HTTP client needed).
heap_bytes() {
  local value
  exec 3<>"/dev/tcp/127.0.0.1/$admin_port"
  printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' >&3
  value=$(awk '$1 == "chatd_heap_in_use_bytes" { print $2 }' <&3)
  exec 3<&-
  [[ $value =~ ^[0-9]+$ ]] || die "no chatd_heap_in_use_bytes on the admin port"
  echo "$value"
}
# Wait (bounded) until chatd's descriptors are back to $1: closes finish at the end of a loop
# turn, and lingering closes (a reply still being written) within a second or so.
wait_fds() {
  for _ in $(seq 1 300); do
    [ "$(fds)" -le "$1" ] && return 0
    sleep 0.1
  done
  return 1
}

mix=(mix "${ports[@]}" --ocm-udp-port "$ocm_udp_port")
run_pair() { # CONNECTS RATE DURATION CLIENTS: mix and churn side by side; 0 if both passed
  local mix_status=0 churn_status=0
  echo "+ $loadgen ${mix[*]} --clients $4 --duration $3 &"
  timeout $(( $(seconds_of "$3") + 120 )) "$loadgen" "${mix[@]}" --clients "$4" --duration "$3" &
  local mix_pid=$!
  echo "+ $loadgen churn ${ports[*]} --connects $1 --connect-rate $2"
  timeout $(( $(seconds_of "$3") + 120 )) "$loadgen" churn "${ports[@]}" --connects "$1" \
    --connect-rate "$2" || churn_status=$?
  wait "$mix_pid" || mix_status=$?
  [ "$churn_status" -eq 0 ] || echo "soak: loadgen churn failed (exit $churn_status)" >&2
  [ "$mix_status" -eq 0 ] || echo "soak: loadgen mix failed (exit $mix_status)" >&2
  [ "$churn_status" -eq 0 ] && [ "$mix_status" -eq 0 ]
}

idle_fds=$(fds)
echo "--- warm-up (2,000 connects, 3 s)"
run_pair 2000 1000 3s 100 || exit 1
wait_fds "$idle_fds" || { echo "soak: descriptors not back after the warm-up: $(fds) (idle $idle_fds)" >&2; exit 1; }
base_fds=$(fds); base_rss=$(rss_kib)
echo "baseline: fds $base_fds, VmRSS $base_rss KiB"

soak_status=0
fds_ok=0
heap_after=()
for run in 1 2; do
  echo "--- soak, run $run of 2 ($connects connects at $connect_rate/s beside $mix_clients mix clients for $duration)"
  started=$(date +%s)
  run_pair "$connects" "$connect_rate" "$duration" "$mix_clients" || soak_status=$?
  echo "run $run took $(( $(date +%s) - started )) s"
  wait_fds "$base_fds" || fds_ok=1
  heap_after+=("$(heap_bytes)")
  echo "after run $run: fds $(fds) (baseline $base_fds), heap in use ${heap_after[-1]} bytes, VmRSS $(rss_kib) KiB"
done
after_fds=$(fds); after_rss=$(rss_kib)
heap_growth=$(( heap_after[1] - heap_after[0] ))
heap_allowed=$(( connects * heap_slack_per_connect ))
echo "heap growth from run 1 to run 2: $heap_growth bytes ($(( heap_growth / connects )) per connect; allowed $heap_allowed, $heap_slack_per_connect per connect)"
echo "after: fds $after_fds (baseline $base_fds), VmRSS $after_rss KiB (baseline $base_rss KiB, allowed +$rss_slack_kib)"

echo "+ kill -TERM $chatd_pid"
kill -TERM "$chatd_pid"
chatd_status=0
timeout 10 tail --pid="$chatd_pid" -f /dev/null || { echo "soak: chatd did not exit after SIGTERM" >&2; exit 1; }
wait "$chatd_pid" || chatd_status=$?
echo "--- chatd log (last lines)"
tail -n 3 "$log"
trap - EXIT
rm -rf "$log" "$data_dir"

failed=0
[ "$soak_status" -eq 0 ] || failed=1
[ "$fds_ok" -eq 0 ] || { echo "soak: descriptors not back to baseline: $after_fds, baseline $base_fds" >&2; failed=1; }
if [ "$heap_growth" -gt "$heap_allowed" ]; then
  echo "soak: heap in use grew $heap_growth bytes from run 1 to run 2 of the same load, more than $heap_allowed ($heap_slack_per_connect per connect): a leak" >&2
  failed=1
fi
if [ "$after_rss" -gt $(( base_rss + rss_slack_kib )) ]; then
  echo "soak: resident memory $after_rss KiB, more than $rss_slack_kib KiB above the baseline $base_rss KiB" >&2
  failed=1
fi
[ "$chatd_status" -eq 0 ] || { echo "soak: chatd exited $chatd_status after SIGTERM, expected 0" >&2; failed=1; }
[ "$failed" -eq 0 ] || exit 1
echo "soak: ok"
