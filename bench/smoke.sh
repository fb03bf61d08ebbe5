#!/usr/bin/env bash
# Smoke test of the benchmark harness: runs bench/run.sh in quick mode on one scenario
# with 2-second measurements into a scratch directory, and checks that the results file
# appeared with a row for each proxy and no failed measurement (a proxy that crashed or
# did not start, a client that failed). It judges no figure: never a timed assertion.
#
#   bench/smoke.sh [SCENARIO]        (default ka1k)
#
# SLUICE_BIN=PATH uses that binary and skips the cargo build (from a Cargo test, pass
# env!("CARGO_BIN_EXE_sluice"): a nested `cargo build` would wait on the build lock).
# Exit status: 0 ok, 1 the harness failed or produced no or incomplete results.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# run.sh starts the binary from its own directory: a relative SLUICE_BIN must be made absolute.
if [[ -n ${SLUICE_BIN:-} ]]; then SLUICE_BIN=$(realpath "$SLUICE_BIN"); export SLUICE_BIN; fi
SCENARIO=${1:-ka1k}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if ! "$HERE/run.sh" --quick --only "$SCENARIO" --duration 2 --out "$OUT"; then
    echo "bench smoke: FAILED: bench/run.sh exited with an error" >&2
    exit 1
fi

shopt -s nullglob
md=("$OUT"/*.md)
raw=("$OUT"/*.jsonl)
if ((${#md[@]} != 1 || ${#raw[@]} != 1)) || [[ ! -s ${md[0]} ]]; then
    echo "bench smoke: FAILED: no results file in $OUT" >&2
    exit 1
fi

python3 - "${raw[0]}" "$SCENARIO" <<'EOF'
import json, sys
raw, scenario = sys.argv[1], sys.argv[2]
recs = [json.loads(l) for l in open(raw) if l.strip()]
# The proxies run.sh measures in each scenario (proxies_for, TLS_PROXIES, H2_ORIGIN_PROXIES,
# the tunnel's and h2bulk's paths);
# ka10k has an nginx row only when the open-files limit leaves nginx room for it.
expected = {
    "ka1k": {"sluice", "haproxy", "haproxy_tcp", "nginx"},
    "browse": {"sluice", "haproxy", "haproxy_tcp", "nginx"},
    "ka10k": {"sluice", "haproxy"},
    "tunnel": {"sluice", "haproxy", "direct"},
    "tls_ka1k": {"sluice", "haproxy"},
    "h2h2": {"sluice", "haproxy"},
    "h2bulk": {"sluice", "haproxy", "direct"},
    "h2idle": {"sluice", "haproxy"},
}.get(scenario, {"sluice", "haproxy", "nginx"})
optional = {"ka10k": {"nginx"}}.get(scenario, set())
ok = {r["proxy"] for r in recs if r.get("scenario") == scenario and "error" not in r and r.get("kind") != "stop"}
if ok - expected <= optional:
    ok -= optional
failed = [r for r in recs if "error" in r]
for r in failed:
    print("bench smoke: %s %s: %s" % (r.get("scenario"), r.get("proxy"), r["error"]), file=sys.stderr)
    for line in r.get("log_tail", []):
        print("    " + line, file=sys.stderr)
if failed or ok != expected:
    print("bench smoke: FAILED: measured %s, expected %s" % (sorted(ok), sorted(expected)), file=sys.stderr)
    sys.exit(1)
EOF

echo "bench smoke: ok ($(basename "${md[0]}"): $SCENARIO measured for every proxy)"
