#!/usr/bin/env python3
"""Turns a bench/run.sh run into its Markdown table and SVG chart (stdlib only).

    report.py --raw RUN.jsonl --meta META.txt --md OUT.md --svg OUT.svg

RUN.jsonl holds one JSON object per measurement (record.py); META.txt is key=value lines
(machine, versions, parameters). Every figure is the median over rounds with the spread
(min-max); every ratio is Sluice's median over the peer's median, with the spread of the
per-round ratios (rounds alternate between proxies, so round r of each is a fair pair).
"""
import argparse
import html
import json
import math
import os
import statistics

# sluice_base: a second Sluice binary measured alongside (SLUICE_BASELINE_BIN), for an A/B.
PROXIES = ["sluice", "sluice_base", "haproxy", "haproxy_tcp", "nginx"]
NAMES = {"sluice": "Sluice", "sluice_base": "Sluice baseline", "haproxy": "HAProxy", "haproxy_tcp": "HAProxy mode tcp",
         "nginx": "nginx", "direct": "direct loopback"}
PEERS = ["sluice_base", "haproxy", "haproxy_tcp", "nginx"]

HTTP_SCENARIOS = [
    ("ka1k", "keep-alive, 1 KiB responses, 64 connections; HAProxy mode tcp is the floor: a plain relay of "
             "the same bytes with no HTTP work"),
    ("browse", "browser-shaped keep-alive traffic, 256 connections: request heads of {browse_request_heads} "
               "(a browser's, with a cookie), 20 resources of 4–30 KiB (mean 14.5 KiB) answered with "
               "{browse_response_headers} headers (`tools/browse.lua`)"),
    ("ka10k", "{ka10k_conns} keep-alive clients all making requests, 1 KiB responses (`wrk -c{ka10k_conns}`); "
              "measured once every client is connected (set-ups left out), requests counted at the upstream, "
              "latencies over wrk's whole run"),
    ("ka64k", "keep-alive, 64 KiB responses, 64 connections"),
    ("close1k", "one request per connection (`Connection: close`), 1 KiB, 64 connections"),
    ("post1m", "1 MiB request bodies (POST), 16 connections"),
    ("paced1k", "keep-alive 1 KiB at a fixed offered load (64 connections, {delay} ms pause between requests)"),
    ("tls_ka1k", "TLS keep-alive, 1 KiB responses, 64 connections (`h2load --h1`; Sluice intercepts with a forged "
                 "certificate, HAProxy terminates with a static one; both forward over TLS to the origin; no nginx peer)"),
    ("h2tls", "HTTP/2 over TLS (ALPN h2), 10 connections × 100 concurrent streams, 1 KiB responses (`h2load -c10 -m100`); "
              "Sluice intercepts, HAProxy and nginx terminate with a static certificate; all forward over TLS to the "
              "HTTP/1.1 origin"),
    ("h2h2", "the same towards the origin's HTTP/2 listener: h2 on both legs (Sluice and HAProxy; nginx cannot "
             "proxy to an HTTP/2 origin)"),
]

# (key, label, unit scale, format, which way is better)
HTTP_FIGURES = [
    ("cpu_us_per_req", "CPU µs/req", 1.0, "{:.1f}", "lower"),
    ("rps", "req/s", 1.0, "{:.0f}", "higher"),
    ("p50_us", "p50 ms", 1e-3, "{:.2f}", "lower"),
    ("p99_us", "p99 ms", 1e-3, "{:.2f}", "lower"),
]


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    return recs


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            k, sep, v = line.rstrip("\n").partition("=")
            if sep:
                meta[k] = v
    return meta


def good(recs, scenario, proxy):
    return [
        r for r in recs
        if r.get("scenario") == scenario and r.get("proxy") == proxy and "error" not in r and r.get("kind") != "stop"
    ]


def values(recs, scenario, proxy, key):
    return [r[key] for r in good(recs, scenario, proxy) if r.get(key) is not None]


def by_round(recs, scenario, proxy, key):
    return {r["round"]: r[key] for r in good(recs, scenario, proxy) if r.get(key) is not None}


def fmt(fmtstr, v, scale=1.0):
    return fmtstr.format(v * scale)


def cell(vals, fmtstr, scale=1.0):
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt(fmtstr, med, scale)
    return "%s (%s–%s)" % (fmt(fmtstr, med, scale), fmt(fmtstr, min(vals), scale), fmt(fmtstr, max(vals), scale))


def busy_cell(recs, scenario, proxy):
    a = values(recs, scenario, proxy, "load_core_busy_pct")
    b = values(recs, scenario, proxy, "proxy_core_busy_pct")
    if not a or not b:
        return "—"
    return "%.0f / %.0f" % (statistics.median(a), statistics.median(b))


