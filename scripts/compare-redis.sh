#!/usr/bin/env bash
# Side-by-side: chatd's ROOM against Redis pub/sub, the same fan-out scenario (`loadgen room`
# and `loadgen resp`: one room/channel, every member receives every message, senders
# included), run alternately at each rate of a sweep, then a saturation sweep.
#
# Both servers are pinned to CPU 0 and the loadgen to CPU 1, so the server under test has one
# core, as chatd's single reactor does. Server CPU is read from /proc/PID/stat (utime + stime)
# around each run; loadgen CPU from the shell's children times.
#
# Usage: scripts/compare-redis.sh [options]
#   --rates LIST        deliveries/s of the sweep, comma-separated (default 100000,500000,1000000)
#   --runs N            runs of each server per rate, medians reported (default 3, at most 20)
#   --duration D        measured duration of each run, loadgen syntax (default 10s)
#   --clients N         subscribers / room members (default 100)
#   --senders N         publishers (default 10)
#   --payload-bytes N   message size, the loadgen's --payload-bytes (default 64)
#   --saturation LIST   deliveries/s of the saturation sweep, increasing; it stops for a server
#                       at its first INVALID run or run with loss/errors
#                       (default 1000000,2000000,3000000,4000000,6000000,8000000; `none` skips it)
#   --saturation-duration D   measured duration of each saturation run (default 3s)
#
# Results: results/compare-redis-YYYYmmdd-HHMMSS/ (commands, uname, lscpu, versions, each
# run's JSON and output, summary.txt). Installs redis-server with apt-get if it is missing.
# Loopback only; every run is bounded by `timeout`.
set -euo pipefail

rates=100000,500000,1000000
runs=3
duration=10s
clients=100
senders=10
payload_bytes=64
saturation=1000000,2000000,3000000,4000000,6000000,8000000
saturation_duration=3s

script_name=compare-redis
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) rates=$(option_value "$@"); shift 2 ;;
    --runs) runs=$(option_value "$@"); shift 2 ;;
    --duration) duration=$(option_value "$@"); shift 2 ;;
    --clients) clients=$(option_value "$@"); shift 2 ;;
    --senders) senders=$(option_value "$@"); shift 2 ;;
    --payload-bytes) payload_bytes=$(option_value "$@"); shift 2 ;;
    --saturation) saturation=$(option_value "$@"); shift 2 ;;
    --saturation-duration) saturation_duration=$(option_value "$@"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $1" ;;
  esac
done
is_count "$runs" && [ "$runs" -le 20 ] || usage_error "--runs must be 1 to 20"
is_count "$clients" || usage_error "--clients must be a positive integer"
is_count "$senders" || usage_error "--senders must be a positive integer"
is_count "$payload_bytes" || usage_error "--payload-bytes must be a positive integer"
[[ $duration =~ ^[0-9]+(ms|s|m)$ ]] || usage_error "--duration must look like 500ms, 10s or 1m"
[[ $saturation_duration =~ ^[0-9]+(ms|s|m)$ ]] || usage_error "--saturation-duration must look like 3s"
duration_s() { case "$1" in *ms) echo $(( ${1%ms} / 1000 + 1 )) ;; *s) echo "${1%s}" ;; *m) echo $(( ${1%m} * 60 )) ;; esac; }
[ "$(duration_s "$duration")" -le 120 ] || usage_error "--duration at most 2m (the run must stay bounded)"
[ "$(duration_s "$saturation_duration")" -le 60 ] || usage_error "--saturation-duration at most 1m"
IFS=, read -r -a rate_list <<<"$rates"
for r in "${rate_list[@]}"; do
  is_count "$r" || usage_error "--rates: $r is not a positive integer"
  [ $(( r % clients )) -eq 0 ] || usage_error "--rates: $r is not a multiple of --clients ($clients): the message rate is deliveries/s / clients"
done
sat_list=()
if [ "$saturation" != none ]; then
  IFS=, read -r -a sat_list <<<"$saturation"
  for r in "${sat_list[@]}"; do
    is_count "$r" || usage_error "--saturation: $r is not a positive integer"
    [ $(( r % clients )) -eq 0 ] || usage_error "--saturation: $r is not a multiple of --clients ($clients)"
  done
fi

cd "$(dirname "$0")/.."
command -v python3 >/dev/null || die "python3 is needed (free ports, JSON summary)"
command -v taskset >/dev/null || die "taskset is needed (util-linux)"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs: the servers on CPU 0, the loadgen on CPU 1"

