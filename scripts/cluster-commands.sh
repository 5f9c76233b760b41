#!/usr/bin/env bash
# Redis commands per crossing BIN24 message (docs/CLUSTER.md, "Performance"): a deterministic
# proxy for the cost of a crossing that a busy machine can still measure, unlike latency.
# Starts a fresh redis-server (appendfsync always) and two chatd nodes (127.0.0.1 and
# 127.0.0.2, the same ports), runs a short, slow BIN24 load of pairs across the nodes
# (loadgen bin24 --pairs: every live message and its answer cross Redis; a share of the users
# offline, so some messages are stored in Redis), and prints Redis's command counts
# (`INFO commandstats`) for the run, per message sent.
#
# Usage: scripts/cluster-commands.sh [--users N] [--rate R] [--duration D] [--offline-share S]
#   defaults: 100 users, 500 msg/s, 4s, offline share 0.1. Uses the debug build
#   (`cargo build --bins`) unless CHATD and LOADGEN name other binaries. Loopback only; the
#   run is bounded (`timeout`); everything started is stopped by pid on exit.
set -euo pipefail

users=100
rate=500
duration=4s
offline_share=0.1
script_name=cluster-commands
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --users) users=$(option_value "$@"); shift 2 ;;
    --rate) rate=$(option_value "$@"); shift 2 ;;
    --duration) duration=$(option_value "$@"); shift 2 ;;
    --offline-share) offline_share=$(option_value "$@"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $1" ;;
  esac
done
is_count "$users" || usage_error "--users $users: a positive count"
is_count "$rate" || usage_error "--rate $rate: a positive count"
is_duration "$duration" || usage_error "--duration $duration is not a duration (4s, 500ms)"
[ $((users % 2)) -eq 0 ] || usage_error "--users $users: an even count (pairs)"
[[ $offline_share =~ ^0(\.[0-9]+)?$ ]] \
  || usage_error "--offline-share $offline_share: from 0 to below 1 (e.g. 0.1)"
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
  || die "redis-server and redis-cli are needed"
chatd=${CHATD:-target/debug/chatd}
loadgen=${LOADGEN:-target/debug/loadgen}
[ -x "$chatd" ] && [ -x "$loadgen" ] || die "$chatd or $loadgen missing: cargo build --bins"

work=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_for_line() {
  local log=$1 pattern=$2
  for _ in $(seq 1 200); do
    grep -q "$pattern" "$log" && return 0
    sleep 0.05
  done
  cat "$log" >&2
  die "$log: no \"$pattern\" within 10 s"
}

redis_port=$(free_port)
bin24_port=$(free_port)
# A long lease: each node renews its names every quarter lease (a GET per name inside the
# renewal script), which would blur the count of what the messages cost.
lease_ms=60000
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly yes \
  --appendfsync always --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for_line "$work/redis.log" "Ready to accept connections"
for i in 1 2; do
  "$chatd" --bind "127.0.0.$i" --room-port 0 --ccm-port 0 --matou-port 0 --ocm-relay-port 0 \
    --web-port 0 --ocm-tcp-port 0 --ocm-udp-port 0 --admin-port 0 --bin24-port "$bin24_port" \
    --data-dir "$work/data$i" --cluster "redis://127.0.0.1:$redis_port" --node-name "node-$i" \
    --cluster-lease-ms "$lease_ms" 2>"$work/node$i.log" &
  pids+=($!)
  wait_for_line "$work/node$i.log" "subscribed to"
done
redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
timeout 120 "$loadgen" bin24 --port "$bin24_port" --host 127.0.0.1,127.0.0.2 --users "$users" \
  --pairs --rate "$rate" --offline-share "$offline_share" --duration "$duration" \
  --json "$work/run.json" >"$work/loadgen.out" 2>&1 || true
sent=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); m=j["messages"]; print(m["written"])' \
  "$work/run.json" 2>/dev/null || echo 0)
[ "$sent" -gt 0 ] || { cat "$work/loadgen.out" >&2; die "no messages sent"; }
grep -E "^(messages|ack|verdict)" "$work/loadgen.out" || true
echo "messages sent: $sent"
redis-cli -p "$redis_port" INFO commandstats | tr -d '\r' | awk -F'[:=,]' -v sent="$sent" '
  /^cmdstat_/ { name = substr($1, 9); calls = $3; total += calls
    printf "%-12s %8d  %6.2f per message\n", name, calls, calls / sent }
  END { printf "%-12s %8d  %6.2f per message\n", "all", total, total / sent }'
