#!/usr/bin/env python3
"""Turns bench/run's raw lines into docs/bench.md (tables, ratios, targets) and
docs/bench.png (gnuplot). Medians over rounds, spread as min-max; a ratio is
median/median of the row and its baseline from the same run, with the spread
of the per-round (paired) ratios in brackets."""
import argparse, os, shlex, statistics, subprocess, sys, tempfile, datetime, platform

ECHO_GROUP = ["bare", "echo", "serve", "python", "haproxy-lua"]
PROXY_GROUP = ["proxy", "proxy-copy", "haproxy-tcp", "socat", "nginx"]
NAMES = {
    "bare": "bare C (libev)", "echo": "echokit echo (callbacks)",
    "serve": "echokit serve-style echo", "python": "Python selectors",
    "haproxy-lua": "HAProxy 2.6 Lua service", "proxy": "echokit proxy",
    "proxy-copy": "echokit proxy, --no-splice", "haproxy-tcp": "HAProxy 2.6 TCP mode", "socat": "socat (fork)",
    "nginx": "nginx stream",
}
# test -> [(key, header, higher_is_better, decimals)]
METRICS = {
    "pingpong": [("rps", "req/s", True, 0), ("cpu_us_per_req", "server CPU µs/req", False, 2),
                 ("p50_us", "p50 µs", False, 0), ("p99_us", "p99 µs", False, 0)],
    "bulk": [("mbps", "MB/s", True, 0), ("cpu_us_per_mb", "server CPU µs/MB", False, 0)],
    "connrate": [("cps", "conns/s", True, 0), ("cpu_us_per_conn", "server CPU µs/conn", False, 1),
                 ("p99_us", "p99 µs", False, 0)],
    "idle": [("pss_per_conn", "PSS B/conn", False, 0), ("rss_per_conn", "RSS B/conn", False, 0),
             ("cpu_us_per_conn", "CPU µs/conn (setup)", False, 1)],
}
TITLES = {
    "pingpong": "Ping-pong: 64 B messages, 50 connections",
    "bulk": "Bulk: streaming both ways, 10 connections, 64 KiB writes",
    "connrate": "Connection rate: connect, one 64 B round trip, close; 16 at a time",
    "idle": "Idle connections: memory per held connection",
}
TARGETS = [
    ("pingpong", "cpu_us_per_req", "echo", "bare", "<=", 1.05, "ping-pong CPU µs/req: echo.lua vs bare C"),
    ("pingpong", "cpu_us_per_req", "echo", "haproxy-lua", "<=", 0.85, "ping-pong CPU µs/req: echo.lua vs HAProxy Lua"),
    ("pingpong", "cpu_us_per_req", "serve", "bare", "<=", 1.15, "ping-pong CPU µs/req: serve-style echo vs bare C"),
    ("bulk", "mbps", "echo", "bare", ">=", 0.95, "bulk MB/s: echo vs bare C"),
    ("bulk", "mbps", "proxy", "haproxy-tcp", ">=", 1.2, "bulk MB/s: proxy vs HAProxy TCP"),
    ("pingpong", "cpu_us_per_req", "proxy", "haproxy-tcp", "<=", 0.9, "ping-pong CPU µs/req: proxy vs HAProxy TCP"),
    ("connrate", "cpu_us_per_conn", "echo", "bare", "<=", 1.1, "conn rate CPU µs/conn: echo vs bare C"),
    ("idle", "pss_per_conn", "echo", None, "<=", 1024, "idle PSS per connection: echo (bytes)"),
]
INFO = [
    ("pingpong", "cpu_us_per_req", "haproxy-lua", "bare", "ping-pong CPU µs/req: HAProxy Lua vs bare C"),
    ("connrate", "cpu_us_per_conn", "serve", "bare", "conn rate CPU µs/conn: serve-style vs bare C"),
    ("connrate", "cpu_us_per_conn", "proxy", "haproxy-tcp", "conn rate CPU µs/conn: proxy vs HAProxy TCP"),
    ("idle", "pss_per_conn", "serve", None, "idle PSS per connection: serve-style (bytes)"),
    ("idle", "pss_per_conn", "proxy", None, "idle PSS per connection: proxy (bytes)"),
]