def churn_cell(recs, scenario, proxy):
    """Connections the proxy opened to the upstream per 1,000 requests it forwarded (the
    upstream's own counters over the measurement): 0 when its pool keeps them all. Not for
    post1m, whose upstream makes a subrequest of its own per request."""
    if scenario == "post1m":
        return "—"
    v = [1000.0 * r["upstream_conns"] / r["upstream_requests"]
         for r in good(recs, scenario, proxy) if r.get("upstream_requests")]
    return cell(v, "{:.1f}")


def ratio(recs, scenario, a, b, key):
    """(ratio of medians, [per-round ratios]) or None."""
    va, vb = values(recs, scenario, a, key), values(recs, scenario, b, key)
    if not va or not vb or statistics.median(vb) == 0:
        return None
    ra, rb = by_round(recs, scenario, a, key), by_round(recs, scenario, b, key)
    per = [ra[k] / rb[k] for k in sorted(ra) if k in rb and rb[k]]
    return statistics.median(va) / statistics.median(vb), per


def ratio_pair(recs, proxy, sc_a, sc_b, key="cpu_us_per_req"):
    """Like ratio(), but one proxy across two scenarios (round r of sc_a over round r of sc_b)."""
    va, vb = values(recs, sc_a, proxy, key), values(recs, sc_b, proxy, key)
    if not va or not vb or statistics.median(vb) == 0:
        return None
    ra, rb = by_round(recs, sc_a, proxy, key), by_round(recs, sc_b, proxy, key)
    per = [ra[k] / rb[k] for k in sorted(ra) if k in rb and rb[k]]
    return statistics.median(va) / statistics.median(vb), per


def ratio_cell(rt):
    if rt is None:
        return "—"
    med, per = rt
    if len(per) > 1:
        return "**%.2f** (%.2f–%.2f)" % (med, min(per), max(per))
    return "**%.2f**" % med


