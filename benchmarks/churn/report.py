"""The churn benchmark's Markdown tables and its plot.

Every figure is per delivered message of the measured window: the window's
counters summed over the hosts (or over the reader hosts only), divided by
the messages sent in it.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.churn.harness import Result
from benchmarks.churn.model import Counters

ORDER = ("ams", "maildir", "classic")
NAMES = {"ams": "AMS", "maildir": "Maildir (Dovecot)", "classic": "classic AMS (model)"}
READERS = {"ams": "imap", "maildir": "imap", "classic": "reader"}


@dataclass(frozen=True)
class Metric:
    label: str
    value: Callable[[Counters], float]
    readers_only: bool = False
    unit: str = ""


METRICS = (
    Metric("callback breaks, all hosts", lambda c: c.breaks),
    Metric("  of which on directories", lambda c: c.dir_breaks),
    Metric("callback breaks at the reader hosts", lambda c: c.breaks, readers_only=True),
    Metric("directory bytes refetched, all hosts", lambda c: c.dir_refetch_bytes, unit="B"),
    Metric("directory bytes refetched by the readers", lambda c: c.dir_refetch_bytes,
           readers_only=True, unit="B"),
    Metric("directory entries changed in mailbox directories", lambda c: c.mailbox_entries),
    Metric("directory entries changed, all directories", lambda c: c.entries),
    Metric("file bytes fetched by the readers", lambda c: c.file_fetch_bytes, readers_only=True,
           unit="B"),
    Metric("FUSE requests served (the cost of metering)", lambda c: c.requests),
)


def per_message(res: Result, metric: Metric) -> float:
    c = res.total(READERS[res.spec.scenario]) if metric.readers_only else res.total()
    return metric.value(c) / max(1, res.spec.messages)


def num(x: float | None, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x == 0:
        s = "0"
    elif abs(x) >= 100:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:,.1f}"
    elif abs(x) >= 0.01:
        s = f"{x:,.2f}"
    else:
        s = f"{x:.4f}"
    return f"{s} {unit}".rstrip()


def ratio(peer: float, ours: float) -> str:
    if ours == 0:
        return "∞ (AMS: 0)" if peer > 0 else "—"
    return f"{peer / ours:,.0f}×" if peer / ours >= 10 else f"{peer / ours:,.1f}×"


def main_table(runs: dict[str, Result]) -> list[str]:
    cols = [s for s in ORDER if s in runs]
    out = ["| per delivered message | " + " | ".join(NAMES[s] for s in cols) + " |",
           "|---|" + "---:|" * len(cols)]
    for m in METRICS:
        cells = []
        for s in cols:
            r = runs[s]
            cells.append("failed" if r.error else num(per_message(r, m), m.unit))
        out.append(f"| {m.label} | " + " | ".join(cells) + " |")
    cells = []
    for s in cols:
        r = runs[s]
        cells.append("—" if r.error or not r.seconds else
                     f"{r.spec.messages / r.seconds:,.1f} msg/s")
    out.append("| delivered and seen by every reader | " + " | ".join(cells) + " |")
    return out


def targets(runs: dict[str, Result], growth: dict[int, dict[str, Result]]) -> list[str]:
    """The issue's three targets, each met or missed, from the runs."""
    out = []
    ams = runs.get("ams")
    md = runs.get("maildir")
    if ams and not ams.error:
        mb = ams.total().mailbox_entries
        out.append(f"- **0 mailbox-directory changes per delivery: "
                   f"{'met' if mb == 0 else 'MISSED'}** ({mb:,} entries changed in mailbox "
                   f"directories for {ams.spec.messages:,} messages"
                   + "".join(f"; {g[ 'ams'].total().mailbox_entries:,} with {p:,} messages "
                             f"per mailbox" for p, g in sorted(growth.items())
                             if "ams" in g and not g["ams"].error) + ").")
    if ams and md and not ams.error and not md.error:
        for m, where in ((METRICS[4], "at the reader hosts (BRIEF.md's target)"),
                         (METRICS[3], "at all hosts, writers and queues included")):
            a, d = per_message(ams, m), per_message(md, m)
            met = (a == 0 and d > 0) or (a > 0 and d / a >= 100)
            out.append(f"- **At least 100× fewer directory bytes refetched per message than "
                       f"Maildir, {where}: {'met' if met else 'MISSED'}** ({num(a, 'B')} "
                       f"against {num(d, 'B')}: {ratio(d, a)}).")
    rows = growth_rows(growth, "ams")
    if rows and len(growth) > 1:
        grew = []
        for m in (METRICS[0], METRICS[3], METRICS[5]):
            first, last = rows[m.label][0], rows[m.label][-1]
            if first is not None and last is not None and last > 1.25 * first + 0.01:
                grew.append(m.label)
        sizes = sorted(growth)
        out.append(f"- **Cost per message flat as mailboxes grow: "
                   f"{'met' if not grew else 'MISSED'}** (AMS, {sizes[0]:,} → {sizes[-1]:,} "
                   f"messages per mailbox: "
                   + (f"grew: {', '.join(grew)}" if grew else
                      "callback breaks, directory bytes refetched and mailbox entries changed "
                      "per message grew by no more than 25%")
                   + "; see the growth table).")
    return out


