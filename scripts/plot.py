#!/usr/bin/env python3
"""Draws how cost grows, as one SVG image, from the JSON lines of `scripts/loadtest.sh`.

usage: scripts/plot.py OUT.svg RESULTS.jsonl [MORE.jsonl ...]

Three panels, sizes on a log scale:
  1. group fan-out: deliveries per second and per server CPU-second by group size
     (rows labelled "group N flat out");
  2. group fan-out: p50 and p99 delivery latency by group size (log scale);
  3. server memory per idle connection, WebSocket and authenticated chat
     (rows labelled "idle ws N" and "idle chat N").
A later row for the same label replaces an earlier one, so a by-hand run (for example a group of
10,000, labelled the same way) can be added in a second file. Standard library only.
"""
import json
import math
import re
import sys

W, H = 360, 260          # one panel
PAD_L, PAD_R, PAD_T, PAD_B = 62, 14, 34, 44
COLOURS = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df"]


def load(paths):
    rows = {}
    for path in paths:
        for line in open(path):
            line = line.strip()
            if line:
                r = json.loads(line)
                if "label" in r:
                    rows[r["label"]] = r
    return rows


def series(rows, pattern, key, scale=1.0):
    points = []
    for label, r in rows.items():
        m = re.fullmatch(pattern, label)
        if m and isinstance(r.get(key), (int, float)) and r[key] == r[key]:
            points.append((int(m.group(1)), r[key] * scale))
    return sorted(points)


def nice_log_ticks(lo, hi):
    ticks = []
    e = math.floor(math.log10(lo))
    while 10 ** e <= hi * 1.0001:
        if 10 ** e >= lo / 1.0001:
            ticks.append(10 ** e)
        e += 1
    return ticks


def nice_linear_ticks(hi, count=5):
    if hi <= 0:
        return [0, 1]
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=mag * 10)
    ticks, v = [], 0.0
    while v <= hi * 1.0001:
        ticks.append(v)
        v += step
    if ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


def fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def panel(ox, title, xlabel, ylabel, lines, ylog=False):
    """lines: [(name, [(x, y), ...])]. Returns SVG elements."""
    out = []
    xs = [x for _, pts in lines for x, _ in pts]
    ys = [y for _, pts in lines for _, y in pts]
    if not xs:
        out.append(f'<text x="{ox + W / 2}" y="{H / 2}" text-anchor="middle">{title}: no data</text>')
        return out
    xlo, xhi = min(xs) / 1.5, max(xs) * 1.5
    if ylog:
        ylo, yhi = 10 ** math.floor(math.log10(min(ys))), 10 ** math.ceil(math.log10(max(ys)))
        yticks = nice_log_ticks(ylo, yhi)
    else:
        yticks = nice_linear_ticks(max(ys) * 1.05)
        ylo, yhi = 0.0, yticks[-1]
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(x):
        return ox + PAD_L + pw * (math.log10(x) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo))

    def py(y):
        if ylog:
            f = (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))
        else:
            f = (y - ylo) / (yhi - ylo)
        return PAD_T + ph * (1 - f)

    out.append(f'<text x="{ox + W / 2}" y="18" text-anchor="middle" font-weight="bold">{title}</text>')
    out.append(f'<rect x="{ox + PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    for t in yticks:
        y = py(t)
        out.append(f'<line x1="{ox + PAD_L}" y1="{y:.1f}" x2="{ox + PAD_L + pw}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ox + PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    for t in sorted(set(xs)):
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{PAD_T}" x2="{x:.1f}" y2="{PAD_T + ph}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{PAD_T + ph + 14}" text-anchor="middle">{fmt(t)}</text>')
    out.append(f'<text x="{ox + PAD_L + pw / 2}" y="{H - 8}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text transform="translate({ox + 14},{PAD_T + ph / 2}) rotate(-90)" '
               f'text-anchor="middle">{ylabel}</text>')
    for i, (name, pts) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(pts))
        out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
        ly = PAD_T + 14 + 14 * i
        out.append(f'<line x1="{ox + PAD_L + 8}" y1="{ly - 4}" x2="{ox + PAD_L + 24}" y2="{ly - 4}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{ox + PAD_L + 28}" y="{ly}">{name}</text>')
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rows = load(sys.argv[2:])
    group = r"group (\d+) flat out"
    parts = []
    parts += panel(0, "Group fan-out: throughput", "members", "deliveries",
                   [("per second", series(rows, group, "per_sec")),
                    ("per server CPU-second", series(rows, group, "per_server_cpu_s"))])
    parts += panel(W, "Group fan-out: delivery latency", "members", "milliseconds",
                   [("p50", series(rows, group, "p50_us", 1e-3)),
                    ("p99", series(rows, group, "p99_us", 1e-3))], ylog=True)
    parts += panel(2 * W, "Memory per idle connection", "connections", "KiB of server RSS",
                   [("WebSocket", series(rows, r"idle ws (\d+)", "rss_kib_per_conn")),
                    ("authenticated chat", series(rows, r"idle chat (\d+)", "rss_kib_per_conn"))])
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * W}" height="{H}" '
           f'font-family="sans-serif" font-size="11">\n'
           f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(parts) + "\n</svg>\n")
    with open(sys.argv[1], "w") as f:
        f.write(svg)


if __name__ == "__main__":
    main()
