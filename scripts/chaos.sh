#!/usr/bin/env bash
# A bounded chaos run against a two-node cluster (docs/RELIABILITY.md, "Chaos"): the BIN24
# promise "nothing answered is ever lost" under several faults at once, under load.
#
# Starts a redis-server whose append-only file is fsynced on every write (--appendonly yes
# --appendfsync always: BIN24's "300" means on Redis's disk) and two chatd nodes joined through
# it, node i on 127.0.0.i (`--bind`, the same ports). `loadgen bin24 --pairs` spreads its users
# over both (user i on node i mod 2, sending to user i xor 1: every live message and its answer
# cross Redis), with an offline share whose messages go to the store in Redis. While it sends,
# the script does faults at seeded random moments, one at a time, each chosen from --faults:
#
#   redis-kill  SIGKILL Redis, start it again on the same port and append-only file
#   redis-stop  SIGSTOP Redis for 0.5 to 0.95 of the lease, then SIGCONT
#   node-stop   SIGSTOP a node for 0.3 to 0.9 of its lease, then SIGCONT
#   node-kill   SIGKILL a node and start it again (same name, data dir, ports); at most once a
#               run and only in the schedule's second half: the loadgen does not reconnect that
#               node's users until its end (their unanswered messages count as closed by the
#               server, not as lost), so every message after it is stored, none live
#   node-stop-redis-kill
#               two at once: SIGSTOP a node, SIGKILL Redis and start it again while the node
#               is stopped (for 0.3 to 0.9 of its lease in all), SIGCONT: the node wakes to
#               links that are dead
#
# After each fault the script waits (bounded) for the line it must leave in the nodes' logs
# (a fault of Redis: every node's "link to Redis is down" then "is back"; a node kill: the
# other node's "node-N ... is gone"; a node stop: none by design, its state T is checked in
# /proc, and whether the other node took it for dead is reported).
# At the end (the offline users connected and drained) the verdict, each check a line of
# verdict.txt: no message answered "200" or "300" and never delivered (the loadgen's JSON:
# lost answered_never_delivered, stored_never_delivered, incomplete not_redelivered), no
# message left unanswered on an open connection (lost no_answer), every fault's line seen,
# neither node exited, each node's peak RSS (VmHWM) under --rss-max-mib, and both nodes exit 0
# on SIGTERM. Exit 0 when every check passes, 1 otherwise.
#
# Usage: scripts/chaos.sh [options]
#   --seed N            seed of the fault schedule and the loadgen's (default: from the clock,
#                       printed; give it again to replay the same schedule)
#   --duration D        the loadgen's measured send phase (default 20s; a 1s warmup before it)
#   --fault-count N     faults planned in the send phase (default 6)
#   --faults LIST       comma-separated faults to choose from (default
#                       redis-kill,redis-stop,node-stop,node-kill,node-stop-redis-kill)
#   --users N           BIN24 users, even (default 200)
#   --rate R            BIN24 messages/s over all senders (default 1000)
#   --offline-share S   users offline until the end, 0 to below 1 (default 0.1)
#   --lease-ms MS       the nodes' --cluster-lease-ms (default 2000)
#   --ack-timeout-ms MS the nodes' --bin24-ack-timeout-ms (default 3000)
#   --rss-max-mib M     largest peak RSS allowed per node process (default 256)
#
# Binaries: the release chatd and loadgen, built first, unless SWITCHBOARD_BIN_DIR names a
# folder with both (e.g. target/release after `cargo build --release --bins`, or target/debug).
# Results: results/chaos-YYYYmmdd-HHMMSS/ (commands.txt, machine.txt, faults.txt, verdict.txt,
# the loadgen's output and JSON, node and Redis logs). Needs redis-server, curl and python3.
# Loopback only; every wait is bounded and the loadgen runs under `timeout`; everything
# started is stopped by pid on exit or Ctrl-C (a stopped process is continued first).
set -euo pipefail

seed=
duration=20s
fault_count=6
faults=redis-kill,redis-stop,node-stop,node-kill,node-stop-redis-kill
users=200
rate=1000
offline_share=0.1
lease_ms=2000
ack_timeout_ms=3000
rss_max_mib=256

