# Shared by every script in scripts/ (sourced, not run): each sources it before reading its
# arguments, so that --help and bad arguments are answered before anything is built or started.
# Every command that matters goes through `run`, which prints it and appends it to the results
# folder's commands.txt, so a results folder says exactly how its figures were made.
#
# Usage: source "$(dirname "$0")/lib.sh"      (from a script in scripts/; set script_name first)

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  # Run instead of sourced: there is nothing to do.
  case ${1:-} in
    -h | --help) sed -n '1,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "lib.sh: sourced by the other scripts in scripts/, not run (see --help)" >&2; exit 2 ;;
  esac
fi

# The running script's usage: its header comment, from the line after the shebang down to
# `set -euo pipefail`.
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

# A bad argument: says which, prints the usage on stderr and exits 2, before anything is built
# or started.
usage_error() {
  echo "$script_name: $*" >&2
  usage >&2
  exit 2
}

# The value of option $1 (the rest of the command line is $2...): `x=$(option_value "$@")`.
# A usage error when there is none (under `set -e` the assignment then exits 2).
option_value() {
  [ $# -ge 2 ] || usage_error "$1 needs a value"
  printf '%s\n' "$2"
}

# Whether $1 is a positive integer.
is_count() {
  [[ $1 =~ ^[1-9][0-9]*$ ]]
}

# Whether $1 is a duration in loadgen syntax: 500ms, 10s, 1m.
is_duration() {
  [[ $1 =~ ^[0-9]+(ms|s|m)$ ]]
}

# fd 3 is the terminal's stderr even inside redirected groups (`{ time run ...; } 2>file`).
exec 3>&2

# Prints a message and exits 1.
die() {
  echo "$script_name: $*" >&2
  exit 1
}

# Prints a command (quoted so it can be pasted back), records it, runs it.
run() {
  local line
  line=$(printf '%q ' "$@")
  echo "+ $line" >&3
  if [ -n "${results_dir:-}" ]; then echo "$line" >>"$results_dir/commands.txt"; fi
  "$@"
}

# Prints a command, records it, starts it in the background ($! is the process itself).
start() {
  echo "+ $(printf '%q ' "$@")" >&3
  if [ -n "${results_dir:-}" ]; then echo "$(printf '%q ' "$@") &" >>"$results_dir/commands.txt"; fi
  "$@" &
}

# Waits (bounded, $4 seconds, default 10) for a line matching $3 in log $1 of process $2;
# dies if the process exits first.
wait_for_line() {
  local log=$1 pid=$2 pattern=$3 seconds=${4:-10} _
  for _ in $(seq 1 $((seconds * 20))); do
    if grep -q "$pattern" "$log"; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "$log: exited before \"$pattern\""; }
    sleep 0.05
  done
  tail -n 20 "$log" >&2
  die "$log: no \"$pattern\" within $seconds s"
}

# Creates results/NAME-YYYYmmdd-HHMMSS/ with what describes the machine and the toolchain.
make_results_dir() {
  local name=$1
  results_dir="results/$name-$(date -u +%Y%m%d-%H%M%S)"
  mkdir -p "$results_dir"
  : >"$results_dir/commands.txt"
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "uname: $(uname -a)"
    echo "rustc: $(rustc --version)"
    echo "cargo: $(cargo --version)"
    echo "load average: $(cat /proc/loadavg)"
    echo "--- lscpu"
    lscpu
  } >"$results_dir/machine.txt"
  echo "$script_name: results go to $results_dir" >&2
}

# Builds the release chatd and loadgen (into CARGO_TARGET_DIR, default target/). With
# SWITCHBOARD_BIN_DIR set, nothing is built: that folder's chatd and loadgen run instead, so two
# builds (e.g. before and after a change, each copied aside) can be measured in turns by the
# same script. machine.txt names the folder.
build_release() {
  if [ -n "${SWITCHBOARD_BIN_DIR:-}" ]; then
    chatd="$SWITCHBOARD_BIN_DIR/chatd"
    loadgen="$SWITCHBOARD_BIN_DIR/loadgen"
    [ -x "$chatd" ] && [ -x "$loadgen" ] || die "SWITCHBOARD_BIN_DIR=$SWITCHBOARD_BIN_DIR: no executable chatd and loadgen there"
    if [ -n "${results_dir:-}" ]; then
      echo "binaries: $SWITCHBOARD_BIN_DIR (prebuilt, not built from this tree)" >>"$results_dir/machine.txt"
    fi
    return
  fi
  target_dir=${CARGO_TARGET_DIR:-target}
  run cargo build --release --quiet --workspace --bins
  chatd="$target_dir/release/chatd"
  loadgen="$target_dir/release/loadgen"
}

