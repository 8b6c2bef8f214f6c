"""Line plots as PNG with PIL only (matplotlib is not a dependency): retention vs retention ratio, one panel per model,
one line per strategy. Used by `tango-plugin generalize` and `benchmarks/quality.py`."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

# distinguishable on white, in order (the first is Tango's when it is listed first)
PALETTE = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (102, 51, 153),
           (0, 128, 128), (205, 92, 92), (128, 128, 0), (255, 0, 255), (70, 130, 180), (210, 180, 140)]

Series = Dict[str, List[Tuple[float, float]]]  # strategy -> [(ratio, value)]


def line_panels(path: str, panels: Dict[str, Series], *, x_label: str = "retention ratio",
                y_label: str = "retention (pruned / unpruned accuracy)", title: str = "",
                y_range: Optional[Tuple[float, float]] = None, panel_size: Tuple[int, int] = (420, 320)) -> str:
    """Draw one panel per key of `panels` side by side (wrapping every 3), a shared legend below; returns `path`.

    Args:
        panels: panel title -> strategy -> (x, y) points (sorted by x when drawn; None values are skipped).
        y_range: fixed (low, high); default: 0 to max(1.1, the largest value).
    """
    from PIL import Image, ImageDraw

    names = _strategies(panels)
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    xs = sorted({x for series in panels.values() for pts in series.values() for x, y in pts if y is not None})
    ys = [y for series in panels.values() for pts in series.values() for _, y in pts if y is not None]
    low, high = y_range if y_range else (0.0, max([1.1] + ys))
    cols = min(3, max(1, len(panels)))
    rows = -(-max(1, len(panels)) // cols)
    pw, ph = panel_size
    legend_rows = -(-len(names) // 4)
    top = 28 if title else 8
    img = Image.new("RGB", (cols * pw, top + rows * ph + 18 * legend_rows + 28), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((8, 8), title, fill="black")
    x_low, x_high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_high == x_low:
        x_low, x_high = x_low - 0.05, x_high + 0.05
    for p, (panel, series) in enumerate(panels.items()):
        ox, oy = (p % cols) * pw, top + (p // cols) * ph
        left, right, upper, lower = ox + 48, ox + pw - 12, oy + 22, oy + ph - 36

        def at(x: float, y: float) -> Tuple[float, float]:
            fx = (x - x_low) / (x_high - x_low)
            fy = (y - low) / (high - low) if high > low else 0.5
            return left + fx * (right - left), lower - fy * (lower - upper)

        draw.text((left, oy + 4), panel, fill="black")
        draw.rectangle([left, upper, right, lower], outline=(90, 90, 90))
        for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = low + frac * (high - low)
            _, py = at(x_low, y)
            draw.line([left - 4, py, left, py], fill=(90, 90, 90))
            draw.text((ox + 4, py - 6), f"{y:.2f}", fill=(60, 60, 60))
        if low <= 1.0 <= high:  # the unpruned level
            _, py = at(x_low, 1.0)
            draw.line([left, py, right, py], fill=(200, 200, 200))
        for x in xs:
            px, _ = at(x, low)
            draw.line([px, lower, px, lower + 4], fill=(90, 90, 90))
            draw.text((px - 10, lower + 6), f"{x:g}", fill=(60, 60, 60))
        draw.text((left + (right - left) // 2 - 40, lower + 20), x_label, fill=(60, 60, 60))
        for name in names:
            pts = sorted((x, y) for x, y in series.get(name, []) if y is not None)
            coords = [at(x, y) for x, y in pts]
            if len(coords) > 1:
                draw.line(coords, fill=colour[name], width=2)
            for cx, cy in coords:
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour[name])
    ly = top + rows * ph + 4
    for i, name in enumerate(names):
        lx, row_y = 8 + (i % 4) * (cols * pw // 4), ly + (i // 4) * 18
        draw.line([lx, row_y + 7, lx + 22, row_y + 7], fill=colour[name], width=3)
        draw.text((lx + 28, row_y), name, fill="black")
    label = "y: " + y_label
    draw.text((cols * pw - 8 - 6 * len(label), ly + 2 + 18 * legend_rows), label, fill=(120, 120, 120))
    img.save(path)
    return path


def _strategies(panels: Dict[str, Series]) -> Sequence[str]:
    seen: List[str] = []
    for series in panels.values():
        for name in series:
            if name not in seen:
                seen.append(name)
    return seen


__all__ = ["line_panels", "PALETTE"]
