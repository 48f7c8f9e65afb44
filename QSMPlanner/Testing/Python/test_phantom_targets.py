"""The digital patient's structures for the GPi and VIM targets: the medial medullary lamina between GPe and
GPi, the optic tract below the posteroventral GPi, the third ventricle and its true walls."""
import numpy as np
import pytest

from QSMPlannerLib.phantom import anatomy, make_patient
from QSMPlannerLib.stereotaxy import acpc_from_ras


@pytest.fixture(scope="module")
def cit():
    """CIT168 labels on the 1 mm model grid's deep box, with that grid."""
    st = anatomy.static_model(1.0)
    grid = st["grid"]
    lo = np.floor((np.array([a for a, _ in anatomy.DEEP_BOX_MNI]) - grid.origin)).astype(int)
    hi = np.ceil((np.array([b for _, b in anatomy.DEEP_BOX_MNI]) - grid.origin)).astype(int) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return st["cit"][box], anatomy.ModelGrid(1.0, grid.origin + lo, st["cit"][box].shape)


@pytest.fixture(scope="module")
def patient():
    return make_patient(seed=3, small=True)


def test_lamina_lies_between_gpe_and_gpi(cit):
    labels, _grid = cit
    occ = anatomy.lamina_occupancy(labels, 1.0)
    gpe, gpi = np.isin(labels, (5, 105)), np.isin(labels, (6, 106))
    # segment voxels keep most of their content; voxels between the two segments become lamina
    assert occ[gpe | gpi].max() <= 0.4 + 1e-6
    sheet = occ > 0.5
    assert sheet.sum() > 50 and not (sheet & (gpe | gpi)).any()
    from scipy import ndimage
    near_both = (ndimage.distance_transform_edt(~gpe) <= 2) & (ndimage.distance_transform_edt(~gpi) <= 2)
    assert np.all(near_both[occ > 0])
    # touching voxel pairs across the GPe/GPi border both lose part of their content
    touching = gpi & ndimage.binary_dilation(gpe)
    assert touching.any() and np.all(occ[touching] > 0.3)


def test_optic_tract_runs_below_the_posteroventral_gpi(cit):
    labels, grid = cit
    s = anatomy.target_structures(labels, grid, 6.0)
    tract = s["optic_tract"][1] > 0.5
    gpi = np.isin(labels, (6, 106))
    assert tract.any() and not (tract & np.isin(labels, (5, 6, 105, 106))).any()
    # in every coronal/sagittal column holding both, the tract is 1-4 mm below the GPi's lowest voxel
    gaps = []
    for i, j in zip(*np.nonzero(tract.any(axis=2) & gpi.any(axis=2))):
        gaps.append(np.nonzero(gpi[i, j])[0].min() - np.nonzero(tract[i, j])[0].max() - 1)
    assert len(gaps) > 20 and 1 <= min(gaps) and max(gaps) <= 6, (min(gaps), max(gaps))
    # third ventricle: CSF between the thalami, |x| < width / 2
    x = grid.axes()[0]
    v3 = s["third_ventricle"][1] > 0.5
    assert np.abs(x[np.nonzero(v3)[0]]).max() < 3.0 + 0.5


def test_patient_labels_values_and_true_ventricle_walls(patient):
    names = patient.label_names
    assert names[anatomy.LAMINA] == "MedialMedullaryLamina" and names[anatomy.OPTIC_TRACT] == "OpticTract"
    assert names[anatomy.THIRD_VENTRICLE] == "ThirdVentricle"
    lab, chi = patient.truth["labels_gre"].data, patient.truth["chi_ppm"].data
    for v in (anatomy.OPTIC_TRACT, anatomy.THIRD_VENTRICLE):
        assert (lab == v).sum() > 5, v
    assert chi[lab == anatomy.OPTIC_TRACT].mean() < chi[np.isin(lab, (6, 106))].mean() - 0.1
    assert abs(chi[lab == anatomy.THIRD_VENTRICLE].mean()) < 0.02
    # the true walls: where the T1 labels change across the AC-PC x axis at the VIM level
    tv = patient.params["third_ventricle"]
    lm = patient.landmarks
    assert tv["left_wall_x_acpc_mm"] < 0 < tv["right_wall_x_acpc_mm"]
    assert 0.85 * tv["width_mni_mm"] < tv["width_mm"] < 1.15 * tv["width_mni_mm"]
    inv = np.linalg.inv(acpc_from_ras(lm["AC"], lm["PC"], lm["MS"]))
    xs = np.arange(-12.0, 12.0, 0.25)
    pts = np.stack([xs, np.full_like(xs, tv["ap_acpc_mm"]), np.zeros_like(xs)], 1) @ inv[:3, :3].T + inv[:3, 3]
    t1lab = patient.labels_t1
    ijk = np.rint(t1lab.ras_to_ijk(pts)).astype(int)
    inside = np.asarray(t1lab.data)[tuple(ijk.T)] == anatomy.THIRD_VENTRICLE
    voxel = float(np.max(t1lab.voxel_mm))
    assert abs(xs[inside].min() - tv["left_wall_x_acpc_mm"]) < voxel
    assert abs(xs[inside].max() - tv["right_wall_x_acpc_mm"]) < voxel
    # and the ventricle is dark on the T1 between the brighter thalami
    t1 = patient.t1
    vals = np.asarray(t1.data)[tuple(np.rint(t1.ras_to_ijk(pts)).astype(int).T)]
    assert vals[inside].mean() < 0.5 * vals[np.abs(xs) > tv["width_mm"] / 2 + 3].mean()
