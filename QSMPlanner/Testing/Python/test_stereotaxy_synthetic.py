"""render_localizer_ct: the rods appear where the Leksell geometry puts them."""
import numpy as np

from QSMPlannerLib.stereotaxy import PLATES, render_localizer_ct
from QSMPlannerLib.stereotaxy.geometry import FRAMERAS_FROM_XYZ, XYZ_FROM_FRAMERAS, apply
from QSMPlannerLib.volume import ras_from_ijk_matrix, rotation_matrix


def _pose(angles_deg, shift):
    """image RAS <- frame RAS rigid pose."""
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(angles_deg)
    m[:3, 3] = shift
    return m


def _grid(voxel):
    lo, hi = np.array([-112.0, -85.0, -72.0]), np.array([112.0, 130.0, 72.0])
    shape = tuple(int(s) for s in np.ceil((hi - lo) / voxel) + 1)
    return ras_from_ijk_matrix(voxel, origin=lo), shape


def test_rods_where_geometry_says():
    voxel = np.array([0.9, 0.9, 1.5])
    ras_from_ijk, shape = _grid(voxel)
    image_from_frame = _pose((4.0, -3.0, 6.0), (2.0, -3.0, 1.5))
    xyz_from_ras = XYZ_FROM_FRAMERAS @ np.linalg.inv(image_from_frame)
    ct = render_localizer_ct(ras_from_ijk, shape, xyz_from_ras, noise_hu=0.0)
    assert ct.shape3 == shape and ct.data.dtype == np.float32
    data = ct.data
    ijk_from_xyz = np.linalg.inv(xyz_from_ras @ ras_from_ijk)
    # every rod's mid part: intensity-weighted centroid of a small neighbourhood (in the rod's
    # cross-section) lies on the rod
    errors = []
    for plate in PLATES.values():
        for a, b in plate.rods():
            for t in (0.25, 0.5, 0.75):
                p_xyz = a + t * (b - a)
                c = np.round(apply(ijk_from_xyz, p_xyz)).astype(int)
                sl = tuple(slice(ci - 4, ci + 5) for ci in c)
                block = data[sl] + 1000.0
                idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij"), -1)
                assert block.max() > 1000.0, "rod missing"
                pts = apply(xyz_from_ras @ ras_from_ijk, idx.reshape(-1, 3).astype(float))
                w = block.reshape(-1)
                # distance of the weighted points to the rod's axis
                axis = (b - a) / np.linalg.norm(b - a)
                rel = pts - p_xyz
                perp = rel - (rel @ axis)[:, None] * axis
                centroid_perp = (w[:, None] * perp).sum(0) / w.sum()
                errors.append(np.linalg.norm(centroid_perp))
    assert max(errors) < 0.25, errors
    # total rod volume ~ pi r^2 * total length (partial volume is conserved)
    lengths = sum(np.linalg.norm(b - a) for p in PLATES.values() for a, b in p.rods())
    occupied = ((data + 1000.0) / 2500.0).sum() * np.prod(voxel)
    expected = np.pi * 1.0 ** 2 * lengths
    assert abs(occupied - expected) / expected < 0.12, (occupied, expected)
    # far from the rods: air
    assert np.allclose(data[data.shape[0] // 2, data.shape[1] // 2], -1000.0)


def test_head_background_and_noise():
    voxel = np.array([2.0, 2.0, 2.0])
    ras_from_ijk, shape = _grid(voxel)
    head = np.full(shape, 40.0, np.float32)
    ct = render_localizer_ct(ras_from_ijk, shape, XYZ_FROM_FRAMERAS, head_hu=head, noise_hu=8.0, rng=3)
    centre = ct.data[20:40, 30:50, 20:40]
    assert abs(centre.mean() - 40.0) < 1.0 and 6.0 < centre.std() < 10.0
    # a lateral rod crossing (X=5, Y=40 -> frame RAS R=95, A=-60) at S=0 is bright
    ijk = np.round(np.linalg.solve(ras_from_ijk, [95.0, -60.0, 0.0, 1.0])[:3]).astype(int)
    i, j, k = ijk
    assert ct.data[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2].max() > 200.0
    # reproducible with the same seed
    ct2 = render_localizer_ct(ras_from_ijk, shape, XYZ_FROM_FRAMERAS, head_hu=head, rng=3)
    assert np.array_equal(ct.data, ct2.data)
    assert np.allclose(FRAMERAS_FROM_XYZ @ XYZ_FROM_FRAMERAS, np.eye(4))


# ---- every frame system, with the clutter of a clinical CT --------------------------------------------
import pytest  # noqa: E402

from QSMPlannerLib.stereotaxy import Clutter, frame_ct_grid, frame_pose, get_system, render_frame_ct  # noqa: E402


def _centroid_offset(data, frame_from_ijk, rod, t):
    """Distance (mm) from the rod's axis of the intensity centroid of a small block around the rod at
    fraction ``t`` of its length (frame RAS)."""
    a, b = rod
    p = a + t * (b - a)
    c = np.round(apply(np.linalg.inv(frame_from_ijk), p)).astype(int)
    sl = tuple(slice(ci - 4, ci + 5) for ci in c)
    block = data[sl].astype(float) + 1000.0
    idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij"), -1).reshape(-1, 3)
    rel = apply(frame_from_ijk, idx.astype(float)) - p
    axis = (b - a) / np.linalg.norm(b - a)
    perp = rel - (rel @ axis)[:, None] * axis
    w = block.reshape(-1)
    return float(np.linalg.norm((w[:, None] * perp).sum(0) / w.sum())), float(block.max())


@pytest.mark.parametrize("system", ["leksell", "crw", "brw"])
def test_every_system_rods_where_geometry_says(system):
    ras_from_ijk, shape = frame_ct_grid(system, (1.0, 1.0, 1.5), tilt_deg=10.0)
    truth = frame_pose([3.0, -4.0, 6.0], [2.0, -1.0, 3.0])
    ct = render_frame_ct(ras_from_ijk, shape, truth, system, noise_hu=0.0, dtype=np.int16)
    assert ct.data.dtype == np.int16 and ct.meta["frame_system"] == system
    frame_from_ijk = truth @ ras_from_ijk
    for plate in get_system(system).plates.values():
        if plate.name not in get_system(system).required_plates:
            continue
        for rod in plate.rods():
            for t in (0.3, 0.7):
                off, peak = _centroid_offset(ct.data, frame_from_ijk, rod, t)
                assert peak > 1000.0 and off < 0.25, (plate.name, t, off)


def test_slabs_do_not_show_and_clutter_is_there():
    ras_from_ijk, shape = frame_ct_grid("crw", (1.5, 1.5, 2.0))
    truth = frame_pose([2.0, 1.0, -3.0], [1.0, 2.0, 0.0])
    a = render_frame_ct(ras_from_ijk, shape, truth, "crw", clutter=Clutter(), noise_hu=0.0, rng=5, slab_slices=3)
    b = render_frame_ct(ras_from_ijk, shape, truth, "crw", clutter=Clutter(), noise_hu=0.0, rng=5, slab_slices=8)
    assert np.allclose(a.data, b.data, atol=1e-3)          # the slab size changes nothing
    frame_from_ijk = truth @ ras_from_ijk

    def hu_at(p_frame):
        i, j, k = np.round(apply(np.linalg.inv(frame_from_ijk), p_frame)).astype(int)
        return float(a.data[i, j, k])

    assert abs(hu_at([0.0, 5.0, 8.0]) - 33.0) < 1.0                       # brain at the head's centre
    assert hu_at([0.0, 5.0 + 92.0 - 5.0 - 3.5, 8.0]) > 1000.0             # frontal bone
    assert abs(hu_at([100.0, 30.0, -30.0]) - 120.0) < 1.0                  # the right plate's acrylic
    assert hu_at([86.0, 5.0, 30.0]) == -1000.0                              # air beside the head
    assert a.data.max() > 3000.0                                           # dental metal
    # streaks: slices through the metal carry bright and dark bands, others do not
    jaw = np.round(apply(np.linalg.inv(frame_from_ijk), [0.0, 60.0, -54.0])).astype(int)[2]
    plain = render_frame_ct(ras_from_ijk, shape, truth, "crw", clutter=Clutter(dental_metal=False),
                            noise_hu=0.0, rng=5)
    assert np.abs(a.data[:, :, jaw] - plain.data[:, :, jaw]).max() > 200.0


def test_psf_blurs_but_keeps_the_rod_centre():
    ras_from_ijk, shape = frame_ct_grid("brw", (0.8, 0.8, 2.0))
    truth = frame_pose([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    sharp = render_frame_ct(ras_from_ijk, shape, truth, "brw", noise_hu=0.0)
    blurred = render_frame_ct(ras_from_ijk, shape, truth, "brw", noise_hu=0.0, psf_mm=0.5)
    rod = get_system("brw").plates["posterior"].rods()[0]
    off_s, peak_s = _centroid_offset(sharp.data, truth @ ras_from_ijk, rod, 0.5)
    off_b, peak_b = _centroid_offset(blurred.data, truth @ ras_from_ijk, rod, 0.5)
    assert peak_b < peak_s and off_b < 0.2 and off_s < 0.2