script_name=chaos
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed=$(option_value "$@"); shift 2 ;;
    --duration) duration=$(option_value "$@"); shift 2 ;;
    --fault-count) fault_count=$(option_value "$@"); shift 2 ;;
    --faults) faults=$(option_value "$@"); shift 2 ;;
    --users) users=$(option_value "$@"); shift 2 ;;
    --rate) rate=$(option_value "$@"); shift 2 ;;
    --offline-share) offline_share=$(option_value "$@"); shift 2 ;;
    --lease-ms) lease_ms=$(option_value "$@"); shift 2 ;;
    --ack-timeout-ms) ack_timeout_ms=$(option_value "$@"); shift 2 ;;
    --rss-max-mib) rss_max_mib=$(option_value "$@"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $1" ;;
  esac
done
[ -z "$seed" ] || [[ $seed =~ ^[0-9]{1,9}$ ]] || usage_error "--seed $seed: a number, at most 9 digits"
[[ $duration =~ ^[0-9]+s$ ]] || usage_error "--duration $duration: whole seconds (20s)"
duration_s=${duration%s}
[ "$duration_s" -ge 5 ] && [ "$duration_s" -le 90 ] || usage_error "--duration $duration: 5s to 90s"
for pair in "--fault-count $fault_count" "--users $users" "--rate $rate" "--lease-ms $lease_ms" \
  "--ack-timeout-ms $ack_timeout_ms" "--rss-max-mib $rss_max_mib"; do
  is_count "${pair#* }" || usage_error "$pair: a positive count"
done
[ $((users % 2)) -eq 0 ] || usage_error "--users $users: an even count (pairs)"
[[ $offline_share =~ ^0(\.[0-9]+)?$ ]] \
  || usage_error "--offline-share $offline_share: from 0 to below 1 (e.g. 0.1)"
[ "$lease_ms" -ge 400 ] && [ "$lease_ms" -le 10000 ] || usage_error "--lease-ms $lease_ms: 400 to 10000"
IFS=, read -r -a fault_kinds <<<"$faults"
[ "${#fault_kinds[@]}" -gt 0 ] || usage_error "--faults: none given"
for kind in "${fault_kinds[@]}"; do
  [[ $kind =~ ^(redis-kill|redis-stop|node-stop|node-kill|node-stop-redis-kill)$ ]] \
    || usage_error "--faults: unknown fault $kind"
done
[ -n "$seed" ] || seed=$(( $(date +%s%N) / 1000 % 1000000000 ))
RANDOM=$seed

cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || die "redis-server is needed (apt-get install redis-server)"
command -v curl >/dev/null || die "curl is needed (the nodes' metrics)"
make_results_dir chaos
build_release
faults_txt="$results_dir/faults.txt"
verdict_txt="$results_dir/verdict.txt"
: >"$faults_txt"
: >"$verdict_txt"
echo "$script_name: seed $seed (replay: scripts/chaos.sh --seed $seed with the same options)" | tee -a "$faults_txt" >&2

redis_pid=
node_pids=(0 0)
node_runs=(0 0)
loadgen_pid=
# Continues (a stopped process cannot act on SIGTERM) and ends what was started, by pid.
stop_all() {
  trap - INT TERM EXIT
  local pid
  for pid in "$redis_pid" "${node_pids[@]}" "$loadgen_pid"; do
    [ -n "$pid" ] && [ "$pid" != 0 ] || continue
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "$redis_pid" "${node_pids[@]}" "$loadgen_pid"; do
    [ -n "$pid" ] && [ "$pid" != 0 ] || continue
    timeout 10 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  echo "$script_name: stopped; results in $results_dir" >&2
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() {
  echo $(( $(date +%s%N) / 1000000 ))
}

redis_port=$(free_port)
bin24_port=$(free_port)
redis_dir="$results_dir/redis"
mkdir -p "$redis_dir"
redis_runs=0

# Redis on its port and append-only file: a fresh one, or the same again after a kill.
start_redis() {
  redis_runs=$((redis_runs + 1))
  local log="$results_dir/redis-$redis_runs.log"
  start redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync always --dir "$redis_dir" >"$log" 2>&1
  redis_pid=$!
  wait_for_line "$log" "$redis_pid" "Ready to accept connections"
}

node_log() {
  echo "$results_dir/node$1-${node_runs[$(($1 - 1))]}.log"
}

# Node $1 (1 or 2) on 127.0.0.$1, with its own data dir and name: the same each time.
start_node() {
  local i=$1 log
  node_runs[$((i - 1))]=$((node_runs[i - 1] + 1))
  log=$(node_log "$i")
  start "$chatd" --bind "127.0.0.$i" --room-port 0 --ccm-port 0 --matou-port 0 \
    --ocm-relay-port 0 --web-port 0 --ocm-tcp-port 0 --ocm-udp-port 0 \
    --bin24-port "$bin24_port" --admin-port 0 --data-dir "$results_dir/data$i" \
    --cluster "redis://127.0.0.1:$redis_port" --node-name "node-$i" \
    --cluster-lease-ms "$lease_ms" --bin24-ack-timeout-ms "$ack_timeout_ms" 2>"$log"
  node_pids[$((i - 1))]=$!
  wait_for_line "$log" "$!" "subscribed to"
  wait_for_line "$log" "$!" "ADMIN listening on"
}

# Peak resident memory (VmHWM) of process $1, in KiB (0 if it is gone).
peak_rss_kib() {
  awk '/^VmHWM:/ { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}
rss_peaks=()

# The process state letter of $1 (R, S, T...), or - when it is gone.
proc_state() {
  awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null || echo -
}

# A node's log ($1) from byte $2 on.
log_since() {
  tail -c +"$(($2 + 1))" "$1"
}

failures=()
fail() {
  failures+=("$*")
  echo "$script_name: FAIL: $*" >&2
}

# Waits (bounded, $2 seconds) until every pattern (the rest) is in node $1's log since the
# offset in log_offsets; returns 1 and sets `missing` to the first one that is not.
wait_in_node_log() {
  local i=$1 seconds=$2 pattern log offset _
  shift 2
  log=$(node_log "$i")
  offset=${log_offsets[$((i - 1))]}
  for _ in $(seq 1 $((seconds * 20))); do
    missing=
    for pattern in "$@"; do
      # Not a pipe: grep -q ends at the first match, and tail's SIGPIPE would fail the
      # pipeline under pipefail.
      grep -q -- "$pattern" < <(log_since "$log" "$offset") || { missing=$pattern; break; }
    done
    [ -n "$missing" ] || return 0
    sleep 0.05
  done
  return 1
}

# As wait_in_node_log, a failure naming what was missing.
expect_in_node_log() {
  local i=$1 seconds=$2
  wait_in_node_log "$@" && return 0
  fail "fault $fault_no ($fault): node-$i logged no \"$missing\" within $seconds s"
}

log_offsets=(0 0)
mark_logs() {
  local i
  for i in 1 2; do log_offsets[$((i - 1))]=$(stat -c %s "$(node_log "$i")"); done
}

# Sets d to a duration between $1 and $2 thousandths of the lease, in ms, from the seeded
# RANDOM (not printed for a $(...): bash reseeds RANDOM in a subshell, and the schedule would
# not replay).
lease_share_ms() {
  d=$(( lease_ms * ($1 + RANDOM % ($2 - $1 + 1)) / 1000 ))
}

node_killed=0
# Does fault $fault (numbered $fault_no) and waits for what it must leave in the logs.
do_fault() {
  local i d other state
  mark_logs
  case $fault in
    redis-kill)
      echo "$(date -u +%T.%N | cut -c1-12) fault $fault_no: redis-kill (pid $redis_pid)" | tee -a "$faults_txt"
      kill -KILL "$redis_pid"
      wait "$redis_pid" 2>/dev/null || true
      start_redis
      for i in 1 2; do
        expect_in_node_log "$i" $((lease_ms * 4 / 1000 + 5)) "link to Redis is down" "link to Redis is back"
      done
      ;;
    redis-stop)
      lease_share_ms 500 950
      echo "$(date -u +%T.%N | cut -c1-12) fault $fault_no: redis-stop for $d ms (pid $redis_pid)" | tee -a "$faults_txt"
      kill -STOP "$redis_pid"
      sleep "$(awk -v d="$d" 'BEGIN { printf "%.3f", d / 1000 }')"
      state=$(proc_state "$redis_pid")
      kill -CONT "$redis_pid"
      [ "$state" = T ] || fail "fault $fault_no ($fault): Redis was in state $state, not T, when continued"
      for i in 1 2; do
        expect_in_node_log "$i" $((lease_ms * 4 / 1000 + 5)) "link to Redis is down" "link to Redis is back"
      done
      ;;
    node-stop)
      i=$((1 + RANDOM % 2))
      lease_share_ms 300 900
      echo "$(date -u +%T.%N | cut -c1-12) fault $fault_no: node-stop node-$i for $d ms (pid ${node_pids[$((i - 1))]})" | tee -a "$faults_txt"
      kill -STOP "${node_pids[$((i - 1))]}"
      sleep "$(awk -v d="$d" 'BEGIN { printf "%.3f", d / 1000 }')"
      state=$(proc_state "${node_pids[$((i - 1))]}")
      kill -CONT "${node_pids[$((i - 1))]}"
      [ "$state" = T ] || fail "fault $fault_no ($fault): node-$i was in state $state, not T, when continued"
      # No line by design (a freeze under the lease is no lost link); the node must serve.
      local continued_ms
      continued_ms=$(now_ms)
      if node_metrics "$i" >/dev/null; then
        echo "    node-$i's admin port answered $(( $(now_ms) - continued_ms )) ms after SIGCONT" | tee -a "$faults_txt"
      else
        fail "fault $fault_no ($fault): node-$i's admin port did not answer within 5 s of SIGCONT"
      fi
      other=$((3 - i))
      if wait_in_node_log "$other" 1 "node node-$i (incarnation [0-9a-f]*) is gone"; then
        echo "    node-$other took node-$i for dead during its $d ms freeze" | tee -a "$faults_txt"
      fi
      ;;
    node-stop-redis-kill)
      i=$((1 + RANDOM % 2))
      lease_share_ms 300 900
      echo "$(date -u +%T.%N | cut -c1-12) fault $fault_no: node-stop-redis-kill: node-$i stopped for $d ms (pid ${node_pids[$((i - 1))]}), Redis killed and started again meanwhile (pid $redis_pid)" | tee -a "$faults_txt"
      local stopped_ms
      stopped_ms=$(now_ms)
      kill -STOP "${node_pids[$((i - 1))]}"
      kill -KILL "$redis_pid"
      wait "$redis_pid" 2>/dev/null || true
      start_redis
      d=$(( d - ($(now_ms) - stopped_ms) ))
      [ "$d" -le 0 ] || sleep "$(awk -v d="$d" 'BEGIN { printf "%.3f", d / 1000 }')"
      state=$(proc_state "${node_pids[$((i - 1))]}")
      kill -CONT "${node_pids[$((i - 1))]}"
      [ "$state" = T ] || fail "fault $fault_no ($fault): node-$i was in state $state, not T, when continued"
      for i in 1 2; do
        expect_in_node_log "$i" $((lease_ms * 4 / 1000 + 5)) "link to Redis is down" "link to Redis is back"
      done
      ;;
    node-kill)
      i=$((1 + RANDOM % 2))
      other=$((3 - i))
      rss_peaks+=("node-$i (run ${node_runs[$((i - 1))]}) $(peak_rss_kib "${node_pids[$((i - 1))]}")")
      echo "$(date -u +%T.%N | cut -c1-12) fault $fault_no: node-kill node-$i (pid ${node_pids[$((i - 1))]}), started again" | tee -a "$faults_txt"
      kill -KILL "${node_pids[$((i - 1))]}"
      wait "${node_pids[$((i - 1))]}" 2>/dev/null || true
      node_killed=1
      start_node "$i"
      expect_in_node_log "$other" $((lease_ms * 3 / 1000 + 5)) "node node-$i (incarnation [0-9a-f]*) is gone"
      ;;
  esac
}

