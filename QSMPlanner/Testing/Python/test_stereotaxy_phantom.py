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
        assert reg.fre_mm < 0.3, (stored, reg.fre_mm)
        for name, stn_t1 in patient.stn_centroids.items():
            stn_ct = apply(ct_from_t1, stn_t1)
            err = np.linalg.norm(apply(reg.xyz_from_ras, stn_ct) - apply(true_xyz_from_ct, stn_ct))
            assert err < 0.2, (stored, name, err)
            assert reg.predicted_tre_mm(target_ras=stn_ct) < 0.3