# Prints a command and records it; the caller then runs it (as itself, so `$!` is its pid).
show() { echo "+ $*" | tee -a "$out/commands.txt"; }

if ! command -v redis-server >/dev/null; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "+ ${sudo[*]} apt-get install -y redis-server"
  "${sudo[@]}" apt-get install -y -qq redis-server >/dev/null || {
    "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq redis-server >/dev/null
  } || die "could not install redis-server with apt-get"
fi

out="results/compare-redis-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"
: >"$out/commands.txt"
echo "results in $out"

target_dir=${CARGO_TARGET_DIR:-target}
show cargo build --release --quiet --workspace --bins
cargo build --release --quiet --workspace --bins || die "the release build failed"
chatd="$target_dir/release/chatd"
loadgen="$target_dir/release/loadgen"

{
  echo "# uname -a"; uname -a
  echo "# lscpu"; lscpu
  echo "# versions"
  git rev-parse HEAD 2>/dev/null && git status --short | head -20
  rustc --version
  "$chatd" --version 2>/dev/null || echo "chatd (no --version)"
  "$loadgen" --version
  redis-server --version
} >"$out/machine.txt" 2>&1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
room_port=$(free_port)
redis_port=$(free_port)
data_dir=$(mktemp -d)
chatd_pid=
redis_pid=
cleanup() {
  for pid in $chatd_pid $redis_pid; do kill "$pid" 2>/dev/null || true; done
  for pid in $chatd_pid $redis_pid; do timeout 5 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$data_dir"
}
trap cleanup EXIT

# Only ROOM listens; every other protocol is off (port 0).
show taskset -c 0 "$chatd" --room-port "$room_port" --bin24-port 0 --ccm-port 0 --matou-port 0 \
  --ocm-tcp-port 0 --ocm-udp-port 0 --ocm-relay-port 0 --web-port 0 --data-dir "$data_dir"
taskset -c 0 "$chatd" --room-port "$room_port" --bin24-port 0 --ccm-port 0 --matou-port 0 \
  --ocm-tcp-port 0 --ocm-udp-port 0 --ocm-relay-port 0 --web-port 0 --data-dir "$data_dir" \
  2>"$out/chatd.log" &
chatd_pid=$!
# --protected-mode no: the loadgen connects clients beyond the first 1,000 from their own
# 127.x.y.z, and protected mode accepts only 127.0.0.1 and ::1; the bind keeps it on loopback.
show taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save "''" --appendonly no \
  --protected-mode no --maxclients 19000
taskset -c 0 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --protected-mode no --maxclients 19000 >"$out/redis.log" 2>&1 &
redis_pid=$!

