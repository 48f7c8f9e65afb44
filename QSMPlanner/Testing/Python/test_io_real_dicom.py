"""Real scanner DICOM (Siemens Prisma, GE DV27, Philips enhanced; neurolabusc/dcm_qa_fmap, BSD-2) through
dcm2niix and the GRE / field-map loaders: geometry, echo times, phase scaling and the magnitude/phase
split must equal dcm2niix's reference conversions (Testing/Data/real-dicom/Ref)."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from QSMPlannerLib import io
from QSMPlannerLib.errors import InputError
from QSMPlannerLib.io import dcm2niix
from QSMPlannerLib.io.dicom_series import dicom_echo_info
from QSMPlannerLib.io.loaders import gre_from_echo_volumes
from QSMPlannerLib.io.phase import wrap

DATA = Path(__file__).resolve().parents[1] / "Data" / "real-dicom"
REF = DATA / "Ref"
SIEMENS_MAG, SIEMENS_PHASE = DATA / "Siemens" / "2_gre_field_magph", DATA / "Siemens" / "3_gre_field_magph"


def ref(name):
    img = nib.load(str(REF / f"{name}.nii.gz"))
    return np.asarray(img.dataobj), img.affine, json.loads((REF / f"{name}.json").read_text())


@pytest.mark.parametrize("folder, refs", [
    ("Siemens", {"Si_2_gre_field_magph_e1": ("magnitude", 1), "Si_2_gre_field_magph_e2": ("magnitude", 2),
                 "Si_3_gre_field_magph_e2_ph": ("phase", 2)}),
    ("GE", {"GE_6_CV_Neuro_HH_Adv": ("magnitude", None), "GE_6_CV_Neuro_HH_Adv_fieldmaphz": ("fieldmap_hz", None)}),
    # Philips magnitude: ImageType T1/MIXED does not say
    ("Philips", {"Ph_801_WIP_B0_NS_e1": (None, 1), "Ph_801_WIP_B0_NS_e2_fieldmaphz": ("fieldmap_hz", 2)}),
])
def test_conversion_equals_the_reference(folder, refs):
    images = dcm2niix.convert(DATA / folder)
    assert len(images) == len(refs)
    for name, (part, echo) in refs.items():
        data, affine, side = ref(name)
        same = [im for im in images if np.array_equal(im.volume.data, data)
                and np.allclose(im.volume.ras_from_ijk, affine, atol=1e-4)]
        assert len(same) == 1, name                      # pixel values and voxel -> RAS geometry
        im = same[0]
        assert im.part == part and im.echo_number == echo
        assert im.te_s == side.get("EchoTime")
        for key in ("EchoTime1", "EchoTime2", "MagneticFieldStrength", "Manufacturer", "ImageType", "Units"):
            assert im.sidecar.get(key) == side.get(key), key


def test_siemens_phase_difference_is_one_echo_with_delta_te():
    gre = io.load_gre(mag=[SIEMENS_MAG], phase=[SIEMENS_PHASE])
    mag1, aff, side1 = ref("Si_2_gre_field_magph_e1")
    ph, aff_ph, side_ph = ref("Si_3_gre_field_magph_e2_ph")
    assert gre.n_echoes == 1 and gre.te_s[0] == pytest.approx(side_ph["EchoTime2"] - side_ph["EchoTime1"])
    assert np.allclose(gre.ras_from_ijk, aff, atol=1e-4) and np.allclose(aff, aff_ph)
    assert np.array_equal(gre.magnitude[..., 0], mag1.astype(np.float32))   # magnitude of the first echo
    assert "[-4096, 4095]" in gre.phase_scaling and "Siemens via dcm2niix" in gre.phase_scaling
    assert np.abs(wrap(gre.phase_rad[..., 0] - ph * np.pi / 4096)).max() < 1e-5
    assert gre.b0_tesla == 3.0 and any("phase difference" in w for w in gre.warnings)
    assert np.allclose(gre.b0_dir_ijk, io.b0_dir_from_geometry(aff))


def test_b0_maps_are_refused_as_phase_and_read_as_field_maps():
    for folder, name in (("GE", "GE_6_CV_Neuro_HH_Adv_fieldmaphz"), ("Philips", "Ph_801_WIP_B0_NS_e2_fieldmaphz")):
        with pytest.raises(InputError, match="--total-field") as err:
            io.load_gre(bids=DATA / folder)
        assert folder in str(err.value)
        field, side = dcm2niix.load_dicom_field(DATA / folder)
        data, affine, _ = ref(name)
        assert np.array_equal(field.data, data) and np.allclose(field.ras_from_ijk, affine, atol=1e-4)
        assert side["Units"] == "Hz"
    with pytest.raises(InputError, match="no field map in Hz"):
        dcm2niix.load_dicom_field(SIEMENS_MAG)


def test_dicom_attributes_behind_slicer_volumes():
    """What the Slicer adapter calls with the files behind a volume that Slicer's DICOM module loaded."""
    e1 = sorted(SIEMENS_MAG.glob("e1_*.dcm"))
    info = dicom_echo_info(e1)
    assert info.part == "magnitude" and info.te_s == pytest.approx(0.00519) and info.echo_number == 1
    assert info.b0_tesla == 3.0 and info.manufacturer.upper().startswith("SIEMENS")
    ph = dicom_echo_info([pydicom.dcmread(f) for f in sorted(SIEMENS_PHASE.glob("*.dcm"))])
    assert ph.part == "phase" and ph.te_s == pytest.approx(0.00765) and not ph.ge_phase
    assert ph.value_range == (-4096.0, 4094.0)          # 12 bits, slope 2, intercept -4096
    with pytest.raises(InputError, match="2 echo times"):
        dicom_echo_info(sorted(SIEMENS_MAG.glob("*.dcm")))
    ge = dicom_echo_info(sorted((DATA / "GE" / "6_CV_Neuro").iterdir())[:1])
    assert ge.manufacturer.startswith("GE") and ge.b0_tesla == 3.0
    with pytest.raises(InputError, match="echo times|mix"):   # enhanced: magnitude + B0 map frames
        dicom_echo_info([DATA / "Philips" / "fmap" / "IM_0027_fMAP.dcm"])
    # volumes as Slicer would hand them (here: dcm2niix's, RAS) + their infos -> one GRE
    images = {im.name: im for im in dcm2niix.convert(DATA / "Siemens")}
    mag = images["series2_e2"].volume
    phase = images["series3_e2_ph"].volume
    gre = gre_from_echo_volumes([mag], [phase], [dicom_echo_info(sorted(SIEMENS_MAG.glob("e2_*.dcm")))], [ph])
    assert gre.te_s[0] == pytest.approx(0.00765) and "[-4096, 4095]" in gre.phase_scaling
    with pytest.raises(InputError, match="say this volume is phase"):
        gre_from_echo_volumes([phase], [phase], [ph], [ph])
