"""Helpers shared by the subcommands: progress bars, argument parsing of points and lists."""
from __future__ import annotations

import sys

from ..io.text import vec3  # noqa: F401 (argparse type of the subcommands)
from ..progress import Progress


def progress_bar(desc: str) -> Progress:
    """A ``Progress`` drawing a tqdm bar on stderr (percent + the current stage message)."""
    from tqdm import tqdm
    bar = tqdm(total=1000, desc=desc, file=sys.stderr, leave=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar:30}| {elapsed} {postfix}",
               disable=None)

    def callback(fraction: float, message: str) -> None:
        bar.n = int(round(fraction * 1000))
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()
        if fraction >= 1.0:
            bar.close()

    return Progress(callback)
