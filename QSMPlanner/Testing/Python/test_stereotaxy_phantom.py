"""The digital patient's CT with each frame: the pose found from its rendered N-localizer matches the truth,
from the CT as stored and from the same CT in whole-number HU (as scanners store it)."""
import numpy as np
import pytest

from QSMPlannerLib.stereotaxy import register_frame
from QSMPlannerLib.stereotaxy.geometry import apply


@pytest.mark.parametrize("frame", ["leksell", "crw", "brw"])
def test_digital_patient_frame_pose(frame):
    phantom = pytest.importorskip("QSMPlannerLib.phantom")
    patient = phantom.make_patient(seed=0, small=True, frame=frame)
    assert patient.ct.meta["frame_system"] == frame
    true_xyz_from_ct = np.asarray(patient.transforms["xyz_from_ct"])
    ct_from_t1 = np.linalg.inv(patient.transforms["t1_from_ct"])
    whole_hu = np.clip(np.rint(patient.ct.data), -1024, 32767).astype(np.int16)
    for stored, ct in (("as stored", patient.ct), ("whole HU", patient.ct.with_data(whole_hu, "CT"))):
        reg = register_frame(ct)
        assert reg.system == frame, stored
        assert not any("threshold" in w for w in reg.warnings), (stored, reg.warnings)   # the first level works
        assert reg.fre_mm < 0.3, (stored, reg.fre_mm)
        for name, stn_t1 in patient.stn_centroids.items():
            stn_ct = apply(ct_from_t1, stn_t1)
            err = np.linalg.norm(apply(reg.xyz_from_ras, stn_ct) - apply(true_xyz_from_ct, stn_ct))
            assert err < 0.2, (stored, name, err)
            assert reg.predicted_tre_mm(target_ras=stn_ct) < 0.3


@pytest.mark.parametrize("frame", ["leksell", "crw"])
def test_digital_patient_ct_holds_the_frame_hardware(frame):
    """Pins, posts, the base ring and the head holder are on the CT of every frame, in the air around the
    patient's own head."""
    phantom = pytest.importorskip("QSMPlannerLib.phantom")
    from QSMPlannerLib.stereotaxy.synthetic import HEAD_CENTRE, PIN_HU, RING_BELOW_RODS_MM, clutter_extent_s
    patient = phantom.make_patient(seed=1, small=True, frame=frame)
    ct = patient.ct
    ct_from_frame = np.asarray(patient.transforms["ct_from_frameras"])
    ring_radius = 105.0
    ring_s = clutter_extent_s(frame) + 0.5 * (RING_BELOW_RODS_MM[1] - RING_BELOW_RODS_MM[0])

    def hu_at(p_frame):
        ijk = np.round(apply(np.linalg.inv(ct.ras_from_ijk), apply(ct_from_frame, p_frame))).astype(int)
        assert np.all(ijk >= 0) and np.all(ijk < ct.data.shape), p_frame
        return float(ct.data[tuple(ijk)])

    for side in (-1.0, 1.0):
        assert hu_at([side * ring_radius, HEAD_CENTRE[1], ring_s]) > 1500.0, side        # the base ring
    assert hu_at([66.1, HEAD_CENTRE[1] - 75.0, ring_s + 30.0]) > 200.0                      # head holder shell
    assert ct.data.max() > 0.8 * PIN_HU                                                    # the pins
    assert hu_at([0.0, HEAD_CENTRE[1], ring_s + 150.0]) < 100.0                            # the patient's brain stays