def growth_rows(growth: dict[int, dict[str, Result]], scenario: str
                ) -> dict[str, list[float | None]]:
    rows: dict[str, list[float | None]] = {}
    for m in METRICS:
        vals: list[float | None] = []
        for p in sorted(growth):
            r = growth[p].get(scenario)
            vals.append(None if r is None or r.error else per_message(r, m))
        rows[m.label] = vals
    return rows if any(v is not None for vs in rows.values() for v in vs) else {}


def growth_table(growth: dict[int, dict[str, Result]]) -> list[str]:
    sizes = sorted(growth)
    if not sizes:
        return []
    out = ["| scenario | per delivered message | "
           + " | ".join(f"{p:,} per mailbox" for p in sizes)
           + (f" | {sizes[-1]:,} ÷ {sizes[0]:,} |" if len(sizes) > 1 else " |"),
           "|---|---|" + "---:|" * (len(sizes) + (len(sizes) > 1))]
    for s in ORDER:
        rows = growth_rows(growth, s)
        if not rows:
            continue
        for m in METRICS:
            if m.label.startswith("  ") or m.label.startswith("FUSE"):
                continue
            vals = rows[m.label]
            cells = [num(v, m.unit) for v in vals]
            if len(sizes) > 1:
                a, b = vals[0], vals[-1]
                cells.append("—" if a is None or b is None else
                             ("flat (0)" if a == 0 and b == 0 else
                              "∞" if a == 0 else f"{b / a:,.2f}×"))
            out.append(f"| {NAMES[s]} | {m.label} | " + " | ".join(cells) + " |")
    return out


def host_lines(res: Result) -> list[str]:
    """One line per host: what it suffered and changed in the window."""
    out = []
    for host in sorted(res.window):
        c = res.window[host]
        out.append(f"  - `{host}` ({res.roles.get(host, '?')}): breaks {c.dir_breaks:,} dir / "
                   f"{c.file_breaks:,} file; refetched {c.dir_refetches:,} directories, "
                   f"{c.dir_refetch_bytes:,} B; file bytes fetched {c.file_fetch_bytes:,} "
                   f"(refetched {c.file_refetch_bytes:,}); entries changed {c.entries:,} "
                   f"({c.mailbox_entries:,} in mailbox dirs); {c.requests:,} FUSE requests")
    base = sum(c.breaks + c.dir_refetch_bytes + c.entries for c in res.baseline.values())
    out.append(f"  - idle baseline ({res.spec.baseline:.0f} s, no mail): "
               + ("nothing" if base == 0 else
                  "; ".join(f"`{h}` breaks {c.breaks}, dir bytes {c.dir_refetch_bytes:,}, "
                            f"entries {c.entries}" for h, c in sorted(res.baseline.items())
                            if c.breaks or c.dir_refetch_bytes or c.entries)))
    if res.cpu:
        out.append("  - CPU seconds in the window: " + ", ".join(
            f"{k} {v:.1f}" for k, v in res.cpu.items()))
    return out


# -- the plot ----------------------------------------------------------------------------------


def ensure_matplotlib(install: bool) -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        pass
    if not install:
        return False
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
                       capture_output=True, text=True, timeout=600, check=False)
    if r.returncode != 0:
        return False
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def series(sizes: Sequence[int], growth: dict[int, dict[str, Result]], metric: Metric
           ) -> dict[str, list[float | None]]:
    return {s: [None if growth[p].get(s) is None or growth[p][s].error
                else per_message(growth[p][s], metric) for p in sizes] for s in ORDER}


