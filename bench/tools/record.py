#!/usr/bin/env python3
"""Appends one measurement to the run's JSON-lines file, for bench/run.sh.

    record.py --out RAW.jsonl --set scenario=ka1k --set proxy=sluice --set round=1 \\
              [--snap SNAP_BEFORE SNAP_AFTER | --cpu TICKS_BEFORE TICKS_AFTER] \\
              [--clk-tck 100] [--wrk WRK_OUTPUT_FILE] [--json JSON_FILE] \\
              [--h2load H2LOAD_OUTPUT_FILE [--h2load-log H2LOAD_LOG_FILE]] \\
              [--h2load-bulk BYTES] [--expect-alpn PROTOCOL] \\
              [--error MESSAGE] [--log PROXY_LOG]

--wrk parses wrk's output (run with --latency): requests, seconds, rps, p50_us, p99_us,
errors (socket errors + non-2xx/3xx responses). --h2load does the same for h2load's
output (errors: failed requests + 4xx/5xx), with p50_us and p99_us computed from its
--log-file (tab-separated: start, status, microseconds) given as --h2load-log; it also records
the protocol h2load negotiated (alpn), and --expect-alpn h2 makes any other one an error (a
proxy that answered in HTTP/1.1 measured the wrong thing). --h2load-bulk BYTES reads a
one-request download (h2bulk): bytes (h2load's data bytes, which must be BYTES) and gib_per_s
over h2load's time. --json merges a tool's JSON object
(tunnel.py, idle.py). --snap takes two `proc.py snap` lines taken around the run: the
proxy's CPU ticks, both cores' busy ticks and the wall clock; it adds wall_seconds,
load_core_busy_pct, proxy_core_busy_pct and implies --cpu. Two `proc.py snapreq` lines
(two more fields: the upstream's request and accepted-connection counters) add
upstream_requests and upstream_conns, the requests the upstream served and the connections
the proxy opened to it over the run (its pool churn). With --upstream-window they measure a
window inside a longer wrk run (ka10k): requests and rps are then the upstream's count over
the window (wrk's own count over its whole run is kept as wrk_requests), latencies and
errors still wrk's. --cpu adds cpu_s (proxy
user+sys over the run), cpu_pct (share of one core), and with --wrk cpu_us_per_req, with
a tunnel result cpu_s_per_gib. --error records a failed measurement (crash, refused start,
client error); --log keeps the proxy log's tail when the measurement failed or had errors.
Prints a one-line summary to stderr.
"""
import argparse
import json
import re
import sys

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def to_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError("unparsable duration %r" % text)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(text):
    out = {}
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+\w+),", text, re.M)
    if not m:
        raise ValueError("no 'N requests in T' line in wrk output")
    out["requests"] = int(m.group(1))
    out["seconds"] = to_us(m.group(2)) / 1e6
    m = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    out["rps"] = float(m.group(1)) if m else out["requests"] / out["seconds"]
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(r"^\s*%s(?:\.000)?%%\s+([0-9.]+\w+)" % pct, text, re.M)
        if m:
            out[key] = to_us(m.group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = {
            k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), m.groups())
        }
        errors += sum(out["socket_errors"].values())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non_2xx"] = int(m.group(1))
        errors += out["non_2xx"]
    out["errors"] = errors
    return out


