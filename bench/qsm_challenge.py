"""In-vivo accuracy against the 2016 QSM reconstruction challenge (Langkammer et al., MRM 2018;79:1661).

    .venv/bin/python bench/qsm_challenge.py --data DIR --regions GP=..,SN=..,RN=..
    .venv/bin/python bench/qsm_challenge.py --synthetic [--seed 0] [--small]

``--data``: the challenge's files (phs_tissue, msk, chi_33, chi_cosmos, optional evaluation_mask; .mat or
NIfTI). ``--regions``: label values of GP, SN and RN in evaluation_mask (NAME=label[+label]). The local
field goes through our dipole inversion (``qsm.reconstruct_from_field``, kind local, TV) and the
challenge's own baseline, TKD with threshold 0.19. Scored as the challenge did: RMSE = 100*||chi - ref||
/ ||ref|| in msk, no demeaning, against chi33 and COSMOS; deep grey matter: GP, SN, RN means, each map
referenced to its msk mean, against chi33. Target: RMSE <= 0.8 x the TKD baseline's on both references
and |GP|, |SN|, |RN| errors <= 0.03 ppm.

``--synthetic``: the same evaluation on a digital patient written in the challenge layout (its true local
field, chi33 = COSMOS = the true chi, labels from the phantom): validates the reading and scoring path
where the challenge data cannot be had (it is distributed from the organisers' site, not from a
package registry).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "QSMPlanner"))
from QSMPlannerLib.qsm import inversion, reconstruct_from_field  # noqa: E402
from QSMPlannerLib.qsm.challenge import (TKD_CHALLENGE_THRESHOLD, challenge_rmse, parse_regions,  # noqa: E402
                                         read_challenge, region_means)
from QSMPlannerLib.volume import Volume  # noqa: E402

TARGET_RATIO = 0.8
DGM_TOL_PPM = 0.03
PHANTOM_REGIONS = "GP=5+6+105+106,SN=7+9+107+109,RN=8+108"   # CIT168 labels of the digital patient
# The challenge paper's RMSE table (TKD 0.19 baseline and best submissions) could not be retrieved with
# the tools of this workplace: the stored copies of Langkammer 2018 (PMC5777305) and Milovic 2020
# (PMC7526054) reach only their abstracts and introductions, and the public code that evaluates on the
# challenge data (e.g. the FANSI toolbox's challenge example, which also uses TKD at 0.19) computes the
# RMSE without recording its values. The ratio to the TKD baseline computed here on the same data is the
# target's own definition. What the papers' abstracts state is printed beside the table.
PUBLISHED = ()
PUBLISHED_METHODS = (
    "Langkammer et al. 2018: 27 submissions on one 3 T single-orientation GRE (1.06 mm); reference chi33 "
    "from STI over 12 head orientations (and COSMOS); the best-scoring approaches estimated the "
    "ill-conditioned k-space region with compressed-sensing (sparsity) priors; top-10 maps had similar "
    "RMSE but over-smoothed vessels.",
    "Milovic et al. 2020: chi33 holds anisotropic contributions the single-orientation data cannot "
    "explain, so every submission's RMSE has a floor; submissions were generally over-regularised.",
    "Data (as the challenge distributed it): phs_tissue is the local field in ppm (LBV background removal, "
    "brain mask eroded by 5 voxels), 1.06 x 1.06 x 1.07 mm, B0 along k; not on any package registry "
    "reachable here (PyPI nextqsm 1.0.6, qsm-forward 0.32, phase-unwrap 2.0.0 checked: code only).")


def write_synthetic(directory: Path, seed: int, small: bool, noise_ppm: float) -> str:
    import nibabel as nib

    from QSMPlannerLib.phantom import make_patient
    p = make_patient(seed=seed, small=small)
    m = p.truth["brain_mask"].data > 0
    rng = np.random.default_rng(seed)
    local = p.truth["local_field_ppm"].data + noise_ppm * rng.standard_normal(m.shape).astype(np.float32)
    aff = np.diag(list(p.gre.voxel_mm) + [1.0])   # the challenge grid: B0 along k
    if not np.allclose(p.gre.b0_dir_ijk, [0, 0, 1], atol=1e-6):
        raise SystemExit("--synthetic needs an axial patient (B0 along k), as the challenge data")
    for name, arr in (("phs_tissue", np.where(m, local, 0)), ("msk", m.astype(np.uint8)),
                      ("chi_33", p.truth["chi_ppm"].data), ("chi_cosmos", p.truth["chi_ppm"].data),
                      ("evaluation_mask", p.truth["labels_gre"].data.astype(np.int16))):
        nib.save(nib.Nifti1Image(np.asarray(arr), aff), str(directory / f"{name}.nii.gz"))
    return f"digital patient seed {seed}{' small' if small else ''}, true local field + {noise_ppm:g} ppm noise"


def evaluate(data, regions: dict) -> list:
    field = Volume(np.where(data.mask, data.local_field_ppm, 0).astype(np.float32), data.ras_from_ijk, "phs_tissue")
    mask = Volume(data.mask.astype(np.uint8), data.ras_from_ijk, "msk")
    rows = []
    t = time.perf_counter()
    chi_tkd = inversion.tkd(field.data, data.mask, data.voxel_mm, (0.0, 0.0, 1.0), threshold=TKD_CHALLENGE_THRESHOLD)
    rows.append(("TKD 0.19 (challenge baseline)", chi_tkd, time.perf_counter() - t))
    t = time.perf_counter()
    res = reconstruct_from_field(field, mask, kind="local", b0_dir_ijk=(0.0, 0.0, 1.0), inversion="tv")
    rows.append(("ours TV-ADMM (local field)", res.chi_ppm.data, time.perf_counter() - t))
    out = []
    ref33 = region_means(data.chi_33, data.mask, data.labels, regions) if data.labels is not None else {}
    for name, chi, dt in rows:
        dgm = region_means(chi, data.mask, data.labels, regions) if data.labels is not None else {}
        out.append((name, challenge_rmse(chi, data.chi_33, data.mask),
                    challenge_rmse(chi, data.chi_cosmos, data.mask),
                    {k: dgm[k] - ref33[k] for k in dgm}, dt))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="challenge data directory")
    ap.add_argument("--regions", help="GP=..,SN=..,RN=.. label values in evaluation_mask")
    ap.add_argument("--voxel", type=float, nargs=3, help="voxel size mm (for .mat input)")
    ap.add_argument("--synthetic", action="store_true", help="validate on a digital patient in the layout")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--noise", type=float, default=0.003, help="field noise (ppm, 1 sd) of --synthetic")
    args = ap.parse_args(argv)
    if (args.data is None) == (not args.synthetic):
        ap.error("give --data DIR or --synthetic")
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            what = write_synthetic(Path(tmp), args.seed, args.small, args.noise)
            data_dir, regions = Path(tmp), parse_regions(args.regions or PHANTOM_REGIONS)
        else:
            what, data_dir = f"challenge data {args.data}", args.data
            regions = parse_regions(args.regions) if args.regions else {}
        data = read_challenge(data_dir, voxel_mm=args.voxel)
        rows = evaluate(data, regions)
    print(f"\n2016 QSM challenge evaluation on {what}: {data.mask.shape}, voxel "
          f"{np.round(data.voxel_mm, 4).tolist()} mm, {int(data.mask.sum())} mask voxels")
    names = list(regions)
    print(f"{'method':<32} {'RMSE chi33 %':>12} {'RMSE COSMOS %':>13} "
          + " ".join(f"{'d' + n + ' ppm':>9}" for n in names) + f" {'time s':>7}")
    for name, r33, rc, dgm, dt in rows:
        print(f"{name:<32} {r33:12.1f} {rc:13.1f} " + " ".join(f"{dgm.get(n, np.nan):+9.4f}" for n in names)
              + f" {dt:7.1f}")
    for name, r33, rc in PUBLISHED:
        print(f"{name:<32} {r33:12.1f} {rc:13.1f}   (published)")
    if not PUBLISHED:
        print("published RMSE figures (challenge paper's table): not retrieved in this workplace")
    for line in PUBLISHED_METHODS:
        print(f"published: {line}")
    base, ours = rows[0], rows[1]
    ok_rmse = ours[1] <= TARGET_RATIO * base[1] and ours[2] <= TARGET_RATIO * base[2]
    worst = max((abs(v) for v in ours[3].values()), default=np.nan)
    print(f"\nours / TKD 0.19: chi33 x{ours[1] / base[1]:.3f}, COSMOS x{ours[2] / base[2]:.3f} (target <= "
          f"{TARGET_RATIO}) -> {'met' if ok_rmse else 'NOT met'}; deep grey matter max |error| vs chi33 "
          f"{worst:.4f} ppm (target <= {DGM_TOL_PPM}) -> "
          f"{'n/a (no --regions)' if not names else ('met' if worst <= DGM_TOL_PPM else 'NOT met')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