# Node $1's metrics (bounded: 5 s).
node_metrics() {
  local port
  port=$(grep -o "ADMIN listening on [0-9.]*:[0-9]*" "$(node_log "$1")" | tail -n 1 | sed 's/.*://')
  curl -s --max-time 5 "http://127.0.0.1:$port/metrics"
}

start_redis
start_node 1
start_node 2

warmup_s=1
# The longest a message may wait for its answer: custody (the ack timeout and the lease) twice
# over, and the store's write; the loadgen ends the drain earlier once all are answered.
drain_s=$(( (ack_timeout_ms + lease_ms) * 2 / 1000 + 2 ))
json="$results_dir/loadgen.json"
loadgen_command=("$loadgen" bin24 --port "$bin24_port" --host 127.0.0.1,127.0.0.2 --users "$users"
  --pairs --rate "$rate" --offline-share "$offline_share" --seed "$seed" --warmup "${warmup_s}s"
  --duration "$duration" --drain "${drain_s}s" --json "$json")
loadgen_timeout_s=$((warmup_s + duration_s + 3 * drain_s + 60))
echo "+ timeout $loadgen_timeout_s $(printf '%q ' "${loadgen_command[@]}")" >&3
echo "timeout $loadgen_timeout_s $(printf '%q ' "${loadgen_command[@]}") &" >>"$results_dir/commands.txt"
timeout "$loadgen_timeout_s" "${loadgen_command[@]}" >"$results_dir/loadgen.out" 2>&1 &
loadgen_pid=$!
started_ms=$(now_ms)

