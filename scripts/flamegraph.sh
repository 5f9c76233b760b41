#!/usr/bin/env bash
# A flame graph of chatd during a fixed-rate `loadgen room` run: chatd runs under
# `perf record -g`, the samples are folded with inferno (inferno-collapse-perf) and drawn
# (inferno-flamegraph) into flamegraph.svg in the results folder, with the folded stacks
# (stacks.folded) and the top frames (top.txt) beside it.
#
# chatd is built with full debug info (CARGO_PROFILE_RELEASE_DEBUG=true) into its own target
# directory ($CARGO_TARGET_DIR/flamegraph, default target/flamegraph), so the release build used
# by the other scripts is not rebuilt. With --call-graph fp it is also built with frame
# pointers (RUSTFLAGS=-Cforce-frame-pointers=yes, target/flamegraph-fp); the default, dwarf,
# unwinds from copies of the stack and needs no rebuild of the standard library, but its
# samples are large (so the default duration is short).
#
# inferno is installed with `cargo install inferno --locked` when inferno-flamegraph is
# missing (set NO_INSTALL=1 to fail instead). chatd is pinned to CPU 0, the loadgen to CPU 1,
# ROOM only, on a free loopback port. Results go to results/flamegraph-YYYYmmdd-HHMMSS/.
# Bounded: the loadgen is killed after duration + 120 s, chatd 30 s after SIGTERM.
#
# Usage: scripts/flamegraph.sh [--clients N] [--senders N] [--rate MSG_PER_S] [--duration D]
#                              [--call-graph dwarf|fp] [--frequency HZ]
#   --clients N          room members (default 100)
#   --senders N          how many of them send (default 10)
#   --rate N             messages per second over all senders (default 5000)
#   --duration D         measured duration, loadgen syntax (default 5s)
#   --call-graph MODE    dwarf (default) or fp
#   --frequency HZ       samples per second (default 999)
set -euo pipefail
script_name=flamegraph.sh
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

clients=100
senders=10
rate=5000
duration=5s
call_graph=dwarf
frequency=999
while [ $# -gt 0 ]; do
  case $1 in
    --clients) clients=$(option_value "$@"); shift 2 ;;
    --senders) senders=$(option_value "$@"); shift 2 ;;
    --rate) rate=$(option_value "$@"); shift 2 ;;
    --duration) duration=$(option_value "$@"); shift 2 ;;
    --call-graph) call_graph=$(option_value "$@"); shift 2 ;;
    --frequency) frequency=$(option_value "$@"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument $1" ;;
  esac
done
is_count "$clients" || usage_error "--clients $clients is not a positive integer"
is_count "$senders" || usage_error "--senders $senders is not a positive integer"
is_count "$rate" || usage_error "--rate $rate is not a positive integer"
is_count "$frequency" || usage_error "--frequency $frequency is not a positive integer"
[[ $duration =~ ^[0-9]+(ms|s|m)$ ]] || usage_error "--duration $duration: expected e.g. 5s, 500ms, 1m"
case $call_graph in
  dwarf | fp) ;;
  *) usage_error "--call-graph must be dwarf or fp" ;;
esac
duration_s=$(python3 -c "import re; n,u=re.fullmatch(r'(\d+)(ms|s|m)','$duration').groups(); print(int(int(n)*{'ms':0.001,'s':1,'m':60}[u])+1)")

cd "$(dirname "$0")/.."
perf=${PERF:-/usr/bin/perf}
[ -x "$perf" ] || die "perf not found at $perf (set PERF=/path/to/perf; Debian: apt-get install linux-perf)"
if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
  [ -z "${NO_INSTALL:-}" ] || die "inferno-collapse-perf and inferno-flamegraph are missing: cargo install inferno --locked"
  run cargo install inferno --locked
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  command -v inferno-flamegraph >/dev/null || die "cargo install inferno did not put inferno-flamegraph on PATH"
fi
make_results_dir flamegraph

# The loadgen from the ordinary release build; chatd from the debug-info build.
build_release
if [ "$call_graph" = fp ]; then
  profile_target="$target_dir/flamegraph-fp"
  run env CARGO_TARGET_DIR="$profile_target" CARGO_PROFILE_RELEASE_DEBUG=true \
    RUSTFLAGS="${RUSTFLAGS:-} -Cforce-frame-pointers=yes" \
    cargo build --release --quiet --bin chatd
  perf_call_graph=fp
else
  profile_target="$target_dir/flamegraph"
  run env CARGO_TARGET_DIR="$profile_target" CARGO_PROFILE_RELEASE_DEBUG=true \
    cargo build --release --quiet --bin chatd
  # 16 KiB of stack per sample: enough for the reactor's depth, a quarter of perf's default.
  perf_call_graph=dwarf,16384
fi
profiled_chatd="$profile_target/release/chatd"
trap stop_chatd_hard EXIT

start_chatd_room taskset -c 0 "$perf" record -F "$frequency" --call-graph "$perf_call_graph" \
  -o "$results_dir/perf.data" -- "$profiled_chatd"
status=0
run timeout "$((duration_s + 120))" taskset -c 1 "$loadgen" room --port "$room_port" \
  --clients "$clients" --senders "$senders" --rate "$rate" --duration "$duration" \
  --json "$results_dir/loadgen.json" >"$results_dir/loadgen.txt" 2>&1 || status=$?
[ "$status" -eq 0 ] || echo "$script_name: loadgen exit $status (see $results_dir/loadgen.txt)" >&2
stop_chatd || echo "$script_name: chatd exited non-zero after SIGTERM (see $chatd_log)" >&2

run sh -c "'$perf' script -i '$results_dir/perf.data' 2>/dev/null | inferno-collapse-perf --kernel > '$results_dir/stacks.folded'"
[ -s "$results_dir/stacks.folded" ] || die "no stacks folded from $results_dir/perf.data"
run sh -c "inferno-flamegraph --title 'chatd, ROOM $clients clients x $rate msg/s, perf --call-graph $call_graph' < '$results_dir/stacks.folded' > '$results_dir/flamegraph.svg'"

# Top frames: self time per function (the leaf of each stack), and the share kernel frames take.
python3 - "$results_dir/stacks.folded" <<'EOF' | tee "$results_dir/top.txt"
import collections, sys
leaf = collections.Counter()
total = kernel = 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip("\n").rpartition(" ")
    n = int(count)
    frames = stack.split(";")
    total += n
    leaf[frames[-1]] += n
    if frames[-1].endswith("_[k]"):
        kernel += n
# inferno weighs each stack by perf's sample period (ns of CPU for the default cpu-clock).
print(f"total weight {total:,} (sample periods); leaf in the kernel: {100 * kernel / total:.1f}%")
print("Top 25 functions by self time:")
for name, n in leaf.most_common(25):
    print(f"{100 * n / total:6.2f}%  {name}")
EOF
echo "$script_name: flame graph in $results_dir/flamegraph.svg"
