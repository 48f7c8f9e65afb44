"""Rigid registration on a real head (skull, scalp fat, face, neck; Testing/Data/real-head): a GRE-like
image with a receive bias field and Rician noise, a thin oblique slab and a CT-like image, each in a
known pose; and bad input through the CLI (exit 2 naming the file)."""
import json
from pathlib import Path

import numpy as np
import pytest

from QSMPlannerLib.io.volumes import read_volume, write_volume
from QSMPlannerLib.phantom import realistic
from QSMPlannerLib.registration import register_ct_to_t1, register_gre_to_t1, register_rigid
from QSMPlannerLib.registration.atlas import brain_mask
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix

HEAD = Path(__file__).resolve().parents[1] / "Data" / "real-head" / "mean_head_2mm.nii.gz"


@pytest.fixture(scope="module")
def head():
    t1 = read_volume(HEAD)
    t1 = t1.with_data(np.asarray(t1.data, np.float32))
    brain = np.asarray(brain_mask(t1).data) > 0
    return t1, brain, t1.voxel_ras_grid()[brain][::7]


def _tre(est, truth, pts):
    back = np.linalg.inv(truth)
    moving_pts = pts @ back[:3, :3].T + back[:3, 3]
    return np.linalg.norm(moving_pts @ est[:3, :3].T + est[:3, 3] - pts, axis=1)


def _posed(t1, pts, angles, shift, centre_offset=(0.0, 0.0, 0.0)):
    """Pose about the brain centre (t1_from_moving) and the moving grid's centre in its own world."""
    centre = pts.mean(0)
    pose = realistic.pose_matrix(angles, shift)
    pose[:3, 3] += centre - pose[:3, :3] @ centre
    inv = np.linalg.inv(pose)
    return pose, inv[:3, :3] @ (centre + np.asarray(centre_offset)) + inv[:3, 3]


def _inside(moving, pose, pts, inset_mm=4.0):
    inv = np.linalg.inv(moving.ras_from_ijk) @ np.linalg.inv(pose)
    ijk = pts @ inv[:3, :3].T + inv[:3, 3]
    inset = inset_mm / moving.voxel_mm
    return pts[np.all((ijk >= inset) & (ijk <= np.array(moving.shape3) - 1 - inset), axis=1)]


@pytest.mark.main_leg
def test_gre_with_neck_bias_and_rician_noise_15deg_20mm(head):
    t1, _, pts = head
    pose, centre = _posed(t1, pts, (10.0, 8.0, -7.0), (-12.0, 12.0, 10.0), (0.0, 0.0, -10.0))
    grid = realistic.slab_grid(centre, (1.8, 1.8, 3.0), (230.0, 230.0, 200.0))   # head, face and neck
    moving = realistic.gre_like(t1, grid, pose, np.random.default_rng(3), snr=20.0, bias_amplitude=0.4)
    # the workflow's call (brain masks grown to take in the skull): its first attempt holds
    messages = []
    result = register_gre_to_t1(t1, moving, messages=messages)
    assert messages == []
    tre = _tre(result.fixed_from_moving, pose, _inside(moving, pose, pts))
    assert tre.mean() <= 0.25 and tre.max() <= 0.5, (tre.mean(), tre.max())
    qc = result.qc
    assert qc["restart_disagreement_centre_mm"] <= qc["restart_disagreement_mm"] < 1.5
    assert qc["residual_mismatch"] < qc["residual_mismatch_start"] <= 1.0
    assert f"{qc['restart_disagreement_centre_mm']:.2f} mm apart" in qc["summary"]
    json.dumps(result.to_dict(), allow_nan=False)  # plan.json's registration_qc


@pytest.mark.main_leg
def test_bias_correction_is_what_holds_the_pose(head):
    """The same image with and without its receive bias registers to the same pose (the relative bias
    is divided out), both close to the truth."""
    t1, _, pts = head
    pose, centre = _posed(t1, pts, (4.0, -3.0, 2.0), (3.0, -4.0, 2.0))
    grid = realistic.slab_grid(centre, (1.8, 1.8, 3.0), (230.0, 230.0, 180.0))
    flat = realistic.gre_like(t1, grid, pose, np.random.default_rng(5), snr=40.0, bias_amplitude=0.0)
    field = realistic.bias_field(grid.shape3, np.random.default_rng(11), 0.5)
    assert field.max() / field.min() > 1.5
    biased = flat.with_data(flat.data * field)
    inside = _inside(flat, pose, pts)
    tre = [_tre(register_rigid(t1, m).fixed_from_moving, pose, inside) for m in (flat, biased)]
    assert tre[0].mean() <= 0.2 and tre[1].mean() <= 0.25, (tre[0].mean(), tre[1].mean())


