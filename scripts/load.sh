#!/usr/bin/env bash
# Rate sweep of `loadgen room` against a release chatd: one loadgen run per step, each at a
# higher delivery rate (deliveries/s = clients x messages/s, every member receiving every
# message), then a table of target and achieved deliveries/s, latency percentiles, CPU of the
# server and of the loadgen, and the run's VALID/INVALID verdict, and where latency bends (the
# first step whose p99 is more than twice the first step's).
#
# chatd runs pinned to CPU 0 and the loadgen to CPU 1 (taskset), ROOM only, on a free loopback
# port. Results (commands, machine description, each step's JSON and output, the table) go to
# results/load-YYYYmmdd-HHMMSS/. Bounded: each step's loadgen is killed after duration + 120 s.
#
# Usage: scripts/load.sh [--clients N] [--senders N] [--deliveries LIST | --rates LIST]
#                        [--duration D] [--payload-bytes N]
#   --clients N        room members (default 100)
#   --senders N        how many of them send (default 10)
#   --deliveries LIST  comma-separated target deliveries/s per step
#                      (default 100000,200000,500000,1000000,2000000); the message rate of a
#                      step is deliveries / clients
#   --rates LIST       comma-separated message rates (msg/s over all senders) instead
#   --duration D       measured duration of each step, loadgen syntax (default 10s)
#   --payload-bytes N  bytes per message on the wire (default 64)
set -euo pipefail
script_name=load.sh
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

