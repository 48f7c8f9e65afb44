"""Peer registrations as command-line programs (read two images, register, write fixed_from_moving RAS
4x4 as text), so that their wall time counts reading and writing like ``qsmplanner register``.

Usage: python bench/_peer_register.py elastix|ants FIXED MOVING OUT.txt
"""
import sys

import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
ANTS_ITERATIONS = (1000, 500, 250, 0)
ANTS_SEED = 20240607


def _ras(a, t, c):
    """Euler/affine (fixed LPS -> moving LPS: a (p - c) + c + t) -> fixed_from_moving RAS."""
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + c - a @ c
    return np.linalg.inv(LPS @ m @ LPS)


def elastix(fixed, moving):
    import itk
    f = itk.imread(fixed, itk.F)
    m = itk.imread(moving, itk.F)
    po = itk.ParameterObject.New()
    po.AddParameterMap(po.GetDefaultParameterMap("rigid"))
    _, params = itk.elastix_registration_method(f, m, parameter_object=po, log_to_console=False)
    p = np.array([float(x) for x in params.GetParameter(0, "TransformParameters")])
    c = np.array([float(x) for x in params.GetParameter(0, "CenterOfRotationPoint")])
    ax, ay, az = p[:3]
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    # elastix EulerTransform (ComputeZYX false): R = Rz Rx Ry
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return _ras(rz @ rx @ ry, p[3:], c)


def ants(fixed, moving):
    import ants as an
    import SimpleITK as sitk
    # antspyx's deterministic mode: antsRegistration --random-seed and ITK on one thread (seeded but
    # multithreaded, its poses still differ by ~0.2 mm run to run); its wall time is single-threaded
    an.config.set_ants_deterministic(True, seed_value=ANTS_SEED)
    # ANTs' standard rigid stage as antsRegistrationSyNQuick.sh runs it (1000x500x250x0 iterations:
    # no full-resolution level), Mattes MI 32 bins, 20 % random samples
    out = an.registration(an.image_read(fixed), an.image_read(moving), type_of_transform="Rigid",
                          aff_iterations=ANTS_ITERATIONS)
    tx = sitk.ReadTransform(out["fwdtransforms"][0])
    if tx.GetName() == "CompositeTransform":
        tx = sitk.CompositeTransform(tx).GetNthTransform(0)
    tx = sitk.AffineTransform(tx)
    return _ras(np.array(tx.GetMatrix()).reshape(3, 3), np.array(tx.GetTranslation()), np.array(tx.GetCenter()))


if __name__ == "__main__":
    method, fixed, moving, out = sys.argv[1:5]
    run = {"elastix": elastix, "ants": ants}[method]
    try:
        result = run(fixed, moving)
    except RuntimeError:
        # elastix refuses a thin slab as the moving image (too few fixed samples map into it): what a
        # user does next is to swap the roles and invert
        print("swapped roles", file=sys.stderr)
        result = np.linalg.inv(run(moving, fixed))
    np.savetxt(out, result)
