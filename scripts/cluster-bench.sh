#!/usr/bin/env bash
# Cluster mode's figures (issue 20, docs/CLUSTER.md): the same lobby load on one chatd and
# spread over two chatd nodes joined through a redis-server, on this machine.
#
# The nodes listen on the same ports on different loopback addresses (node i on 127.0.0.i,
# `--bind`), and the loadgen spreads its clients over them (`--host 127.0.0.1,127.0.0.2`:
# client i on node i mod 2), so half of every message's deliveries cross Redis. The one node
# is a plain chatd (no --cluster: exactly as without cluster mode). 1-node and 2-node runs
# alternate, so that other load on the machine hits both alike. Nothing is pinned: the
# loadgen, the nodes and Redis share the cores, and each one's CPU is reported.
#
#   (a) latency: the lobby at 100k deliveries/s (400 members, 250 messages/s), ROOM, MATOU and
#       CCM members, --runs pairs;
#   (b) saturation: ROOM members only, the message rate stepped up (--saturation-rates) for
#       1 node and 2 nodes alternately: achieved deliveries/s, p99, everyone's CPU;
#   (c) Redis's CPU per cross-node message: 4 ROOM members (few deliveries, many messages)
#       at each of --redis-rates messages/s, over 2 and 3 nodes: Redis's utime + stime
#       (/proc/PID/stat, in clock ticks) and its main thread's run time (/proc/PID/schedstat,
#       ns) around the run, divided by the messages the nodes published.
#
# Usage: scripts/cluster-bench.sh [options]
#   --runs N                 latency pairs (1 node, 2 nodes) (default 3, at most 10; 0 skips)
#   --duration D             measured duration of the latency runs (default 10s)
#   --saturation-rates LIST  lobby messages/s of the saturation steps, comma-separated
#                            (default 250,500,750,1000: 100k to 400k deliveries/s planned;
#                            `none` skips it)
#   --saturation-duration D  measured duration of each saturation run (default 5s)
#   --redis-runs N           runs of (c) per node count and rate (default 2; 0 skips it)
#   --redis-rates LIST       messages/s of (c), comma-separated (default 2000,20000)
#
# Results: results/cluster-bench-YYYYmmdd-HHMMSS/ (commands.txt, machine.txt, each run's
# output, JSON, node logs and CPU figures, summary.txt). Needs redis-server. Loopback only;
# every run is bounded (`timeout`); everything started is stopped by pid on exit or Ctrl-C.
set -euo pipefail

runs=3
duration=10s
saturation_rates=250,500,750,1000
saturation_duration=5s
redis_runs=2
redis_rates=2000,20000