def parse(path):
    runs = []
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        d = {}
        for tok in shlex.split(line):
            k, _, v = tok.partition("=")
            d[k] = v
        runs.append(d)
    return runs


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def problems(d):
    p = []
    if "error" in d:
        p.append("error: " + d["error"])
    for k in ("errors", "mismatches", "stalled", "dead", "conn_fail", "closed_by_server"):
        if num(d.get(k)) not in (None, 0.0):
            p.append(f"{k}={d[k]}")
    if d.get("server_alive") == "0":
        p.append("server died")
    if (num(d.get("other_util")) or 0) > 0.25:
        p.append(f"disturbed: other processes on the host used {d['other_util']} CPU during the window")
    if (num(d.get("attempts")) or 1) > 1:
        p.append(f"measured {d['attempts']} times (earlier attempts disturbed by other load)")
    if num(d.get("server_log_lines")) not in (None, 0.0):
        p.append(f"{d['server_log_lines']} warning/error lines in server log")
    if d.get("mode") == "idle" and d.get("ok") != d.get("conns"):
        p.append(f"only {d.get('ok')}/{d.get('conns')} connections held")
    return p


def fmt(v, dec):
    if v is None:
        return "–"
    if dec == 0 and abs(v) >= 10000:
        return f"{v / 1000:.0f}k" if abs(v) >= 100000 else f"{v / 1000:.1f}k"
    return f"{v:.{dec}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png", required=True)
    ap.add_argument("--meta", default="")
    ap.add_argument("--readme", help="README.md whose <!-- bench:begin/end --> section "
                    "gets the targets table and the chart")
    a = ap.parse_args()
    runs = parse(a.results)
    meta = dict(kv.split("=", 1) for kv in a.meta.split())

    # vals[test][row][key] = {round: value}
    vals, notes = {}, []
    for d in runs:
        t, r, rnd = d.get("test"), d.get("row"), d.get("round")
        for k, *_ in METRICS.get(t, []):
            v = num(d.get(k))
            if v is not None:
                vals.setdefault(t, {}).setdefault(r, {}).setdefault(k, {})[rnd] = v
        p = problems(d)
        if p:
            notes.append(f"round {rnd}, {t}, {d.get('pair', r)}{' (paired)' if 'pair' in d else ''}: "
                         + "; ".join(p))

    # paired[(test, row, base, key)] = {"rounds": {round: median ratio}, "windows": [ratio, ...]}
    paired = {}
    for d in runs:
        if "pair" not in d:
            continue
        for k in [m[0] for m in METRICS.get(d.get("test"), [])]:
            q = num(d.get("ratio_" + k))
            if q is None:
                continue
            e = paired.setdefault((d["test"], d["row"], d["base"], k), {"rounds": {}, "windows": []})
            e["rounds"][d.get("round")] = q
            e["windows"] += [float(x) for x in d.get("ratios_" + k, "").split(",") if num(x)]

    def pair_figure(t, r, b, k):
        """(median of every window pair's ratio, text) or (None, "–")."""
        e = paired.get((t, r, b, k))
        if not e or not e["windows"]:
            return None, "–"
        w = sorted(e["windows"])
        q = statistics.median(w)
        rs = list(e["rounds"].values())
        txt = f"{q:.2f}×"
        parts = []
        if len(rs) > 1:
            parts.append(f"rounds {min(rs):.2f}–{max(rs):.2f}")
        if len(w) >= 4:
            q1, _, q3 = statistics.quantiles(w, n=4)
            parts.append(f"IQR {q1:.2f}–{q3:.2f}")
        parts.append(f"{len(w)} pairs")
        return q, txt + " (" + "; ".join(parts) + ")"

    def series(t, r, k):
        return vals.get(t, {}).get(r, {}).get(k, {})

    def med(t, r, k):
        s = series(t, r, k)
        return statistics.median(s.values()) if s else None

    def ratio(t, r, b, k):
        m, mb = med(t, r, k), med(t, b, k)
        if m is None or not mb:
            return None, None, None
        sr, sb = series(t, r, k), series(t, b, k)
        paired = [sr[x] / sb[x] for x in sr if x in sb and sb[x]]
        return m / mb, (min(paired) if paired else None), (max(paired) if paired else None)

    def fratio(rt):
        q, lo, hi = rt
        if q is None:
            return "–"
        s = f"{q:.2f}×"
        if lo is not None and hi is not None and (hi - lo) > 0.005:
            s += f" ({lo:.2f}–{hi:.2f})"
        return s

    out = ["# echokit benchmark", ""]
    out.append(f"Measured {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by `bench/run` on "
               f"{platform.node() or 'this machine'}: {os.cpu_count()} CPUs "
               f"({cpu_model()}), Linux {platform.release()}. "
               f"{meta.get('repeat', '?')} round(s); {meta.get('duration', '?')} s measurement windows after "
               f"{meta.get('warmup', '?')} s warm-up; {meta.get('idle', '?')} idle connections; "
               f"fresh network namespace per run: {'yes' if meta.get('netns') == '1' else 'no (unshare unavailable)'}.")
    out.append("")
    out.append("One worker everywhere. The server under test runs alone on CPU 0; the load generator "
               "(`bench/loadgen.c`) — and, for proxies, the bare-C echo behind them — on CPU 1. "
               "Server CPU is utime+stime of the server's process tree (socat's per-connection "
               "children included) from `/proc/PID/stat` over the measurement window only. "
               "Figures are medians with the min–max over rounds; ratios are median/median against "
               "the baseline measured in the same run, with the spread of the per-round ratios in "
               "brackets. Echo rows are compared with bare C and HAProxy's Lua echo; proxy rows with bare C "
               "and HAProxy in TCP mode. Every byte echoed is checked.")
    out.append("")
    if paired:
        out.append(f"Each target is also measured as a pair: both servers run at once on CPU 0 and "
                   f"the load generator alternates {meta.get('window', '?')} s windows between them "
                   f"(A B B A …, {meta.get('pairs', '?')} windows each per round, after a warm-up window "
                   f"each), starting the load at a window's start and waiting at its end until "
                   f"everything in flight is back. A window's server CPU comes from the scheduler's "
                   f"per-task clock (`/proc/PID/task/TID/schedstat`, ns). Each window is paired with "
                   f"the adjacent window of the other server; the figure is the median of all pairs' "
                   f"ratios, with the range of the per-round medians and the interquartile range of "
                   f"the pairs. The host's speed drifts by tens of percent over seconds, so these "
                   f"pairs, under a second apart, are what the targets are judged on; the separate "
                   f"runs (median/median of whole {meta.get('duration', '?')} s runs) are shown beside them.")
        out.append("")

    # targets first: judged on the paired windows where there are some, else
    # on the separate runs
    out += ["## Targets", "",
            "| target | paired windows | separate runs | goal | result |", "|---|---|---|---|---|"]
    for t, k, r, b, op, goal, label in TARGETS:
        if b:
            qp, shown_p = pair_figure(t, r, b, k)
            qs, lo, hi = ratio(t, r, b, k)
            shown_s = fratio((qs, lo, hi))
            q = qp if qp is not None else qs
            goal_s = f"{op.replace('<=', '≤').replace('>=', '≥')} {goal:.2f}×"
        else:
            shown_p = "–"
            q = med(t, r, k)
            s = series(t, r, k)
            shown_s = "–" if q is None else f"{q:.0f} B ({min(s.values()):.0f}–{max(s.values()):.0f})"
            goal_s = f"≤ {goal:.0f} B"
        if q is None:
            res = "not measured"
        else:
            ok = q <= goal if op == "<=" else q >= goal
            res = "**pass**" if ok else "**FAIL**"
        out.append(f"| {label} | {shown_p} | {shown_s} | {goal_s} | {res} |")
    for t, k, r, b, label in INFO:
        shown_p = "–"
        if b:
            shown_p = pair_figure(t, r, b, k)[1]
            shown = fratio(ratio(t, r, b, k))
        else:
            q = med(t, r, k)
            shown = "–" if q is None else f"{q:.0f} B"
        out.append(f"| {label} | {shown_p} | {shown} | (no target) | info |")
    out.append("")

    for t in ("pingpong", "bulk", "connrate", "idle"):
        if t not in vals:
            continue
        mets = METRICS[t]
        out += [f"## {TITLES[t]}", ""]
        hdr = ["server"]
        for k, h, *_ in mets:
            hdr += [h]
            if k in ("rps", "cpu_us_per_req", "mbps", "cpu_us_per_mb", "cps", "cpu_us_per_conn", "pss_per_conn"):
                hdr += ["× bare C", "× HAProxy"]
        out.append("| " + " | ".join(hdr) + " |")
        out.append("|" + "---|" * len(hdr))
        for r in ECHO_GROUP + PROXY_GROUP:
            if r not in vals[t]:
                continue
            hap = "haproxy-lua" if r in ECHO_GROUP else "haproxy-tcp"
            cells = [NAMES[r]]
            for k, h, hib, dec in mets:
                s = series(t, r, k)
                if s:
                    m = statistics.median(s.values())
                    c = fmt(m, dec)
                    if len(s) > 1:
                        c += f" ({fmt(min(s.values()), dec)}–{fmt(max(s.values()), dec)})"
                else:
                    c = "–"
                cells.append(c)
                if k in ("rps", "cpu_us_per_req", "mbps", "cpu_us_per_mb", "cps", "cpu_us_per_conn", "pss_per_conn"):
                    cells.append("1.00×" if r == "bare" else fratio(ratio(t, r, "bare", k)))
                    cells.append("1.00×" if r == hap else fratio(ratio(t, r, hap, k)))
            out.append("| " + " | ".join(cells) + " |")
        if t == "idle":
            cnt = sorted({(d.get("row"), d.get("conns")) for d in runs if d.get("test") == "idle"})
            fewer = [f"{NAMES.get(r, r)}: {c}" for r, c in cnt if c and c != meta.get("idle")]
            if fewer:
                out += ["", "Rows held fewer connections, as the open-files hard limit here could not be "
                        "raised and they take two descriptors per connection (a proxy's client and "
                        "upstream sockets; HAProxy reserves two even for its Lua service): "
                        + ", ".join(fewer) + "."]
        out.append("")

    out += ["## Problems seen", ""]
    out += [f"- {n}" for n in notes] if notes else ["None: no errors, mismatches, stalls or server log warnings."]
    out += ["", "![chart](bench.png)", ""]
    with open(a.md, "w") as f:
        f.write("\n".join(out))
    if a.readme:
        update_readme(a.readme, out, a.md, a.png)
    sys.stdout.write("\n".join(out) + "\n")
    chart(vals, a.png, series)


