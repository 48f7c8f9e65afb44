"""BIDS writing/finding and Slicer markups JSON round trips (geometry in RAS, oblique included)."""
import json

import nibabel as nib
import numpy as np
import pytest

from QSMPlannerLib import io
from QSMPlannerLib.errors import InputError
from QSMPlannerLib.io.gre import MultiEchoGRE, b0_dir_from_geometry
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix, rotation_matrix


def synthetic_gre(rng, shape=(12, 10, 8), te=(0.004, 0.009, 0.014), tilt=(12.0, -8.0, 20.0), b0=3.0):
    """A small oblique GRE with a known field: phase = wrap(phi0 + 2pi*f*TE)."""
    m = ras_from_ijk_matrix([0.9, 1.0, 1.4], rotation_matrix(tilt), origin=[-10.0, 20.5, -33.25])
    te = np.asarray(te, float)
    f_hz = rng.normal(0.0, 30.0, size=shape)
    phi0 = rng.uniform(-1.0, 1.0, size=shape)
    phase = np.angle(np.exp(1j * (phi0[..., None] + 2 * np.pi * f_hz[..., None] * te)))
    mag = 100.0 * np.exp(-te / 0.04) * rng.uniform(0.5, 1.5, size=shape)[..., None]
    return MultiEchoGRE(mag.astype(np.float32), phase.astype(np.float32), te, b0, m,
                        b0_dir_from_geometry(m), "radians", "synthetic")


def test_write_gre_bids_layout_sidecars_and_geometry(tmp_path, rng):
    gre = synthetic_gre(rng)
    out = io.write_gre_bids(gre, tmp_path, "sub-P01")
    anat = tmp_path / "sub-P01" / "anat"
    assert out["anat"] == anat
    names = sorted(p.name for p in anat.iterdir())
    assert names == sorted(f"sub-P01_echo-{e}_part-{p}_MEGRE.{x}" for e in (1, 2, 3)
                           for p in ("mag", "phase") for x in ("nii.gz", "json"))
    for e in range(3):
        img = nib.load(str(out["phase"][e]))
        assert np.allclose(img.affine, gre.ras_from_ijk, atol=1e-4)
        assert np.allclose(np.asanyarray(img.dataobj), gre.phase_rad[..., e], atol=1e-6)
        side = json.loads(out["mag"][e].with_name(out["mag"][e].name.replace(".nii.gz", ".json")).read_text())
        assert side["EchoTime"] == pytest.approx(gre.te_s[e])
        assert side["MagneticFieldStrength"] == pytest.approx(3.0)
    # no temporaries left anywhere
    assert not [p for p in tmp_path.rglob(".*")]


