#!/usr/bin/env bash
# A fixed-rate `loadgen room` run with chatd started under `perf stat`, then every count
# divided by the deliveries the loadgen reports: task-clock (CPU time), context switches,
# CPU migrations, page faults and system calls per delivery.
#
# perf starts chatd as its child (perf cannot attach to a running pid on every machine, this
# project's VM included); SIGTERM to chatd ends the run, and perf prints when its child exits.
# System calls are counted with the raw_syscalls:sys_enter tracepoint when the kernel has it;
# otherwise a second, shorter run under `strace -c -f` counts them. Hardware counters (cycles,
# instructions) are tried in a separate short probe and reported "not supported here" when
# the machine (a VM, usually) does not expose them.
#
# chatd is pinned to CPU 0, the loadgen to CPU 1, ROOM only, on a free loopback port. Results
# go to results/perf-stat-YYYYmmdd-HHMMSS/. Bounded: the loadgen is killed after
# duration + 120 s, chatd 30 s after SIGTERM.
#
# Usage: scripts/perf-stat.sh [--clients N] [--senders N] [--rate MSG_PER_S] [--duration D]
#   --clients N    room members (default 100)
#   --senders N    how many of them send (default 10)
#   --rate N       messages per second over all senders (default 5000: 500,000 deliveries/s)
#   --duration D   measured duration, loadgen syntax (default 10s)
set -euo pipefail
script_name=perf-stat.sh
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

clients=100
senders=10
rate=5000
duration=10s
while [ $# -gt 0 ]; do
  case $1 in
    --clients) clients=$(option_value "$@"); shift 2 ;;
    --senders) senders=$(option_value "$@"); shift 2 ;;
    --rate) rate=$(option_value "$@"); shift 2 ;;
    --duration) duration=$(option_value "$@"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument $1" ;;
  esac
done
is_count "$clients" || usage_error "--clients $clients is not a positive integer"
is_count "$senders" || usage_error "--senders $senders is not a positive integer"
is_count "$rate" || usage_error "--rate $rate is not a positive integer"
[[ $duration =~ ^[0-9]+(ms|s|m)$ ]] || usage_error "--duration $duration: expected e.g. 10s, 500ms, 1m"
duration_s=$(python3 -c "import re; n,u=re.fullmatch(r'(\d+)(ms|s|m)','$duration').groups(); print(int(int(n)*{'ms':0.001,'s':1,'m':60}[u])+1)")

cd "$(dirname "$0")/.."
perf=${PERF:-/usr/bin/perf}
[ -x "$perf" ] || die "perf not found at $perf (set PERF=/path/to/perf; Debian: apt-get install linux-perf)"
make_results_dir perf-stat
build_release
trap stop_chatd_hard EXIT

# Hardware counters: a probe on `true`, so an unsupported counter never spoils the real run.
hardware=
if "$perf" stat -x, -e cycles,instructions true 2>"$results_dir/hw-probe.txt" >/dev/null \
  && ! grep -qE "not supported|not counted" "$results_dir/hw-probe.txt"; then
  hardware=,cycles,instructions
fi
syscall_event=
# grep without -q reads to the end: perf must not die of SIGPIPE under pipefail.
if "$perf" list tracepoint 2>/dev/null | grep "raw_syscalls:sys_enter" >/dev/null; then
  syscall_event=,raw_syscalls:sys_enter
fi
events="task-clock,context-switches,cpu-migrations,page-faults$syscall_event$hardware"

# One ROOM run with chatd started by "$@"; the loadgen's JSON goes to $1-named file.
room_run() {
  local json=$1
  shift
  start_chatd_room "$@"
  local status=0
  run timeout "$((duration_s + 120))" taskset -c 1 "$loadgen" room --port "$room_port" \
    --clients "$clients" --senders "$senders" --rate "$rate" --duration "$duration" \
    --json "$json" >"${json%.json}.txt" 2>&1 || status=$?
  [ -s "$json" ] || die "the loadgen wrote no JSON (exit $status; see ${json%.json}.txt)"
  [ "$status" -eq 0 ] || echo "$script_name: loadgen exit $status (see ${json%.json}.txt)" >&2
  stop_chatd || echo "$script_name: chatd exited non-zero after SIGTERM (see $chatd_log)" >&2
}

room_run "$results_dir/loadgen.json" taskset -c 0 "$perf" stat -x, -o "$results_dir/perf-stat.csv" \
  -e "$events" -- "$chatd"

syscalls_from=perf
if [ -z "$syscall_event" ]; then
  command -v strace >/dev/null || die "no raw_syscalls:sys_enter tracepoint and no strace to count system calls"
  syscalls_from=strace
  # strace slows every system call down a lot: a fifth of the duration, for counts only.
  short_s=$(( (duration_s + 4) / 5 ))
  duration_full=$duration
  duration=${short_s}s
  room_run "$results_dir/loadgen-strace.json" taskset -c 0 strace -c -f -o "$results_dir/strace-c.txt" "$chatd"
  duration=$duration_full
fi

python3 - "$results_dir" "$syscalls_from" "$hardware" <<'EOF' | tee "$results_dir/per-delivery.txt"
import csv, json, sys
results_dir, syscalls_from, hardware = sys.argv[1], sys.argv[2], sys.argv[3]
report = json.load(open(f"{results_dir}/loadgen.json"))
delivered = report["deliveries"]["delivered"]
lat = report["latency_ms"]["delivery"]
print(f"run: {report['settings']['clients']} clients, {report['settings']['senders']} senders, "
      f"{report['settings']['rate_per_s']} msg/s; {delivered:,} deliveries in all "
      f"(warmup included), p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, "
      f"{'VALID' if report['verdict']['valid'] else 'INVALID'}")
counts = {}
for row in csv.reader(line for line in open(f"{results_dir}/perf-stat.csv")
                      if line.strip() and not line.startswith("#")):
    if len(row) < 3:
        continue
    value, unit, event = row[0], row[1], row[2]
    counts[event] = value
def show(name, value, unit=""):
    per = value / delivered if delivered else float("nan")
    print(f"{name:<28} {value:>18,.0f}{unit:<4} {per:>14.4f}{unit} per delivery")
print(f"{'event':<28} {'count':>18}     {'per delivery':>14}")
for event, value in counts.items():
    if value.startswith("<"):
        print(f"{event:<28} {'not supported here':>18}")
        continue
    number = float(value)
    if event.startswith("task-clock"):
        show("task-clock (CPU time)", number * 1e6, " ns")   # perf -x reports msec
    else:
        show(event, number)
if not hardware:
    print(f"{'cycles, instructions':<28} {'not supported here':>18} (see hw-probe.txt)")
if syscalls_from == "strace":
    short = json.load(open(f"{results_dir}/loadgen-strace.json"))["deliveries"]["delivered"]
    total = 0
    for line in open(f"{results_dir}/strace-c.txt"):
        parts = line.split()
        if parts and parts[-1] == "total":
            total = int(parts[3])
    print(f"{'syscalls (strace -c, shorter run)':<28} {total:>18,} {total / short:>18.4f} per delivery")
print("Deliveries include the warmup's; chatd's counts include start-up and shutdown.")
EOF
echo "$script_name: results in $results_dir"