# The schedule: fault k in the k-th of fault_count equal slots of the send phase, at a seeded
# moment within the slot's first half (the second leaves room for the fault and its recovery).
# None starts later than three leases and 2 s before the send phase ends, so that everything
# is back before the offline users connect: a fault the previous ones delayed past that is
# skipped (counted).
window_start_ms=$((warmup_s * 1000 / 2 + 500))
window_end_ms=$(( (warmup_s + duration_s) * 1000 - 3 * lease_ms - 2000 ))
[ "$window_end_ms" -gt "$window_start_ms" ] || die "--duration $duration is too short for --lease-ms $lease_ms: raise it"
slot_ms=$(( (window_end_ms - window_start_ms) / fault_count ))
fault_no=0
skipped=0
other_kinds=()
for kind in "${fault_kinds[@]}"; do [ "$kind" = node-kill ] || other_kinds+=("$kind"); done
for k in $(seq 0 $((fault_count - 1))); do
  at_ms=$(( window_start_ms + k * slot_ms + (RANDOM * 32768 + RANDOM) % (slot_ms / 2 + 1) ))
  fault=${fault_kinds[$((RANDOM % ${#fault_kinds[@]}))]}
  if [ "$fault" = node-kill ] && { [ "$node_killed" = 1 ] || [ $((2 * k)) -lt "$fault_count" ]; }; then
    # Once, and in the second half: the killed node's users stay away until the loadgen's end,
    # after which every message crosses to nobody and is stored, none live.
    [ "${#other_kinds[@]}" -gt 0 ] || continue
    fault=${other_kinds[$((RANDOM % ${#other_kinds[@]}))]}
  fi
  wait_ms=$(( started_ms + at_ms - $(now_ms) ))
  if [ "$wait_ms" -gt 0 ]; then
    sleep "$(awk -v d="$wait_ms" 'BEGIN { printf "%.3f", d / 1000 }')"
  elif [ $(( $(now_ms) - started_ms )) -gt "$window_end_ms" ]; then
    skipped=$((skipped + 1))
    continue
  fi
  kill -0 "$loadgen_pid" 2>/dev/null || break
  fault_no=$((fault_no + 1))
  do_fault
  for i in 1 2; do
    kill -0 "${node_pids[$((i - 1))]}" 2>/dev/null || fail "node-$i exited (after fault $fault_no)"
  done
done
echo "faults done: $fault_no, skipped $skipped, $(( ($(now_ms) - started_ms) / 1000 )) s after the loadgen started" | tee -a "$faults_txt"

loadgen_status=0
wait "$loadgen_pid" || loadgen_status=$?
loadgen_pid=
echo "loadgen: exit $loadgen_status after $(( ($(now_ms) - started_ms) / 1000 )) s" | tee -a "$faults_txt"
grep -E "^(messages|  *lost|  *incomplete|answers|ack|reconnect|errors|verdict|FAIL|failed)" "$results_dir/loadgen.out" | tee -a "$faults_txt" || true

# The verdict from the JSON: figures, and the checks that fail the run.
figures=$(python3 - "$json" <<'PY' 2>&1
import json, sys
j = json.load(open(sys.argv[1]))
m = j["messages"]
lost, inc, dup = m["lost"], m["incomplete"], m["duplicates"]
answered_lost = lost["answered_never_delivered"] + lost["stored_never_delivered"] + inc["not_redelivered"]
print("written %d: live %d, stored %d (%d after a live delivery), full %d" % (
    m["written"], m["live"], m["stored"], m["stored_after_live_delivery"], m["full"]))
print("answered then lost %d (\"200\" never delivered %d, \"300\" never delivered %d, delivered live then \"300\" never redelivered %d)" % (
    answered_lost, lost["answered_never_delivered"], lost["stored_never_delivered"], inc["not_redelivered"]))
print("never answered: on an open connection %d, the sender closed by the server %d; delivered, answer missing: %d (sender open), %d (sender closed); type 2 without \"300\" %d" % (
    lost["no_answer"], lost["sender_closed"], inc["delivered_no_answer"], inc["sender_closed"], inc["store_delivery_without_300"]))
print("duplicates: allowed %d, unexpected %d, repeated answers %d, conflicting answers %d" % (
    dup["allowed"], dup["unexpected"], dup["repeated_answers"], dup["conflicting_answers"]))
print("CHECK answered_lost %d" % answered_lost)
print("CHECK no_answer %d" % lost["no_answer"])
print("CHECK written %d" % m["written"])
PY
) || fail "the loadgen's JSON ($json) could not be read: $figures"
grep -v '^CHECK' <<<"$figures" | tee -a "$verdict_txt" || true
check_value() { awk -v k="$1" '$1 == "CHECK" && $2 == k { print $3 }' <<<"$figures"; }
[ "$(check_value answered_lost)" = 0 ] || fail "$(check_value answered_lost) messages answered \"200\" or \"300\" were never delivered"
[ "$(check_value no_answer)" = 0 ] || fail "$(check_value no_answer) messages got no answer on a connection that stayed open"
[ "$(check_value written)" != 0 ] || fail "no message was written"

for i in 1 2; do
  pid=${node_pids[$((i - 1))]}
  if kill -0 "$pid" 2>/dev/null; then
    rss_peaks+=("node-$i (run ${node_runs[$((i - 1))]}) $(peak_rss_kib "$pid")")
  else
    fail "node-$i (pid $pid) exited before the end"
  fi
done
for entry in "${rss_peaks[@]}"; do
  kib=${entry##* }
  echo "peak RSS ${entry% *}: $kib KiB" | tee -a "$verdict_txt"
  [ "$kib" -le $((rss_max_mib * 1024)) ] || fail "peak RSS of ${entry% *}: $kib KiB, over $rss_max_mib MiB"
done
for i in 1 2; do
  pid=${node_pids[$((i - 1))]}
  kill -0 "$pid" 2>/dev/null || continue
  kill -TERM "$pid"
  status=0
  timeout 15 tail --pid="$pid" -f /dev/null || fail "node-$i did not exit within 15 s of SIGTERM"
  wait "$pid" || status=$?
  node_pids[$((i - 1))]=0
  [ "$status" = 0 ] || fail "node-$i exited $status on SIGTERM"
done
[ "$fault_no" -gt 0 ] || fail "no fault was done"

{
  echo "faults: $fault_no done, $skipped skipped (seed $seed): $(grep -c ' fault [0-9]*: ' "$faults_txt" || true) in faults.txt"
  echo "loadgen exit status: $loadgen_status (its own failures include the connections a node kill or an ack timeout closed; the checks above are the promise's)"
  if [ "${#failures[@]}" -eq 0 ]; then
    echo "PASS"
  else
    printf 'FAIL: %s\n' "${failures[@]}"
  fi
} | tee -a "$verdict_txt"
[ "${#failures[@]}" -eq 0 ]
