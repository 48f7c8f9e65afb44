"""The planning report: a self-contained HTML file with pictures and coordinate tables."""
from .html import coordinate_rows, rgb_png, write_report

__all__ = ["write_report", "coordinate_rows", "rgb_png"]