# A TCP port of 127.0.0.1 that was free a moment ago.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A UDP port of 127.0.0.1 that was free a moment ago.
free_udp_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (bounded, 10 s) until chatd (pid $2) has logged COUNT ($3) "listening on" lines in its
# log ($1); prints the log and exits 1 if it exits first or never gets there.
wait_listening() {
  local log=$1 pid=$2 count=$3
  for _ in $(seq 1 200); do
    if [ "$(grep -c "listening on" "$log")" -ge "$count" ]; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then cat "$log"; die "chatd exited early"; fi
    sleep 0.05
  done
  cat "$log"
  die "chatd never listened"
}

# Starts chatd ("$@" = the command, e.g. `taskset -c 0 $chatd ...` or a profiler in front),
# serving ROOM only on $room_port, its stderr in $chatd_log (chatd1.log, chatd2.log...); sets chatd_pid to the
# started process (the profiler, if there is one) and waits (bounded) until ROOM listens.
# The caller's EXIT trap must call stop_chatd_hard.
start_chatd_room() {
  room_port=$(free_port)
  chatd_runs=$((${chatd_runs:-0} + 1))
  chatd_log="$results_dir/chatd$chatd_runs.log"
  local log=$chatd_log
  echo "+ $(printf '%q ' "$@") --room-port $room_port --bin24-port 0 --ccm-port 0 --matou-port 0 --ocm-tcp-port 0 --ocm-udp-port 0 --ocm-relay-port 0 --web-port 0 2>$log &" >&2
  echo "$(printf '%q ' "$@") --room-port $room_port --bin24-port 0 --ccm-port 0 --matou-port 0 --ocm-tcp-port 0 --ocm-udp-port 0 --ocm-relay-port 0 --web-port 0 &" >>"$results_dir/commands.txt"
  "$@" --room-port "$room_port" --bin24-port 0 --ccm-port 0 --matou-port 0 \
    --ocm-tcp-port 0 --ocm-udp-port 0 --ocm-relay-port 0 --web-port 0 2>"$log" &
  chatd_pid=$!
  local _
  for _ in $(seq 1 400); do
    if grep -q "ROOM listening on" "$log"; then return 0; fi
    if ! kill -0 "$chatd_pid" 2>/dev/null; then
      cat "$log" >&2
      die "chatd exited before listening"
    fi
    sleep 0.05
  done
  cat "$log" >&2
  die "chatd did not listen within 20 s"
}

# The pid of chatd itself: $chatd_pid, or its child when a wrapper (perf) started it.
chatd_real_pid() {
  local child
  if [ "$(cat "/proc/$chatd_pid/comm" 2>/dev/null)" = chatd ]; then
    echo "$chatd_pid"
    return
  fi
  child=$(pgrep -P "$chatd_pid" -x chatd | head -n 1 || true)
  [ -n "$child" ] || die "no chatd process under pid $chatd_pid"
  echo "$child"
}

# SIGTERM to chatd (through its wrapper's child if any), then waits up to 30 s for the
# started process to exit; returns its exit status.
stop_chatd() {
  local real status=0
  real=$(chatd_real_pid)
  run kill -TERM "$real"
  timeout 30 tail --pid="$chatd_pid" -f /dev/null || die "chatd (pid $chatd_pid) did not exit within 30 s of SIGTERM"
  wait "$chatd_pid" || status=$?
  chatd_pid=
  return "$status"
}

# For EXIT traps: kill what is left of chatd, by pid.
stop_chatd_hard() {
  local child
  if [ -n "${chatd_pid:-}" ]; then
    for child in $(pgrep -P "$chatd_pid" 2>/dev/null || true); do
      kill -9 "$child" 2>/dev/null || true
    done
    kill -9 "$chatd_pid" 2>/dev/null || true
  fi
}

# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat; the comm
# field may hold spaces, so count from the closing parenthesis).
cpu_ticks() {
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

clock_ticks_per_s=$(getconf CLK_TCK)