def describe(desc, meta):
    return desc.format(delay=meta.get("delay_ms", "?"), ka10k_conns=meta.get("ka10k_conns", "10000"),
                       browse_request_heads=meta.get("browse_request_heads", "about 700 bytes and 15 headers"),
                       browse_response_headers=meta.get("browse_response_headers", "about 12"))


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def build(recs, meta, svg_name):
    lines = []
    rounds = int(meta.get("rounds", "1"))
    scenarios_run = {r.get("scenario") for r in recs}
    lines.append("# Sluice benchmark: %s (%s)" % (meta.get("date", "?"), meta.get("mode", "?")))
    lines.append("")
    lines.append(
        "`%s` · %d round%s of %s s per proxy and scenario (after %s s of warm-up), rounds alternating "
        "between the proxies · figures are medians, with the spread (min–max) over rounds in brackets · "
        "wall time %s s."
        % (meta.get("command", "bench/run.sh"), rounds, "" if rounds == 1 else "s", meta.get("duration", "?"),
           meta.get("warmup", "?"), meta.get("elapsed", "?"))
    )
    lines.append("")
    lines.append(md_table(["", ""], [
        ["machine", "%s × %s, %s, %s" % (meta.get("nproc", "?"), meta.get("cpu_model", "?"), meta.get("memory", "?"), meta.get("kernel", "?"))],
        ["placement", "load generator (wrk, python clients) and upstream nginx on CPU %s; the proxy on CPU %s (taskset)%s"
         % (meta.get("load_cpu", "?"), meta.get("proxy_cpu", "?"),
            ", capped at %s%% of that core (cgroup CPU quota, 10 ms periods) in %s, so that the proxy is the bottleneck; uncapped elsewhere"
            % (meta["cpu_cap"], ", ".join("`%s`" % s for s in meta.get("capped_scenarios", "").split(",") if s) or "every scenario")
            if meta.get("cpu_cap") else "; no CPU cap")],
        ["load average", "%s at the start, %s at the end (1, 5, 15 min): anything well above 0 means other work shared the cores"
         % (meta.get("loadavg_start", "?"), meta.get("loadavg_end", "?"))],
        ["Sluice", meta.get("sluice", "?") + ", 1 worker, embedded defaults (no tuning)"],
        ["HAProxy", meta.get("haproxy", "?") + ", nbthread 1; `mode http`, and `mode tcp` for the relay floor (HAProxy mode tcp)"],
        ["nginx", meta.get("nginx", "?") + ", 1 worker (proxy and upstream)"],
        ["load", "%s, 1 thread; %s; %s (TLS keep-alive); %s" % (meta.get("wrk", "?"), meta.get("h2load", "?"), meta.get("python", "?"), meta.get("openssl", "?"))],
        ["CPU time", "user+sys of every thread of the proxy's processes, /proc/PID/task/*/stat, %s ticks/s" % meta.get("clk_tck", "?")],
    ]))
    lines.append("")

    # ---------------------------------------------------------------- HTTP scenarios
    http_rows, ratio_rows = [], []
    # Peers with a column in the ratio table: those measured in some HTTP scenario of this run.
    http_run = {sc for sc, _ in HTTP_SCENARIOS}
    peers_run = [p for p in PEERS if any(r.get("proxy") == p and r.get("scenario") in http_run for r in recs)]
    chart = []  # (label, better, {peer: (med, per)})
    for sc, desc in HTTP_SCENARIOS:
        if sc not in scenarios_run:
            continue
        for p in PROXIES:
            rs = [r for r in recs if r.get("scenario") == sc and r.get("proxy") == p]
            if not rs:
                continue
            errs = sum(r.get("errors", 0) for r in good(recs, sc, p))
            failed = sum(1 for r in rs if "error" in r and r.get("kind") != "stop")
            err_cell = str(errs) if errs else "0"
            if failed:
                err_cell += " · **%d run%s failed**" % (failed, "" if failed == 1 else "s")
            http_rows.append([
                "`%s`" % sc if p == "sluice" else "", NAMES[p],
                cell(values(recs, sc, p, "cpu_us_per_req"), "{:.1f}"),
                cell(values(recs, sc, p, "rps"), "{:.0f}"),
                cell(values(recs, sc, p, "cpu_pct"), "{:.0f}"),
                busy_cell(recs, sc, p),
                cell(values(recs, sc, p, "p50_us"), "{:.2f}", 1e-3),
                cell(values(recs, sc, p, "p99_us"), "{:.2f}", 1e-3),
                churn_cell(recs, sc, p),
                err_cell,
            ])
        for key, label, _, _, better in HTTP_FIGURES:
            rts = {peer: ratio(recs, sc, "sluice", peer, key) for peer in PEERS}
            ratio_rows.append(["`%s`" % sc if key == "cpu_us_per_req" else "", label, better]
                              + [ratio_cell(rts[peer]) for peer in peers_run])
            if key != "p50_us":
                chart.append(("%s %s" % (sc, label), better, rts))
    if http_rows:
        lines.append("## HTTP through the proxy (HTTP/1.1; HTTP/2 on the client leg in `h2tls`, `h2h2`)")
        lines.append("")
        for sc, desc in HTTP_SCENARIOS:
            if sc in scenarios_run:
                lines.append("- `%s`: %s" % (sc, describe(desc, meta)))
        lines.append("")
        lines.append(md_table(["scenario", "proxy", "CPU µs/req", "req/s", "proxy CPU %", "cores busy % load / proxy", "p50 ms", "p99 ms",
                               "upstream conns opened / 1k req", "errors"], http_rows))
        lines.append("")
        lines.append("Ratios Sluice / peer (below 1 is better for Sluice where lower is better, above 1 where higher is):")
        lines.append("")
        lines.append(md_table(["scenario", "figure", "better"] + ["Sluice / %s" % NAMES[p] for p in peers_run], ratio_rows))
        lines.append("")
    h2s = [(sc, r) for sc in ("h2tls", "h2h2") for r in recs
           if r.get("scenario") == sc and r.get("proxy") == "sluice" and "h2_origin_sessions" in r]
    if h2s:
        lines.append("Sluice's origin HTTP/2 sessions opened and clients refused (`sluice_h2_origin_sessions_total`, "
                     "`sluice_connections_rejected_total`, since its start, warm-up included; a session per origin "
                     "and worker, and one more at a time while all are at the origin's stream limit, so about "
                     "8 in `h2h2` (1,000 streams in flight, 128 per connection at nginx), 0 in `h2tls`): "
                     + "; ".join("`%s` round %s: %s sessions, %s refused" % (sc, r.get("round"), r["h2_origin_sessions"],
                                                                          r.get("clients_refused", "?")) for sc, r in h2s) + ".")
        lines.append("")
    if "ka10k" in scenarios_run and "ka1k" in scenarios_run:
        lines.append("From 64 to %s busy clients: each proxy's CPU µs/req in `ka10k` over its own in `ka1k` "
                     "(round r over round r; 1.00 = no cost of size: timers, pools, buffers and the event loop "
                     "scale with the clients):" % meta.get("ka10k_conns", "?"))
        lines.append("")
        srows = []
        for p in PROXIES:
            rt = ratio_pair(recs, p, "ka10k", "ka1k")
            if rt is not None:
                srows.append([NAMES[p], cell(values(recs, "ka1k", p, "cpu_us_per_req"), "{:.1f}"),
                              cell(values(recs, "ka10k", p, "cpu_us_per_req"), "{:.1f}"), ratio_cell(rt)])
        lines.append(md_table(["proxy", "ka1k CPU µs/req", "ka10k CPU µs/req", "ka10k / ka1k"], srows))
        lines.append("")

    # ---------------------------------------------------------------- tunnel
    if "tunnel" in scenarios_run:
        lines.append("## CONNECT tunnel bulk throughput")
        lines.append("")
        lines.append(
            "%.1f GiB streamed client → sink per run (sendfile in, recv_into out, both on CPU %s): Sluice relays a "
            "CONNECT tunnel, HAProxy a `mode tcp` listener to the sink, direct is the same client and sink "
            "with nothing between them."
            % (int(meta.get("tunnel_bytes", "0")) / (1 << 30), meta.get("load_cpu", "?"))
        )
        lines.append("")
        direct = values(recs, "tunnel", "direct", "gib_per_s")
        rows = []
        for p in ("sluice", "sluice_base", "haproxy", "direct"):
            rs = [r for r in recs if r.get("scenario") == "tunnel" and r.get("proxy") == p]
            if not rs:
                continue
            g = values(recs, "tunnel", p, "gib_per_s")
            vs_direct = "%.2f" % (statistics.median(g) / statistics.median(direct)) if g and direct else "—"
            failed = sum(1 for r in rs if "error" in r and r.get("kind") != "stop")
            rows.append([
                {"sluice": "Sluice (CONNECT)", "sluice_base": "Sluice baseline (CONNECT)", "haproxy": "HAProxy (mode tcp)",
                 "direct": "direct loopback"}[p],
                cell(g, "{:.2f}"),
                cell(values(recs, "tunnel", p, "cpu_s_per_gib"), "{:.3f}") if p != "direct" else "—",
                cell(values(recs, "tunnel", p, "cpu_pct"), "{:.0f}") if p != "direct" else "—",
                busy_cell(recs, "tunnel", p),
                vs_direct,
                ("**%d run%s failed**" % (failed, "" if failed == 1 else "s")) if failed else "",
            ])
        lines.append(md_table(["path", "GiB/s", "proxy CPU-s/GiB", "proxy CPU %", "cores busy % load / proxy", "throughput / direct", "problems"], rows))
        lines.append("")
        rt_g = ratio(recs, "tunnel", "sluice", "haproxy", "gib_per_s")
        rt_c = ratio(recs, "tunnel", "sluice", "haproxy", "cpu_s_per_gib")
        tunnel_rows = [["GiB/s", "higher", ratio_cell(rt_g)], ["CPU-s/GiB", "lower", ratio_cell(rt_c)]]
        tunnel_heads = ["figure", "better", "Sluice / HAProxy"]
        if values(recs, "tunnel", "sluice_base", "gib_per_s"):
            tunnel_heads.append("Sluice / Sluice baseline")
            for row, key in zip(tunnel_rows, ("gib_per_s", "cpu_s_per_gib")):
                row.append(ratio_cell(ratio(recs, "tunnel", "sluice", "sluice_base", key)))
        lines.append(md_table(tunnel_heads, tunnel_rows))
        lines.append("")
        chart.append(("tunnel GiB/s", "higher", {"haproxy": rt_g, "nginx": None}))
        chart.append(("tunnel CPU-s/GiB", "lower", {"haproxy": rt_c, "nginx": None}))

    # ---------------------------------------------------------------- idle memory
    if "idle" in scenarios_run:
        lines.append("## Memory per idle keep-alive client connection")
        lines.append("")
        lines.append(
            "RSS delta (VmRSS summed over the proxy's processes) over %s clients that each made one "
            "keep-alive request and then stayed connected and silent, divided by the clients."
            % meta.get("idle_count", "?")
        )
        lines.append("")
        rows = []
        for p in PROXIES:
            rs = [r for r in recs if r.get("scenario") == "idle" and r.get("proxy") == p]
            if not rs:
                continue
            g = good(recs, "idle", p)
            failed = sum(1 for r in rs if "error" in r and r.get("kind") != "stop")
            b = values(recs, "idle", p, "bytes_per_conn")
            rss = "%s → %s" % (
                cell([r["rss_before_kib"] for r in g], "{:.0f}"), cell([r["rss_after_kib"] for r in g], "{:.0f}")
            ) if g else "—"
            okc = "/".join(str(sum(r.get(k, 0) for r in g)) for k in ("ok", "failed", "closed")) if g else "—"
            if failed:
                okc += " · **%d run%s failed**" % (failed, "" if failed == 1 else "s")
            rows.append([NAMES[p], cell(b, "{:.0f}"), cell(b, "{:.2f}", 1 / 1024), rss, okc])
        lines.append(md_table(["proxy", "bytes/conn", "KiB/conn", "RSS KiB before → after", "clients ok/failed/closed (all rounds)"], rows))
        lines.append("")
        rts = {peer: ratio(recs, "idle", "sluice", peer, "bytes_per_conn") for peer in ("haproxy", "nginx")}
        idle_heads = ["figure", "better", "Sluice / HAProxy", "Sluice / nginx"]
        idle_row = ["bytes/conn", "lower", ratio_cell(rts["haproxy"]), ratio_cell(rts["nginx"])]
        if values(recs, "idle", "sluice_base", "bytes_per_conn"):
            idle_heads.append("Sluice / Sluice baseline")
            idle_row.append(ratio_cell(ratio(recs, "idle", "sluice", "sluice_base", "bytes_per_conn")))
        lines.append(md_table(idle_heads, [idle_row]))
        lines.append("")
        chart.append(("idle bytes/conn", "lower", rts))

    # ---------------------------------------------------------------- HTTP/2 bulk download
    if "h2bulk" in scenarios_run:
        lines.append("## One HTTP/2 download over one stream")
        lines.append("")
        lines.append(
            "%.2f GiB in one h2 stream over TLS (`h2load -n1 -c1 -m1`, its windows 2^30−1, on CPU %s): through the "
            "proxy from the HTTP/1.1 TLS origin (Sluice intercepting, HAProxy terminating), or direct: the same client "
            "straight to the origin's h2 listener. GiB/s is the body bytes over h2load's time; uncapped."
            % (int(meta.get("h2bulk_bytes", "0")) / (1 << 30), meta.get("load_cpu", "?"))
        )
        lines.append("")
        direct = values(recs, "h2bulk", "direct", "gib_per_s")
        rows = []
        for p in ("sluice", "sluice_base", "haproxy", "direct"):
            rs = [r for r in recs if r.get("scenario") == "h2bulk" and r.get("proxy") == p]
            if not rs:
                continue
            g = values(recs, "h2bulk", p, "gib_per_s")
            vs_direct = "%.2f" % (statistics.median(g) / statistics.median(direct)) if g and direct else "—"
            failed = sum(1 for r in rs if "error" in r and r.get("kind") != "stop")
            rows.append([
                NAMES[p], cell(g, "{:.2f}"),
                cell(values(recs, "h2bulk", p, "cpu_s_per_gib"), "{:.3f}") if p != "direct" else "—",
                cell(values(recs, "h2bulk", p, "cpu_pct"), "{:.0f}") if p != "direct" else "—",
                busy_cell(recs, "h2bulk", p), vs_direct,
                ("**%d run%s failed**" % (failed, "" if failed == 1 else "s")) if failed else "",
            ])
        lines.append(md_table(["path", "GiB/s", "proxy CPU-s/GiB", "proxy CPU %", "cores busy % load / proxy", "throughput / direct", "problems"], rows))
        lines.append("")
        rt_g = ratio(recs, "h2bulk", "sluice", "haproxy", "gib_per_s")
        rt_c = ratio(recs, "h2bulk", "sluice", "haproxy", "cpu_s_per_gib")
        lines.append(md_table(["figure", "better", "Sluice / HAProxy"],
                              [["GiB/s", "higher", ratio_cell(rt_g)], ["CPU-s/GiB", "lower", ratio_cell(rt_c)]]))
        lines.append("")
        chart.append(("h2bulk GiB/s", "higher", {"haproxy": rt_g, "nginx": None}))
        chart.append(("h2bulk CPU-s/GiB", "lower", {"haproxy": rt_c, "nginx": None}))

    # ---------------------------------------------------------------- HTTP/2 idle memory
    if "h2idle" in scenarios_run:
        lines.append("## Memory per idle HTTP/2 client connection")
        lines.append("")
        lines.append(
            "RSS delta (VmRSS of the proxy's processes) over %s TLS connections with ALPN h2 that sent the preface "
            "and SETTINGS, exchanged the SETTINGS acknowledgements and then stayed silent (no stream), divided by "
            "the connections (`tools/h2idle.py`). TLS state included: Sluice holds a forged-certificate session, "
            "HAProxy an OpenSSL one." % meta.get("h2idle_count", "?")
        )
        lines.append("")
        rows = []
        for p in PROXIES:
            rs = [r for r in recs if r.get("scenario") == "h2idle" and r.get("proxy") == p]
            if not rs:
                continue
            g = good(recs, "h2idle", p)
            failed = sum(1 for r in rs if "error" in r and r.get("kind") != "stop")
            b = values(recs, "h2idle", p, "bytes_per_conn")
            rss = "%s → %s" % (
                cell([r["rss_before_kib"] for r in g], "{:.0f}"), cell([r["rss_after_kib"] for r in g], "{:.0f}")
            ) if g else "—"
            okc = "/".join(str(sum(r.get(k, 0) for r in g)) for k in ("ok", "failed", "closed")) if g else "—"
            if failed:
                okc += " · **%d run%s failed**" % (failed, "" if failed == 1 else "s")
            rows.append([NAMES[p], cell(b, "{:.0f}"), cell(b, "{:.2f}", 1 / 1024), rss, okc])
        lines.append(md_table(["proxy", "bytes/conn", "KiB/conn", "RSS KiB before → after", "clients ok/failed/closed (all rounds)"], rows))
        lines.append("")
        rt = ratio(recs, "h2idle", "sluice", "haproxy", "bytes_per_conn")
        lines.append(md_table(["figure", "better", "Sluice / HAProxy"], [["bytes/conn", "lower", ratio_cell(rt)]]))
        lines.append("")
        chart.append(("h2idle bytes/conn", "lower", {"haproxy": rt, "nginx": None}))

    # ---------------------------------------------------------------- TLS handshakes
    hs = [sc for sc in ("tls_hs_hit", "tls_hs_miss") if sc in scenarios_run]
    if hs:
        lines.append("## Full TLS handshakes, one request per connection")
        lines.append("")
        lines.append(
            "`tools/tlshs.py` on CPU %s (16 threads): connect, full TLS handshake (no resumption), `GET /1k` with "
            "`Connection: close`, read to EOF. **hit**: SNI origin.test every time (Sluice serves its cached forged "
            "certificate); **miss**: a new SNI per connection, `n<N>.bench.test` (Sluice mints one per connection). "
            "HAProxy serves its static certificate in both. CPU µs/conn is the proxy's CPU over the connections "
            "completed; certs minted / cache hits are the deltas of Sluice's admin counters over the measurement. "
            "The Python client is the bottleneck (load core ~100 %%), so conn/s is not the proxy's capacity."
            % meta.get("load_cpu", "?")
        )
        lines.append("")
        rows = []
        for sc in hs:
            for p in ("sluice", "haproxy"):
                rs = [r for r in recs if r.get("scenario") == sc and r.get("proxy") == p]
                if not rs:
                    continue
                g = good(recs, sc, p)
                failed = sum(1 for r in rs if "error" in r and r.get("kind") != "stop")
                errs = str(sum(r.get("errors", 0) for r in g))
                if failed:
                    errs += " · **%d run%s failed**" % (failed, "" if failed == 1 else "s")
                certs = "%s / %s" % (sum(r.get("certs_minted", 0) for r in g), sum(r.get("cert_cache_hits", 0) for r in g)) if p == "sluice" and g else "—"
                rows.append([sc[len("tls_hs_"):] if p == "sluice" else "", NAMES[p],
                             cell(values(recs, sc, p, "cpu_us_per_req"), "{:.0f}"),
                             cell(values(recs, sc, p, "rps"), "{:.0f}"),
                             cell(values(recs, sc, p, "cpu_pct"), "{:.0f}"),
                             busy_cell(recs, sc, p),
                             cell(values(recs, sc, p, "p50_us"), "{:.1f}", 1e-3),
                             cell(values(recs, sc, p, "p99_us"), "{:.1f}", 1e-3),
                             certs, errs])
        lines.append(md_table(["SNI", "proxy", "CPU µs/conn", "conn/s", "proxy CPU %", "cores busy % load / proxy",
                               "p50 ms", "p99 ms", "certs minted / cache hits (all rounds)", "errors"], rows))
        lines.append("")
        rrows = []
        for sc in hs:
            rt = ratio(recs, sc, "sluice", "haproxy", "cpu_us_per_req")
            rrows.append(["CPU µs/conn, %s: Sluice / HAProxy" % sc[len("tls_hs_"):], "lower", ratio_cell(rt)])
            chart.append(("TLS handshake %s CPU/conn" % sc[len("tls_hs_"):], "lower", {"haproxy": rt, "nginx": None}))
        if len(hs) == 2:
            rrows.append(["CPU µs/conn, Sluice miss / hit", "lower", ratio_cell(ratio_pair(recs, "sluice", "tls_hs_miss", "tls_hs_hit"))])
        lines.append(md_table(["figure", "better", "ratio"], rrows))
        lines.append("")

    # ---------------------------------------------------------------- targets
    targets = []

    def target(name, rt, limit, cmp, issue):
        if rt is None:
            return
        med = rt[0]
        ok = med <= limit if cmp == "<=" else (med < limit if cmp == "<" else med >= limit)
        targets.append([name, "%s %s" % (cmp, limit), "%.2f" % med, "yes" if ok else "**no**", str(issue)])

    target("CPU/req keep-alive 1 KiB (ka1k), Sluice / HAProxy", ratio(recs, "ka1k", "sluice", "haproxy", "cpu_us_per_req"), 0.65, "<=", 11)
    target("CPU/req keep-alive 1 KiB (ka1k), Sluice / HAProxy mode tcp (the relay floor)",
           ratio(recs, "ka1k", "sluice", "haproxy_tcp", "cpu_us_per_req"), 0.95, "<=", 11)
    target("CPU/req keep-alive 1 KiB (ka1k), Sluice / nginx", ratio(recs, "ka1k", "sluice", "nginx", "cpu_us_per_req"), 1.0, "<", 3)
    target("CPU/req browser-shaped (browse), Sluice / HAProxy", ratio(recs, "browse", "sluice", "haproxy", "cpu_us_per_req"), 0.6, "<=", 11)
    target("CPU/req with %s busy clients over 64 (ka10k / ka1k), Sluice" % meta.get("ka10k_conns", "?"),
           ratio_pair(recs, "sluice", "ka10k", "ka1k"), 1.15, "<=", 11)
    rt = ratio(recs, "ka10k", "sluice", "haproxy", "p99_us")
    if rt is not None:
        targets.append(["p99 with %s busy clients (ka10k), Sluice / HAProxy" % meta.get("ka10k_conns", "?"),
                        "reported", "%.2f" % rt[0], "—", "11"])
    target("p99 at the same offered load (paced1k), Sluice / HAProxy", ratio(recs, "paced1k", "sluice", "haproxy", "p99_us"), 1.0, "<=", 3)
    target("CPU/req one request per connection, Sluice / HAProxy", ratio(recs, "close1k", "sluice", "haproxy", "cpu_us_per_req"), 1.0, "<=", 3)
    sb = values(recs, "idle", "sluice", "bytes_per_conn")
    if sb:
        med = statistics.median(sb)
        targets.append(["memory per idle keep-alive client, Sluice", "<= 2048 bytes", "%.0f bytes" % med, "yes" if med <= 2048 else "**no**", "3"])
    target("tunnel CPU-s/GiB, Sluice / HAProxy", ratio(recs, "tunnel", "sluice", "haproxy", "cpu_s_per_gib"), 0.7, "<=", 3)
    target("TLS handshake CPU/conn, Sluice miss / Sluice hit", ratio_pair(recs, "sluice", "tls_hs_miss", "tls_hs_hit"), 1.5, "<=", 3)
    target("TLS handshake CPU/conn (hit), Sluice / HAProxy", ratio(recs, "tls_hs_hit", "sluice", "haproxy", "cpu_us_per_req"), 0.6, "<=", 3)
    target("TLS handshake CPU/conn (miss), Sluice / HAProxy", ratio(recs, "tls_hs_miss", "sluice", "haproxy", "cpu_us_per_req"), 0.6, "<=", 3)
    target("tunnel throughput, Sluice / HAProxy", ratio(recs, "tunnel", "sluice", "haproxy", "gib_per_s"), 1.2, ">=", 3)
    target("CPU/req HTTP/2 over TLS (h2tls), Sluice / HAProxy", ratio(recs, "h2tls", "sluice", "haproxy", "cpu_us_per_req"), 0.8, "<=", 14)
    target("CPU/req HTTP/2 on both legs (h2h2), Sluice / HAProxy", ratio(recs, "h2h2", "sluice", "haproxy", "cpu_us_per_req"), 0.8, "<=", 14)
    g, d = values(recs, "h2bulk", "sluice", "gib_per_s"), values(recs, "h2bulk", "direct", "gib_per_s")
    if g and d:
        target("one h2 stream download (h2bulk), Sluice / direct", (statistics.median(g) / statistics.median(d), []), 0.7, ">=", 14)
    for sc, name in (("h2bulk", "one h2 stream download (h2bulk) GiB/s"), ):
        rt = ratio(recs, sc, "sluice", "haproxy", "gib_per_s")
        if rt is not None:
            targets.append(["%s, Sluice / HAProxy" % name, "reported", "%.2f" % rt[0], "—", "14"])
    rt = ratio(recs, "h2idle", "sluice", "haproxy", "bytes_per_conn")
    if rt is not None:
        targets.append(["memory per idle HTTP/2 client (h2idle), Sluice / HAProxy", "reported", "%.2f" % rt[0], "—", "14"])
    if targets:
        lines.append("## Targets of issues 3, 11 and 14, on this run")
        lines.append("")
        lines.append(md_table(["target", "goal", "measured", "met", "issue"], targets))
        lines.append("")

    # ---------------------------------------------------------------- problems
    problems = [r for r in recs if "error" in r or r.get("errors") or r.get("failed") or r.get("closed")]
    if problems:
        lines.append("## Problems")
        lines.append("")
        for r in problems:
            what = r.get("error")
            if not what:
                bits = []
                if r.get("errors"):
                    bits.append("%d wrk errors %s" % (r["errors"], json.dumps({k: v for k, v in (r.get("socket_errors") or {}).items() if v} | ({"non_2xx": r["non_2xx"]} if r.get("non_2xx") else {}))))
                if r.get("failed"):
                    bits.append("%d idle clients failed to complete their request" % r["failed"])
                if r.get("closed"):
                    bits.append("%d idle clients were closed by the proxy" % r["closed"])
                what = "; ".join(bits)
            lines.append("- `%s`, %s, round %s: %s" % (r.get("scenario"), NAMES.get(r.get("proxy"), r.get("proxy")), r.get("round"), what))
            if r.get("log_tail"):
                lines.append("")
                lines.append("  ```")
                lines.extend("  " + l for l in r["log_tail"])
                lines.append("  ```")
        lines.append("")

    if chart:
        lines.append("## Chart")
        lines.append("")
        lines.append("![Sluice / peer ratios](%s)" % svg_name)
        lines.append("")
    return "\n".join(lines), chart


