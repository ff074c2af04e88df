"""A picture of this run's prediction distribution over its reference's, as an SVG written with plain Python (no
plotting library in the steps' environment): one pair of bars per bin of the quality gate, the bins labelled by
their price range, the verdict as the title."""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 760, 360
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 56, 70
THIS_RUN_COLOUR = "#1f77b4"
REFERENCE_COLOUR = "#b0b0b0"


def bin_labels(edges: Sequence[float]) -> list[str]:
    """`< 106k`, `106k-123k`, ..., `> 277k`: the price range of each bin."""
    if not edges:
        return ["all"]
    short = [_short(edge) for edge in edges]
    middle = [f"{a}-{b}" for a, b in zip(short, short[1:], strict=False)]
    return [f"< {short[0]}", *middle, f"> {short[-1]}"]


def distribution_svg(
    edges: Sequence[float],
    this_run: Sequence[float],
    reference: Sequence[float] | None,
    *,
    title: str,
    this_run_label: str,
    reference_label: str | None,
) -> str:
    """The SVG document: bars of `this_run`'s shares beside `reference`'s (when there is one), per bin."""
    labels = bin_labels(edges)
    count = len(labels)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    tallest = max([*this_run, *(reference or []), 0.01])
    top = min(1.0, _nice_ceiling(tallest))
    slot = plot_w / count
    bar = slot * (0.38 if reference is not None else 0.7)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="20" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    parts += _legend(this_run_label, reference_label)
    for tick in range(5):
        share = top * tick / 4
        y = TOP + plot_h - plot_h * share / top
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eeeeee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{share * 100:.0f}%</text>')
    for index, label in enumerate(labels):
        x0 = LEFT + index * slot + (slot - (bar * (2 if reference is not None else 1))) / 2
        series = [(this_run, THIS_RUN_COLOUR)]
        if reference is not None:
            series.insert(0, (reference, REFERENCE_COLOUR))
        for offset, (values, colour) in enumerate(series):
            value = values[index] if index < len(values) else 0.0
            height = plot_h * value / top
            x = x0 + offset * bar
            y = TOP + plot_h - height
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}" fill="{colour}">'
                f"<title>{escape(label)}: {value * 100:.1f}%</title></rect>"
            )
        cx = LEFT + index * slot + slot / 2
        parts.append(
            f'<text x="{cx:.1f}" y="{TOP + plot_h + 14}" text-anchor="end" '
            f'transform="rotate(-30 {cx:.1f} {TOP + plot_h + 14})">{escape(label)}</text>'
        )
    parts.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#333333"/>'
    )
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 8}" text-anchor="middle">predicted price '
        "(bins of the quality gate)</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _legend(this_run_label: str, reference_label: str | None) -> list[str]:
    entries = [(THIS_RUN_COLOUR, this_run_label)]
    if reference_label is not None:
        entries.append((REFERENCE_COLOUR, reference_label))
    parts = []
    for row, (colour, label) in enumerate(entries):
        y = 34 + row * 14
        parts.append(f'<rect x="{LEFT}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{LEFT + 16}" y="{y}">{escape(label)}</text>')
    return parts


def _short(value: float) -> str:
    """A price in few characters: 950, 106k, 1.1M."""
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if abs(value) >= 1_000:
        return f"{value / 1_000:.0f}k"
    return f"{value:.0f}"


def _nice_ceiling(value: float) -> float:
    """The axis top: the next multiple of 5% above `value`."""
    steps = int(value * 20) + 1
    return steps / 20
