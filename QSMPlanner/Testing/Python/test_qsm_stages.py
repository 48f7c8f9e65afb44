"""QSM stages on analytic simulations: dipole kernel (oblique B0, anisotropic voxels), TKD, V-SHARP,
Laplacian and quality-guided unwrapping."""
import numpy as np
import pytest

from QSMPlannerLib.qsm import bgremove, inversion
from QSMPlannerLib.qsm.dipole import (dipole_kernel, forward_field, sphere_chi,
                                      sphere_field_analytic)
from QSMPlannerLib.qsm.romeo import quality_unwrap
from QSMPlannerLib.qsm.unwrap import laplacian_unwrap

SHAPE = (48, 44, 40)
VOX = (1.0, 1.2, 1.5)
OBLIQUE = np.array([0.3, -0.2, 0.93]) / np.linalg.norm([0.3, -0.2, 0.93])


def _centre():
    return (np.array(SHAPE) - 1) / 2 * np.array(VOX)


def test_dipole_kernel_follows_b0_direction_in_voxel_frame():
    # B0 along i on a grid equals B0 along k on the transposed grid (isotropic voxels)
    d_k = dipole_kernel((16, 18, 20), (1, 1, 1), (0, 0, 1), real=False)
    d_i = dipole_kernel((20, 18, 16), (1, 1, 1), (1, 0, 0), real=False)
    assert np.allclose(d_i, d_k.transpose(2, 1, 0), atol=1e-6)
    assert d_k[0, 0, 0] == 0 and d_k.max() <= 1 / 3 + 1e-6 and d_k.min() >= -2 / 3 - 1e-6
    # anisotropic voxels: a k-space point along B0 has D = -2/3, perpendicular +1/3
    d = dipole_kernel((16, 16, 16), (1, 1, 2), (0, 0, 1), real=False)
    assert d[0, 0, 1] == pytest.approx(-2 / 3) and d[1, 0, 0] == pytest.approx(1 / 3)


def test_forward_field_of_sphere_matches_analytic_on_oblique_anisotropic_grid():
    c, radius = _centre(), 6.0
    chi = sphere_chi(SHAPE, VOX, c, radius, chi_ppm=1.0)
    field = forward_field(chi, VOX, OBLIQUE)
    exact = sphere_field_analytic(SHAPE, VOX, c, radius, 1.0, OBLIQUE)
    g = [np.arange(n) * v - cc for n, v, cc in zip(SHAPE, VOX, c)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    r = np.sqrt(x * x + y * y + z * z)
    shell = (r > radius + 2) & (r < radius + 8)
    err = np.abs(field[shell] - exact[shell]).max()
    assert err < 0.08 * np.abs(exact[shell]).max()
    assert np.corrcoef(field[shell], exact[shell])[0, 1] > 0.998
    # assuming B0 = (0, 0, 1) on this oblique grid gives a clearly different field
    wrong = forward_field(chi, VOX, (0, 0, 1))
    assert np.abs(wrong[shell] - exact[shell]).max() > 3 * err


def test_tkd_recovers_sphere_susceptibility():
    c = _centre()
    chi = sphere_chi(SHAPE, VOX, c, 7.0, chi_ppm=0.2)
    field = forward_field(chi, VOX, OBLIQUE)
    mask = np.ones(SHAPE, bool)
    rec = inversion.tkd(field, mask, VOX, OBLIQUE, threshold=0.15)
    inner = sphere_chi(SHAPE, VOX, c, 4.0, 1.0, supersample=1) > 0.5
    outer = sphere_chi(SHAPE, VOX, c, 12.0, 1.0, supersample=1) < 0.5
    contrast = rec[inner].mean() - rec[outer].mean()
    assert 0.15 < contrast < 0.22  # TKD underestimates a little (truncation)


def test_vsharp_removes_external_source_field():
    c = _centre()
    inside = sphere_chi(SHAPE, VOX, c + [3, 0, 0], 4.0, 0.1)
    outside = sphere_chi(SHAPE, VOX, c + [0, 0, 24], 5.0, 9.0)  # air-like source beyond the brain
    local = forward_field(inside, VOX, OBLIQUE)
    total = local + forward_field(outside, VOX, OBLIQUE)
    g = [np.arange(n) * v - cc for n, v, cc in zip(SHAPE, VOX, c)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    brain = x * x + y * y + z * z < 15 ** 2
    est, eroded = bgremove.vsharp(total, brain, VOX)
    assert eroded.sum() > 0.3 * brain.sum() and not (eroded & ~brain).any()
    bg = (total - local)[eroded]
    err = est[eroded] - local[eroded]
    err -= err.mean()
    assert np.sqrt(np.mean(err ** 2)) < 0.1 * np.sqrt(np.mean((bg - bg.mean()) ** 2))
    assert np.corrcoef(est[eroded], local[eroded])[0, 1] > 0.75


def _wrapped_smooth_phase(rng):
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in (40, 36, 32)], indexing="ij")
    truth = (6 * g[0] ** 2 + 5 * g[1] * g[2] + 6 * np.sin(2 * g[2]) + 3 * g[0]).astype(np.float32)
    noisy = truth + 0.05 * rng.standard_normal(truth.shape).astype(np.float32)
    return truth, np.angle(np.exp(1j * noisy)).astype(np.float32)


