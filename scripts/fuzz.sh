#!/usr/bin/env bash
# Build and run every fuzz target (fuzz/, a cargo-fuzz project) for SECONDS each.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 600 s, every target)
#   TARGET is a file name in fuzz/fuzz_targets/ without .rs (e.g. room_codec).
#
# cargo-fuzz needs nightly-only flags (-Z sanitizer coverage options); no nightly toolchain
# can be fetched on these machines, so the installed stable toolchain is told to accept them
# with RUSTC_BOOTSTRAP=1. cargo-fuzz itself is installed from crates.io if missing.
#
# Each target starts from its committed seeds (fuzz/corpus/TARGET, read only) and grows a
# corpus of its own under $FUZZ_WORK_DIR (default fuzz/work, git-ignored), which later runs
# reuse. Crash inputs go to $FUZZ_WORK_DIR/artifacts/TARGET/. Prints, per target, the
# executions, seconds, coverage and whether it crashed; exits 1 if any target crashed.
#
# Environment: FUZZ_WORK_DIR, FUZZ_TARGET_DIR (build output, default fuzz/target),
# FUZZ_RSS_LIMIT_MB (default 2048), FUZZ_TIMEOUT_S (one input, default 10).
set -euo pipefail
script_name=fuzz.sh
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

case ${1:-} in -h | --help) usage; exit 0 ;; -*) usage_error "unknown option $1" ;; esac
seconds=${1:-600}
shift || true
is_count "$seconds" || usage_error "SECONDS_PER_TARGET $seconds is not a positive integer"
for target in "$@"; do
  [ -f "fuzz/fuzz_targets/$target.rs" ] || usage_error "no fuzz target $target (fuzz/fuzz_targets/)"
done
work=${FUZZ_WORK_DIR:-fuzz/work}
target_dir=${FUZZ_TARGET_DIR:-fuzz/target}
rss_limit_mb=${FUZZ_RSS_LIMIT_MB:-2048}
timeout_s=${FUZZ_TIMEOUT_S:-10}

export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked
fi

# -s none: the library has no unsafe code, and AddressSanitizer would halve the executions.
# -a: debug assertions and overflow checks, so an arithmetic slip is a crash, not a wrap.
build_flags=(-O -a -s none --target-dir "$target_dir")
cargo fuzz build "${build_flags[@]}"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

# The number ending the last match of PATTERN in FILE; empty if none (never fails).
last_number() {
  { grep -o "$1" "$2" || true; } | tail -1 | grep -o '[0-9]*$' || true
}

mkdir -p "$work/logs"
summary=()
crashed=0
for target in "${targets[@]}"; do
  corpus="$work/corpus/$target"
  artifacts="$work/artifacts/$target"
  log="$work/logs/$target.log"
  mkdir -p "$corpus" "$artifacts"
  echo "=== $target: $seconds s"
  status=0
  started_s=$SECONDS
  # The first corpus directory is the one libFuzzer writes to: the seeds stay untouched.
  cargo fuzz run "${build_flags[@]}" "$target" "$corpus" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss_limit_mb" -timeout="$timeout_s" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(last_number 'stat::number_of_executed_units: *[0-9]*' "$log")
  # libFuzzer's own count when it finished; the wall time when it stopped on a crash.
  took=$(last_number 'Done [0-9]* runs in [0-9]*' "$log")
  took=${took:-$((SECONDS - started_s))}
  cov=$(last_number 'cov: [0-9]*' "$log")
  ft=$(last_number 'ft: [0-9]*' "$log")
  line="$target: ${runs:-?} executions in $took s, coverage ${cov:-?} edges (${ft:-?} features)"
  if [ "$status" -ne 0 ]; then
    crashed=1
    crash=$({ grep -o 'Test unit written to .*' "$log" || true; } | tail -1)
    crash=${crash#Test unit written to }
    line="$line, CRASHED (exit $status): ${crash:-see $log}"
    tail -n 40 "$log"
  else
    line="$line, no crash"
  fi
  echo "$line"
  summary+=("$line")
done

echo
echo "=== summary ($seconds s per target; logs in $work/logs)"
printf '%s\n' "${summary[@]}"
exit "$crashed"
