#!/usr/bin/env bash
# BIN24 and OCM across two chatd nodes (docs/CLUSTER.md), on this machine: node i listens on
# 127.0.0.i (`--bind`, the same ports on both), joined through a redis-server whose append-only
# file is fsynced on every write (--appendonly yes --appendfsync always: BIN24's "300" means on
# Redis's disk). Every run gets a fresh Redis and fresh nodes. The loadgen spreads its clients
# over the nodes (`--host 127.0.0.1,127.0.0.2`: client i on node i mod 2).
#
#   (a) BIN24: --bin24-users users in pairs (user i sends to user i xor 1, so each pair has one
#       user on each node: every live message and its answer cross Redis) at --bin24-rate
#       messages/s; a --bin24-offline-share of the users stays offline until the end, so
#       messages to them are stored in Redis. Summary: ack 200 (delivered live across nodes,
#       the recipient's answer back) p50/p99, ack 300 (stored) p50/p99.
#   (b) OCM: --ocm-rooms rooms of --ocm-members members; member i's home node is node i mod 2
#       (its TCRP request, the texts it gets), so every room spans both nodes, and with
#       --ocm-send-to next (the default) member i sends its chat to the other node's chat
#       socket, which checks its token in Redis: every delivery crosses nodes (exits go home).
#       Summary: delivery p50/p99/p99.9, UDP loss, leave texts.
#
# Usage: scripts/cluster-cross-bench.sh [options]
#   --runs N                 runs of each measure (default 3, at most 10)
#   --duration D             measured duration of each run (default 10s)
#   --only bin24|ocm         run one measure only (default: both, (a) then (b) in each round)
#   --bin24-rate R           BIN24 messages/s over all senders (default 10000)
#   --bin24-users N          BIN24 users, even (default 1000)
#   --bin24-offline-share S  BIN24 users offline until the end, 0 to below 1 (default 0.1)
#   --ocm-rate R             OCM chat messages/s over all members (default 1000)
#   --ocm-rooms N            OCM rooms (default 100)
#   --ocm-members N          members per OCM room (default 10): --ocm-rate x (N - 1)
#                            deliveries/s
#   --ocm-send-to own|next   where OCM members send their chat (default next)
#
# Results: results/cluster-cross-bench-YYYYmmdd-HHMMSS/ (commands.txt, machine.txt, each run's
# output, JSON, node and Redis logs, CPU figures, summary.txt). Needs redis-server, curl and
# python3. Loopback only; every run is bounded (`timeout`); everything started is stopped by
# pid on exit or Ctrl-C.
set -euo pipefail

runs=3
duration=10s
only=
bin24_rate=10000
bin24_users=1000
bin24_offline_share=0.1
ocm_rate=1000
ocm_rooms=100
ocm_members=10
ocm_send_to=next