def test_quality_unwrap_is_exact_up_to_global_2pi(rng):
    truth, wrapped = _wrapped_smooth_phase(rng)
    assert np.ptp(truth) > 6 * np.pi
    mask = np.ones(truth.shape, bool)
    mask[:, :, :3] = False
    u = quality_unwrap(wrapped, np.ones_like(wrapped), mask)
    k = (u - wrapped) / (2 * np.pi)
    assert np.allclose(k, np.round(k), atol=1e-4)  # only 2*pi jumps added
    diff = u[mask] - truth[mask]
    n = np.round(np.median(diff) / (2 * np.pi))
    assert np.abs(diff - 2 * np.pi * n).max() < 0.5
    assert np.array_equal(u[~mask], wrapped[~mask])


def test_laplacian_unwrap_removes_wraps_but_is_not_exact(rng):
    truth, wrapped = _wrapped_smooth_phase(rng)
    u = laplacian_unwrap(wrapped, (1, 1, 1))
    core = (slice(6, -6),) * 3
    d = (u - truth)[core]
    d -= np.median(d)
    assert np.abs(np.gradient(u[core])[0]).max() < 1.5  # no residual 2*pi jumps
    assert np.percentile(np.abs(d), 95) < 1.0
    k = (u - wrapped) / (2 * np.pi)
    assert np.abs(k - np.round(k)).max() > 0.05  # values changed beyond 2*pi steps