def svg_chart(chart, title):
    """Horizontal bars of Sluice/peer ratios on a log2 axis, from the parity line."""
    lo, hi = 1 / 8, 8.0
    left, width, bar_h, gap, top = 250, 520, 11, 10, 70
    rows = [c for c in chart if any(c[2].get(p) for p in PEERS)]
    height = top + sum(sum(1 for p in PEERS if c[2].get(p)) * bar_h + gap for c in rows) + 50
    colors = {"sluice_base": "#999999", "haproxy": "#3b6fb6", "haproxy_tcp": "#8a5fb0", "nginx": "#3a9a5b"}

    def x(v):
        v = min(max(v, lo), hi)
        return left + (math.log2(v) - math.log2(lo)) / (math.log2(hi) - math.log2(lo)) * width

    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">'
        % (left + width + 120, height),
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="10" y="22" font-size="15" font-weight="bold">%s</text>' % html.escape(title),
        '<text x="10" y="42" fill="#444">Sluice / peer, log scale; bars start at parity (1.0). '
        "Marked ↓: lower is better for Sluice; ↑: higher is better. Whiskers: per-round spread.</text>",
    ]
    ticks = [0.125, 0.25, 0.5, 1, 2, 4, 8]
    axis_bottom = height - 40
    for t in ticks:
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="%s"/>'
                   % (x(t), top - 8, x(t), axis_bottom, "#000" if t == 1 else "#ddd", "1.5" if t == 1 else "1"))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#444">%s</text>'
                   % (x(t), axis_bottom + 15, ("%g" % t) if t >= 1 else "1/%d" % round(1 / t)))
    y = top
    for label, better, rts in rows:
        arrow = "↓" if better == "lower" else "↑"
        present = [p for p in PEERS if rts.get(p)]
        out.append('<text x="%d" y="%d" text-anchor="end">%s %s</text>'
                   % (left - 8, y + len(present) * bar_h / 2 + 4, html.escape(label), arrow))
        for i, peer in enumerate(present):
            rt = rts[peer]
            yy = y + i * bar_h
            v = rt[0]
            x0, x1 = sorted((x(1.0), x(v)))
            win = (v < 1) if better == "lower" else (v > 1)
            out.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" fill-opacity="%s"/>'
                       % (x0, yy, max(x1 - x0, 1), bar_h - 1, colors[peer], "1" if win else "0.45"))
            per = rt[1]
            if len(per) > 1:  # whisker: the spread of the per-round ratios
                ym = yy + (bar_h - 1) / 2
                out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#222" stroke-width="1"/>'
                           % (x(min(per)), ym, x(max(per)), ym))
                x0, x1 = min(x0, x(min(per))), max(x1, x(max(per)))
            spread = " (%.2f–%.2f)" % (min(per), max(per)) if len(per) > 1 else ""
            out.append('<text x="%d" y="%d" font-size="10" fill="%s">%.2f%s</text>'
                       % (left + width + 10, yy + bar_h - 2, colors[peer], v, spread))
        y += len(present) * bar_h + gap
    lx = left
    # The baseline (an A/B run) is in the legend only when it was measured.
    for peer in [p for p in PEERS if p != "sluice_base" or any(c[2].get(p) for c in chart)]:
        out.append('<rect x="%d" y="52" width="12" height="10" fill="%s"/>' % (lx, colors[peer]))
        out.append('<text x="%d" y="61">vs %s</text>' % (lx + 16, NAMES[peer]))
        lx += 80 + 7 * len(NAMES[peer])
    out.append('<text x="%d" y="61" fill="#444">(pale: worse than the peer)</text>' % lx)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--md", required=True)
    p.add_argument("--svg", required=True)
    args = p.parse_args()
    recs = load(args.raw)
    meta = read_meta(args.meta)
    text, chart = build(recs, meta, os.path.basename(args.svg))
    with open(args.md, "w") as f:
        f.write(text)
    with open(args.svg, "w") as f:
        f.write(svg_chart(chart, "Sluice benchmark %s (%s)" % (meta.get("date", "")[:10], meta.get("mode", ""))))


if __name__ == "__main__":
    main()
