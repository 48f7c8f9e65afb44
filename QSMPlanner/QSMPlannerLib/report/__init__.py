"""The planning report: a self-contained HTML file with pictures, and the plan's coordinate table (CSV)."""
from .html import coordinate_rows, rgb_png, write_report
from .tables import coordinate_table, frame_of, plan_csv_text

__all__ = ["write_report", "coordinate_rows", "rgb_png", "coordinate_table", "frame_of", "plan_csv_text"]
