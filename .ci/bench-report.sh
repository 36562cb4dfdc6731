#!/usr/bin/env bash
# Prints issue 5's budget lines from the criterion results of the last
# `cargo bench --bench verify` run (medians, ns). Needs jq.
#   cargo bench --bench verify && .ci/bench-report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
C="${CARGO_TARGET_DIR:-target}/criterion"
m() { # median ns of group/bench
    local f="$C/$1/new/estimates.json"
    [[ -f "$f" ]] && jq -r '.median.point_estimate' "$f" || echo nan
}
r() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "nan" || a == "nan") print "n/a"; else printf "%.2f", a / b }'; }
f() { awk -v a="$1" 'BEGIN { if (a == "nan") print "n/a"; else printf "%.1f", a }'; }

echo "load average at report time: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '| %-58s | %12s | %-22s |\n' "what" "median" "budget"
printf '|%s|%s|%s|\n' "------------------------------------------------------------" "-------------:" "------------------------"
row() { printf '| %-58s | %12s | %-22s |\n' "$1" "$2" "$3"; }
hmac=$(m floor/hmac_sha256_prekeyed_43B)
row "HMAC-SHA256 floor, pre-keyed, 43 B (ns)" "$(f "$hmac")" "reference (~141)"
row "SHA-256 of 32 B (ns)" "$(f "$(m floor/sha256_32B)")" "reference (~78)"
row "subtle slice ct_eq 32 B (ns)" "$(f "$(m floor/subtle_slice_ct_eq_32B)")" "reference (~42)"
row "KeyDigest ct_eq (four words) (ns)" "$(f "$(m floor/keydigest_ct_eq)")" "reference (~4)"
for n in 1k 1m; do
    ns=$(m naive/string_id/$n); nu=$(m naive/u64_id/$n); v=$(m verify_$n/valid)
    row "naive verify, String ids, $n (ns)" "$(f "$ns")" "reference"
    row "naive verify, u64 ids, $n (ns)" "$(f "$nu")" "reference"
    row "apikey valid verify, $n (ns)" "$(f "$v")" ""
    if [[ $n == 1k ]]; then
        row "  valid / naive String, 1k" "$(r "$v" "$ns")" "<= 1.0"
    else
        row "  valid / naive u64, 1m" "$(r "$v" "$nu")" "<= 1.0 (median of 3 runs)"
    fi
    w=$(m verify_$n/wrong_secret)
    row "wrong secret, $n (ns)" "$(f "$w")" ""
    row "  wrong secret / valid, $n" "$(r "$w" "$v")" "0.90..1.10"
    row "unknown id, $n (ns)" "$(f "$(m verify_$n/unknown_id)")" "~ wrong secret"
    row "garbage, $n (ns)" "$(f "$(m verify_$n/garbage)")" "< 30"
    row "wrong length, $n (ns)" "$(f "$(m verify_$n/wrong_length)")" "< 30"
    row "wrong charset, $n (ns)" "$(f "$(m verify_$n/wrong_charset)")" "< 30"
    row "bad checksum, $n (ns)" "$(f "$(m verify_$n/bad_checksum)")" "< 30"
    row "forged (good checksum, bad tag), $n (ns)" "$(f "$(m verify_$n/forged)")" "< 60"
done
# threads: iter_custom time per iteration; each iteration is n verifications.
v1=$(m threads/verify/1); v2=$(m threads/verify/2)
g1=$(m threads/register_loop/1); g2=$(m threads/register_loop/2)
row "2-thread verify scaling (throughput 2T / 1T)" "$(awk -v a="$v1" -v b="$v2" 'BEGIN{printf "%.2f", 2*a/b}')" ">= 1.8"
o1=$(m threads/verify_store_per_thread/1); o2=$(m threads/verify_store_per_thread/2)
row "2-thread verify scaling, one store per thread (control)" "$(awk -v a="$o1" -v b="$o2" 'BEGIN{printf "%.2f", 2*a/b}')" "reference"
row "2-thread register-only loop scaling, same run" "$(awk -v a="$g1" -v b="$g2" 'BEGIN{printf "%.2f", 2*a/b}')" "machine reference"
gen=$(m generate/issue_os_rng)
row "generation, OS randomness (keys/s)" "$(awk -v a="$gen" 'BEGIN{printf "%.0f", 1e9/a}')" ">= 500000"
row "generation, ChaCha20 (keys/s)" "$(awk -v a="$(m generate/issue_chacha20)" 'BEGIN{printf "%.0f", 1e9/a}')" ""
s=$(m async/sync_core); a=$(m async/authenticator_noop_poll); t=$(m async/authenticator_tokio_block_on)
row "sync core, fixed clock (ns)" "$(f "$s")" ""
row "async authenticator, no-op poll (ns)" "$(f "$a")" ""
row "  async / sync" "$(r "$a" "$s")" "<= 1.10"
row "sync core inside a no-await future (harness control) (ns)" "$(f "$(m async/sync_core_in_future)")" ""
row "async authenticator, tokio block_on (ns)" "$(f "$t")" "includes block_on"
for s in exact wildcard all_of_2 any_of_miss_then_hit denied parse_scope; do
    row "scopes/$s (ns)" "$(f "$(m scopes/$s)")" ""
done
