"""Overview picture of the digital patient: axial / coronal / sagittal slices of the true χ, the GRE
magnitude and phase (last echo, wrapped), the planning T1 and the stereotactic CT, each through the STN.

``python -m QSMPlannerLib.phantom.figure OUT.png [--seed N] [--small]`` (docs/phantom_overview.png).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..volume import Volume


def _slices(vol: Volume, point_ras, data=None):
    """Axial, coronal and sagittal slices through ``point_ras`` in the image's own voxel axes
    (the voxel axes nearest to S, A and R)."""
    data = vol.data if data is None else data
    ijk = np.clip(np.rint(vol.ras_to_ijk(point_ras)).astype(int), 0, np.array(vol.shape3) - 1)
    axis_of = np.argmax(np.abs(vol.direction_ras), axis=0)   # RAS axis each voxel axis runs along
    vox = vol.voxel_mm
    out = []
    for ras_axis in (2, 1, 0):   # normal S (axial), A (coronal), R (sagittal)
        ax = int(np.nonzero(axis_of == ras_axis)[0][0]) if np.any(axis_of == ras_axis) else ras_axis
        sl = np.take(data, ijk[ax], axis=ax)
        rest = [a for a in range(3) if a != ax]
        # put the R (or A) axis horizontal and S (or A) vertical, radiological-free (patient left on the right)
        img = sl.T
        aspect = vox[rest[1]] / vox[rest[0]]
        flip_v = vol.direction_ras[axis_of[rest[1]], rest[1]] > 0
        flip_h = vol.direction_ras[axis_of[rest[0]], rest[0]] < 0
        if flip_v:
            img = img[::-1]
        if flip_h:
            img = img[:, ::-1]
        out.append((img, aspect))
    return out


def overview_figure(patient, path, dpi: int = 110) -> Path:
    """Write the overview PNG (rows: χ truth, magnitude, phase, T1, CT; columns: axial, coronal, sagittal)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .patient import _apply
    gre = patient.gre
    stn_t1 = 0.5 * (np.asarray(patient.stn_centroids["STN_L"]) + np.asarray(patient.stn_centroids["STN_R"]))
    gre_from_t1 = np.linalg.inv(patient.transforms["t1_from_gre"])
    ct_from_t1 = np.linalg.inv(patient.transforms["t1_from_ct"])
    p_gre = _apply(gre_from_t1, stn_t1)[0]
    p_ct = _apply(ct_from_t1, stn_t1)[0]
    rows = [("true χ (ppm)", patient.truth["chi_ppm"], None, p_gre, dict(cmap="gray", vmin=-0.1, vmax=0.2)),
            ("GRE magnitude, echo 1", gre.echo_volume(0), None, p_gre, dict(cmap="gray")),
            (f"GRE phase, echo {gre.n_echoes} (rad)", gre.echo_volume(gre.n_echoes - 1, "phase"), None, p_gre,
             dict(cmap="gray", vmin=-np.pi, vmax=np.pi)),
            ("planning T1", patient.t1, None, stn_t1, dict(cmap="gray")),
            ("CT with N-localizer (HU)", patient.ct, None, p_ct, dict(cmap="gray", vmin=-200, vmax=1600))]
    fig, axes = plt.subplots(len(rows), 3, figsize=(9.0, 3.0 * len(rows)), facecolor="black")
    for r, (title, vol, data, point, kw) in enumerate(rows):
        if "vmin" not in kw:
            v = vol.data[vol.data > 0]
            kw = dict(kw, vmin=0.0, vmax=float(np.percentile(v, 99.5)) if v.size else 1.0)
        for c, (img, aspect) in enumerate(_slices(vol, point, data)):
            ax = axes[r, c]
            ax.imshow(img, aspect=aspect, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            if c == 0:
                ax.set_ylabel(title, color="white", fontsize=9)
            if r == 0:
                ax.set_title(("axial", "coronal", "sagittal")[c], color="white", fontsize=10)
    fig.suptitle(f"QSMPlanner digital patient, seed {patient.seed}: "
                 f"{gre.b0_tesla:g} T, {gre.n_echoes} echoes, GRE {'×'.join(map(str, gre.shape3))}",
                 color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..io.atomic import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, facecolor="black", format="png")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m QSMPlannerLib.phantom.figure", description=__doc__)
    p.add_argument("out", help="PNG path (e.g. docs/phantom_overview.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true")
    p.add_argument("--tilt", type=float, default=0.0)
    args = p.parse_args(argv)
    from . import make_patient
    patient = make_patient(seed=args.seed, small=args.small, tilt_deg=args.tilt)
    print(overview_figure(patient, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
