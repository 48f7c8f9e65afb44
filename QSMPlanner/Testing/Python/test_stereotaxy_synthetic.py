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
