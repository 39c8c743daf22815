#!/usr/bin/env bash
# Run every cargo-fuzz target for FUZZ_SECONDS each (default 20; e.g. FUZZ_SECONDS=3600 for a
# long run). Starts from the seed corpus in fuzz/corpus/<target> without modifying it (new inputs
# go to a temp dir); a crash fails the run and leaves its input in fuzz/artifacts/<target>/.
# Uses nightly with AddressSanitizer when a nightly toolchain is installed, else the stable
# toolchain without a sanitizer. Installs cargo-fuzz (crates.io) and a C++ compiler if missing.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-20}"
targets="${FUZZ_TARGETS:-path_route token headers config api_json}"

command -v c++ >/dev/null || { apt-get update && apt-get install -y g++; }
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
  sanitizer=address
else
  fuzz=(cargo fuzz)
  sanitizer=none
fi
echo "fuzz: ${fuzz[*]}, sanitizer $sanitizer, ${seconds}s per target"
"${fuzz[@]}" build -O -s "$sanitizer"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in $targets; do
  mkdir -p "$work/$t"
  echo "fuzz: $t"
  if ! "${fuzz[@]}" run -O -s "$sanitizer" "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
      >"$work/$t.log" 2>&1; then
    tail -n 60 "$work/$t.log"
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' "$work/$t.log" || true
done
echo "fuzz: all targets ran ${seconds}s without a failure"
