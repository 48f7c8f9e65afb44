"""Volume geometry: RAS <-> IJK, SimpleITK (LPS) conversion, atomic writes keep geometry."""
import numpy as np
import pytest

from QSMPlannerLib.io import read_volume, write_volume
from QSMPlannerLib.io.atomic import atomic_path
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix, rotation_matrix


def oblique_volume(rng):
    direction = rotation_matrix([15.0, -7.0, 20.0])
    m = ras_from_ijk_matrix([0.9, 1.1, 2.0], direction, origin=[-40.5, 12.25, -30.0])
    return Volume(rng.normal(size=(7, 6, 5)).astype(np.float32), m, "oblique")


def test_ijk_ras_round_trip_is_identity(rng):
    vol = oblique_volume(rng)
    ijk = rng.uniform(0, 5, size=(20, 3))
    assert np.allclose(vol.ras_to_ijk(vol.ijk_to_ras(ijk)), ijk, atol=1e-9)
    assert np.allclose(vol.voxel_mm, [0.9, 1.1, 2.0])
    grid = vol.voxel_ras_grid()
    assert np.allclose(grid[3, 2, 1], vol.ijk_to_ras([3, 2, 1]))


def test_sitk_conversion_maps_same_voxel_to_same_point(rng):
    vol = oblique_volume(rng)
    img = vol.to_sitk()
    # SimpleITK reports LPS physical points: L = -R, P = -A.
    p_lps = np.array(img.TransformIndexToPhysicalPoint((3, 2, 1)))
    p_ras = vol.ijk_to_ras([3, 2, 1])
    assert np.allclose(p_lps, p_ras * [-1, -1, 1], atol=1e-6)
    assert img[3, 2, 1] == pytest.approx(float(vol.data[3, 2, 1]))
    back = Volume.from_sitk(img)
    assert np.allclose(back.ras_from_ijk, vol.ras_from_ijk, atol=1e-6)
    assert np.array_equal(back.data, vol.data)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_read_keeps_oblique_geometry(tmp_path, rng, suffix):
    vol = oblique_volume(rng)
    path = write_volume(vol, tmp_path / f"v{suffix}")
    back = read_volume(path)
    assert np.allclose(back.ras_from_ijk, vol.ras_from_ijk, atol=1e-4)
    assert np.allclose(back.data, vol.data, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [f"v{suffix}"]  # no temporary left behind


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_mask_box_is_the_bounding_box_grown_and_clipped():
    from QSMPlannerLib.volume import mask_box
    m = np.zeros((20, 15, 12), bool)
    m[3, 7, 2] = m[11, 4, 9] = True
    assert mask_box(m) == (slice(3, 12), slice(4, 8), slice(2, 10))
    assert mask_box(m, 3) == (slice(0, 15), slice(1, 11), slice(0, 12))
    assert mask_box(np.zeros((4, 5, 6), bool), 2) == (slice(0, 4), slice(0, 5), slice(0, 6))
