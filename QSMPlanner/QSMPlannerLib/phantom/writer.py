"""Write a ``DigitalPatient`` as BIDS with its ground truth under ``derivatives/truth``.

Layout (``<id>`` = ``phantom<seed>`` unless ``subject`` is given)::

    dataset_description.json
    sub-<id>/anat/sub-<id>_echo-N_part-mag|phase_MEGRE.nii.gz (+ .json), sub-<id>_T1w.nii.gz (+ .json),
    sub-<id>/anat/sub-<id>_ct.nii.gz (+ .json)
    derivatives/truth/dataset_description.json
    derivatives/truth/sub-<id>/ chi_ppm, local_field_ppm, total_field_ppm, brain_mask, labels_gre,
        labels_t1 (.nii.gz), labels.tsv, landmarks.mrk.json (T1 RAS), transforms.json (4x4 RAS,
        a_from_b maps points of b to a; xyz_from_ct maps CT RAS to the frame's own coordinates), stn_centroids.json,
        veins.json, patient.json (parameters)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_dir, write_text
from ..io.volumes import write_volume
from ..progress import as_progress

GENERATOR = "QSMPlanner digital patient"


def _json(obj) -> str:
    def conv(o):
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        raise TypeError(type(o))
    return json.dumps(obj, indent=2, default=conv) + "\n"


def _write_gre(gre, out_dir: Path, label: str) -> dict:
    try:
        from ..io.bids import write_gre_bids
    except ImportError:  # pragma: no cover - io provides it
        write_gre_bids = None
    if write_gre_bids is not None:
        return write_gre_bids(gre, out_dir, label)
    raise ImportError("io.bids.write_gre_bids is missing")


def write_patient(patient, out_dir, subject=None, progress=None) -> dict:
    """Write the patient under ``out_dir`` (each file atomically). Returns {name: Path}."""
    progress = as_progress(progress)
    out_dir = Path(out_dir)
    label = str(subject) if subject else f"phantom{patient.seed}"
    if label.startswith("sub-"):
        label = label[4:]
    anat = out_dir / f"sub-{label}" / "anat"
    truth_dir = out_dir / "derivatives" / "truth" / f"sub-{label}"
    paths = {"anat_dir": anat, "truth_dir": truth_dir}
    write_text(out_dir / "dataset_description.json", _json({
        "Name": f"QSMPlanner digital patient (seed {patient.seed})", "BIDSVersion": "1.9.0",
        "DatasetType": "raw", "GeneratedBy": [{"Name": GENERATOR}],
        "License": "MNI ICBM152 (see QSMPlanner Resources/Atlases/LICENSE.md); CIT168 CC BY 4.0"}))
    progress.update(0.05, "writing GRE, T1, CT and truth volumes")
    dtypes = {"chi_ppm": np.float32, "local_field_ppm": np.float32, "total_field_ppm": np.float32,
              "brain_mask": np.uint8, "labels_gre": np.int16, "labels_t1": np.int16}
    jobs = [("t1", patient.t1, anat / f"sub-{label}_T1w.nii.gz", np.float32)]
    if patient.ct is not None:
        jobs.append(("ct", patient.ct, anat / f"sub-{label}_ct.nii.gz", np.int16))
    for name, dt in dtypes.items():
        vol = patient.labels_t1 if name == "labels_t1" else patient.truth[name]
        jobs.append((name, vol, truth_dir / f"{name}.nii.gz", dt))
    # gzip releases the GIL: the GRE echoes and the other volumes are compressed concurrently
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=2) as pool:
        gre_future = pool.submit(_write_gre, patient.gre, out_dir, label)
        futures = {name: pool.submit(write_volume, vol, path, dtype=dt) for name, vol, path, dt in jobs}
        for name, fut in futures.items():
            paths[name] = fut.result()
        gre_paths = gre_future.result()
    paths["mag"], paths["phase"] = list(gre_paths["mag"]), list(gre_paths["phase"])
    progress.update(0.9, "writing the truth")
    write_text(anat / f"sub-{label}_T1w.json", _json({"Modality": "MR", "MagneticFieldStrength": 3.0,
                                                      "Description": "planning T1 (digital patient)"}))
    if patient.ct is not None:
        write_text(anat / f"sub-{label}_ct.json", _json({
            "Modality": "CT", "Units": "HU",
            "Localizer": f"{patient.ct.meta.get('localizer', 'N-localizer')} "
                         f"({', '.join(patient.ct.meta.get('plates', ()))} plates)"}))
    write_text(out_dir / "derivatives" / "truth" / "dataset_description.json", _json({
        "Name": "Ground truth of the QSMPlanner digital patient", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": GENERATOR}]}))
    lines = ["index\tname"] + [f"{int(v)}\t{n}" for v, n in sorted(patient.label_names.items())]
    paths["labels_tsv"] = truth_dir / "labels.tsv"
    write_text(paths["labels_tsv"], "\n".join(lines) + "\n")
    from ..io.markups import write_points
    paths["landmarks"] = write_points(truth_dir / "landmarks.mrk.json", dict(patient.landmarks), "RAS",
                                      name="AC-PC-MS")
    paths["transforms"] = truth_dir / "transforms.json"
    frame_note = "the frame's native coordinates, mm"
    if patient.ct is not None and patient.ct.meta.get("frame_system"):
        from ..stereotaxy import get_system
        frame_note = get_system(patient.ct.meta["frame_system"]).native_note
    write_text(paths["transforms"], _json({
        "coordinate_system": f"RAS mm ({frame_note} for xyz_*)",
        "convention": "a_from_b is a 4x4 matrix mapping points of space b to space a",
        **{k: np.asarray(v, float) for k, v in patient.transforms.items()}}))
    paths["stn_centroids"] = truth_dir / "stn_centroids.json"
    write_text(paths["stn_centroids"], _json({"coordinate_system": "RAS mm (T1)",
                                              **{k: np.asarray(v, float) for k, v in patient.stn_centroids.items()}}))
    paths["veins"] = truth_dir / "veins.json"
    write_text(paths["veins"], _json({"coordinate_system": "RAS mm (T1)", "veins": patient.veins,
                                      "standard_trajectories": patient.standard_trajectories}))
    paths["patient"] = truth_dir / "patient.json"
    write_text(paths["patient"], _json(patient.params))
    progress.update(1.0, "written")
    return paths


def check_output_dir(out) -> None:
    """OUT must be absent, empty, or a previous phantom dataset (then it is replaced)."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError("exists and is not a directory", out)
    if not any(out.iterdir()):
        return
    desc = out / "dataset_description.json"
    try:
        gen = json.loads(desc.read_text()).get("GeneratedBy", [{}])[0].get("Name")
    except (OSError, ValueError, AttributeError, IndexError):
        gen = None
    if gen != GENERATOR:
        raise InputError("directory exists and is not a QSMPlanner digital patient; choose a new OUT", out)


def write_patient_atomic(patient, out, subject=None, progress=None) -> dict:
    """Write into a temporary directory beside ``out`` and rename it onto ``out`` when complete."""
    check_output_dir(out)
    out = Path(out)
    with atomic_dir(out) as tmp:
        paths = write_patient(patient, tmp, subject, progress)
    return {k: (out / Path(v).relative_to(tmp) if isinstance(v, Path) else
                [out / Path(p).relative_to(tmp) for p in v] if isinstance(v, list) else v)
            for k, v in paths.items()}