def update_readme(path, out, md, png):
    """Replaces the README's bench section (between its markers) with the
    run's first paragraph and targets table, linking the full report and
    the chart by paths relative to the README."""
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    with open(path) as f:
        text = f.read()
    if begin not in text or end not in text:
        sys.exit(f"report.py: {path} has no {begin} ... {end} section")
    where = os.path.dirname(os.path.abspath(path))
    rel_md = os.path.relpath(os.path.abspath(md), where)
    rel_png = os.path.relpath(os.path.abspath(png), where)
    i = out.index("## Targets")
    j = out.index("", i + 3)
    section = [begin, "", out[2], "", *out[i + 2:j], "",
               f"Every figure, per test and row: [{rel_md}]({rel_md}).", "",
               f"![benchmark chart]({rel_png})", "", end]
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, "w") as f:
        f.write(head + "\n".join(section) + tail)


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def chart(vals, png, series):
    panels = [("pingpong", "cpu_us_per_req", "ping-pong: server CPU µs per request (lower is better)"),
              ("bulk", "mbps", "bulk: MB/s echoed (higher is better)"),
              ("connrate", "cpu_us_per_conn", "connection rate: server CPU µs per connection (lower is better)"),
              ("idle", "pss_per_conn", "idle: PSS bytes per connection (lower is better)")]
    tmp = tempfile.mkdtemp(prefix="echokit-chart.")
    plots = []
    for i, (t, k, title) in enumerate(panels):
        rows = [r for r in ECHO_GROUP + PROXY_GROUP if series(t, r, k)]
        if not rows:
            continue
        fn = os.path.join(tmp, f"{i}.dat")
        with open(fn, "w") as f:
            for r in rows:
                s = list(series(t, r, k).values())
                color = "0x2b8cbe" if r in ("echo", "serve", "proxy", "proxy-copy") else "0x999999"
                f.write(f"\"{r}\" {statistics.median(s)} {min(s)} {max(s)} {color}\n")
        plots.append((fn, title))
    if not plots:
        return
    gp = [f"set terminal pngcairo size 1400,{430 * ((len(plots) + 1) // 2)} font 'sans,10'",
          f"set output '{png}'",
          f"set multiplot layout {(len(plots) + 1) // 2},2",
          "set style fill solid 0.8 border -1", "set boxwidth 0.6", "set grid ytics",
          "set xtics rotate by -30 noenhanced", "set yrange [0:*]", "unset key"]
    for fn, title in plots:
        gp += [f"set title \"{title}\" noenhanced",
               f"plot '{fn}' using 0:2:5:xtic(1) with boxes lc rgb variable, "
               f"'' using 0:2:3:4 with yerrorbars lc rgb 'black' pt 7 ps 0"]
    gp.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(gp), text=True, check=True)


if __name__ == "__main__":
    main()