clients=100
senders=10
deliveries_list=100000,200000,500000,1000000,2000000
rates_list=
duration=10s
payload_bytes=64
while [ $# -gt 0 ]; do
  case $1 in
    --clients) clients=$(option_value "$@"); shift 2 ;;
    --senders) senders=$(option_value "$@"); shift 2 ;;
    --deliveries) deliveries_list=$(option_value "$@"); shift 2 ;;
    --rates) rates_list=$(option_value "$@"); shift 2 ;;
    --duration) duration=$(option_value "$@"); shift 2 ;;
    --payload-bytes) payload_bytes=$(option_value "$@"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument $1" ;;
  esac
done
is_count "$clients" || usage_error "--clients $clients is not a positive integer"
is_count "$senders" || usage_error "--senders $senders is not a positive integer"
is_count "$payload_bytes" || usage_error "--payload-bytes $payload_bytes is not a positive integer"
[[ $duration =~ ^[0-9]+(ms|s|m)$ ]] || usage_error "--duration $duration: expected e.g. 10s, 500ms, 1m"

# Message rates of the steps.
rates=()
if [ -n "$rates_list" ]; then
  IFS=, read -r -a rates <<<"$rates_list"
else
  IFS=, read -r -a targets <<<"$deliveries_list"
  for d in "${targets[@]}"; do
    [[ $d =~ ^[1-9][0-9]*$ ]] || usage_error "deliveries $d is not a positive integer"
    rate=$((d / clients))
    [ "$rate" -ge 1 ] || usage_error "$d deliveries/s over $clients clients is under 1 msg/s"
    rates+=("$rate")
  done
fi
for r in "${rates[@]}"; do
  [[ $r =~ ^[1-9][0-9]*$ ]] || usage_error "rate $r is not a positive integer"
done
# Each step's loadgen must finish: ramp-up, warmup (1 s), duration, drain (2 s), plus margin.
duration_s=$(python3 -c "import re,sys; n,u=re.fullmatch(r'(\d+)(ms|s|m)','$duration').groups(); print(int(int(n)*{'ms':0.001,'s':1,'m':60}[u])+1)")
step_timeout_s=$((duration_s + 120))

cd "$(dirname "$0")/.."
make_results_dir load
build_release
trap stop_chatd_hard EXIT

start_chatd_room taskset -c 0 "$chatd" --connections-max 20000
server_pid=$(chatd_real_pid)

step=0
for rate in "${rates[@]}"; do
  step=$((step + 1))
  json="$results_dir/step$step.json"
  before=$(cpu_ticks "$server_pid")
  start_ns=$(date +%s%N)
  status=0
  # bash's `time` gives the loadgen's own user and system CPU seconds (TIMEFORMAT below).
  TIMEFORMAT='%U %S %R'
  { time run timeout "$step_timeout_s" taskset -c 1 "$loadgen" room --port "$room_port" \
      --clients "$clients" --senders "$senders" --rate "$rate" --duration "$duration" \
      --payload-bytes "$payload_bytes" --json "$json" \
      >"$results_dir/step$step.txt" 2>&1 || status=$?; } 2>"$results_dir/step$step.time"
  end_ns=$(date +%s%N)
  after=$(cpu_ticks "$server_pid")
  kill -0 "$server_pid" 2>/dev/null || die "chatd died during step $step (see $chatd_log)"
  [ -s "$json" ] || die "step $step wrote no JSON (exit $status; see $results_dir/step$step.txt)"
  echo "$step $rate $status $before $after $start_ns $end_ns $(tail -n 1 "$results_dir/step$step.time")" >>"$results_dir/steps.raw"
  echo "$script_name: step $step (rate $rate msg/s) done, loadgen exit $status" >&2
done

stop_chatd || echo "$script_name: chatd exited non-zero after SIGTERM (see $chatd_log)" >&2

python3 - "$results_dir" "$clients" "$clock_ticks_per_s" <<'EOF' | tee "$results_dir/table.txt"
import json, sys
results_dir, clients, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = []
for line in open(f"{results_dir}/steps.raw"):
    step, rate, status, before, after, start_ns, end_ns, user_s, sys_s, real_s = line.split()
    report = json.load(open(f"{results_dir}/step{step}.json"))
    wall_s = (int(end_ns) - int(start_ns)) / 1e9
    lat = report["latency_ms"]["delivery"]
    rows.append(dict(
        step=int(step), rate=int(rate), exit=int(status),
        target=int(rate) * clients,
        achieved=report["deliveries"]["per_s"],
        p50=lat["p50_ms"], p99=lat["p99_ms"], p999=lat["p999_ms"], max=lat["max_ms"],
        server_cpu=100.0 * (int(after) - int(before)) / hz / wall_s,
        loadgen_cpu=100.0 * (float(user_s) + float(sys_s)) / float(real_s),
        lost=report["losses"]["total"],
        verdict="VALID" if report["verdict"]["valid"] else "INVALID",
    ))
print(f"{'step':>4} {'msg/s':>7} {'target del/s':>13} {'achieved del/s':>15} {'p50 ms':>8} "
      f"{'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8} {'chatd CPU':>9} {'loadgen CPU':>11} "
      f"{'lost':>6} verdict")
for r in rows:
    print(f"{r['step']:>4} {r['rate']:>7} {r['target']:>13,} {r['achieved']:>15,.0f} "
          f"{r['p50']:>8.3f} {r['p99']:>8.3f} {r['p999']:>9.3f} {r['max']:>8.3f} "
          f"{r['server_cpu']:>8.0f}% {r['loadgen_cpu']:>10.0f}% {r['lost']:>6} {r['verdict']}"
          + ("" if r["exit"] == 0 else f" (loadgen exit {r['exit']})"))
print("CPU: share of one core over the step's whole loadgen run (ramp-up, warmup, drain included).")
first = rows[0]["p99"]
bend = next((r for r in rows[1:] if r["p99"] > 2 * first), None)
if bend is None:
    print(f"Latency does not bend: no step's p99 exceeds twice the first step's ({first:.3f} ms).")
else:
    print(f"Latency bends at step {bend['step']} ({bend['target']:,} deliveries/s): p99 "
          f"{bend['p99']:.3f} ms > 2 x {first:.3f} ms (the first step's p99).")
EOF
echo "$script_name: results in $results_dir"
