"""The planning report: one self-contained HTML file (pictures inlined as base64 PNG, no external files).

Every number names its coordinate system: RAS = world (planning T1) RAS mm; AC-PC = mm from the
mid-commissural point (+x right, +y anterior, +z superior); frame coordinates are those of the frame that
was registered (Leksell X, Y, Z with the ring/arc of the stated mounting; CRW/BRW LAT, AP, VERT).
"""
from __future__ import annotations

import base64
import html
import io
import time

import numpy as np

from ..io.atomic import atomic_path
from ..volume import Volume
from . import figures as F
from .tables import coordinate_table, frame_of

CSS = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
h3{font-size:15px}table{border-collapse:collapse;margin:8px 0;font-size:12.5px}
td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}th{background:#eef}td.l,th.l{text-align:left}
.safe{color:#070;font-weight:600}.unsafe{color:#b00;font-weight:600}.note{color:#555;font-size:12px}
figure{margin:10px 0}figcaption{font-size:12px;color:#444}img{max-width:100%}
"""


REGISTRATION_NAMES = {"gre_to_t1": "GRE -> T1", "ct_to_t1": "CT -> T1", "t1_to_mni": "T1 -> MNI"}


def _esc(x) -> str:
    return html.escape(str(x))


def _num(x, nd=1) -> str:
    if x is None:
        return "–"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return _esc(x)
    if not np.isfinite(x) or abs(x) >= 900:
        return "–"
    return f"{x:.{nd}f}"


def _img(png: bytes, caption: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{b64}"/>'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def rgb_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 array (e.g. a VTK offscreen rendering)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _table(headers, rows, left_cols=1) -> str:
    h = "".join(f'<th class="{"l" if i < left_cols else ""}">{_esc(c)}</th>' for i, c in enumerate(headers))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f'<td class="{"l" if i < left_cols else ""}">{c}</td>'
                                     for i, c in enumerate(r)) + "</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def coordinate_rows(plan: dict) -> tuple[list, list]:
    """Headers and formatted rows of the coordinate table (``tables.coordinate_table``)."""
    frame = frame_of(plan)
    headers = ["side", "point", "R (RAS mm)", "A (RAS mm)", "S (RAS mm)",
               "lateral (AC-PC mm)", "AP (AC-PC mm)", "vertical (AC-PC mm)"]
    headers += [f"{a} ({frame['name']} mm)" for a in frame["axes"]]
    leksell = frame["key"] == "leksell"
    if leksell:
        headers += ["ring (deg)", "arc (deg)", "mounting"]
    rows = []
    for r in coordinate_table(plan):
        values = list(r.values())
        n = 11 if not leksell else 13
        row = [_esc(values[0]), values[1]] + [_num(v, 2) for v in values[2:n]]
        if leksell:
            row.append(_esc(values[13] or ("–" if values[1] == "target" else "")))
        rows.append(row)
    return headers, rows


def _frame_sentence(plan: dict) -> str:
    frame = frame_of(plan)
    systems = plan.get("coordinate_systems") or {}
    if frame["key"] == "leksell":
        return (f"Leksell X, Y, Z: {systems.get('LeksellXYZ', 'Leksell frame mm')}, with ring/arc for the stated "
                f"mounting.")
    return f"{frame['name']} LAT, AP, VERT: {systems.get(frame['name'], frame['name'] + ' frame mm')}."


def _target_section(sp) -> str:
    """The target's kind, how it was found and its cross-check (direct vs indirect) with their difference."""
    kind = str(sp.get("target_kind", "stn")).upper().replace("GPI", "GPi")
    sug, check = sp.get("target_suggestion"), sp.get("indirect_check")
    out = []
    if sug:
        out.append(f"<p>Target: {_esc(kind)}. {_esc(sug.get('statement', ''))}</p>")
        rows = []
        for label, est in (("target", sug.get("target")), ("cross-check", sug.get("cross_check"))):
            if est:
                acpc = est.get("ACPC_mm") or [None] * 3
                rows.append([_esc(label), _esc(est.get("method")), _esc(est.get("description"))]
                            + [_num(v, 2) for v in est.get("RAS_mm", [None] * 3)] + [_num(v, 2) for v in acpc])
        diff = sug.get("difference")
        if diff:
            rows.append(["difference", "", f"cross-check - target ({_esc(diff['system'])} mm), "
                         f"{_num(diff['distance_mm'], 2)} mm apart"] + [""] * 3 + [_num(v, 2) for v in diff["vector_mm"]])
        out.append(_table(["", "method", "how", "R (RAS mm)", "A (RAS mm)", "S (RAS mm)", "lateral (AC-PC mm)",
                           "AP (AC-PC mm)", "vertical (AC-PC mm)"], rows, left_cols=3))
    elif check:
        out.append(f"<p>Target: {_esc(kind)} (the surgeon's point); {_esc(check.get('statement', ''))}.</p>")
    else:
        out.append(f"<p>Target: {_esc(kind)} (the surgeon's point).</p>")
    return "\n".join(out)


def _safety_section(side, sp) -> str:
    out = [f"<h3>{_esc(side)} side</h3>"]
    st = sp.get("statement")
    if st:
        cls = "safe" if (sp.get("safety") or {}).get("safe") else "unsafe"
        out.append(f'<p class="{cls}">{_esc(st)}</p>')
    out.append(_target_section(sp))
    rows = []
    for c in ([sp.get("safety")] if sp.get("safety") else []) + list(sp.get("candidates") or []) + \
            ([sp.get("standard")] if sp.get("standard") else []):
        if not c:
            continue
        rows.append([_esc(c.get("label", "")), _num(c.get("elevation_deg")), _num(c.get("lateral_deg")),
                     _num(c.get("length_mm")), _num(c.get("vessel_distance_mm")),
                     _num(c.get("vessel_clearance_mm")), _num(c.get("ventricle_clearance_mm")),
                     _num(c.get("sulcus_clearance_mm")),
                     "yes" if c.get("crosses_ventricle") else "no", "yes" if c.get("crosses_sulcus") else "no",
                     f'<span class="{"safe" if c.get("safe") else "unsafe"}">{"safe" if c.get("safe") else "NOT SAFE"}</span>',
                     _num(c.get("risk"), 2)])
    if rows:
        out.append(_table(["trajectory", "elevation (deg, AC-PC)", "lateral (deg, AC-PC)", "length (mm)",
                           "centre line to vessel (mm)", "vessel clearance (mm)", "ventricle clearance (mm)",
                           "sulcus clearance (mm)", "crosses ventricle", "crosses sulcus", "status", "risk"], rows))
    el = sp.get("electrode")
    if el:
        crow = [[_esc(c["contact"]), _esc(c["kind"]), _num(c["R"], 2), _num(c["A"], 2), _num(c["S"], 2),
                 "–" if c.get("angle_deg") is None else _num(c["angle_deg"], 0),
                 "yes" if c["in_target"] else "no", _num(c.get("target_fraction"), 2)] for c in el.get("contacts", [])]
        out.append(f"<p>Electrode {_esc(el.get('model_name'))}, tip {_num(el.get('tip_depth_mm'))} mm beyond the "
                   f"target; {el.get('contacts_in_target')} contact(s) in the {_esc(el.get('target_structure', 'target'))}.</p>")
        out.append(_table(["contact", "kind", "R (RAS mm)", "A (RAS mm)", "S (RAS mm)", "segment angle (deg)",
                           "centre in target", "fraction in target"], crow))
    return "\n".join(out)


def write_report(path, plan: dict, *, qsm: Volume | None = None, world_from_qsm=None,
                 labels: Volume | None = None, world_from_labels=None, vessels: Volume | None = None,
                 world_from_vessels=None, searches: dict | None = None, chosen: dict | None = None,
                 picture_3d=None, extra_figures: list | None = None, title: str = "QSMPlanner — DBS plan"):
    """Write the self-contained HTML report to ``path`` (atomically). Returns the path.

    ``plan``: the plan dict (as written to plan.json: ``sides`` {side: {target, entry (RAS_mm, ACPC_mm,
    LeksellXYZ_mm), frame (mounting, ring_deg, arc_deg), statement, safety, candidates, standard,
    electrode}}, ``frame_registration``, ``timings_s``, ``messages``). Pictures need ``qsm`` (χ ppm) with
    ``world_from_qsm`` (RAS->RAS 4x4 into the world), optional ``labels`` (nuclei 1..6) and ``vessels``
    (mask) each with its world matrix, ``searches``/``chosen`` {side: EntrySearch / TrajectoryScore}.
    ``picture_3d``: RGB array (an offscreen VTK rendering) or PNG bytes; without it a matplotlib 3-D
    sketch is drawn. ``extra_figures``: [(caption, png bytes)]."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1>"]
    parts.append(f"<p class='note'>Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by QSMPlanner. "
                 "World coordinates are RAS mm of the planning T1 (as in 3D Slicer). AC-PC coordinates are mm from "
                 "the mid-commissural point (+x right, +y anterior, +z superior). "
                 f"{_esc(_frame_sentence(plan))} "
                 "Veins: Frangi vesselness on QSM χ plus bright R2* tubes from the GRE magnitude decay; safety "
                 "clearances are measured from the lead and microelectrode (Ben-gun) surfaces. Veins outside the "
                 "QSM brain mask (on the cortical surface at the entry, dural sinuses) are not mapped: check the "
                 "entry on a contrast T1. "
                 "For research use; verify every coordinate before surgery.</p>")
    sides = plan.get("sides") or {}
    # summary
    parts.append("<h2>Safety summary</h2>")
    for side, sp in sides.items():
        parts.append(_safety_section(side, sp))
    # coordinates
    parts.append("<h2>Coordinates</h2>")
    h, rows = coordinate_rows(plan)
    parts.append(_table(h, rows, left_cols=2))
    for side, sp in sides.items():
        settings = sp.get("frame") or {}
        if settings.get("arc_settings") and not settings["arc_settings"].get("provided", True):
            base = settings.get("phantom_base") or {}
            parts.append(f"<p>{_esc(side)}: {_esc(settings.get('system'))} arc settings "
                         f"{_esc(settings['arc_settings'].get('reason', 'not provided'))}. Phantom base: AP "
                         f"{_num(base.get('AP'), 2)}, LAT {_num(base.get('LAT'), 2)}, VERT {_num(base.get('VERT'), 2)} mm.</p>")
    fr = plan.get("frame_registration")
    if fr:
        worst = fr.get("worst_fiducial") or {}
        tre = "; ".join(f"{_esc(side)} target {_num((sp.get('frame') or {}).get('predicted_tre_mm'), 3)} mm"
                        for side, sp in sides.items() if (sp.get("frame") or {}).get("predicted_tre_mm") is not None)
        parts.append(
            f"<p>Frame registration ({_esc(fr.get('system'))}, {_esc(fr.get('method'))}): FRE "
            f"{_num(fr.get('fre_mm'), 3)} mm over {_esc(fr.get('n_points'))} diagonal fiducials "
            f"({_esc(fr.get('n_rejected'))} rejected; plates {_esc(', '.join(fr.get('plates_found') or []))}), "
            f"worst fiducial {_num(worst.get('residual_mm'), 3)} mm ({_esc(worst.get('plate'))}), rods off the "
            f"model {_num(fr.get('rod_ends_rms_off_model_mm'), 3)} mm RMS; predicted TRE "
            f"{tre + '; ' if tre else ''}frame centre {_num(fr.get('predicted_tre_mm_at_frame_centre'), 3)} mm.</p>")
    checks = [[_esc(REGISTRATION_NAMES.get(name, name)), _esc(q.get("summary") or ("given by the user" if
                                                                                 q.get("given") else ""))]
              for name, q in (plan.get("registration_qc") or {}).items() if isinstance(q, dict)]
    if checks:
        parts.append("<h3>Registrations</h3>" + _table(["registration", "quality check"], checks))
    lm = plan.get("landmarks_RAS_mm")
    if lm:
        parts.append(_table(["landmark", "R (RAS mm)", "A (RAS mm)", "S (RAS mm)"],
                            [[_esc(k)] + [_num(x, 2) for x in v] for k, v in lm.items()]))
    # pictures
    parts.append("<h2>Pictures</h2>")
    searches = searches or {}
    chosen = chosen or {}
    figs = []
    try:
        if qsm is not None:
            trajs = []
            for side, c in chosen.items():
                trajs.append((c.target_ras, c.entry_ras, "lime", "-"))
                s = searches.get(side)
                if s is not None and s.standard is not None:
                    trajs.append((s.standard.target_ras, s.standard.entry_ras, "magenta", "--"))
            for side, c in chosen.items():
                figs.append((f"{side}: axial / coronal / sagittal QSM through the target (world RAS), STN (orange), "
                             f"SN (blue), RN (red) contours, veins (red), suggested trajectory (green), "
                             f"standard (magenta, dashed)",
                             F.orthogonal_views(qsm, c.target_ras, trajs, world_from_qsm, labels, world_from_labels,
                                                vessels, world_from_vessels, title=f"{side} target")))
                figs.append((f"{side}: probe's-eye views at the target depth and above",
                             F.probe_views(qsm, c.target_ras, c.entry_ras, world_from_qsm=world_from_qsm,
                                           labels=labels, world_from_labels=world_from_labels, vessels=vessels,
                                           world_from_vessels=world_from_vessels, title=f"{side}")))
                figs.append((f"{side}: in-line planes containing the suggested path",
                             F.inline_pictures(qsm, c.target_ras, c.entry_ras, world_from_qsm, labels,
                                               world_from_labels, vessels, world_from_vessels, title=side)))
        for side, c in chosen.items():
            s = searches.get(side)
            figs.append((f"{side}: distance profile along the suggested path (clearance = distance from the "
                         f"instruments' surface)", F.profile_plot(c, s.standard if s else None, title=side)))
            if s is not None:
                figs.append((f"{side}: vessel clearance over the admissible entry region (outlined: safe)",
                             F.search_map(s, c, title=side)))
        if picture_3d is not None:
            png = picture_3d if isinstance(picture_3d, (bytes, bytearray)) else rgb_png(picture_3d)
            figs.append(("3-D view (offscreen VTK rendering): nuclei, electrodes, trajectories", png))
        elif chosen:
            pts = {}
            if vessels is not None:
                ijk = np.argwhere(np.asarray(vessels.data) > 0)
                if len(ijk) > 6000:
                    ijk = ijk[np.random.default_rng(0).choice(len(ijk), 6000, replace=False)]
                m = (np.eye(4) if world_from_vessels is None else np.asarray(world_from_vessels)) @ vessels.ras_from_ijk
                pts["vessels"] = ijk @ m[:3, :3].T + m[:3, 3]
            if labels is not None:
                ijk = np.argwhere(np.isin(np.asarray(labels.data), (1, 2)))
                m = (np.eye(4) if world_from_labels is None else np.asarray(world_from_labels)) @ labels.ras_from_ijk
                pts["STN"] = ijk @ m[:3, :3].T + m[:3, 3]
            figs.append(("3-D sketch (world RAS mm): veins, STN, suggested trajectories",
                         F.scene_3d(pts, [(c.target_ras, c.entry_ras, "green") for c in chosen.values()])))
    except Exception as exc:  # a picture must never cost the report
        parts.append(f"<p class='unsafe'>Some pictures could not be drawn: {_esc(type(exc).__name__)}: {_esc(exc)}</p>")
    for caption, png in list(figs) + list(extra_figures or []):
        parts.append(_img(png, caption))
    # run information
    tim = plan.get("timings_s")
    if tim:
        parts.append("<h2>Run</h2>" + _table(["stage", "time (s)"], [[_esc(k), _num(v, 1)] for k, v in tim.items()]))
    msgs = plan.get("messages")
    if msgs:
        parts.append("<ul>" + "".join(f"<li>{_esc(m)}</li>" for m in msgs) + "</ul>")
    parts.append("</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
