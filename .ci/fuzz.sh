#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time on the stable toolchain,
# without a sanitizer (`-s none` needs no nightly flags). A crash, a leak or
# a timeout in any target fails the script; the reproducer is left in
# fuzz/artifacts/TARGET/ (turn each into a unit test in tests/fuzz_oracles.rs).
#
#   bash .ci/fuzz.sh              # 45 s per target
#   FUZZ_SECONDS=600 bash .ci/fuzz.sh
#
# Targets (every [[bin]] of fuzz/Cargo.toml, via `cargo fuzz list`):
# parse_key, scope_grammar, verify, record_json, header_extraction,
# extreme_times, rest_api. Each needs its seeds in fuzz/seeds/TARGET/.
#
# The longer AddressSanitizer run (nightly) is described in SECURITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${FUZZ_SECONDS:-45}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
cargo fuzz build -s none
summary=()
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    log="$(mktemp)"
    echo "== fuzz $target for ${secs}s"
    if ! cargo fuzz run -s none "$target" "corpus/$target" "seeds/$target" -- \
        -dict=apikey.dict -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target FAILED; reproducer in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    cov="$(grep -o 'DONE *cov: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    summary+=("$target: $runs execs in ${secs}s, cov $cov, corpus $(ls "corpus/$target" | wc -l) files")
    rm -f "$log"
done
echo "== fuzz summary"
printf '  %s\n' "${summary[@]}"
