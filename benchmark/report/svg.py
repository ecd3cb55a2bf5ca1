"""A small SVG chart writer: axes with nice ticks, bars, lines, steps, dot clouds, vertical markers.

Output is plain inline SVG (no JavaScript, no fonts, no external references), styled by CSS classes the
report's stylesheet defines (`c0`..`c7` series colours, `bad` for failures, `mark` for percentile lines).
Coordinates are rounded to 0.1 px, and thousands of dots go into one `<path>` (a zero-length segment
with a round cap per point), so a chart of 3 000 points stays around 30 KB.
"""
from __future__ import annotations

import math
from html import escape

import numpy as np
from markupsafe import Markup

FONT = 11


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    t = math.floor(lo / step + 1e-9) * step
    ticks = [round(t, 12)]
    while ticks[-1] < hi - step * 1e-9:  # the last tick is at or above hi: nothing drawn off the top
        t += step
        ticks.append(round(t, 12))
    return ticks


def fmt(v: float) -> str:
    """Short label of one value: 1200 -> 1.2k, 0.25 -> 0.25 (ticks use tick_labels: one format per axis)."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def tick_labels(ticks: list[float]) -> list[str]:
    """The labels of one axis's ticks, one format for all: k/M for large values, and as many decimals
    as the step needs (19.98, 19.99, 20, 20.01 never all read "20"; 2.5 keeps its .5)."""
    if not ticks:
        return []
    big = max(abs(t) for t in ticks)
    scale, suffix = (1e6, "M") if big >= 1e6 else (1e3, "k") if big >= 1e4 else (1.0, "")
    vals = [t / scale for t in ticks]
    d = 0
    while d < 12 and any(abs(v * 10 ** d - round(v * 10 ** d)) > 1e-6 * max(1.0, abs(v) * 10 ** d) for v in vals):
        d += 1
    while True:
        labels = [f"{v:.{d}f}" for v in vals]
        labels = ["0" if float(x) == 0 else x + suffix for x in labels]
        if len(set(labels)) == len(labels) or d >= 12:
            return labels
        d += 1


CHAR_W = {"mk": 6.3, "pl": 5.9, "tk": 5.9, "lg": 6.2}  # px per character, a generous average at the CSS sizes
LABEL_H = 11


def text_width(text: str, cls: str = "mk") -> float:
    return CHAR_W.get(cls, 6.3) * len(text)


def _overlap(a: tuple, b: tuple, pad: float = 1.5) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _f(v: float) -> str:
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


class Chart:
    """One x/y chart. Set the data ranges first (or let them default), add series, then `svg()`."""

    def __init__(self, title: str, xlabel: str, ylabel: str, width: int = 560, height: int = 240,
                 xrange: tuple[float, float] = (0, 1), yrange: tuple[float, float] = (0, 1),
                 y2label: str | None = None, y2range: tuple[float, float] = (0, 100), key: str = "",
                 yinvert: bool = False, xtight: bool = False, ytight: bool = False):
        self.title, self.xlabel, self.ylabel, self.y2label = title, xlabel, ylabel, y2label
        self.key, self.yinvert = key, yinvert
        self.w, self.h = width, height
        self.ml, self.mr, self.mt, self.mb = 52, (44 if y2label else 14), 26, 36
        self.xt = nice_ticks(*xrange)
        self.yt = nice_ticks(*yrange)
        self.x0, self.x1 = self.xt[0], self.xt[-1]
        self.y0, self.y1 = self.yt[0], self.yt[-1]
        if xtight:  # the axis ends at the data (a time axis ends when the run ended)
            self.x0, self.x1 = xrange
            self.xt = [t for t in self.xt if self.x0 <= t <= self.x1 + 1e-9]
        if ytight:
            self.y0, self.y1 = yrange
            self.yt = [t for t in self.yt if self.y0 <= t <= self.y1 + 1e-9]
        self.y2t = nice_ticks(*y2range) if y2label else []
        self.items: list[str] = []
        self.legend: list[tuple[str, str]] = []
        self.marks: list[tuple] = []         # (x px, text, preferred anchor, preferred row)
        self.point_labels: list[tuple] = []  # (x px, y px, text)
        self.boxes: list[tuple] = []         # where svg() put the labels: (x0, y0, x1, y1) px

    # coordinate maps (vectorised)
    def px(self, x):
        return self.ml + (np.asarray(x, float) - self.x0) / ((self.x1 - self.x0) or 1) * (self.w - self.ml - self.mr)

    def py(self, y, y2: bool = False):
        lo, hi = (self.y2t[0], self.y2t[-1]) if y2 else (self.y0, self.y1)
        if self.yinvert:  # lo at the top (a timeline's first row)
            return self.mt + (np.asarray(y, float) - lo) / ((hi - lo) or 1) * (self.h - self.mt - self.mb)
        return self.h - self.mb - (np.asarray(y, float) - lo) / ((hi - lo) or 1) * (self.h - self.mt - self.mb)

    def _legend(self, label: str | None, cls: str) -> None:
        if label:
            self.legend.append((label, cls))

    # series
    def bars(self, edges, counts, cls: str = "c0", tips: list[str] | None = None, label: str | None = None):
        """Histogram bars between consecutive edges, each with a hover tooltip."""
        xs, ys = self.px(edges), self.py(counts)
        base = self.py(0)
        for i in range(len(counts)):
            if counts[i] <= 0:
                continue
            tip = f"<title>{escape(tips[i])}</title>" if tips else ""
            width = max(xs[i + 1] - xs[i] - 0.6, 0.6)
            self.items.append(f'<rect class="{cls}" x="{_f(xs[i])}" y="{_f(ys[i])}" '
                              f'width="{_f(width)}" height="{_f(base - ys[i])}">{tip}</rect>')
        self._legend(label, cls)

    def line(self, x, y, cls: str = "c0", y2: bool = False, label: str | None = None, step: bool = False,
             points: bool = False, dash: bool = False):
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            return
        xs, ys = self.px(x[ok]), self.py(y[ok], y2)
        if step:  # hold each value until the next x
            xs = np.repeat(xs, 2)[1:]
            ys = np.repeat(ys, 2)[:-1]
        d = "M" + " L".join(f"{_f(a)} {_f(b)}" for a, b in zip(xs, ys))
        self.items.append(f'<path class="ln {cls}{" dash" if dash else ""}" d="{d}"/>')
        if points:
            self.dots(x[ok], y[ok], cls, y2=y2, size="pt")
        self._legend(label, cls)

    def dots(self, x, y, cls: str = "c0", y2: bool = False, label: str | None = None, size: str = "dot"):
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            xs, ys = self.px(x[ok]), self.py(y[ok], y2)
            d = "".join(f"M{_f(a)} {_f(b)}h0" for a, b in zip(xs, ys))
            self.items.append(f'<path class="{size} {cls}" d="{d}"/>')
        self._legend(label, cls)

    def spans(self, x_from, x_to, rows, cls: str, row_h: float, label: str | None = None):
        """Horizontal bars (a Gantt chart): row i spans x_from[i]..x_to[i] at y = row i."""
        x_from, x_to, rows = map(lambda a: np.asarray(a, float), (x_from, x_to, rows))
        ok = np.isfinite(x_from) & np.isfinite(x_to)
        if ok.any():
            a, b, y = self.px(x_from[ok]), self.px(x_to[ok]), self.py(rows[ok])
            d = "".join(f"M{_f(p)} {_f(r)}H{_f(max(q, p + 0.8))}" for p, q, r in zip(a, b, y))
            self.items.append(f'<path class="span {cls}" stroke-width="{_f(max(row_h, 1))}" d="{d}"/>')
        self._legend(label, cls)

    def near_right(self, x: float, room: float = 70) -> bool:
        """Whether a label starting at x would run past the plot's right edge."""
        return math.isfinite(x) and float(self.px(x)) > self.w - self.mr - room

    def vline(self, x: float, label: str, cls: str = "mark", row: int = 0, anchor: str | None = None):
        """A vertical marker line with its label; labels are placed at svg() time: in the first row from
        the top where they overlap no other label, on the preferred side of the line (`anchor`), and
        always inside the plot area."""
        if not math.isfinite(x):
            return
        xp = float(self.px(x))
        if not self.ml - 0.5 <= xp <= self.w - self.mr + 0.5:
            return
        self.items.append(f'<line class="{cls}" x1="{_f(xp)}" x2="{_f(xp)}" y1="{self.mt}" y2="{self.h - self.mb}"/>')
        self.marks.append((xp, label, anchor or ("end" if self.near_right(x) else "start"), row))

    def label(self, x: float, y: float, text: str, y2: bool = False):
        """A point's label, beside the point where it overlaps no other label, inside the plot area."""
        if math.isfinite(x) and math.isfinite(y):
            self.point_labels.append((float(self.px(x)), float(self.py(y, y2)), text))

    def _legend_svg(self) -> list[str]:
        """The legend, right-aligned in the title row; entries that would run into the title are left
        out and counted ("+3 more")."""
        out, x = [], self.w - self.mr
        title_end = self.ml + text_width(self.title, "lg") * 1.15 + 10
        entries = self.legend
        for shown in range(len(entries), -1, -1):
            more = len(entries) - shown
            tail = f"+{more} more" if more else ""
            need = sum(14 + text_width(t, "lg") + 8 for t, _ in entries[:shown]) + (text_width(tail, "lg") + 8 if tail else 0)
            if x - need >= title_end or shown == 0:
                break
        if tail:
            x -= text_width(tail, "lg") + 8
            out.append(f'<text class="lg" x="{x + 8:.0f}" y="16">{escape(tail)}</text>')
        for text, cls in reversed(entries[:shown]):
            x -= 14 + text_width(text, "lg") + 8
            out.append(f'<rect class="{cls}" x="{x:.0f}" y="7" width="10" height="10"/>'
                       f'<text class="lg" x="{x + 14:.0f}" y="16">{escape(text)}</text>')
        return out

    def _place(self) -> list[str]:
        """SVG text of every marker and point label, placed without collision (boxes in self.boxes)."""
        left, right, top, bottom = self.ml + 1, self.w - self.mr - 1, self.mt, self.h - self.mb
        out, placed = [], []
        rows = max(int((bottom - top - 10) // LABEL_H), 1)
        for xp, text, anchor, row in self.marks:
            w = text_width(text, "mk")
            best = None
            other = "start" if anchor == "end" else "end"
            for r in [*range(row, rows), *range(0, row)]:
                base = top + 10 + LABEL_H * r
                for a in (anchor, other):
                    x0 = xp + 3 if a == "start" else xp - 3 - w
                    box = (x0, base - 9, x0 + w, base + 2)
                    if box[0] >= left and box[2] <= right and not any(_overlap(box, b) for b in placed):
                        best = box
                        break
                if best:
                    break
            if best is None:  # nowhere free: the preferred row, pushed inside the plot
                base = top + 10 + LABEL_H * min(row, rows - 1)
                x0 = min(max(xp + 3 if anchor == "start" else xp - 3 - w, left), max(right - w, left))
                best = (x0, base - 9, x0 + w, base + 2)
            placed.append(best)
            out.append(f'<text class="mk" x="{_f(best[0])}" y="{_f(best[3] - 2)}">{escape(text)}</text>')
        for xp, yp, text in self.point_labels:
            w = text_width(text, "pl")
            best = None
            steps = int((bottom - top) // LABEL_H) + 2  # then further up and down, to the plot's edges
            for dy in [d for k in range(steps) for d in (-4 - LABEL_H * k, 12 + LABEL_H * k)]:
                for x0 in (xp + 4, xp - 4 - w, xp - w / 2, xp + 10 + w, xp - 10 - 2 * w):
                    box = (x0, yp + dy - 9, x0 + w, yp + dy + 2)
                    if (box[0] >= left and box[2] <= right and box[1] >= top and box[3] <= bottom
                            and not any(_overlap(box, b) for b in placed)):
                        best = box
                        break
                if best:
                    break
            if best is None:
                x0 = min(max(xp + 4, left), max(right - w, left))
                y0 = min(max(yp - 13, top), bottom - 11)
                best = (x0, y0, x0 + w, y0 + 11)
            placed.append(best)
            out.append(f'<text class="pl" x="{_f(best[0])}" y="{_f(best[3] - 2)}">{escape(text)}</text>')
        self.boxes = placed
        return out

    # assembly
    def svg(self) -> Markup:
        w, h, ml, mr, mt, mb = self.w, self.h, self.ml, self.mr, self.mt, self.mb
        out = [f'<svg class="chart" data-chart="{escape(self.key)}" viewBox="0 0 {w} {h}" width="{w}" '
               f'height="{h}" role="img" aria-label="{escape(self.title)}">',
               f'<text class="ttl" x="{ml}" y="15">{escape(self.title)}</text>']
        grid = []
        for t, text in zip(self.yt, tick_labels(self.yt)):
            y = _f(float(self.py(t)))
            grid.append(f'<line class="grid" x1="{ml}" x2="{w - mr}" y1="{y}" y2="{y}"/>'
                        f'<text class="tk" x="{ml - 4}" y="{y}" dy="3.5" text-anchor="end">{text}</text>')
        xt, xl = self.xt, tick_labels(self.xt)
        if len(xt) > 1:  # labels wider than the gap between ticks: label every k-th tick only
            gap = min(abs(float(self.px(b)) - float(self.px(a))) for a, b in zip(xt, xt[1:])) or 1
            k = math.ceil((max(text_width(t, "tk") for t in xl) + 8) / gap)
            keep = set(range(0, len(xt), max(k, 1)))
        else:
            keep = {0}
        for i, (t, text) in enumerate(zip(xt, xl)):
            x = _f(float(self.px(t)))
            grid.append(f'<line class="tick" x1="{x}" x2="{x}" y1="{h - mb}" y2="{h - mb + 4}"/>')
            if i in keep:
                grid.append(f'<text class="tk" x="{x}" y="{h - mb + 15}" text-anchor="middle">{text}</text>')
        for t, text in zip(self.y2t, tick_labels(self.y2t)):
            y = _f(float(self.py(t, y2=True)))
            grid.append(f'<text class="tk" x="{w - mr + 4}" y="{y}" dy="3.5">{text}</text>')
        out += grid
        out.append(f'<line class="axis" x1="{ml}" x2="{w - mr}" y1="{h - mb}" y2="{h - mb}"/>'
                   f'<line class="axis" x1="{ml}" x2="{ml}" y1="{mt}" y2="{h - mb}"/>')
        clip = f"clip-{self.key or id(self)}"
        out.append(f'<clipPath id="{escape(clip)}"><rect x="{ml}" y="{mt - 2}" width="{w - ml - mr}" '
                   f'height="{h - mt - mb + 2}"/></clipPath><g clip-path="url(#{escape(clip)})">')
        out += self.items
        out.append("</g>")
        out += self._place()
        out.append(f'<text class="al" x="{(ml + w - mr) / 2:.0f}" y="{h - 4}" text-anchor="middle">'
                   f'{escape(self.xlabel)}</text>')
        out.append(f'<text class="al" transform="translate(11 {(mt + h - mb) / 2:.0f}) rotate(-90)" '
                   f'text-anchor="middle">{escape(self.ylabel)}</text>')
        if self.y2label:
            out.append(f'<text class="al" transform="translate({w - 6} {(mt + h - mb) / 2:.0f}) rotate(90)" '
                       f'text-anchor="middle">{escape(self.y2label)}</text>')
        out += self._legend_svg()
        out.append("</svg>")
        return Markup("".join(out))


def empty(title: str, note: str, key: str = "", width: int = 560, height: int = 120) -> Markup:
    """A placeholder chart that says why there is nothing to plot."""
    return Markup(f'<svg class="chart empty" data-chart="{escape(key)}" viewBox="0 0 {width} {height}" '
                  f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
                  f'<text class="ttl" x="52" y="15">{escape(title)}</text>'
                  f'<rect class="none" x="52" y="26" width="{width - 66}" height="{height - 40}"/>'
                  f'<text class="al" x="{width / 2:.0f}" y="{height / 2 + 8:.0f}" text-anchor="middle">'
                  f'{escape(note)}</text></svg>')
