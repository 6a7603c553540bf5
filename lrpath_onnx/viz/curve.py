"""Line charts of scores against K (or a threshold), e.g. MSE and SMAPE of the K-path heatmaps.

Pillow only: the chart is drawn at 2x and reduced with LANCZOS. Series with different
scales (MSE next to SMAPE in percent) can be put on a right-hand axis with ``secondary``;
their legend entries say "(right axis)". Non-finite values (and values <= 0 on a log
axis) are skipped and break the line, they never stop the picture.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence

from PIL import Image, ImageDraw

from ..errors import InputError
from ..io.outputs import write_png
from .graph_draw import _check_size, _font, png_text

#: colours of the series in the order given (the "tab10" palette).
SERIES_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                  (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
_SS = 2
_TEXT, _AXIS, _GRID, _MARK = (30, 30, 30), (60, 60, 60), (232, 232, 232), (70, 70, 70)


def draw_curve_png(path: str | os.PathLike[str], xs: Sequence[float], series: Mapping[str, Sequence[float]],
                   title: str, xlabel: str, ylabel: str, **kw) -> None:
    """Write ``render_curve(...)`` as a PNG, atomically."""
    write_png(path, render_curve(xs, series, title, xlabel, ylabel, **kw))


def render_curve(xs: Sequence[float], series: Mapping[str, Sequence[float]],
                 title: str, xlabel: str, ylabel: str, mark_x: float | None = None, log_y: bool = False,
                 size: tuple[int, int] = (1000, 600), secondary: Collection[str] = (),
                 ylabel2: str = "", mark_label: str | None = None) -> Image.Image:
    """A line chart of ``series`` against ``xs``.

    Args:
        xs: the x values, shared by all series.
        series: name -> y values, one per x; drawn in :data:`SERIES_COLOURS` order.
        title, xlabel, ylabel: texts of the chart and of its left axis.
        mark_x: where to draw a dashed vertical line (the chosen K); None for none.
        log_y: logarithmic y axes (values <= 0 are then skipped).
        size: (width, height) in pixels.
        secondary: names of series drawn against a right-hand y axis (labelled ``ylabel2``).
        mark_label: text beside the mark line; default "chosen = <mark_x>".
    """
    w, h = _check(xs, series, size)
    unknown = set(secondary) - set(series)
    if unknown:
        raise InputError(f"secondary series {sorted(unknown)} are not in {sorted(series)}")
    s = max(0.8, min(w / 1000, h / 600, 2.0))
    has2 = bool(secondary)
    box = (84 * s, 58 * s, w - (84 if has2 else 28) * s, h - 66 * s)
    bx0, by0, bx1, by1 = box

    pts = {name: [(float(x), _num(y)) for x, y in zip(xs, ys)] for name, ys in series.items()}
    ok = lambda x, y: math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y)  # noqa: E731
    xvals = [x for x in map(float, xs) if math.isfinite(x)]
    if mark_x is not None and math.isfinite(float(mark_x)):
        xvals.append(float(mark_x))
    xlo, xhi = (min(xvals), max(xvals)) if xvals else (0.0, 1.0)
    pad = 0.03 * (xhi - xlo) if xhi > xlo else 0.5
    xlo, xhi = xlo - pad, xhi + pad
    integer = all(float(x).is_integer() for x in xvals)
    xticks, xstep = _ticks(xlo, xhi, max(3, round((bx1 - bx0) / (70 * s))), integer)
    xticks = [t for t in xticks if xlo <= t <= xhi]

    def yaxis(names):
        vals = [y for n in names for x, y in pts[n] if ok(x, y)]
        if log_y:
            lo, hi = (math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))) if vals else (0, 1)
            hi = max(hi, lo + 1)
            every = max(1, math.ceil((hi - lo) / 8))
            ticks = [10.0 ** k for k in range(lo, hi + 1, every)]
            if hi - lo <= 2:
                ticks = sorted(ticks + [m * 10.0 ** k for k in range(lo, hi) for m in (2, 5)])
            return (10.0 ** lo, 10.0 ** hi), ticks, None
        ticks, step = _ticks(*y_range(vals), 6, False)
        return (ticks[0], ticks[-1]), ticks, step

    left = [n for n in series if n not in secondary]
    axes = {"l": yaxis(left)}
    if has2:
        axes["r"] = yaxis([n for n in series if n in secondary])

    def px(x):
        return bx0 + (x - xlo) / (xhi - xlo) * (bx1 - bx0)

    def py(y, side):
        lo, hi = axes[side][0]
        if log_y:
            y, lo, hi = math.log10(y), math.log10(lo), math.log10(hi)
        return by1 - (y - lo) / (hi - lo) * (by1 - by0)

    img = Image.new("RGB", (w * _SS, h * _SS), (255, 255, 255))
    d = ImageDraw.Draw(img)
    S = lambda *v: [c * _SS for c in v]  # noqa: E731
    lw = lambda v: max(1, round(v * s * _SS))  # noqa: E731

    def text(x, y, t, size, col=_TEXT, anchor="mm"):
        d.text(S(x, y), png_text(t), fill=col, font=_font(size * s * _SS), anchor=anchor)

    # grid, box, ticks and their numbers
    for t in xticks:
        d.line(S(px(t), by0, px(t), by1), fill=_GRID, width=lw(1))
        d.line(S(px(t), by1, px(t), by1 + 5 * s), fill=_AXIS, width=lw(1.2))
        text(px(t), by1 + 16 * s, _fmt(t, xstep), 12)
    for side, (_, ticks, step) in axes.items():
        for t in ticks:
            y = py(t, side)
            if side == "l":
                d.line(S(bx0, y, bx1, y), fill=_GRID, width=lw(1))
                d.line(S(bx0 - 5 * s, y, bx0, y), fill=_AXIS, width=lw(1.2))
                text(bx0 - 8 * s, y, _fmt(t, step), 12, anchor="rm")
            else:
                d.line(S(bx1, y, bx1 + 5 * s, y), fill=_AXIS, width=lw(1.2))
                text(bx1 + 8 * s, y, _fmt(t, step), 12, anchor="lm")
    d.rectangle(S(bx0, by0, bx1, by1), outline=_AXIS, width=lw(1.2))

    # the series: lines broken at skipped values, dots when there are few points
    colours = {n: SERIES_COLOURS[i % len(SERIES_COLOURS)] for i, n in enumerate(series)}
    for name, p in pts.items():
        side, col = ("r" if name in secondary else "l"), colours[name]
        run: list[tuple[float, float]] = []
        for x, y in p + [(math.nan, math.nan)]:
            if ok(x, y):
                run.append((px(x), py(y, side)))
                continue
            if len(run) > 1:
                d.line([tuple(S(*q)) for q in run], fill=col, width=lw(2.4), joint="curve")
            if len(p) <= 60:
                for qx, qy in run:
                    d.ellipse(S(qx - 3.6 * s, qy - 3.6 * s, qx + 3.6 * s, qy + 3.6 * s), fill=col)
            run = []

    # the chosen x: dashed line with its label at the top
    if mark_x is not None and math.isfinite(float(mark_x)):
        mx = px(float(mark_x))
        y, dash = by0, 7 * s
        while y < by1:
            d.line(S(mx, y, mx, min(y + dash, by1)), fill=_MARK, width=lw(1.6))
            y += 2 * dash
        lab = mark_label if mark_label is not None else f"chosen = {float(mark_x):g}"
        right = mx + 6 * s + _tw(lab, 13 * s) < bx1 - 4 * s
        text(mx + (6 if right else -6) * s, by0 + 14 * s, lab, 13, _MARK, "lm" if right else "rm")

    # legend in the corner (or at the middle of a side) that covers the fewest points
    fs = 13 * s
    labels = [(n + (" (right axis)" if n in secondary else ""), colours[n]) for n in series]
    lw_ = 34 * s + max((_tw(t, fs) for t, _ in labels), default=0) + 12 * s
    lh = 8 * s + 20 * s * len(labels)
    corners = [(bx1 - 10 * s - lw_, by0 + 28 * s), (bx0 + 10 * s, by0 + 28 * s),
               (bx1 - 10 * s - lw_, by1 - 10 * s - lh), (bx0 + 10 * s, by1 - 10 * s - lh),
               (bx0 + 10 * s, (by0 + by1 - lh) / 2), (bx1 - 10 * s - lw_, (by0 + by1 - lh) / 2)]
    screen = [(px(x), py(y, "r" if n in secondary else "l")) for n, p in pts.items() for x, y in p if ok(x, y)]
    if mark_x is not None and math.isfinite(float(mark_x)):  # keep the legend off the mark line
        screen += [(px(float(mark_x)) + dx, by0 + k * 8 * s) for k in range(int((by1 - by0) / (8 * s)))
                   for dx in (-4 * s, 4 * s)]
    lx, ly = min(corners, key=lambda c: sum(c[0] <= qx <= c[0] + lw_ and c[1] <= qy <= c[1] + lh
                                           for qx, qy in screen))
    if labels:
        d.rectangle(S(lx, ly, lx + lw_, ly + lh), fill=(255, 255, 255), outline=(200, 200, 200), width=lw(1))
        for i, (t, col) in enumerate(labels):
            yy = ly + 4 * s + 20 * s * (i + 0.5)
            d.line(S(lx + 8 * s, yy, lx + 30 * s, yy), fill=col, width=lw(2.4))
            text(lx + 36 * s, yy, t, 13, anchor="lm")

    # titles
    text(w / 2, 26 * s, title, 18)
    text((bx0 + bx1) / 2, h - 22 * s, xlabel, 14)
    _vertical(img, ylabel, 14 * s, 22 * s, (by0 + by1) / 2, 90)
    if has2 and ylabel2:
        _vertical(img, ylabel2, 14 * s, w - 22 * s, (by0 + by1) / 2, 270)
    return img.resize((w, h), Image.LANCZOS)


def y_range(vals: Sequence[float]) -> tuple[float, float]:
    """The span a linear y axis shows for ``vals``. A span tiny against the values themselves
    (SMAPE 196.525…196.530 %) is widened to 10 % of their magnitude, so nearly flat lines look
    flat instead of like large drops."""
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    least = 0.1 * max(abs(lo), abs(hi))
    if hi - lo < least:
        mid = (hi + lo) / 2
        lo, hi = mid - least / 2, mid + least / 2
        if min(vals, default=0.0) >= 0 > lo:
            lo, hi = 0.0, hi - lo
    if hi <= lo:
        lo, hi = lo - (abs(lo) * 0.1 or 1.0), hi + (abs(hi) * 0.1 or 1.0)
    return lo, hi


def _check(xs: Sequence[float], series: Mapping[str, Sequence[float]], size: Sequence[int]) -> tuple[int, int]:
    w, h = _check_size(size)
    try:
        [float(x) for x in xs]
    except (TypeError, ValueError):
        raise InputError("x values must be numbers") from None
    for name, ys in series.items():
        if len(ys) != len(xs):
            raise InputError(f"series {name!r} has {len(ys)} values for {len(xs)} x values")
    return w, h


def _num(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _ticks(lo: float, hi: float, n: int, integer: bool) -> tuple[list[float], float]:
    """About ``n`` round tick values covering [lo, hi] (steps 1, 2, 2.5, 5 times a power of 10)."""
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * 0.999 and not (integer and m == 2.5))
    if integer:
        step = max(1.0, round(step))
    start, stop = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [k * step for k in range(start, stop + 1)], step


def _fmt(v: float, step: float | None) -> str:
    """A tick number with as many decimals as its step needs (log ticks: shortest form)."""
    if v == 0:
        return "0"
    if step is None or abs(v) >= 1e6 or abs(v) < 1e-4:
        return f"{v:.3g}"
    power = math.floor(math.log10(step) + 1e-9)
    extra = 1 if math.isclose(step / 10.0 ** power, 2.5) else 0  # 0.25 needs one more than 0.2
    return f"{v:.{max(0, extra - power)}f}"


def _tw(text: str, size: float) -> float:
    return _font(size * _SS).getlength(png_text(text)) / _SS


def _vertical(img: Image.Image, text: str, size: float, cx: float, cy: float, angle: int) -> None:
    """Paste ``text`` turned by ``angle`` degrees, centred on (cx, cy)."""
    if not text:
        return
    font = _font(size * _SS)
    t = png_text(text)
    left, top, right, bottom = font.getbbox(t)
    tile = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(tile).text((2 - left, 2 - top), t, font=font, fill=255)
    tile = tile.rotate(angle, expand=True)
    x, y = round(cx * _SS - tile.width / 2), round(cy * _SS - tile.height / 2)
    img.paste(Image.new("RGB", tile.size, _TEXT), (x, y), tile)
