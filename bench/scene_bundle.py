"""Slicer bundle (.mrb) benchmark: size and save time of the digital patient's scene (full size: T1, frame CT,
QSM, label map, nuclei segmentation, landmarks, a transform).

One run, one table. Peers: MRML's own ``vtkMRMLScene.WriteToMRB`` on the slicer-core wheel (what Slicer's
API gives; it stores the zip entries uncompressed), and ``save_mrb`` on the T1/CT as float32 with sub-unit
noise (the digital patient before it stored whole numbers, as scanners do). Ratios: size / WriteToMRB's,
size / the 40 MB issue target; time / WriteToMRB's. The last column says whether the open scene's URL,
root directory and storable nodes' storage file names (none before) were the same after the save.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "QSMPlanner"))
from QSMPlannerLib.phantom import make_patient  # noqa: E402
from QSMPlannerLib.scene import mrml  # noqa: E402

TARGET_MB = 40.0


def scene_for(patient, fractional: bool):
    rng = np.random.default_rng(1)
    t1, ct = patient.t1, patient.ct
    if fractional:   # the float32 noise the phantom's T1/CT carried before they were whole numbers
        t1 = t1.with_data((t1.data + rng.uniform(-0.5, 0.5, t1.shape3)).astype(np.float32))
        ct = ct.with_data((ct.data + rng.uniform(-0.5, 0.5, ct.shape3)).astype(np.float32))
    labels = patient.truth["labels_gre"]
    names = {v: patient.label_names[v] for v in (16, 116, 8, 108)}
    return mrml.build_scene({
        "t1": t1, "ct": ct, "volumes": {"QSM": patient.truth["chi_ppm"]},
        "labelmaps": {"Labels": labels},
        "segmentations": {"Nuclei": (labels, names)}, "landmarks": dict(patient.landmarks),
        "transforms": {"T1_from_GRE": patient.transforms["t1_from_gre"]},
        "parents": {"QSM": "T1_from_GRE", "Nuclei": "T1_from_GRE", "Labels": "T1_from_GRE"}})


def state(scene):
    files = []
    for node in mrml.nodes_by_class(scene, "vtkMRMLStorableNode"):
        storage = node.GetStorageNode()
        files.append((node.GetID(), storage.GetFileName() if storage is not None else None))
    return scene.GetURL(), scene.GetRootDirectory(), files


def main():
    patient = make_patient(seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, fractional, save in (
                ("MRML WriteToMRB (slicer-core)", False, lambda s, p: s.WriteToMRB(str(p))),
                ("save_mrb, T1/CT float32 noise", True, mrml.save_mrb),
                ("save_mrb, T1/CT whole numbers", False, mrml.save_mrb)):
            scene = scene_for(patient, fractional)
            before = state(scene)
            path = Path(tmp) / f"{len(rows)}.mrb"
            t0 = time.perf_counter()
            save(scene, path)
            seconds = time.perf_counter() - t0
            rows.append((label, path.stat().st_size / 1e6, seconds, state(scene) == before))
    base_mb, base_s = rows[0][1], rows[0][2]
    print(f"{'bundle writer':32s} {'MB':>7s} {'/WriteToMRB':>11s} {'/40 MB':>7s} {'save s':>7s} "
          f"{'/WriteToMRB':>11s}  scene unchanged")
    for label, mb, seconds, same in rows:
        print(f"{label:32s} {mb:7.1f} {mb / base_mb:11.2f} {mb / TARGET_MB:7.2f} {seconds:7.1f} "
              f"{seconds / base_s:11.2f}  {'yes' if same else 'no'}")


if __name__ == "__main__":
    main()
