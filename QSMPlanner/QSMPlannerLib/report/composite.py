"""One PNG summarising a written report.html (for a README or a slide): the safety statements and the main
pictures, read back from the self-contained HTML (no browser needed)."""
from __future__ import annotations

import base64
import html
import io
import re
import textwrap
from pathlib import Path

import numpy as np

_IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
_STATEMENT = re.compile(r'<h3>([^<]*) side</h3>\s*<p class="(?:safe|unsafe)">([^<]*)</p>')

# rows of (caption start, label): each row is scaled to the full width (justified, aspect kept)
MAIN = ((("left: axial", "left target: QSM (ppm), nuclei, veins (red), suggested (green) and standard (magenta) paths"),),
        (("right: axial", "right target"),),
        (("left: probe", "left: probe's-eye views (MER tracks cyan)"), ("left: distance profile", "left: distance profile")),
        (("left: vessel clearance", "left: vessel clearance over the admissible entries"), ("3-D view", "3-D view")))


def report_images(html_text: str) -> list[tuple[str, np.ndarray]]:
    """[(caption, RGB uint8 array)] of every picture inlined in a report."""
    from PIL import Image
    out = []
    for alt, b64 in _IMG.findall(html_text):
        img = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
        out.append((html.unescape(alt), np.asarray(img)))
    return out


def report_statements(html_text: str) -> list[tuple[str, str]]:
    """[(side, safety statement)] of a report."""
    return [(html.unescape(s), html.unescape(t)) for s, t in _STATEMENT.findall(html_text)]


def report_composite(html_path, png_path, width_px: int = 1800, rows=MAIN) -> Path:
    """Write ``png_path``: the report's safety statements and its pictures (``rows`` of caption prefixes,
    each row justified to the full width). Returns the path."""
    from .figures import _plt
    text = Path(html_path).read_text(encoding="utf-8")
    images = report_images(text)
    layout = []
    for row in rows:
        found = []
        for prefix, label in row:
            img = next((im for cap, im in images if cap.startswith(prefix)), None)
            if img is not None:
                found.append((label, img))
        if found:
            layout.append(found)
    if not layout:
        raise ValueError(f"{html_path}: no report pictures found")
    plt = _plt()
    lines = []
    for side, st in report_statements(text):
        lines += textwrap.wrap(f"{side}: {st}", 170)
    w_in, gap, title_in = width_px / 100.0, 0.1, 0.3
    head_in = 0.55 + 0.19 * len(lines)
    heights = [(w_in - gap * (len(r) + 1)) / sum(im.shape[1] / im.shape[0] for _, im in r) for r in layout]
    h_in = head_in + sum(h + title_in for h in heights) + gap
    fig = plt.figure(figsize=(w_in, h_in), dpi=100)
    fig.text(0.006, 1 - 0.28 / h_in, "QSMPlanner planning report (report.html of `qsmplanner demo`)",
             fontsize=15, weight="bold", va="center")
    for k, line in enumerate(lines):
        fig.text(0.006, 1 - (0.62 + 0.19 * k) / h_in, line, fontsize=9.5, va="center")
    y = h_in - head_in
    for row, h in zip(layout, heights):
        y -= h + title_in
        x = gap
        for label, img in row:
            w = h * img.shape[1] / img.shape[0]
            ax = fig.add_axes([x / w_in, y / h_in, w / w_in, h / h_in])
            ax.imshow(img, interpolation="antialiased")
            ax.set_axis_off()
            ax.set_title(label, fontsize=10.5)
            x += w + gap
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 3:
        sys.exit("usage: python -m QSMPlannerLib.report.composite REPORT.html OUT.png")
    print(report_composite(sys.argv[1], sys.argv[2]))