@pytest.mark.parametrize("method", ["resharp", "pdf", "lbv"])
def test_other_background_removals_remove_external_source_field(method):
    c = _centre()
    inside = sphere_chi(SHAPE, VOX, c + [3, 0, 0], 4.0, 0.1)
    outside = sphere_chi(SHAPE, VOX, c + [0, 0, 24], 5.0, 9.0)
    local = forward_field(inside, VOX, OBLIQUE)
    total = local + forward_field(outside, VOX, OBLIQUE)
    g = [np.arange(n) * v - cc for n, v, cc in zip(SHAPE, VOX, c)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    brain = x * x + y * y + z * z < 15 ** 2
    if method == "pdf":
        est, m = bgremove.pdf(total, brain, VOX, OBLIQUE)
    else:
        est, m = getattr(bgremove, method)(total, brain, VOX)
    assert m.sum() == brain.sum()  # no erosion
    core = x * x + y * y + z * z < 11 ** 2
    bg = (total - local)[core]
    err = est[core] - local[core]
    err -= err.mean()
    assert np.sqrt(np.mean(err ** 2)) < 0.15 * np.sqrt(np.mean((bg - bg.mean()) ** 2))
    assert np.corrcoef(est[core], local[core])[0, 1] > 0.7


def _sphere_head(inside_at, inside_r, inside_chi, outside_at):
    """Fields of a source inside a 15 mm brain sphere and a strong one outside it (oblique B0):
    (local, total, brain, x, y, z) with x, y, z the coordinates (mm) from the grid centre."""
    c = _centre()
    inside = sphere_chi(SHAPE, VOX, c + inside_at, inside_r, inside_chi)
    outside = sphere_chi(SHAPE, VOX, c + outside_at, 5.0, 9.0)
    local = forward_field(inside, VOX, OBLIQUE)
    total = local + forward_field(outside, VOX, OBLIQUE)
    g = [np.arange(n) * v - cc for n, v, cc in zip(SHAPE, VOX, c)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    return local, total, x * x + y * y + z * z < 15 ** 2, x, y, z


def test_pdf_coarse_start_converges_to_the_same_local_field_in_fewer_full_size_iterations():
    local, total, brain, x, y, z = _sphere_head([3, 0, 0], 4.0, 0.1, [0, 0, 24])
    plain_fit = bgremove.pdf_fit(total, brain, VOX, OBLIQUE, coarse=False, tol=1e-3)
    warm_fit = bgremove.pdf_fit(total, brain, VOX, OBLIQUE, coarse=True, tol=1e-3)
    assert warm_fit.coarse_iterations > 0 and plain_fit.coarse_iterations == 0
    assert warm_fit.iterations < plain_fit.iterations
    plain, warm = plain_fit.local, warm_fit.local
    core = x * x + y * y + z * z < 11 ** 2
    for est in (plain, warm):
        err = est[core] - local[core]
        err -= err.mean()
        bg = (total - local)[core]
        assert np.sqrt(np.mean(err ** 2)) < 0.15 * np.std(bg)
    d = (warm - plain)[core]
    assert np.std(d) < 0.1 * np.std(local[core])


def test_pdf_with_known_local_sources_keeps_their_far_field_near_the_boundary():
    local, total, brain, *_ = _sphere_head([0, 0, 9], 4.0, 0.2, [0, 0, 26])  # near the edge, along B0

    def err(est):
        e = (est - local)[brain]
        return np.sqrt(np.mean((e - e.mean()) ** 2))

    plain, _ = bgremove.pdf(total, brain, VOX, OBLIQUE, tol=1e-3)
    rough = inversion.tkd(plain, brain, VOX, OBLIQUE)  # a first inversion as the known sources
    refined, m = bgremove.pdf(total, brain, VOX, OBLIQUE, tol=1e-3, chi_local=rough)
    assert m.sum() == brain.sum()
    assert err(refined) < 0.85 * err(plain)  # 0.76 measured


def test_tv_admm_warm_start_needs_fewer_iterations_for_the_same_map():
    c = _centre()
    chi = sphere_chi(SHAPE, VOX, c, 6.0, 0.2)
    field = forward_field(chi, VOX, OBLIQUE)
    mask = np.ones(SHAPE, bool)
    cold, n_cold = inversion.tv_admm_fit(field, mask, VOX, OBLIQUE, tol=1e-3, max_iter=60)
    warm, n_warm = inversion.tv_admm_fit(field, mask, VOX, OBLIQUE, tol=1e-3, max_iter=60, chi0=cold)
    assert n_warm < n_cold
    assert np.linalg.norm(warm - cold) < 0.05 * np.linalg.norm(cold)


def test_pdf_harmonic_terms_take_up_a_shim_field_that_outside_sources_fit_only_in_part():
    *_, brain, x, y, z = _sphere_head([3, 0, 0], 4.0, 0.1, [0, 0, 24])
    shim = 0.05 * (x * y - 0.5 * (x * x - z * z) + 3 * y) / 15 ** 2  # linear + 2nd-order shim (ppm)

    def left(order):
        fit = bgremove.pdf_fit(shim, brain, VOX, OBLIQUE, tol=1e-3, harmonic_order=order)
        return np.std(fit.local[brain]) / np.std(shim[brain])

    with_harmonics, sources_only = left(2), left(-1)
    assert with_harmonics < 1e-3
    assert sources_only > 4 * with_harmonics  # 0.0044 vs 0.00065 measured


def test_pdf_refit_started_from_the_earlier_sources_needs_fewer_iterations():
    local, total, brain, *_ = _sphere_head([0, 0, 9], 4.0, 0.2, [0, 0, 26])
    plain = bgremove.pdf_fit(total, brain, VOX, OBLIQUE, tol=1e-3)
    rough = inversion.tkd(plain.local, brain, VOX, OBLIQUE)
    cold = bgremove.pdf_fit(total, brain, VOX, OBLIQUE, tol=1e-3, chi_local=rough, coarse=False)
    warm = bgremove.pdf_fit(total, brain, VOX, OBLIQUE, tol=1e-3, chi_local=rough, sources0=plain.sources)
    assert warm.iterations < cold.iterations
    assert np.std((warm.local - cold.local)[brain]) < 0.1 * np.std(local[brain])


def test_pdf_refit_residual_is_the_field_chi_local_leaves_and_a_bregman_step_restores_contrast():
    local, total, brain, x, y, z = _sphere_head([3, 0, 0], 4.0, 0.1, [0, 0, 24])
    first = bgremove.pdf_fit(total, brain, VOX, OBLIQUE, tol=1e-3)
    assert first.residual is None
    chi1 = inversion.tv_admm(first.local, brain, VOX, OBLIQUE, max_iter=12)
    refit = bgremove.pdf_fit(total, brain, VOX, OBLIQUE, tol=1e-3, chi_local=chi1, sources0=first.sources)
    left = refit.local - forward_field(chi1, VOX, OBLIQUE)
    d = (refit.residual - left)[brain]
    assert np.std(d) < 0.01 * np.std(refit.local[brain])
    # the same TV continuation with and without the residual added back to the data
    plain = inversion.tv_admm(refit.local, brain, VOX, OBLIQUE, max_iter=12, chi0=chi1)
    bregman = inversion.tv_admm(refit.local + refit.residual, brain, VOX, OBLIQUE, max_iter=12, chi0=chi1)
    r = (x - 3) ** 2 + y * y + z * z
    core, around = r < 2.5 ** 2, (r > 7 ** 2) & brain
    true_contrast = 0.1

    def contrast(c):
        return c[core].mean() - c[around].mean()

    assert contrast(plain) < true_contrast
    assert abs(contrast(bregman) - true_contrast) < 0.3 * abs(contrast(plain) - true_contrast)  # 0.04 measured


def test_tv_fit_in_mask_frees_the_outside_field_of_a_source_near_the_mask_edge():
    c = _centre()
    chi = sphere_chi(SHAPE, VOX, c + [0, 0, 9], 4.0, 0.2) + sphere_chi(SHAPE, VOX, c - [0, 5, 0], 3.0, -0.1)
    local = forward_field(chi, VOX, OBLIQUE)  # the local field also exists outside the brain
    g = [np.arange(n) * v - cc for n, v, cc in zip(SHAPE, VOX, c)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    brain = x * x + y * y + z * z < 15 ** 2
    truth = chi[brain] - chi[brain].mean()

    def nrmse(rec):
        e = rec[brain] - rec[brain].mean() - truth
        return np.linalg.norm(e) / np.linalg.norm(truth)

    zero_outside = inversion.tv_admm(local, brain, VOX, OBLIQUE, max_iter=40)
    in_mask = inversion.tv_admm(local, brain, VOX, OBLIQUE, max_iter=40, fit_in_mask=True)
    assert nrmse(in_mask) < 0.85 * nrmse(zero_outside)  # 0.21 vs 0.29 measured


def test_tv_step_matches_the_plain_shrinkage_and_divergence_for_any_slab_split(rng):
    shape, h = (13, 9, 7), np.array([1.0, 1.2, 1.5], np.float32)
    chi = rng.standard_normal(shape).astype(np.float32)
    u = [0.3 * rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    on = [rng.random(shape) > 0.3 for _ in range(3)]
    thr = np.float32(0.4)
    v, u_ref = [], []
    for a in range(3):  # ADMM: t = grad chi + u, z = soft(t, thr where on), u = t - z, v = z - u
        t = (np.roll(chi, -1, axis=a) - chi) / h[a] + u[a]
        th = np.where(on[a], thr, 0)
        z = np.sign(t) * np.maximum(np.abs(t) - th, 0)
        u_ref.append(t - z)
        v.append(z - (t - z))
    div_ref = sum((np.roll(v[a], 1, axis=a) - v[a]) / h[a] for a in range(3))
    for n_chunks in (1, 2, 3, 5, 13):
        uu = [x.copy() for x in u]
        div = np.empty(shape, np.float32)
        inversion._tv_step(chi, *uu, *on, thr, (1 / h).astype(np.float32), div, n_chunks)
        assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(uu, u_ref))
        assert np.allclose(div, div_ref, atol=1e-4)