def test_find_t1_ct_and_megre(tmp_path, rng):
    gre = synthetic_gre(rng)
    io.write_gre_bids(gre, tmp_path, "01")
    vol = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4))
    anat = tmp_path / "sub-01" / "anat"
    assert io.find_t1(tmp_path) is None and io.find_ct(tmp_path) is None
    io.write_volume(vol, anat / "sub-01_T1w.nii.gz")
    io.write_volume(vol, anat / "sub-01_ct.nii.gz")
    io.write_volume(vol, tmp_path / "derivatives" / "x" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    assert io.find_t1(tmp_path) == anat / "sub-01_T1w.nii.gz"
    assert io.find_t1(anat) == anat / "sub-01_T1w.nii.gz"
    assert io.find_ct(tmp_path) == anat / "sub-01_ct.nii.gz"
    assert io.find_t1(tmp_path, subject="02") is None
    mags, phases = io.bids.find_megre(tmp_path)
    assert [p.name for p in mags] == [f"sub-01_echo-{e}_part-mag_MEGRE.nii.gz" for e in (1, 2, 3)]
    assert [p.name for p in phases] == [f"sub-01_echo-{e}_part-phase_MEGRE.nii.gz" for e in (1, 2, 3)]
    with pytest.raises(InputError, match="no multi-echo GRE"):
        io.bids.find_megre(tmp_path / "derivatives")


def test_find_megre_orders_echoes_numerically_and_needs_both_parts(tmp_path, rng):
    gre = synthetic_gre(rng, te=tuple(0.003 * (k + 1) for k in range(11)), shape=(4, 4, 3))
    out = io.write_gre_bids(gre, tmp_path, "x")
    mags, _ = io.bids.find_megre(tmp_path)
    assert [int(p.name.split("_echo-")[1].split("_")[0]) for p in mags] == list(range(1, 12))
    out["phase"][4].unlink()
    with pytest.raises(InputError, match="echo 5 has no part-phase") as err:
        io.bids.find_megre(tmp_path)
    assert "echo-5_part-mag" in str(err.value)


@pytest.mark.parametrize("system", ["RAS", "LPS"])
def test_markups_round_trip(tmp_path, system):
    pts = {"AC": [0.5, 2.25, -3.0], "PC": (0.4, -23.1, -2.9), "MS": np.array([0.0, -10.0, 30.0])}
    path = io.write_points(tmp_path / "landmarks.mrk.json", pts, coordinate_system=system)
    doc = json.loads(path.read_text())
    mk = doc["markups"][0]
    assert mk["type"] == "Fiducial" and mk["coordinateSystem"] == system
    assert [cp["label"] for cp in mk["controlPoints"]] == ["AC", "PC", "MS"]
    stored = np.array(mk["controlPoints"][0]["position"])
    assert np.allclose(stored, [0.5, 2.25, -3.0] if system == "RAS" else [-0.5, -2.25, -3.0])
    back = io.read_points(path)
    assert list(back) == ["AC", "PC", "MS"]
    for k, v in pts.items():
        assert np.allclose(back[k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landmarks.mrk.json"]


def test_read_points_of_a_slicer_lps_file_and_bad_files(tmp_path):
    # the example in Slicer's documentation: LPS positions, converted to RAS on reading
    doc = {"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [
        {"label": "F-1", "position": [-53.4, -73.3, 0.0]}, {"label": "F-2", "position": [49.9, -88.6, 1.0]}]}]}
    (tmp_path / "f.mrk.json").write_text(json.dumps(doc))
    pts = io.read_points(tmp_path / "f.mrk.json")
    assert np.allclose(pts["F-1"], [53.4, 73.3, 0.0]) and np.allclose(pts["F-2"], [-49.9, 88.6, 1.0])
    (tmp_path / "bad.mrk.json").write_text("{not json")
    with pytest.raises(InputError, match="not a Slicer markups") as err:
        io.read_points(tmp_path / "bad.mrk.json")
    assert "bad.mrk.json" in str(err.value)
    doc["markups"][0]["controlPoints"][1]["label"] = "F-1"
    (tmp_path / "dup.mrk.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="appears twice"):
        io.read_points(tmp_path / "dup.mrk.json")
    with pytest.raises(InputError, match="three finite"):
        io.write_points(tmp_path / "nan.mrk.json", {"AC": [0, np.nan, 0]})
    assert not (tmp_path / "nan.mrk.json").exists()


def test_slicer_reads_our_markups_and_we_read_slicers(tmp_path):
    """Slicer's own JSON storage node (slicer-core MRML) agrees on labels and RAS positions."""
    slicer = pytest.importorskip("slicer")
    pts = {"AC": [1.5, -2.0, 3.0], "PC": [0.5, -25.0, 2.0], "MS": [0.25, -12.0, 40.0]}
    for system in ("RAS", "LPS"):
        path = io.write_points(tmp_path / f"ours_{system}.mrk.json", pts, coordinate_system=system)
        scene = slicer.vtkMRMLScene()
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        storage = slicer.vtkMRMLMarkupsJsonStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(path))
        assert storage.ReadData(node) == 1
        got = {node.GetNthControlPointLabel(i): np.array(node.GetNthControlPointPositionVector(i))
               for i in range(node.GetNumberOfControlPoints())}
        assert list(got) == list(pts)
        for k, v in pts.items():
            assert np.allclose(got[k], v, atol=1e-9)
    node.SetNthControlPointPosition(0, 10.0, 20.0, 30.0)   # Slicer writes (LPS by default) ...
    storage.SetFileName(str(tmp_path / "slicer.mrk.json"))
    assert storage.WriteData(node) == 1
    back = io.read_points(tmp_path / "slicer.mrk.json")  # ... and we read RAS back
    assert np.allclose(back["AC"], [10.0, 20.0, 30.0]) and np.allclose(back["PC"], pts["PC"])