def test_thin_oblique_slab(head):
    t1, _, pts = head
    pose, centre = _posed(t1, pts, (6.0, -4.0, 3.0), (5.0, -8.0, 6.0), (0.0, 0.0, -20.0))
    grid = realistic.slab_grid(centre, (1.8, 1.8, 3.0), (230.0, 230.0, 200.0), thickness_mm=45.0,
                               tilt_deg=20.0)
    moving = realistic.gre_like(t1, grid, pose, np.random.default_rng(4), snr=25.0)
    assert moving.shape3[2] == 15
    result = register_rigid(t1, moving)
    inside = _inside(moving, pose, pts)
    assert len(inside) > 200
    tre = _tre(result.fixed_from_moving, pose, inside)
    assert tre.mean() <= 0.3 and tre.max() <= 0.6, (tre.mean(), tre.max())
    assert result.qc.get("slab_as_fixed") is True


@pytest.mark.main_leg
def test_ct_like_to_t1(head):
    t1, brain, pts = head
    pose, centre = _posed(t1, pts, (8.0, -5.0, 4.0), (10.0, -8.0, 7.0), (0.0, 0.0, -10.0))
    grid = realistic.slab_grid(centre, (1.2, 1.2, 2.0), (250.0, 250.0, 200.0))
    moving = realistic.ct_like(t1, grid, pose, np.random.default_rng(6), brain)
    assert moving.data.min() < -900 and moving.data.max() > 700
    messages = []
    result = register_ct_to_t1(t1, moving, messages=messages)
    assert messages == []
    tre = _tre(result.fixed_from_moving, pose, _inside(moving, pose, pts))
    # near the CT -> T1 targets (mean <= 0.10, max <= 0.25 mm)
    assert tre.mean() <= 0.11 and tre.max() <= 0.22, (tre.mean(), tre.max())


@pytest.mark.main_leg
def test_cli_registers_a_ct_without_masks(tmp_path, capsys, head):
    """``qsmplanner register`` with a CT (HU) and no masks takes the CT path (head masks)."""
    from QSMPlannerLib.registration import read_transform
    t1, brain, pts = head
    pose, centre = _posed(t1, pts, (-6.0, 4.0, -5.0), (-8.0, 9.0, -6.0), (0.0, 0.0, -10.0))
    grid = realistic.slab_grid(centre, (1.2, 1.2, 2.0), (250.0, 250.0, 200.0))
    ct = realistic.ct_like(t1, grid, pose, np.random.default_rng(8), brain)
    fixed, moving = write_volume(t1, tmp_path / "t1.nii.gz"), write_volume(ct, tmp_path / "ct.nii.gz")
    out = tmp_path / "ct_to_t1.h5"
    code, err = _cli(["--fixed", fixed, "--moving", moving, "--out-transform", out], capsys)
    assert code == 0, err
    tre = _tre(read_transform(out), pose, _inside(ct, pose, pts))
    assert tre.mean() <= 0.3 and tre.max() <= 0.6, (tre.mean(), tre.max())


def _cli(args, capsys):
    from QSMPlannerLib.cli import main
    code = main(["register"] + [str(a) for a in args])
    return code, capsys.readouterr().err


def test_cli_refuses_bad_input_naming_the_file(tmp_path, capsys, head):
    t1, _, _ = head
    fixed = write_volume(t1, tmp_path / "t1.nii.gz")
    out = tmp_path / "t.h5"
    flat = write_volume(Volume(np.ones((60, 60, 1), np.float32) * np.arange(60)[:, None, None],
                               ras_from_ijk_matrix((2, 2, 2), origin=(-60, -60, 0))), tmp_path / "slice.nii.gz")
    code, err = _cli(["--fixed", fixed, "--moving", flat, "--out-transform", out], capsys)
    assert code == 2 and "slice.nii.gz" in err and "2-D" in err
    far = write_volume(t1.with_data(t1.data), tmp_path / "far.nii.gz")
    moved = read_volume(far)
    moved.ras_from_ijk[:3, 3] += (0.0, 0.0, 900.0)
    write_volume(moved, far)
    code, err = _cli(["--fixed", fixed, "--moving", far, "--out-transform", out], capsys)
    assert code == 2 and "far.nii.gz" in err and "overlap" in err
    empty = write_volume(t1.with_data(np.zeros(t1.shape3, np.uint8)), tmp_path / "empty_mask.nii.gz")
    code, err = _cli(["--fixed", fixed, "--moving", fixed, "--fixed-mask", empty, "--out-transform", out], capsys)
    assert code == 2 and "empty_mask.nii.gz" in err and "empty" in err
    assert not out.exists()
