"""Electrode models on a trajectory (contact positions, in-STN flags) and probe's-eye / in-line reslices."""
import numpy as np
import pytest

from QSMPlannerLib.planning import (ELECTRODES, electrode_model, electrode_polydata, inline_views,
                                    place_electrode, probe_eye_view)
from QSMPlannerLib.volume import Volume, rotation_matrix

TARGET = np.array([12.0, -3.0, -5.0])


def _oblique_grid(shape=(80, 90, 70), voxel=0.9, angles=(8.0, -5.0, 12.0)):
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(angles) * voxel
    centre_ijk = (np.array(shape) - 1) / 2
    m[:3, 3] = np.array([10.0, 0.0, 0.0]) - m[:3, :3] @ centre_ijk
    return m


@pytest.fixture(scope="module")
def stn_volume():
    shape = (80, 90, 70)
    vol = Volume(np.zeros(shape, np.float32), _oblique_grid(shape))
    ras = vol.voxel_ras_grid()
    d = ((ras - TARGET) / np.array([6.0, 4.5, 3.0]))
    stn = (d ** 2).sum(-1) <= 1
    labels = np.zeros(shape, np.uint8)
    labels[stn] = 2
    img = (ras[..., 0] + 2 * ras[..., 1] + 3 * ras[..., 2]).astype(np.float32)  # linear: exact under trilinear
    return vol.with_data(img, "linear"), vol.with_data(labels, "labels")


def test_manufacturer_dimensions():
    m89, m87, bs = ELECTRODES["medtronic_3389"], ELECTRODES["medtronic_3387"], ELECTRODES["bsci_vercise_directional"]
    assert m89.span_mm == pytest.approx(7.5) and m87.span_mm == pytest.approx(10.5)
    assert m89.n_contacts == 4 and bs.n_contacts == 8 and bs.span_mm == pytest.approx(7.5)
    assert electrode_model("3389") is m89 and electrode_model("vercise") is bs


@pytest.mark.parametrize("key", list(ELECTRODES))
def test_contacts_along_the_path(key, stn_volume):
    _, labels = stn_volume
    entry = TARGET + 70 * np.array([0.3, 0.45, 0.84]) / np.linalg.norm([0.3, 0.45, 0.84])
    m = ELECTRODES[key]
    pl = place_electrode(m, TARGET, entry, "right", segmentation=labels)
    axis = (entry - TARGET) / np.linalg.norm(entry - TARGET)
    assert len(pl.contacts) == m.n_contacts
    # default depth centres the contact array on the target
    levels = sorted({c.level for c in pl.contacts})
    mids = [np.mean([c.center_ras for c in pl.contacts if c.level == lv], axis=0) for lv in levels]
    ring_mid = pl.tip_ras + axis * (m.tip_mm + m.span_mm / 2)
    assert np.allclose(ring_mid, TARGET, atol=1e-9)
    # level centres are contact_length + spacing apart along the axis; segments sit on the lead surface
    step = m.contact_length_mm + m.spacing_mm
    for lv in levels[1:]:
        d = (mids[lv] - mids[lv - 1]) @ axis
        assert d == pytest.approx(step, abs=1e-9)
    for c in pl.contacts:
        if c.kind == "segment":
            axial = pl.tip_ras + axis * ((c.center_ras - pl.tip_ras) @ axis)
            assert np.linalg.norm(c.center_ras - axial) == pytest.approx(m.diameter_mm / 2)
    # the STN (semi-axis 3-6 mm) holds the middle contacts of the short leads
    assert pl.n_in_target >= 2
    # moved 15 mm up the path, nothing is in the STN any more
    high = place_electrode(m, TARGET, entry, "right", tip_depth_mm=-15.0, segmentation=labels)
    assert high.n_in_target == 0
    # wrong side's label -> not in STN
    left = place_electrode(m, TARGET, entry, "left", segmentation=labels)
    assert left.n_in_target == 0
    d = pl.to_dict()
    assert d["model"] == key and len(d["contacts"]) == m.n_contacts


def test_electrode_polydata_bounds():
    entry = TARGET + np.array([0, 0, 70.0])
    pl = place_electrode("3389", TARGET, entry, "right")
    body, contacts = electrode_polydata(pl)
    b = body.GetBounds()
    assert b[4] == pytest.approx(pl.tip_ras[2], abs=0.01)
    assert abs(b[0] - (TARGET[0] - 0.635)) < 0.05
    cb = contacts.GetBounds()
    assert cb[4] == pytest.approx(pl.tip_ras[2] + 1.5, abs=0.01)
    assert cb[5] == pytest.approx(pl.tip_ras[2] + 1.5 + 7.5, abs=0.01)


def test_probe_eye_view_geometry(stn_volume):
    img_vol, labels = stn_volume
    entry = TARGET + 70 * np.array([0.3, 0.45, 0.84]) / np.linalg.norm([0.3, 0.45, 0.84])
    n = (entry - TARGET) / np.linalg.norm(entry - TARGET)
    for depth in (0.0, 5.0):
        v = probe_eye_view(img_vol, TARGET, entry, depth, fov_mm=20, spacing_mm=0.5, labels=labels)
        h, w = v.image.shape
        assert (h, w) == (41, 41)
        # every pixel lies on the plane perpendicular to the path at that depth
        m = v.ras_from_pixel
        cols, rows = np.meshgrid(np.arange(w), np.arange(h))
        ras = np.stack([cols.ravel(), rows.ravel(), np.zeros(cols.size)], 1) @ m[:3, :3].T + m[:3, 3]
        assert np.allclose((ras - TARGET) @ n, depth, atol=1e-6)
        # the linear image is reproduced exactly inside the grid (independent evaluation)
        expect = ras[:, 0] + 2 * ras[:, 1] + 3 * ras[:, 2]
        assert np.allclose(v.image.ravel(), expect, atol=1e-3)
        # the path crosses the centre pixel
        assert np.allclose(v.pixel_of(TARGET + depth * n)[0], [(w - 1) / 2, (h - 1) / 2], atol=1e-6)
    v0 = probe_eye_view(img_vol, TARGET, entry, 0.0, labels=labels)
    assert v0.labels[v0.labels.shape[0] // 2, v0.labels.shape[1] // 2] == 2
    v20 = probe_eye_view(img_vol, TARGET, entry, 20.0, labels=labels)
    assert not (v20.labels == 2).any()


def test_inline_views_contain_the_path(stn_volume):
    img_vol, labels = stn_volume
    entry = TARGET + 40 * np.array([0.3, 0.45, 0.84]) / np.linalg.norm([0.3, 0.45, 0.84])
    a, b = inline_views(img_vol, TARGET, entry, fov_mm=30, labels=labels)
    for v in (a, b):
        m = v.ras_from_pixel
        normal = m[:3, 2]
        assert abs((entry - TARGET) @ normal) < 1e-6                 # path lies in the plane
        assert abs((TARGET - m[:3, 3]) @ normal) < 1e-6
        px = v.path_px
        assert px[1, 1] < px[0, 1]                                   # entry above the target
        assert np.allclose(px[:, 0], (v.image.shape[1] - 1) / 2)     # path in the middle column
        assert (v.labels == 2).any()
    assert abs(a.u_ras @ b.u_ras) < 1e-9                             # the two planes are orthogonal
    vol_img = a.as_volume()
    assert vol_img.shape3 == (a.image.shape[1], a.image.shape[0], 1)
