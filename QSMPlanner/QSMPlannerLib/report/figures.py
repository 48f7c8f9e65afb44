"""Matplotlib pictures for the planning report (Agg backend, PNG bytes). Images are drawn in radiological
orientation where stated on the picture; every axis names its coordinate system."""
from __future__ import annotations

import io

import numpy as np

from ..planning.views import Reslice, inline_views, probe_eye_view, reslice
from ..volume import Volume

STN_COLOURS = {1: "#ffb000", 2: "#ffb000", 3: "#3fa7ff", 4: "#3fa7ff", 5: "#ff4f6d", 6: "#ff4f6d"}
NAMES = {1: "STN_L", 2: "STN_R", 3: "SN_L", 4: "SN_R", 5: "RN_L", 6: "RN_R"}


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def png_bytes(fig, dpi: int = 90) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _draw_reslice(ax, r: Reslice, vessels: Reslice | None = None, window=(-0.15, 0.25), title="",
                  trajectories=(), letters=None):
    """Grey image + nuclei contours + vessels in red + trajectories (projected) on axis ``ax``."""
    ax.imshow(r.image, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
    if r.labels is not None:
        for value, colour in STN_COLOURS.items():
            m = (r.labels == value)
            if m.any():
                ax.contour(m.astype(float), levels=[0.5], colors=[colour],
                           linewidths=1.6 if value in (1, 2) else 0.8)
    if vessels is not None and vessels.labels is not None and vessels.labels.any():
        over = np.zeros(r.image.shape + (4,))
        over[vessels.labels > 0] = (1.0, 0.1, 0.1, 0.75)
        ax.imshow(over, interpolation="nearest")
    for target, entry, colour, style in trajectories:
        px = r.pixel_of(np.stack([target, entry]))
        ax.plot(px[:, 0], px[:, 1], style, color=colour, lw=1.4)
        ax.plot(px[0, 0], px[0, 1], "o", color=colour, ms=4)
    h, w = r.image.shape
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if letters:
        for (x, y), txt in zip(((0.03, 0.5), (0.97, 0.5), (0.5, 0.96), (0.5, 0.04)), letters):  # left, right, top, bottom
            ax.text(x, y, txt, transform=ax.transAxes, color="yellow", fontsize=8, ha="center", va="center")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def orthogonal_views(qsm: Volume, target_ras, trajectories, world_from_qsm=None, labels=None,
                     world_from_labels=None, vessels=None, world_from_vessels=None, fov_mm=70.0,
                     spacing_mm=0.5, title="") -> bytes:
    """Axial, coronal, sagittal QSM through ``target_ras`` (world RAS) with nuclei contours, vessels (red)
    and trajectories [(target, entry, colour, style)] projected; radiological (patient's right on the left)."""
    plt = _plt()
    t = np.asarray(target_ras, float)
    n = int(round(fov_mm / spacing_mm)) + 1
    planes = (("axial", (-1, 0, 0), (0, 1, 0), ("R", "L", "A", "P")),
              ("coronal", (-1, 0, 0), (0, 0, 1), ("R", "L", "S", "I")),
              ("sagittal", (0, 1, 0), (0, 0, 1), ("P", "A", "S", "I")))
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.8))
    for ax, (name, u, v, letters) in zip(axes, planes):
        r = reslice(qsm, t, u, v, n, n, spacing_mm, world_from_qsm, labels, world_from_labels)
        vr = reslice(vessels, t, u, v, n, n, spacing_mm, world_from_vessels, vessels, world_from_vessels) \
            if vessels is not None else None
        _draw_reslice(ax, r, vr, title=f"{name} through the target (QSM, ppm)", trajectories=trajectories,
                      letters=(letters[0], letters[1], letters[2], letters[3]))
    if title:
        fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def probe_views(qsm: Volume, target_ras, entry_ras, depths=(0.0, 2.0, 5.0, 10.0), world_from_qsm=None,
                labels=None, world_from_labels=None, vessels=None, world_from_vessels=None, fov_mm=30.0,
                mer_spacing_mm=2.0, title="") -> bytes:
    """Probe's-eye views (perpendicular to the path) at ``depths`` mm above the target, with the lead and
    the 5 MER track positions."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(depths), figsize=(2.8 * len(depths), 3.2))
    axes = np.atleast_1d(axes)
    for ax, d in zip(axes, depths):
        r = probe_eye_view(qsm, target_ras, entry_ras, d, fov_mm, 0.25, world_from_qsm, labels, world_from_labels)
        vr = probe_eye_view(vessels, target_ras, entry_ras, d, fov_mm, 0.25, world_from_vessels, vessels,
                            world_from_vessels) if vessels is not None else None
        _draw_reslice(ax, r, vr, title=f"{d:+.0f} mm above target", letters=("", "", "", ""))
        h, w = r.image.shape
        c = ((w - 1) / 2, (h - 1) / 2)
        s = mer_spacing_mm / r.spacing_mm
        for dx, dy in ((0, 0), (s, 0), (-s, 0), (0, s), (0, -s)):
            ax.add_patch(plt.Circle((c[0] + dx, c[1] + dy), 0.5 / r.spacing_mm, fill=False, color="cyan", lw=1))
        ax.add_patch(plt.Circle(c, 0.635 / r.spacing_mm, fill=True, color="white", alpha=0.6))
    if title:
        fig.suptitle(title + " (right = patient's right, up = anterior, projected; cyan: MER tracks)",
                     fontsize=9)
    return png_bytes(fig)


def inline_pictures(qsm: Volume, target_ras, entry_ras, world_from_qsm=None, labels=None,
                    world_from_labels=None, vessels=None, world_from_vessels=None, title="") -> bytes:
    plt = _plt()
    a, b = inline_views(qsm, target_ras, entry_ras, 50.0, 10.0, 0.5, world_from_qsm, labels, world_from_labels)
    if vessels is not None:
        va, vb = inline_views(vessels, target_ras, entry_ras, 50.0, 10.0, 0.5, world_from_vessels, vessels,
                              world_from_vessels)
    else:
        va = vb = None
    fig, axes = plt.subplots(1, 2, figsize=(6.5, 5.5))
    for ax, r, vr in ((axes[0], a, va), (axes[1], b, vb)):
        _draw_reslice(ax, r, vr, title=r.name, trajectories=[(np.asarray(target_ras), np.asarray(entry_ras),
                                                               "lime", "-")])
    if title:
        fig.suptitle(title + " (up = towards the entry)", fontsize=9)
    return png_bytes(fig)


def profile_plot(chosen, standard=None, title="") -> bytes:
    """Clearance (mm, instrument surface to structure) vs depth above the target (mm)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 3.2))
    p = chosen.profile
    colours = {"vessels": "crimson", "ventricles": "royalblue", "sulci": "darkorange"}
    for k, c in colours.items():
        y = p.get(f"{k}_clearance_mm")
        if y is not None and np.isfinite(y).any() and np.nanmin(y) < 900:
            ax.plot(p["depth_mm"], np.minimum(y, 40), color=c, label=f"{k} (suggested)")
    if standard is not None:
        y = standard.profile.get("vessels_clearance_mm")
        if y is not None and np.nanmin(y) < 900:
            ax.plot(standard.profile["depth_mm"], np.minimum(y, 40), "--", color="grey",
                    label="vessels (standard 60/20 deg)")
    ax.axhline(chosen.margin_mm, color="k", lw=0.8, ls=":", label=f"margin {chosen.margin_mm:g} mm")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("depth above the target along the path (mm)")
    ax.set_ylabel("clearance (mm, capped at 40)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=9)
    return png_bytes(fig)


def search_map(search, chosen=None, title="") -> bytes:
    """Vessel clearance over the admissible angle grid, safe region outlined."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    el, la = search.grid_elevation_deg, search.grid_lateral_deg
    c = np.clip(search.grid_vessel_clearance_mm, -2, 15)
    im = ax.pcolormesh(la, el, c, cmap="RdYlGn", vmin=-2, vmax=15, shading="nearest")
    fig.colorbar(im, ax=ax, label="vessel clearance (mm)")
    if search.grid_safe.any() and not search.grid_safe.all():
        ax.contour(la, el, search.grid_safe.astype(float), levels=[0.5], colors="k", linewidths=1)
    for i, cand in enumerate(search.candidates):
        ax.plot(cand.lateral_deg, cand.elevation_deg, "o", mfc="none", mec="k", ms=7)
        ax.text(cand.lateral_deg + 0.6, cand.elevation_deg + 0.6, str(i + 1), fontsize=7)
    if chosen is not None:
        ax.plot(chosen.lateral_deg, chosen.elevation_deg, "*", color="blue", ms=12, label="chosen")
    if search.standard is not None:
        ax.plot(search.standard.lateral_deg, search.standard.elevation_deg, "x", color="k", ms=9,
                label="standard")
    ax.set_xlabel("lateral angle from mid-sagittal plane (deg, AC-PC frame)")
    ax.set_ylabel("elevation above AC-PC plane (deg)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    return png_bytes(fig)


def scene_3d(points_by_name: dict, trajectories, title="") -> bytes:
    """Fallback 3-D picture (matplotlib): point clouds (world RAS) and trajectories [(t, e, colour)]."""
    plt = _plt()
    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    colours = {"vessels": "crimson", "STN": "orange", "brain": "lightgrey"}
    for name, pts in points_by_name.items():
        pts = np.asarray(pts)
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=1 if name != "STN" else 3,
                       c=colours.get(name, "grey"), alpha=0.25 if name == "brain" else 0.6, label=name)
    for t, e, colour in trajectories:
        ax.plot([t[0], e[0]], [t[1], e[1]], [t[2], e[2]], color=colour, lw=2)
    ax.set_xlabel("R (mm)")
    ax.set_ylabel("A (mm)")
    ax.set_zlabel("S (mm)")
    ax.view_init(elev=25, azim=-60)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return png_bytes(fig)