# Wait (bounded) for both to listen.
listening() { python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1" 2>/dev/null; }
for _ in $(seq 1 200); do
  if listening "$room_port" && listening "$redis_port"; then break; fi
  kill -0 "$chatd_pid" 2>/dev/null || { cat "$out/chatd.log"; die "chatd exited early"; }
  kill -0 "$redis_pid" 2>/dev/null || { cat "$out/redis.log"; die "redis-server exited early"; }
  sleep 0.05
done
listening "$room_port" || die "chatd never listened on $room_port"
listening "$redis_port" || die "redis-server never listened on $redis_port"

clk_tck=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks (fields 14 and 15; the name may hold spaces).
proc_cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
# CPU seconds of this shell's waited-for children so far. `times` must run in this shell (a
# subshell's children are its own), so it writes to a file rather than into $( ).
children_cpu_s() { times >"$out/.times"; tail -n 1 "$out/.times" | awk '{ split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.3f\n", u[1] * 60 + u[2] + s[1] * 60 + s[2] }'; }

# One loadgen run: server (room|resp), deliveries/s, label, duration. Appends a line to runs.tsv.
one_run() {
  local server=$1 deliveries=$2 label=$3 dur=$4
  local rate=$(( deliveries / clients ))
  local pid port
  if [ "$server" = room ]; then pid=$chatd_pid; port=$room_port; else pid=$redis_pid; port=$redis_port; fi
  kill -0 "$pid" 2>/dev/null || die "the $server server (pid $pid) is gone"
  local json="$out/$label-$server.json"
  local before_ticks before_lg
  before_ticks=$(proc_cpu_ticks "$pid")
  local status=0
  show timeout $(( $(duration_s "$dur") + 120 )) taskset -c 1 "$loadgen" "$server" --port "$port" \
    --clients "$clients" --senders "$senders" --rate "$rate" --payload-bytes "$payload_bytes" \
    --duration "$dur" --json "$json"
  children_cpu_s >"$out/.lg-before"
  local wall_before
  wall_before=$(date +%s.%N)
  timeout $(( $(duration_s "$dur") + 120 )) taskset -c 1 "$loadgen" "$server" --port "$port" \
    --clients "$clients" --senders "$senders" --rate "$rate" --payload-bytes "$payload_bytes" \
    --duration "$dur" --json "$json" >"$out/$label-$server.txt" 2>&1 || status=$?
  local after_ticks after_lg wall_after
  wall_after=$(date +%s.%N)
  after_ticks=$(proc_cpu_ticks "$pid")
  children_cpu_s >"$out/.lg-after"
  before_lg=$(cat "$out/.lg-before")
  after_lg=$(cat "$out/.lg-after")
  if [ "$status" -ge 2 ] || [ ! -s "$json" ]; then
    cat "$out/$label-$server.txt" >&2
    die "loadgen $server failed to run (exit $status); see $out/$label-$server.txt"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$server" "$deliveries" \
    "$(awk -v a="$wall_before" -v b="$wall_after" 'BEGIN { printf "%.3f", b - a }')" \
    "$(awk -v a="$before_ticks" -v b="$after_ticks" -v t="$clk_tck" 'BEGIN { printf "%.3f", (b - a) / t }')" \
    "$(awk -v a="$before_lg" -v b="$after_lg" 'BEGIN { printf "%.3f", b - a }')" "$json" >>"$out/runs.tsv"
  tail -n 4 "$out/$label-$server.txt" | sed "s/^/  [$server] /"
}

printf 'label\tserver\tdeliveries_target\twall_s\tserver_cpu_s\tloadgen_cpu_s\tjson\n' >"$out/runs.tsv"
started=$(date +%s)
for deliveries in "${rate_list[@]}"; do
  for i in $(seq 1 "$runs"); do
    # Alternate which server goes first, so neither always runs on a warmer (or busier) machine.
    if [ $(( i % 2 )) -eq 1 ]; then order="room resp"; else order="resp room"; fi
    for server in $order; do
      echo "== $server at $deliveries deliveries/s, run $i of $runs"
      one_run "$server" "$deliveries" "sweep-$deliveries-run$i" "$duration"
    done
  done
done

# Saturation: each server on its own increasing sweep, until its first INVALID or lossy run.
run_failed() {
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
bad = (not r["verdict"]["valid"]) or r["losses"]["total"] > 0 or r["not_sent"]["total"] > 0 \
    or sum(r["errors"][k] for k in ("connect", "read", "write", "protocol")) > 0
sys.exit(0 if bad else 1)
EOF
}
for server in room resp; do
  for deliveries in "${sat_list[@]}"; do
    echo "== saturation: $server at $deliveries deliveries/s"
    one_run "$server" "$deliveries" "saturation-$deliveries" "$saturation_duration"
    if run_failed "$out/saturation-$deliveries-$server.json"; then
      echo "  $server: INVALID or lossy at $deliveries deliveries/s; its saturation sweep stops here"
      break
    fi
  done
done
echo "sweeps took $(( $(date +%s) - started )) s"

python3 - "$out" "$clients" "$senders" "$payload_bytes" "$duration" "$runs" <<'EOF' | tee "$out/summary.txt"
import csv, json, statistics, sys
out, clients, senders, payload, duration, runs = sys.argv[1:]
rows = list(csv.DictReader(open(f"{out}/runs.tsv"), delimiter="\t"))

def load(row):
    r = json.load(open(row["json"]))
    deliveries = r["deliveries"]
    errors = sum(r["errors"][k] for k in ("connect", "read", "write", "protocol"))
    delivered = max(deliveries["delivered"], 1)
    return {
        "achieved": deliveries["per_s"],
        "p50": r["latency_ms"]["delivery"]["p50_ms"],
        "p99": r["latency_ms"]["delivery"]["p99_ms"],
        # Every delivery of the run (warmup and drain too) against the CPU of the whole run.
        "server_us": float(row["server_cpu_s"]) * 1e6 / delivered,
        "server_cpu": 100 * float(row["server_cpu_s"]) / max(float(row["wall_s"]), 1e-3),
        # Share of one core over the run's wall time: near 100% the loadgen is the ceiling.
        "loadgen_cpu": 100 * float(row["loadgen_cpu_s"]) / max(float(row["wall_s"]), 1e-3),
        "valid": r["verdict"]["valid"],
        "clean": r["losses"]["total"] == 0 and errors == 0 and r["not_sent"]["total"] == 0,
    }

def median(values):
    return statistics.median(values)

print(f"ROOM (chatd) vs RESP (redis-server), both on CPU 0, loadgen on CPU 1; {clients} "
      f"subscribers, {senders} publishers, {payload}-byte messages, {duration} per run, "
      f"medians of {runs} runs")
print("server CPU/delivery: server utime+stime over the whole run / every delivery; "
      "srv % and lg %: the server's and the loadgen's CPU time / the run's wall time, % of one "
      "core (ramp-up, warmup and drain included); "
      "x: ROOM's figure / RESP's (below 1: ROOM lower)")
header = (f"{'target/s':>10} | {'ROOM got/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/dl':>9} "
          f"{'srv %':>5} {'lg %':>5} {'valid':>8} | {'RESP got/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU us/dl':>9} {'srv %':>5} {'lg %':>5} {'valid':>8} | {'p99 x':>7} {'CPU x':>7}")
print(header)
print("-" * len(header))

def verdict(runs_):
    if all(r["valid"] and r["clean"] for r in runs_):
        return "VALID"
    if not all(r["clean"] for r in runs_):
        return "LOSS/ERR"
    return "INVALID"

sweep = [r for r in rows if r["label"].startswith("sweep-")]
for target in dict.fromkeys(r["deliveries_target"] for r in sweep):
    cols = {}
    for server in ("room", "resp"):
        got = [load(r) for r in sweep if r["deliveries_target"] == target and r["server"] == server]
        cols[server] = {k: median([g[k] for g in got]) for k in ("achieved", "p50", "p99", "server_us", "server_cpu", "loadgen_cpu")}
        cols[server]["verdict"] = verdict(got)
    room, resp = cols["room"], cols["resp"]
    p99_ratio = room["p99"] / resp["p99"] if resp["p99"] else float("nan")
    cpu_ratio = room["server_us"] / resp["server_us"] if resp["server_us"] else float("nan")
    print(f"{int(target):>10} | {room['achieved']:>10.0f} {room['p50']:>7.3f} {room['p99']:>7.3f} "
          f"{room['server_us']:>9.3f} {room['server_cpu']:>5.0f} {room['loadgen_cpu']:>5.0f} "
          f"{room['verdict']:>8} | "
          f"{resp['achieved']:>10.0f} {resp['p50']:>7.3f} {resp['p99']:>7.3f} "
          f"{resp['server_us']:>9.3f} {resp['server_cpu']:>5.0f} {resp['loadgen_cpu']:>5.0f} "
          f"{resp['verdict']:>8} | "
          f"{p99_ratio:>7.2f} {cpu_ratio:>7.2f}")

saturation = [r for r in rows if r["label"].startswith("saturation-")]
if saturation:
    print()
    print("saturation (one run per step, increasing; a server's sweep stops at its first "
          "INVALID or lossy run):")
    for server in ("room", "resp"):
        steps = [(int(r["deliveries_target"]), load(r)) for r in saturation if r["server"] == server]
        for target, s in steps:
            state = "VALID" if s["valid"] and s["clean"] else ("INVALID" if s["clean"] else "LOSS/ERR")
            print(f"  {server.upper():4} target {target:>9}/s: achieved {s['achieved']:>10.0f}/s, "
                  f"p99 {s['p99']:.3f} ms, server {s['server_us']:.3f} us/delivery ({s['server_cpu']:.0f}% CPU), "
                  f"loadgen CPU {s['loadgen_cpu']:.0f}%, {state}")
        good = [s["achieved"] for _, s in steps if s["valid"] and s["clean"]]
        best_any = max((s["achieved"] for _, s in steps), default=0)
        print(f"  {server.upper():4} highest achieved: {max(good, default=0):.0f}/s in a VALID "
              f"lossless run ({best_any:.0f}/s in any run)")
    print("  A saturation step that is INVALID with the loadgen's CPU near 100% means "
          "the loadgen's core was the ceiling, not the server: compare server CPU per delivery "
          "there.")
EOF
rm -f "$out/.times" "$out/.lg-before" "$out/.lg-after"
echo "compare-redis: done; results in $out"