script_name=cluster-bench
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$(option_value "$@"); shift 2 ;;
    --duration) duration=$(option_value "$@"); shift 2 ;;
    --saturation-rates) saturation_rates=$(option_value "$@"); shift 2 ;;
    --saturation-duration) saturation_duration=$(option_value "$@"); shift 2 ;;
    --redis-runs) redis_runs=$(option_value "$@"); shift 2 ;;
    --redis-rates) redis_rates=$(option_value "$@"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $1" ;;
  esac
done
[[ $runs =~ ^([0-9]|10)$ ]] || usage_error "--runs $runs: 0 to 10"
is_duration "$duration" || usage_error "--duration $duration is not a duration (10s, 500ms)"
is_duration "$saturation_duration" || usage_error "--saturation-duration $saturation_duration is not a duration"
[[ $redis_runs =~ ^[0-9]$ ]] || usage_error "--redis-runs $redis_runs: 0 to 9"
[[ $redis_rates =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] \
  || usage_error "--redis-rates $redis_rates: a comma-separated list of counts"
if [ "$saturation_rates" != none ]; then
  [[ $saturation_rates =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] \
    || usage_error "--saturation-rates $saturation_rates: a comma-separated list of counts, or none"
fi

cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || die "redis-server is needed (apt-get install redis-server)"
make_results_dir cluster-bench
build_release
summary="$results_dir/summary.txt"

redis_pid=
node_pids=()
stop_nodes() {
  local pid
  for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  node_pids=()
}
stop_all() {
  trap - INT TERM EXIT
  stop_nodes
  if [ -n "$redis_pid" ]; then kill -TERM "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  echo "$script_name: stopped; results in $results_dir" >&2
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

room_port=$(free_port)
matou_port=$(free_port)
ccm_port=$(free_port)
redis_port=$(free_port)

start redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$results_dir" >"$results_dir/redis.log" 2>&1
redis_pid=$!
for _ in $(seq 1 100); do
  if grep -q "Ready to accept connections" "$results_dir/redis.log"; then break; fi
  kill -0 "$redis_pid" 2>/dev/null || { cat "$results_dir/redis.log" >&2; die "redis-server exited"; }
  sleep 0.05
done
grep -q "Ready to accept connections" "$results_dir/redis.log" || die "redis-server not ready within 5 s"

# Starts N nodes ($1) for run $2: node i on 127.0.0.i with an admin port of its own; N=1 is a
# plain chatd without --cluster. Sets node_pids and node_admin.
start_nodes() {
  local nodes=$1 tag=$2 i log cluster_args
  node_admin=()
  for i in $(seq 1 "$nodes"); do
    log="$results_dir/$tag-node$i.log"
    node_admin+=("$(free_port)")
    cluster_args=()
    if [ "$nodes" -gt 1 ]; then
      cluster_args=(--cluster "redis://127.0.0.1:$redis_port" --node-name "node-$i")
    fi
    start "$chatd" --bind "127.0.0.$i" --room-port "$room_port" --matou-port "$matou_port" \
      --ccm-port "$ccm_port" --bin24-port 0 --ocm-tcp-port 0 --ocm-udp-port 0 --ocm-relay-port 0 --web-port 0 \
      --admin-port "${node_admin[$((i - 1))]}" --data-dir "$results_dir/$tag-data$i" \
      "${cluster_args[@]}" 2>"$log"
    node_pids+=($!)
    for _ in $(seq 1 200); do
      if grep -q "ADMIN listening on" "$log"; then break; fi
      kill -0 "${node_pids[$((i - 1))]}" 2>/dev/null || { cat "$log" >&2; die "node $i exited"; }
      sleep 0.05
    done
    grep -q "ADMIN listening on" "$log" || die "node $i did not start within 10 s"
  done
}

# The sum over the running nodes of a metric ($1).
nodes_metric() {
  local port sum=0 value
  for port in "${node_admin[@]}"; do
    value=$(curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m { print $2 }')
    sum=$((sum + ${value:-0}))
  done
  echo "$sum"
}

hosts_of() {
  local nodes=$1 i list=
  for i in $(seq 1 "$nodes"); do list+="${list:+,}127.0.0.$i"; done
  echo "$list"
}

schedstat_ns() {
  awk '{ print $1 }' "/proc/$1/schedstat"
}

# One run: nodes ($1), a tag ($2), then the loadgen lobby's member and rate flags. Appends a
# line to the summary: deliveries, p50/p99, verdict, losses, CPU of the loadgen, nodes and Redis.
bench_run() {
  local nodes=$1 tag=$2
  shift 2
  start_nodes "$nodes" "$tag"
  local redis_ticks0 redis_ns0 out="$results_dir/$tag.out" status=0
  redis_ticks0=$(cpu_ticks "$redis_pid")
  redis_ns0=$(schedstat_ns "$redis_pid")
  local node_ticks0=() pid
  for pid in "${node_pids[@]}"; do node_ticks0+=("$(cpu_ticks "$pid")"); done
  echo "+ $loadgen lobby --host $(hosts_of "$nodes") --room-port $room_port --matou-port $matou_port --ccm-port $ccm_port --ocm 0 $* --json $results_dir/$tag.json" >&3
  echo "$loadgen lobby --host $(hosts_of "$nodes") --room-port $room_port --matou-port $matou_port --ccm-port $ccm_port --ocm 0 $* --json $results_dir/$tag.json" >>"$results_dir/commands.txt"
  /usr/bin/time -f "loadgen_cpu_s %U %S" -o "$results_dir/$tag.time" \
    timeout 300 "$loadgen" lobby --host "$(hosts_of "$nodes")" --room-port "$room_port" \
    --matou-port "$matou_port" --ccm-port "$ccm_port" --ocm 0 "$@" \
    --json "$results_dir/$tag.json" >"$out" 2>&1 || status=$?
  local redis_ticks redis_ns published node_cpu="" i
  redis_ticks=$(( $(cpu_ticks "$redis_pid") - redis_ticks0 ))
  redis_ns=$(( $(schedstat_ns "$redis_pid") - redis_ns0 ))
  published=$(nodes_metric chatd_cluster_events_published_total)
  for i in "${!node_pids[@]}"; do
    node_cpu+="$(awk -v t=$(( $(cpu_ticks "${node_pids[$i]}") - node_ticks0[i] )) -v hz="$clock_ticks_per_s" 'BEGIN { printf "%.2f", t / hz }')s "
  done
  stop_nodes
  local loadgen_cpu deliveries all verdict losses
  loadgen_cpu=$(awk '/loadgen_cpu_s/ { printf "%.2fs", $2 + $3 }' "$results_dir/$tag.time")
  deliveries=$(awk '$1 == "deliveries" { print $2 " of " $4 ", " $6 }' "$out")
  all=$(awk '$1 == "all" && $2 == "deliveries" { print $4 " / " $10 " ms" }' "$out")
  verdict=$(awk '$1 == "verdict" { print $2 }' "$out")
  losses=$(awk '$1 == "losses" { print $2 }' "$out")
  local line
  line=$(printf '%-22s nodes %s  deliveries %s  p50/p99 %s  %s  losses %s  exit %s  CPU: loadgen %s, nodes %s' \
    "$tag" "$nodes" "$deliveries" "$all" "$verdict" "$losses" "$status" "$loadgen_cpu" "$node_cpu")
  if [ "$nodes" -gt 1 ]; then
    line+=$(awk -v t="$redis_ticks" -v ns="$redis_ns" -v p="$published" -v hz="$clock_ticks_per_s" \
      'BEGIN { printf ", redis %.2fs (schedstat %.3fs); published %d; redis per message %.2f us (ticks), %.2f us (schedstat)", t / hz, ns / 1e9, p, (p ? t / hz / p * 1e6 : 0), (p ? ns / 1e3 / p : 0) }')
  fi
  echo "$line" | tee -a "$summary"
}

echo "load average at start: $(cat /proc/loadavg)" | tee -a "$summary"
if [ "$runs" -gt 0 ]; then
  echo "== (a) lobby at 100k deliveries/s: ROOM 134, MATOU 133, CCM 133, 250 msg/s, $duration" | tee -a "$summary"
  for run in $(seq 1 "$runs"); do
    for nodes in 1 2; do
      bench_run "$nodes" "latency-${nodes}n-$run" --room 134 --matou 133 --ccm 133 --rate 250 \
        --duration "$duration"
    done
  done
fi

if [ "$saturation_rates" != none ]; then
  echo "== (b) saturation: ROOM 400, rate stepped, $saturation_duration each" | tee -a "$summary"
  for rate in ${saturation_rates//,/ }; do
    for nodes in 1 2; do
      bench_run "$nodes" "saturation-${nodes}n-$rate" --room 400 --matou 0 --ccm 0 --rate "$rate" \
        --duration "$saturation_duration"
    done
  done
fi

if [ "$redis_runs" -gt 0 ]; then
  for rate in ${redis_rates//,/ }; do
    echo "== (c) Redis per message: ROOM 4, $rate msg/s, $duration" | tee -a "$summary"
    for run in $(seq 1 "$redis_runs"); do
      for nodes in 2 3; do
        bench_run "$nodes" "redis-${nodes}n-$rate-$run" --room 4 --matou 0 --ccm 0 --rate "$rate" \
          --duration "$duration"
      done
    done
  done
fi
echo "load average at the end: $(cat /proc/loadavg)" | tee -a "$summary"