def parse_h2load(text, log_path=None):
    out = {}
    m = re.search(r"^finished in ([0-9.]+\w+), ([0-9.]+) req/s", text, re.M)
    if not m:
        raise ValueError("no 'finished in' line in h2load output")
    out["seconds"] = to_us(m.group(1)) / 1e6
    m2 = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
    if not m2:
        raise ValueError("no 'requests:' line in h2load output")
    out["requests"] = int(m2.group(4))
    out["started"] = int(m2.group(2))
    out["rps"] = out["requests"] / out["seconds"] if out["seconds"] else float(m.group(2))
    errors = int(m2.group(5))
    m3 = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if m3:
        out["non_2xx"] = int(m3.group(3)) + int(m3.group(4))
        errors += out["non_2xx"]
    out["errors"] = errors
    m4 = re.search(r"^Application protocol: (\S+)", text, re.M)
    out["alpn"] = m4.group(1) if m4 else None
    # traffic: 1.00GB (1073742003) total, 143B (143) headers (space savings 0.00%), 1.00GB (1073741824) data
    m5 = re.search(r"^traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers .*?, .*?\((\d+)\) data", text, re.M)
    if m5:
        out["data_bytes"] = int(m5.group(3))
    if log_path:
        lat = []
        with open(log_path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
        if lat:
            lat.sort()
            out["p50_us"] = float(lat[len(lat) // 2])
            out["p99_us"] = float(lat[min(len(lat) - 1, int(len(lat) * 0.99))])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cpu", nargs=2, type=int, metavar=("BEFORE", "AFTER"))
    p.add_argument("--snap", nargs=2, metavar=("BEFORE", "AFTER"),
                   help='two `proc.py snap` outputs ("TICKS LOAD_BUSY PROXY_BUSY WALL"); implies --cpu')
    p.add_argument("--upstream-window", action="store_true",
                   help="requests and rps from the upstream's counters in the --snap lines, not from wrk")
    p.add_argument("--clk-tck", type=int, default=100)
    p.add_argument("--wrk")
    p.add_argument("--json")
    p.add_argument("--h2load")
    p.add_argument("--h2load-log")
    p.add_argument("--h2load-bulk", type=int, metavar="BYTES")
    p.add_argument("--expect-alpn")
    p.add_argument("--error")
    p.add_argument("--log", help="proxy log; its tail is kept when the measurement had errors")
    args = p.parse_args()

    rec = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        try:
            rec[k] = int(v)
        except ValueError:
            try:
                rec[k] = float(v)
            except ValueError:
                rec[k] = v
    try:
        if args.wrk:
            with open(args.wrk) as f:
                rec.update(parse_wrk(f.read()))
        if args.h2load:
            with open(args.h2load) as f:
                rec.update(parse_h2load(f.read(), args.h2load_log))
            if not rec.get("requests"):
                raise ValueError("h2load completed no request (%s started): the proxy refused its connections "
                                 "or answered none of their streams" % rec.get("started"))
            if args.expect_alpn and rec.get("alpn") != args.expect_alpn:
                raise ValueError("h2load negotiated %s, not %s" % (rec.get("alpn"), args.expect_alpn))
            if args.h2load_bulk:
                if rec.get("requests") != 1 or rec.get("data_bytes") != args.h2load_bulk:
                    raise ValueError("download incomplete: %s requests succeeded, %s of %d bytes"
                                     % (rec.get("requests"), rec.get("data_bytes"), args.h2load_bulk))
                rec["bytes"] = rec["data_bytes"]
                rec["gib_per_s"] = rec["bytes"] / (1 << 30) / rec["seconds"]
        if args.json:
            with open(args.json) as f:
                rec.update(json.loads(f.read().strip().splitlines()[-1]))
    except (ValueError, IndexError, OSError) as e:
        rec["error"] = "unreadable result: %s" % e
    if args.snap:
        b, a = [x.split() for x in args.snap]
        if b[0] != "-" and a[0] != "-":
            args.cpu = [int(b[0]), int(a[0])]
        wall = float(a[3]) - float(b[3])
        rec["wall_seconds"] = wall
        rec["load_core_busy_pct"] = 100.0 * (int(a[1]) - int(b[1])) / args.clk_tck / wall
        rec["proxy_core_busy_pct"] = 100.0 * (int(a[2]) - int(b[2])) / args.clk_tck / wall
        if len(a) > 5 and len(b) > 5:
            # The second counter read counts itself: one request and one connection more
            # than the proxy made.
            rec["upstream_requests"] = int(a[4]) - int(b[4]) - 1
            rec["upstream_conns"] = int(a[5]) - int(b[5]) - 1
            if args.upstream_window and "error" not in rec:
                rec["wrk_requests"] = rec.get("requests")
                rec["requests"] = rec["upstream_requests"]
                rec["seconds"] = wall
                rec["rps"] = rec["requests"] / wall if wall else 0.0
    if args.cpu:
        rec["cpu_s"] = (args.cpu[1] - args.cpu[0]) / args.clk_tck
        if rec.get("requests"):
            rec["cpu_us_per_req"] = rec["cpu_s"] * 1e6 / rec["requests"]
        span = rec.get("wall_seconds") or rec.get("seconds")
        if span:
            rec["cpu_pct"] = 100.0 * rec["cpu_s"] / span
        if rec.get("bytes"):
            rec["cpu_s_per_gib"] = rec["cpu_s"] / (rec["bytes"] / (1 << 30))
        if args.h2load_bulk:
            rec.pop("cpu_us_per_req", None)  # one request: CPU per GiB is the figure
    if args.error:
        rec["error"] = args.error
    if args.log and ("error" in rec or rec.get("errors") or rec.get("failed") or rec.get("closed")):
        try:
            with open(args.log, errors="replace") as f:
                rec["log_tail"] = f.read()[-3000:].splitlines()[-25:]
        except OSError:
            rec["log_tail"] = ["(no log)"]
    with open(args.out, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    print(summary(rec), file=sys.stderr)


def summary(rec):
    where = "[bench]   %s %s round %s:" % (rec.get("scenario"), rec.get("proxy"), rec.get("round"))
    if "error" in rec:
        return "%s ERROR %s" % (where, rec["error"])
    parts = []
    if "rps" in rec:
        parts.append("%.0f req/s" % rec["rps"])
    if "cpu_us_per_req" in rec:
        parts.append("%.1f us CPU/req (%.0f%% of a core)" % (rec["cpu_us_per_req"], rec.get("cpu_pct", 0)))
    if "load_core_busy_pct" in rec:
        parts.append("cores busy %.0f%%/%.0f%% (load/proxy)" % (rec["load_core_busy_pct"], rec["proxy_core_busy_pct"]))
    if "p99_us" in rec:
        parts.append("p50 %.2f ms p99 %.2f ms" % (rec.get("p50_us", 0) / 1e3, rec["p99_us"] / 1e3))
    if rec.get("upstream_requests"):
        parts.append("%.1f upstream conns opened per 1k req" % (1000.0 * rec["upstream_conns"] / rec["upstream_requests"]))
    if "gib_per_s" in rec:
        parts.append("%.2f GiB/s" % rec["gib_per_s"])
    if "cpu_s_per_gib" in rec:
        parts.append("%.3f CPU-s/GiB" % rec["cpu_s_per_gib"])
    if "bytes_per_conn" in rec and rec["bytes_per_conn"] is not None:
        parts.append("%.0f bytes/idle conn (%d ok, %d failed, %d closed)" % (rec["bytes_per_conn"], rec["ok"], rec["failed"], rec["closed"]))
    if "h2_origin_sessions" in rec:
        parts.append("%d origin h2 sessions opened, %d clients refused" % (rec["h2_origin_sessions"], rec.get("clients_refused", 0)))
    if "certs_minted" in rec:
        parts.append("%d certs minted, %d cache hits" % (rec["certs_minted"], rec.get("cert_cache_hits", 0)))
    if rec.get("errors"):
        parts.append("%d ERRORS" % rec["errors"])
    return where + " " + ", ".join(parts)


if __name__ == "__main__":
    main()