def plot(growth: dict[int, dict[str, Result]], path: Path, *, install: bool) -> Path:
    """Directory bytes refetched and callback breaks per message against mailbox size.
    A PNG when matplotlib is available (installed into the venv if need be), else an
    SVG drawn here; returns the file written."""
    sizes = sorted(growth)
    panels = [METRICS[3], METRICS[0]]
    data = [series(sizes, growth, m) for m in panels]
    if ensure_matplotlib(install):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, m, d in zip(axes, panels, data, strict=True):
            for s in ORDER:
                pts = [(x, y) for x, y in zip(sizes, d[s], strict=True) if y is not None]
                if pts:
                    # a log axis cannot show 0: plot it at the axis floor, labelled
                    ys = [max(y, 0.01) for _, y in pts]
                    ax.plot([x for x, _ in pts], ys, marker="o", label=NAMES[s])
                    for (x, y), yy in zip(pts, ys, strict=True):
                        if y == 0:
                            ax.annotate("0", (x, yy), textcoords="offset points",
                                        xytext=(4, 4))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("messages per mailbox before the window")
            ax.set_title(m.label + " per message", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        out = path.with_suffix(".png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out
    out = path.with_suffix(".svg")
    out.write_text(svg(sizes, panels, data))
    return out


def svg(sizes: Sequence[int], panels: Sequence[Metric],
        data: Sequence[dict[str, list[float | None]]]) -> str:
    """The same two panels, hand-drawn: log-log axes, one polyline per scenario."""
    w, h, pad = 420, 300, 55
    colours = {"ams": "#1f77b4", "maildir": "#ff7f0e", "classic": "#2ca02c"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h + 40}" '
             'font-family="sans-serif" font-size="11">']
    xs = [math.log10(max(s, 1)) for s in sizes]
    x0, x1 = min(xs) - 0.2, max(xs) + 0.2
    for k, (m, d) in enumerate(zip(panels, data, strict=True)):
        vals = [v for s in ORDER for v in d[s] if v]
        lo = math.floor(math.log10(min(vals))) if vals else -2
        hi = math.ceil(math.log10(max(vals))) if vals else 2
        lo = min(lo, -2)
        hi = max(hi, lo + 1)
        ox = k * w

        def px(x: float, ox: int = ox) -> float:
            return ox + pad + (x - x0) / (x1 - x0) * (w - 2 * pad)

        def py(v: float, lo: int = lo, hi: int = hi) -> float:
            y = math.log10(max(v, 10.0 ** lo))
            return h - pad + 20 - (y - lo) / (hi - lo) * (h - 2 * pad)

        parts.append(f'<text x="{ox + w / 2}" y="16" text-anchor="middle">{m.label} per '
                     'message</text>')
        parts.append(f'<line x1="{ox + pad}" y1="{py(10.0 ** lo)}" x2="{ox + w - pad}" '
                     f'y2="{py(10.0 ** lo)}" stroke="black"/>')
        parts.append(f'<line x1="{ox + pad}" y1="{py(10.0 ** lo)}" x2="{ox + pad}" '
                     f'y2="{py(10.0 ** hi)}" stroke="black"/>')
        for e in range(lo, hi + 1):
            parts.append(f'<text x="{ox + pad - 4}" y="{py(10.0 ** e) + 4}" '
                         f'text-anchor="end">1e{e}</text>')
        for s, x in zip(sizes, xs, strict=True):
            parts.append(f'<text x="{px(x)}" y="{py(10.0 ** lo) + 14}" '
                         f'text-anchor="middle">{s:,}</text>')
        parts.append(f'<text x="{ox + w / 2}" y="{h + 30}" text-anchor="middle">messages per '
                     'mailbox before the window</text>')
        for n, s in enumerate(ORDER):
            pts = [(px(x), py(v)) for x, v in zip(xs, d[s], strict=True) if v is not None]
            if pts:
                parts.append(f'<polyline fill="none" stroke="{colours[s]}" stroke-width="2" '
                             f'points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}"/>')
                for a, b in pts:
                    parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" '
                                 f'fill="{colours[s]}"/>')
            if k == 0:
                parts.append(f'<text x="{ox + pad + 10}" y="{40 + 14 * n}" '
                             f'fill="{colours[s]}">{NAMES[s]}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
