"""QC picture: checkerboard of the fixed image and the resampled moving image (three mid planes)."""
from __future__ import annotations

import numpy as np

from ..io.atomic import atomic_path
from ..volume import Volume


def _norm(a):
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)


def qc_checkerboard(fixed: Volume, moving_resampled: Volume, path_png, squares: int = 8) -> None:
    """Write a PNG: checkerboard (fixed / moving on the fixed grid) in the three mid planes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    f = _norm(np.asarray(fixed.data, float))
    m = _norm(np.asarray(moving_resampled.data, float))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, axis in zip(axes, range(3)):
        sl = [slice(None)] * 3
        sl[axis] = f.shape[axis] // 2
        a, b = f[tuple(sl)], m[tuple(sl)]
        ii, jj = np.indices(a.shape)
        board = ((ii * squares // a.shape[0]) + (jj * squares // a.shape[1])) % 2 == 0
        ax.imshow(np.where(board, a, b).T, cmap="gray", origin="lower")
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path_png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