script_name=cluster-cross-bench
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$(option_value "$@"); shift 2 ;;
    --duration) duration=$(option_value "$@"); shift 2 ;;
    --only) only=$(option_value "$@"); shift 2 ;;
    --bin24-rate) bin24_rate=$(option_value "$@"); shift 2 ;;
    --bin24-users) bin24_users=$(option_value "$@"); shift 2 ;;
    --bin24-offline-share) bin24_offline_share=$(option_value "$@"); shift 2 ;;
    --ocm-rate) ocm_rate=$(option_value "$@"); shift 2 ;;
    --ocm-rooms) ocm_rooms=$(option_value "$@"); shift 2 ;;
    --ocm-members) ocm_members=$(option_value "$@"); shift 2 ;;
    --ocm-send-to) ocm_send_to=$(option_value "$@"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $1" ;;
  esac
done
[[ $runs =~ ^([1-9]|10)$ ]] || usage_error "--runs $runs: 1 to 10"
is_duration "$duration" || usage_error "--duration $duration is not a duration (10s, 500ms)"
[[ $only =~ ^(|bin24|ocm)$ ]] || usage_error "--only $only: bin24 or ocm"
for pair in "--bin24-rate $bin24_rate" "--bin24-users $bin24_users" "--ocm-rate $ocm_rate" \
  "--ocm-rooms $ocm_rooms" "--ocm-members $ocm_members"; do
  is_count "${pair#* }" || usage_error "$pair: a positive count"
done
[ $((bin24_users % 2)) -eq 0 ] || usage_error "--bin24-users $bin24_users: an even count (pairs)"
[[ $bin24_offline_share =~ ^0(\.[0-9]+)?$ ]] \
  || usage_error "--bin24-offline-share $bin24_offline_share: from 0 to below 1 (e.g. 0.1)"
[[ $ocm_send_to =~ ^(own|next)$ ]] || usage_error "--ocm-send-to $ocm_send_to: own or next"

cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || die "redis-server is needed (apt-get install redis-server)"
command -v curl >/dev/null || die "curl is needed (the nodes' metrics)"
make_results_dir cluster-cross-bench
build_release
summary="$results_dir/summary.txt"
hosts=127.0.0.1,127.0.0.2

redis_pid=
node_pids=()
stop_nodes() {
  local pid
  for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  node_pids=()
}
stop_redis() {
  if [ -n "$redis_pid" ]; then
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=
  fi
}
stop_all() {
  trap - INT TERM EXIT
  stop_nodes
  stop_redis
  echo "$script_name: stopped; results in $results_dir" >&2
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A fresh durable Redis for run $1, in a directory of its own.
start_redis() {
  local tag=$1
  redis_port=$(free_port)
  mkdir -p "$results_dir/$tag-redis"
  start redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync always --dir "$results_dir/$tag-redis" >"$results_dir/$tag-redis.log" 2>&1
  redis_pid=$!
  wait_for_line "$results_dir/$tag-redis.log" "$redis_pid" "Ready to accept connections"
}

# Two nodes for run $1 serving the protocol flags that follow; node i on 127.0.0.i with an
# admin port of its own. Sets node_pids and node_admin.
start_nodes() {
  local tag=$1 i log
  shift
  node_admin=()
  for i in 1 2; do
    log="$results_dir/$tag-node$i.log"
    node_admin+=("$(free_port)")
    start "$chatd" --bind "127.0.0.$i" --room-port 0 --ccm-port 0 --matou-port 0 \
      --ocm-relay-port 0 --web-port 0 "$@" --admin-port "${node_admin[$((i - 1))]}" \
      --data-dir "$results_dir/$tag-data$i" \
      --cluster "redis://127.0.0.1:$redis_port" --node-name "node-$i" 2>"$log"
    node_pids+=($!)
    wait_for_line "$log" "${node_pids[$((i - 1))]}" "subscribed to"
    wait_for_line "$log" "${node_pids[$((i - 1))]}" "ADMIN listening on"
  done
}

# The sum over the nodes of a metric ($1, every label set).
nodes_metric() {
  local port sum=0 value
  for port in "${node_admin[@]}"; do
    value=$(curl -s "http://127.0.0.1:$port/metrics" \
      | awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s + 0 }')
    sum=$((sum + ${value%.*}))
  done
  echo "$sum"
}

# Seconds of CPU (user + system) process $1 used since $2 clock ticks.
cpu_since() {
  awk -v t=$(( $(cpu_ticks "$1") - $2 )) -v hz="$clock_ticks_per_s" 'BEGIN { printf "%.2fs", t / hz }'
}

# Figures from a loadgen JSON ($1): the Python expression $2 over `j`, or `-` if it has none.
json_figures() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null || echo -
import json, sys
j = json.load(open(sys.argv[1]))
print(eval(sys.argv[2]))
PY
}

# One run: its tag ($1), the chatd protocol flags as one word ($2), then the loadgen command
# (scenario and flags). Leaves the output in $tag.out, the JSON in $tag.json, and sets
# run_status and run_cpu.
bench_run() {
  local tag=$1 protocol_flags=$2
  shift 2
  start_redis "$tag"
  # shellcheck disable=SC2086 # the protocol flags are words
  start_nodes "$tag" $protocol_flags
  local redis_ticks0 node_ticks0=() pid
  redis_ticks0=$(cpu_ticks "$redis_pid")
  for pid in "${node_pids[@]}"; do node_ticks0+=("$(cpu_ticks "$pid")"); done
  local command=("$loadgen" "$@" --host "$hosts" --duration "$duration" --json "$results_dir/$tag.json")
  echo "+ $(printf '%q ' "${command[@]}")" >&3
  printf '%q ' "${command[@]}" >>"$results_dir/commands.txt"
  echo >>"$results_dir/commands.txt"
  run_status=0
  /usr/bin/time -f "loadgen_cpu_s %U %S" -o "$results_dir/$tag.time" \
    timeout 300 "${command[@]}" >"$results_dir/$tag.out" 2>&1 || run_status=$?
  local published node_cpu="" i
  published=$(nodes_metric chatd_cluster_events_published_total)
  for i in "${!node_pids[@]}"; do
    node_cpu+="$(cpu_since "${node_pids[$i]}" "${node_ticks0[$i]}") "
  done
  run_cpu="loadgen $(awk '/loadgen_cpu_s/ { printf "%.2fs", $2 + $3 }' "$results_dir/$tag.time"), nodes ${node_cpu% }, redis $(cpu_since "$redis_pid" "$redis_ticks0"); events published $published"
  stop_nodes
  stop_redis
}

bin24_run() {
  local tag=bin24-$1
  bench_run "$tag" "--bin24-port $bin24_port --ocm-tcp-port 0 --ocm-udp-port 0" \
    bin24 --port "$bin24_port" --users "$bin24_users" --pairs --rate "$bin24_rate" \
    --offline-share "$bin24_offline_share"
  local json="$results_dir/$tag.json" figures
  figures=$(json_figures "$json" '"ack 200 p50/p99 %s / %s ms (%d), ack 300 p50/p99 %s / %s ms (%d), lost %d, %s" % (j["latency_ms"]["ack_200"]["p50_ms"], j["latency_ms"]["ack_200"]["p99_ms"], j["latency_ms"]["ack_200"]["count"], j["latency_ms"]["ack_300"]["p50_ms"], j["latency_ms"]["ack_300"]["p99_ms"], j["latency_ms"]["ack_300"]["count"], j["messages"]["lost"]["total"], "VALID" if j["verdict"]["valid"] else "INVALID")')
  printf '%-10s %s  exit %s  CPU: %s\n' "$tag" "$figures" "$run_status" "$run_cpu" | tee -a "$summary"
}

ocm_run() {
  local tag=ocm-$1
  bench_run "$tag" "--bin24-port 0 --ocm-tcp-port $ocm_tcp_port --ocm-udp-port $ocm_udp_port" \
    ocm --tcp-port "$ocm_tcp_port" --udp-port "$ocm_udp_port" --rooms "$ocm_rooms" \
    --members "$ocm_members" --rate "$ocm_rate" --send-to "$ocm_send_to"
  local json="$results_dir/$tag.json" figures
  figures=$(json_figures "$json" '"delivery p50/p99/p99.9 %s / %s / %s ms (%d), lost %d of %d (%.4f%%), leaves %d of %d, %s" % (j["latency_ms"]["delivery"]["p50_ms"], j["latency_ms"]["delivery"]["p99_ms"], j["latency_ms"]["delivery"]["p999_ms"], j["latency_ms"]["delivery"]["count"], j["udp_loss"]["lost"], j["deliveries"]["expected"], j["udp_loss"]["percent"], j["exit"]["leaves_received"], j["exit"]["leaves_expected"], "VALID" if j["verdict"]["valid"] else "INVALID")')
  printf '%-10s %s  exit %s  CPU: %s\n' "$tag" "$figures" "$run_status" "$run_cpu" | tee -a "$summary"
}

bin24_port=$(free_port)
ocm_tcp_port=$(free_port)
ocm_udp_port=$(free_udp_port)

echo "load average at start: $(cat /proc/loadavg)" | tee -a "$summary"
echo "== (a) BIN24 across 2 nodes: $bin24_users users (pairs, each across the nodes), $bin24_rate msg/s, offline share $bin24_offline_share, $duration" | tee -a "$summary"
echo "== (b) OCM across 2 nodes: $ocm_rooms rooms x $ocm_members members, $ocm_rate msg/s ($((ocm_rate * (ocm_members - 1))) deliveries/s), sent to $ocm_send_to node, $duration" | tee -a "$summary"
for run in $(seq 1 "$runs"); do
  if [ "$only" != ocm ]; then bin24_run "$run"; fi
  if [ "$only" != bin24 ]; then ocm_run "$run"; fi
done
echo "load average at the end: $(cat /proc/loadavg)" | tee -a "$summary"
