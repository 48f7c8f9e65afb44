"""DICOM reading: synthetic Siemens/GE/Philips multi-echo GRE series and T1/CT series written with
pydicom (oblique, shuffled files) and read back: echoes, magnitude/phase, TE, B0, phase scaling and
sign, and the voxel-to-RAS geometry."""
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from QSMPlannerLib import io
from QSMPlannerLib.errors import InputError
from QSMPlannerLib.io.phase import wrap
from QSMPlannerLib.volume import LPS_FROM_RAS, ras_from_ijk_matrix, rotation_matrix

SHAPE = (14, 11, 6)   # i (columns), j (rows), k (slices)
TE_MS = (4.0, 9.5, 15.0)
RAS_FROM_IJK = ras_from_ijk_matrix([0.8, 0.9, 1.6], rotation_matrix([18.0, -11.0, 25.0]), [-30.0, 12.5, -8.0])


def save_dicom(ds, path):
    """Write ``ds`` as a conformant DICOM file (pydicom 3 keyword; pydicom 2.4, bundled by Slicer 5.8, spells
    it ``write_like_original=False``)."""
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, write_like_original=False)


def write_slices(directory, stored, ras_from_ijk, header, rng, sop_class=MRImageStorage, signed=False,
                 series_uid=None):
    """Write ``stored`` (I, J, K integers) as one DICOM file per slice, in shuffled order, random names."""
    directory.mkdir(parents=True, exist_ok=True)
    lps = LPS_FROM_RAS @ ras_from_ijk
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    iop = np.concatenate([lps[:3, 0] / sp[0], lps[:3, 1] / sp[1]])
    series_uid = series_uid or generate_uid()
    for k in rng.permutation(stored.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT" if sop_class == CTImageStorage else "MR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", series_uid
        ds.FrameOfReferenceUID = "1.2.3.4.5"
        ds.PatientName, ds.PatientID = "Synthetic^Patient", "SYN"
        ds.ImageOrientationPatient = [float(round(v, 10)) for v in iop]
        ds.ImagePositionPatient = [float(round(v, 6)) for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.PixelSpacing = [float(sp[1]), float(sp[0])]
        ds.SliceThickness = float(sp[2])
        ds.InstanceNumber = int(k) + 1
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        for key, value in header.items():
            if isinstance(key, tuple):
                ds.add_new(key, value[0], value[1])
            else:
                setattr(ds, key, value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2" if signed else "<u2").tobytes()
        save_dicom(ds, directory / f"IM{rng.integers(1e9):09d}")


def truth(rng):
    """Magnitude (T2* decay) and wrapped phase with an offset and a field up to ~±150 Hz."""
    te = np.array(TE_MS) / 1000.0
    f_hz = rng.normal(0.0, 50.0, SHAPE)
    phi0 = rng.uniform(-0.8, 0.8, SHAPE)
    phase = wrap(phi0[..., None] + 2 * np.pi * f_hz[..., None] * te)
    mag = np.round(1000 * np.exp(-te / 0.03) * rng.uniform(0.5, 1.5, SHAPE)[..., None])
    return mag, phase


def on_truth_grid(arr, ras_from_ijk, truth_ras_from_ijk=RAS_FROM_IJK):
    """``arr`` ([I, J, K, ...], geometry ``ras_from_ijk``) re-indexed onto the truth grid; fails unless
    both grids hold the same voxel centres (dcm2niix may store the rows flipped: same world, other
    index order)."""
    t = np.linalg.inv(truth_ras_from_ijk) @ np.asarray(ras_from_ijk, float)   # ours -> truth indices
    perm = np.round(t[:3, :3])
    assert np.allclose(t[:3, :3], perm, atol=1e-3) and np.allclose(np.abs(perm).sum(0), 1)
    axes = [int(np.flatnonzero(perm[a])[0]) for a in range(3)]
    out = np.transpose(arr, axes + list(range(3, np.ndim(arr))))
    for a in range(3):
        flip = perm[a, axes[a]] < 0
        assert abs(t[a, 3] - (out.shape[a] - 1 if flip else 0)) < 1e-3
        if flip:
            out = np.flip(out, axis=a)
    return out


def phase_error(a, b):
    return float(np.abs(wrap(np.asarray(a, float) - np.asarray(b, float))).max())


def test_siemens_one_directory_mag_and_phase_series(tmp_path, rng):
    mag, phase = truth(rng)
    d = tmp_path / "siemens"
    mag_uid, ph_uid = generate_uid(), generate_uid()
    for e, te in enumerate(TE_MS):
        common = {"Manufacturer": "SIEMENS", "MagneticFieldStrength": 2.89362, "EchoTime": te,
                  "EchoNumbers": e + 1, "RescaleSlope": 1, "RescaleIntercept": 0}
        write_slices(d, mag[..., e], RAS_FROM_IJK, {**common, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
                                                      "SeriesNumber": 5}, rng, series_uid=mag_uid)
        stored = np.mod(np.round((phase[..., e] + np.pi) * 4096 / (2 * np.pi)), 4096)  # 12-bit
        write_slices(d, stored, RAS_FROM_IJK, {**common, "ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"],
                                               "SeriesNumber": 6, "RescaleSlope": 2, "RescaleIntercept": -4096},
                     rng, series_uid=ph_uid)
    gre = io.load_gre(mag=[d], phase=[d])
    assert gre.n_echoes == 3 and gre.shape3 == SHAPE
    assert np.allclose(gre.te_s, np.array(TE_MS) / 1000)
    assert gre.b0_tesla == pytest.approx(2.89362)
    assert np.array_equal(on_truth_grid(gre.magnitude, gre.ras_from_ijk), mag.astype(np.float32))
    assert "[-4096, 4095]" in gre.phase_scaling and "siemens via dcm2niix" in gre.phase_scaling.lower()
    assert phase_error(on_truth_grid(gre.phase_rad, gre.ras_from_ijk), phase) < np.pi / 4096 + 1e-5
    assert gre.phase_rad.min() >= -np.pi and gre.phase_rad.max() < np.pi
    assert np.allclose(gre.b0_dir_ijk, io.b0_dir_from_geometry(gre.ras_from_ijk))
    # the same directory through --bids (the module's "read GRE folder" path) and with TE override
    assert io.load_gre(bids=d).n_echoes == 3
    assert np.allclose(io.load_gre(bids=d, te=[0.005, 0.01, 0.02]).te_s, [0.005, 0.01, 0.02])
    # one multi-echo series is not a single volume
    only_mag = tmp_path / "mag_only"
    write_slices(only_mag, mag[..., 0], RAS_FROM_IJK, {"EchoNumbers": 1, "EchoTime": 4.0}, rng, series_uid="1.9")
    write_slices(only_mag, mag[..., 1], RAS_FROM_IJK, {"EchoNumbers": 2, "EchoTime": 9.5}, rng, series_uid="1.9")
    with pytest.raises(InputError, match="repeats slice positions"):
        io.read_volume(only_mag)


def test_ge_private_image_type_gauss_and_phase_sign(tmp_path, rng):
    mag, phase = truth(rng)
    d = tmp_path / "ge"
    uid = generate_uid()
    for e, te in enumerate(TE_MS):
        for part, stored in ((0, mag[..., e]), (1, np.round(-phase[..., e] * 1000.0))):  # GE: -phase, mrad
            write_slices(d, stored, RAS_FROM_IJK, {
                "Manufacturer": "GE MEDICAL SYSTEMS", "MagneticFieldStrength": 15000, "EchoTime": te,
                "EchoNumbers": e + 1, "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"],
                (0x0043, 0x0010): ("LO", "GEMS_PARM_01"), (0x0043, 0x102F): ("SS", part)},
                rng, signed=True, series_uid=uid)
    gre = io.load_gre(mag=[d], phase=[d])
    assert gre.b0_tesla == pytest.approx(1.5)
    assert "mrad" in gre.phase_scaling and "GE phase sign flipped" in gre.phase_scaling
    assert phase_error(on_truth_grid(gre.phase_rad, gre.ras_from_ijk), phase) < 1e-3
    assert np.array_equal(on_truth_grid(gre.magnitude, gre.ras_from_ijk), mag.astype(np.float32))
    

def test_philips_separate_directories_echo_time_only_radians(tmp_path, rng):
    mag, phase = truth(rng)
    slope = 2 * np.pi / 4095
    for e, te in enumerate(TE_MS):
        common = {"Manufacturer": "Philips Medical Systems", "MagneticFieldStrength": 3.0, "EchoTime": te,
                  (0x2005, 0x0010): ("LO", "Philips MR Imaging DD 001")}
        write_slices(tmp_path / "mag", mag[..., e], RAS_FROM_IJK,
                     {**common, "ImageType": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"],
                      (0x2005, 0x1011): ("CS", "M")}, rng)
        stored = np.round((phase[..., e] + np.pi) / slope)
        write_slices(tmp_path / "phase", stored, RAS_FROM_IJK,
                     {**common, "ImageType": ["ORIGINAL", "PRIMARY", "P_FFE", "P", "FFE"],
                      (0x2005, 0x1011): ("CS", "P"), "RescaleSlope": f"{slope:.10f}"[:16],
                      "RescaleIntercept": f"{-np.pi:.10f}"[:16]}, rng)
    gre = io.load_gre(mag=[tmp_path / "mag"], phase=[tmp_path / "phase"])
    assert gre.phase_scaling.startswith("radians") and "GE" not in gre.phase_scaling
    assert np.allclose(gre.te_s, np.array(TE_MS) / 1000) and gre.b0_tesla == 3.0
    assert phase_error(on_truth_grid(gre.phase_rad, gre.ras_from_ijk), phase) < slope / 2 + 1e-5
    

def test_part_from_directory_when_headers_do_not_say(tmp_path, rng):
    mag, phase = truth(rng)
    for e, te in enumerate(TE_MS):
        write_slices(tmp_path / "m", mag[..., e], RAS_FROM_IJK, {"EchoTime": te, "EchoNumbers": e + 1}, rng)
        write_slices(tmp_path / "p", np.round(phase[..., e] * 4096 / np.pi), RAS_FROM_IJK,
                     {"EchoTime": te, "EchoNumbers": e + 1}, rng, signed=True)
    gre = io.load_gre(mag=[tmp_path / "m"], phase=[tmp_path / "p"], b0=3.0)
    assert phase_error(on_truth_grid(gre.phase_rad, gre.ras_from_ijk), phase) < np.pi / 4096 + 1e-5
    with pytest.raises(InputError, match="no phase images found"):
        io.load_gre(mag=[tmp_path / "m"], phase=[tmp_path / "m"], b0=3.0)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_t1_and_ct_series_keep_oblique_geometry(tmp_path, rng, modality):
    m = ras_from_ijk_matrix([0.6, 0.7, 1.25], rotation_matrix([-9.0, 14.0, 31.0]), [70.0, -20.0, 44.0])
    hu = rng.integers(-1000, 2000, size=(20, 17, 9))
    if modality == "CT":
        write_slices(tmp_path / "ct", hu + 1024, m, {"RescaleSlope": 1, "RescaleIntercept": -1024},
                     rng, sop_class=CTImageStorage)
    else:
        write_slices(tmp_path / "ct", hu + 1024, m, {"Manufacturer": "SIEMENS"}, rng)
    vol = io.read_volume(tmp_path / "ct")
    assert vol.shape3 == hu.shape
    assert np.allclose(vol.ras_from_ijk, m, atol=1e-4)
    assert np.array_equal(vol.data, hu if modality == "CT" else hu + 1024)
    # written out and read back: same geometry (NIfTI and NRRD)
    for suffix in (".nii.gz", ".nrrd"):
        back = io.read_volume(io.write_volume(vol, tmp_path / f"out{suffix}"))
        assert np.allclose(back.ras_from_ijk, m, atol=1e-4) and np.array_equal(back.data, vol.data)


def test_dicom_problems_name_the_file(tmp_path, rng):
    mag, phase = truth(rng)
    # a missing slice: uneven spacing
    for e, te in enumerate(TE_MS[:1]):
        write_slices(tmp_path / "gap", mag[..., e], RAS_FROM_IJK,
                     {"EchoTime": te, "ImageType": ["ORIGINAL", "PRIMARY", "M"]}, rng)
        write_slices(tmp_path / "gap", np.round(phase[..., e] * 1000), RAS_FROM_IJK,
                     {"EchoTime": te, "ImageType": ["ORIGINAL", "PRIMARY", "P"]}, rng, signed=True)
    victim = sorted((tmp_path / "gap").iterdir())[3]
    import pydicom
    ds = pydicom.dcmread(victim)
    ds.ImagePositionPatient = [float(v) + 40.0 for v in ds.ImagePositionPatient]
    ds.save_as(victim)
    with pytest.raises(InputError, match="evenly spaced|different orientations|share a slice|geometry") as err:
        io.load_gre(bids=tmp_path / "gap", b0=3)
    assert "gap" in str(err.value)
    # two acquisitions in one directory
    for _ in range(2):
        write_slices(tmp_path / "twice", mag[..., 0], RAS_FROM_IJK,
                     {"EchoTime": 4.0, "ImageType": ["ORIGINAL", "PRIMARY", "M"]}, rng)
    write_slices(tmp_path / "twice", np.round(phase[..., 0] * 1000), RAS_FROM_IJK,
                 {"EchoTime": 4.0, "ImageType": ["ORIGINAL", "PRIMARY", "P"]}, rng, signed=True)
    with pytest.raises(InputError, match="share a slice position|no magnitude echo matches") as err:
        io.load_gre(mag=[tmp_path / "twice"], phase=[tmp_path / "twice"], b0=3)
    assert "twice" in str(err.value)
    # no echo time in the headers and none given
    write_slices(tmp_path / "note", mag[..., 0], RAS_FROM_IJK, {"ImageType": ["ORIGINAL", "PRIMARY", "M"]}, rng)
    write_slices(tmp_path / "note", np.round(phase[..., 0] * 1000), RAS_FROM_IJK,
                 {"ImageType": ["ORIGINAL", "PRIMARY", "P"]}, rng, signed=True)
    with pytest.raises(InputError, match="echo times are missing"):
        io.load_gre(bids=tmp_path / "note", b0=3)
    assert io.load_gre(bids=tmp_path / "note", b0=3, te=[0.01]).warnings  # single echo: warned
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM files"):
        io.read_volume(tmp_path / "empty")


def write_enhanced(path, frames, ras_from_ijk, shared_header, rng):
    """Enhanced MR (multi-frame) file. ``frames``: list of (2-D stored [i, j], k, te_ms, frame_type, component)."""
    from pydicom.sequence import Sequence
    enhanced_mr = "1.2.840.10008.5.1.4.1.1.4.1"
    lps = LPS_FROM_RAS @ ras_from_ijk
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    iop = [float(v) for v in np.concatenate([lps[:3, 0] / sp[0], lps[:3, 1] / sp[1]])]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = enhanced_mr, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = enhanced_mr, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", generate_uid(), "1.2.3"
    for key, value in shared_header.items():
        setattr(ds, key, value)
    pm = Dataset()
    pm.PixelSpacing, pm.SliceThickness = [float(sp[1]), float(sp[0])], float(sp[2])
    po = Dataset()
    po.ImageOrientationPatient = iop
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([pm]), Sequence([po])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame, pixels = [], []
    for n in rng.permutation(len(frames)):
        arr, k, te, frame_type, component = frames[n]
        fg = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [float(round(v, 6)) for v in lps[:3, 3] + k * lps[:3, 2]]
        echo = Dataset()
        echo.EffectiveEchoTime = te
        ft = Dataset()
        ft.FrameType, ft.ComplexImageComponent = frame_type, component
        fg.PlanePositionSequence, fg.MREchoSequence = Sequence([pp]), Sequence([echo])
        fg.MRImageFrameTypeSequence = Sequence([ft])
        per_frame.append(fg)
        pixels.append(np.ascontiguousarray(arr.T).astype("<u2"))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames[0][0].shape[1], frames[0][0].shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.stack(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_dicom(ds, path)


def test_enhanced_multiframe_siemens_xa(tmp_path, rng):
    """Siemens XA-style enhanced DICOM: one file per part, every echo and slice a frame."""
    mag, phase = truth(rng)
    stored_phase = np.mod(np.round((phase + np.pi) * 4096 / (2 * np.pi)), 4096)
    for part, stored, ftype in (("MAGNITUDE", mag, "M"), ("PHASE", stored_phase, "P")):
        frames = [(stored[:, :, k, e], k, te, ["ORIGINAL", "PRIMARY", ftype, "NONE"], part)
                  for e, te in enumerate(TE_MS) for k in range(SHAPE[2])]
        write_enhanced(tmp_path / "xa" / f"{part}.dcm", frames, RAS_FROM_IJK,
                       {"Manufacturer": "Siemens Healthineers", "MagneticFieldStrength": 3.0,
                        "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"]}, rng)
    gre = io.load_gre(bids=tmp_path / "xa")
    # no DimensionIndexSequence: dcm2niix stacks all 18 frames as slices; the frame reader serves
    assert any("dcm2niix could not sort" in w for w in gre.warnings)
    assert gre.n_echoes == 3 and np.allclose(gre.te_s, np.array(TE_MS) / 1000)
    assert np.array_equal(on_truth_grid(gre.magnitude, gre.ras_from_ijk), mag.astype(np.float32))
    assert "[0, 4095]" in gre.phase_scaling
    assert phase_error(on_truth_grid(gre.phase_rad, gre.ras_from_ijk), phase) < np.pi / 4096 + 1e-5


def test_multiframe_t1_and_single_file_path(tmp_path, rng):
    m = ras_from_ijk_matrix([0.9, 0.9, 1.1], rotation_matrix([4.0, -20.0, 9.0]), [10.0, 30.0, -60.0])
    t1 = rng.integers(0, 3000, size=(13, 12, 7))
    frames = [(t1[:, :, k], k, 2.3, ["ORIGINAL", "PRIMARY", "M", "NONE"], "MAGNITUDE") for k in range(7)]
    write_enhanced(tmp_path / "t1" / "T1.dcm", frames, m, {"Manufacturer": "Siemens Healthineers"}, rng)
    for where in (tmp_path / "t1", tmp_path / "t1" / "T1.dcm"):
        vol = io.read_volume(where)
        assert np.allclose(vol.ras_from_ijk, m, atol=1e-4) and np.array_equal(vol.data, t1)
    # a classic series read through one of its files
    write_slices(tmp_path / "ct", t1, m, {"RescaleSlope": 1, "RescaleIntercept": -1024}, rng, sop_class=CTImageStorage)
    one = sorted((tmp_path / "ct").iterdir())[0]
    vol = io.read_volume(one)
    assert np.allclose(vol.ras_from_ijk, m, atol=1e-4) and np.array_equal(vol.data, t1 - 1024)


def test_echo_numbers_missing_in_phase_series_fall_back_to_echo_time(tmp_path, rng):
    mag, phase = truth(rng)
    for e, te in enumerate(TE_MS):
        write_slices(tmp_path / "d", mag[..., e], RAS_FROM_IJK,
                     {"EchoTime": te, "EchoNumbers": e + 1, "ImageType": ["ORIGINAL", "PRIMARY", "M"]}, rng)
        write_slices(tmp_path / "d", np.round((phase[..., e] + np.pi) * 1000), RAS_FROM_IJK,
                     {"EchoTime": te, "ImageType": ["ORIGINAL", "PRIMARY", "P"], "RescaleIntercept": -3141.5927},
                     rng)
    gre = io.load_gre(bids=tmp_path / "d", b0=3)
    assert gre.n_echoes == 3 and "mrad" in gre.phase_scaling
    assert phase_error(on_truth_grid(gre.phase_rad, gre.ras_from_ijk), phase) < 1e-3
