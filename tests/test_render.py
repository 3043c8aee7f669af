"""The forward model against GalSim, numerical integration, finite differences and bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from galnet.conventions import to_galsim
from galnet.errors import ParameterRangeError, PSFError
from galnet.render import (
    GaussianPSF,
    KolmogorovPSF,
    MoffatPSF,
    render_point_source,
    render_sersic,
    sersic_bn,
    sersic_fourier,
)

galsim = pytest.importorskip("galsim")

# GalSim's accuracy knobs tightened 5x (folding) and 3x (maxk) from its defaults so that its own
# error (~1e-3 of the peak at most) stays well inside the 5e-3 tolerance.
_GSPARAMS = dict(folding_threshold=1e-3, maxk_threshold=3e-4, maximum_fft_size=12288)


def _galsim_psf(kind: str, fwhm: float, beta: float):
    gsp = galsim.GSParams(**_GSPARAMS)
    if kind == "moffat":
        return galsim.Moffat(beta=beta, fwhm=fwhm, gsparams=gsp)
    return galsim.Gaussian(fwhm=fwhm, gsparams=gsp)


def _galsim_stamp(p, psf, shape=(61, 61)):
    """GalSim reference: Sersic ⊗ PSF drawn with method='auto' (pixel convolved once)."""
    x, y, mag, re, n, q, pa = p
    d = to_galsim(x, y, mag, re, n, q, pa)
    gsp = galsim.GSParams(**_GSPARAMS)
    gal = galsim.Sersic(n, half_light_radius=d["half_light_radius"], flux=d["flux"], gsparams=gsp)
    gal = gal.shear(q=q, beta=d["beta_deg"] * galsim.degrees)
    img = galsim.ImageD(shape[1], shape[0], scale=1.0)
    c = img.true_center
    galsim.Convolve(gal, psf, gsparams=gsp).drawImage(img, method="auto", offset=(x - c.x, y - c.y))
    return img.array


def _random_galaxies(rng, count):
    return [
        (
            31 + rng.uniform(-2, 2),
            31 + rng.uniform(-2, 2),
            rng.uniform(17, 24),
            float(np.exp(rng.uniform(np.log(0.3), np.log(25)))),
            rng.uniform(0.3, 6.2),
            rng.uniform(0.1, 1.0),
            rng.uniform(-90, 90),
        )
        for _ in range(count)
    ]


def test_matches_galsim_on_200_random_galaxies():
    """200 galaxies over GalSim's n range, Re 0.3–25 px, q 0.1–1, all PAs, sub-pixel centres,
    Moffat (beta 2–5) and Gaussian PSFs of FWHM 2–7 px.

    Tolerances are the acceptance goals (0.5 % of the peak per pixel, 0.2 % of the flux in the
    stamp); the renderer's own error is ~1e-4 (table interpolation and the wrap bound), and
    GalSim's accuracy settings are tightened so that its own error stays below that too.
    """
    rng = np.random.default_rng(20261125)
    worst_pix, worst_flux = 0.0, 0.0
    for i, p in enumerate(_random_galaxies(rng, 200)):
        kind = "moffat" if i % 2 == 0 else "gaussian"
        fwhm, beta = rng.uniform(2, 7), rng.uniform(2, 5)
        ours_psf = MoffatPSF(fwhm=fwhm, beta=beta) if kind == "moffat" else GaussianPSF(fwhm=fwhm)
        ref = _galsim_stamp(p, _galsim_psf(kind, fwhm, beta))
        ours = render_sersic(torch.tensor([p], dtype=torch.float64), ours_psf)[0].numpy()
        pix = np.abs(ours - ref).max() / ref.max()
        flux = abs(ours.sum() / ref.sum() - 1)
        worst_pix, worst_flux = max(worst_pix, pix), max(worst_flux, flux)
        assert pix < 5e-3, f"galaxy {i} {p} {kind} fwhm={fwhm:.2f}: pixel error {pix:.2e} of peak"
        assert flux < 2e-3, f"galaxy {i} {p} {kind} fwhm={fwhm:.2f}: flux error {flux:.2e}"
    print(f"worst pixel error {worst_pix:.2e} of peak, worst flux error {worst_flux:.2e}")


def test_float32_matches_float64():
    """float32 (the fast path) stays within 1e-4 of the peak of float64 (single-precision FFT sums)."""
    rng = np.random.default_rng(3)
    p = torch.tensor(_random_galaxies(rng, 20), dtype=torch.float64)
    psf = MoffatPSF(fwhm=4.0, beta=3.0).draw(25)
    ref = render_sersic(p, psf)
    ours = render_sersic(p.float(), psf.float()).double()
    err = ((ours - ref).abs().amax(dim=(1, 2)) / ref.amax(dim=(1, 2))).max()
    assert err < 1e-4


def test_image_psf_path_matches_galsim():
    """A PSF *image* (pixel included, as survey PSFs are) gives GalSim's result when the image
    holds the whole PSF (61x61, beta >= 3.5 so that < 0.1 % of its light lies outside).
    0.5 % of the peak as above."""
    rng = np.random.default_rng(7)
    for p in _random_galaxies(rng, 12):
        fwhm, beta = rng.uniform(3, 6), rng.uniform(3.5, 5)
        gpsf = _galsim_psf("moffat", fwhm, beta)
        psf_img = gpsf.drawImage(nx=61, ny=61, scale=1.0, method="auto").array
        ref = _galsim_stamp(p, gpsf)
        ours = render_sersic(torch.tensor([p], dtype=torch.float64), psf_img)[0].numpy()
        assert np.abs(ours - ref).max() / ref.max() < 5e-3
        assert abs(ours.sum() / ref.sum() - 1) < 2e-3


def test_per_galaxy_psf_cube_equals_single_psf():
    """A (B, P, P) cube with identical stamps gives the same images as one shared PSF."""
    rng = np.random.default_rng(11)
    p = torch.tensor(_random_galaxies(rng, 5), dtype=torch.float64)
    psf = MoffatPSF(fwhm=4.5, beta=2.5).draw(25)
    a = render_sersic(p, psf)
    b = render_sersic(p, psf.expand(5, 25, 25).clone())
    assert torch.allclose(a, b, rtol=0, atol=1e-12 * float(a.max()))


@pytest.mark.parametrize("n", [6.5, 8.0, 10.0])
def test_fourier_table_matches_quadrature_beyond_galsim(n):
    """Beyond GalSim's n <= 6.2 the transform is checked against direct quadrature of the Hankel
    integral; 1e-5 absolute (of a unit total flux) is the interpolation error budget."""
    from scipy import integrate, special

    b = special.gammaincinv(2 * n, 0.5)
    log_ie = 2 * n * math.log(b) - math.log(2 * math.pi * n) - b - special.gammaln(2 * n)

    def integrand(r, kappa):
        return 2 * math.pi * math.exp(log_ie - b * (r ** (1 / n) - 1)) * special.j0(kappa * r) * r

    edges = np.concatenate([[0.0], np.logspace(-6, 9, 1500)])
    for kappa in (0.05, 0.7, 3.0, 20.0):
        with warnings.catch_warnings():
            # far-out sub-intervals where the integrand underflows make quadpack complain
            warnings.simplefilter("ignore", integrate.IntegrationWarning)
            exact = sum(
                integrate.quad(integrand, a, c, args=(kappa,), limit=200, epsabs=1e-13)[0]
                for a, c in zip(edges[:-1], edges[1:])
            )
        ours = sersic_fourier(torch.tensor([n], dtype=torch.float64),
                              torch.tensor([[math.log(kappa)]], dtype=torch.float64))
        assert abs(float(ours) - exact) < 1e-5, (n, kappa, float(ours), exact)


@pytest.mark.parametrize("n", [0.5, 1.0])
def test_fourier_table_exact_cases(n):
    """n = 0.5 (Gaussian) and n = 1 (exponential) have closed-form transforms: 1e-5."""
    from scipy.special import gammaincinv

    b = gammaincinv(2 * n, 0.5)
    kappa = np.logspace(-3, 2, 300)
    exact = np.exp(-(kappa**2) / (4 * b)) if n == 0.5 else (1 + (kappa / b) ** 2) ** -1.5
    ours = sersic_fourier(torch.full((1,), n, dtype=torch.float64),
                          torch.tensor(np.log(kappa))[None]).numpy()[0]
    assert np.abs(ours - exact).max() < 1e-5


def test_bn_is_exact():
    """b_n from the table matches scipy's gammaincinv to 1e-7 relative, including low n."""
    from scipy.special import gammaincinv

    n = np.linspace(0.2, 10, 97)
    ours = sersic_bn(torch.tensor(n, dtype=torch.float64)).numpy()
    assert np.allclose(ours, gammaincinv(2 * n, 0.5), rtol=1e-7)


def test_high_n_flux_bounded_by_enclosed_light():
    """n = 8, round, in a 301x301 stamp: the stamp flux lies between the analytic light inside the
    inscribed and the circumscribed circles (the untruncated profile's wings are real)."""
    from scipy.special import gammainc, gammaincinv

    n, re = 8.0, 3.0
    p = torch.tensor([[151.0, 151.0, 20.0, re, n, 1.0, 0.0]], dtype=torch.float64)
    img = render_sersic(p, GaussianPSF(fwhm=3.0), shape=(301, 301))[0]
    flux = 10 ** (-0.4 * (20 - 27))
    b = gammaincinv(2 * n, 0.5)
    inner = gammainc(2 * n, b * (150 / re) ** (1 / n))
    outer = gammainc(2 * n, b * (150 * math.sqrt(2) / re) ** (1 / n))
    frac = float(img.sum()) / flux
    assert inner - 1e-3 < frac < outer + 1e-3


def test_point_source_matches_galsim_psf_draw():
    """An analytic PSF drawn by galnet equals GalSim's drawImage(method='auto') to 5e-6 (GalSim run
    with tight accuracy settings). galnet's ``fwhm`` is along the major axis, while GalSim's shear
    preserves area, hence ``fwhm * sqrt(q)`` on the GalSim side."""
    tight = galsim.GSParams(folding_threshold=1e-4, maxk_threshold=1e-5, kvalue_accuracy=1e-7,
                            xvalue_accuracy=1e-7)
    for psf, gs in (
        (MoffatPSF(fwhm=3.3, beta=3.0), galsim.Moffat(beta=3.0, fwhm=3.3, gsparams=tight)),
        (KolmogorovPSF(fwhm=4.0), galsim.Kolmogorov(fwhm=4.0, gsparams=tight)),
        (GaussianPSF(fwhm=2.0, q=0.8, pa=30.0),
         galsim.Gaussian(fwhm=2.0 * math.sqrt(0.8), gsparams=tight).shear(q=0.8, beta=120 * galsim.degrees)),
    ):
        ours = render_point_source(psf, shape=(25, 25)).numpy()
        ref = gs.drawImage(nx=25, ny=25, scale=1.0, method="auto").array
        assert np.abs(ours - ref).max() < 5e-6, psf


def test_pixel_centre_convention():
    """A point source at x=10, y=20 (1-based) puts its light centroid at array column 9, row 19."""
    img = render_point_source(GaussianPSF(fwhm=2.5), shape=(41, 41), center=(10.0, 20.0)).numpy()
    yy, xx = np.indices(img.shape)
    assert abs((img * xx).sum() / img.sum() - 9.0) < 1e-6
    assert abs((img * yy).sum() / img.sum() - 19.0) < 1e-6


def test_position_angle_convention():
    """pa = 0 puts the major axis along +y (rows); pa = 90 along x; pa = 45 towards -x, +y."""
    for pa, expected in ((0.0, "y"), (90.0, "x"), (45.0, "anti")):
        p = torch.tensor([[31.0, 31.0, 18.0, 8.0, 1.0, 0.3, pa]], dtype=torch.float64)
        img = render_sersic(p, GaussianPSF(fwhm=2.0))[0].numpy()
        yy, xx = np.indices(img.shape) - 30.0
        mxx, myy, mxy = ((img * xx * xx).sum(), (img * yy * yy).sum(), (img * xx * yy).sum())
        if expected == "y":
            assert myy > 3 * mxx
        elif expected == "x":
            assert mxx > 3 * myy
        else:  # CCW from +y by 45 deg: major axis along (-1, +1)
            assert mxy < -0.3 * (mxx + myy) / 2


def test_gradients_match_finite_differences():
    """Autograd gradients of a chi-square-like scalar w.r.t. all 7 parameters agree with central
    finite differences to 1 % (the table is linear in ln kappa between knots, so FD steps that cross
    knots differ slightly from the piecewise derivative)."""
    p0 = torch.tensor([[16.3, 15.6, 20.0, 2.7, 2.2, 0.6, 25.0]], dtype=torch.float64)
    psf = MoffatPSF(fwhm=3.0, beta=3.0).draw(15)
    target = render_sersic(p0 + torch.tensor([[0.3, -0.2, 0.1, 0.2, 0.3, -0.1, 5.0]]), psf,
                           shape=(31, 31), fourier_size=96)

    def loss(p):
        return ((render_sersic(p, psf, shape=(31, 31), fourier_size=96) - target) ** 2).sum()

    p = p0.clone().requires_grad_(True)
    loss(p).backward()
    steps = [1e-4, 1e-4, 1e-5, 1e-4, 1e-4, 1e-5, 1e-3]
    for j, h in enumerate(steps):
        dp = torch.zeros_like(p0)
        dp[0, j] = h
        fd = (loss(p0 + dp) - loss(p0 - dp)) / (2 * h)
        g = p.grad[0, j]
        assert abs(float(g - fd)) <= 1e-2 * abs(float(fd)) + 1e-8, (j, float(g), float(fd))


def test_sky_and_flux_scale():
    """Sky adds a constant; 1 mag brighter multiplies the image by 10**0.4; exptime scales flux."""
    p = torch.tensor([[31.0, 31.0, 21.0, 3.0, 1.5, 0.7, 10.0]], dtype=torch.float64)
    psf = GaussianPSF(fwhm=3.0)
    base = render_sersic(p, psf)
    assert torch.allclose(render_sersic(p, psf, sky=5.0), base + 5.0)
    brighter = p.clone()
    brighter[0, 2] -= 1
    assert torch.allclose(render_sersic(brighter, psf), base * 10**0.4)
    assert torch.allclose(render_sersic(p, psf, exptime=2.0), base * 2)


@pytest.mark.parametrize(
    "column, value, message",
    [(4, 12.0, "n = 12"), (5, 1.5, "q = 1.5"), (3, float("nan"), "re_pix = nan"), (2, float("inf"), "mag")],
)
def test_bad_parameters_name_row_and_problem(column, value, message):
    p = torch.tensor([[31.0, 31.0, 20.0, 3.0, 1.0, 0.5, 0.0]] * 3, dtype=torch.float64)
    p[2, column] = value
    with pytest.raises(ParameterRangeError, match=rf"row 2: {message}"):
        render_sersic(p, GaussianPSF(fwhm=3.0))


def test_bad_psf_images_are_rejected():
    p = torch.tensor([[31.0, 31.0, 20.0, 3.0, 1.0, 0.5, 0.0]], dtype=torch.float64)
    good = MoffatPSF(fwhm=4.0).draw(25).numpy()
    with pytest.raises(PSFError, match="odd size"):
        render_sersic(p, good[:24, :24])
    with pytest.raises(PSFError, match="centroid"):
        render_sersic(p, np.roll(good, 3, axis=1))
    nan = good.copy()
    nan[3, 3] = np.nan
    with pytest.raises(PSFError, match="NaN"):
        render_sersic(p, nan)
    with pytest.raises(PSFError, match="one stamp per galaxy"):
        render_sersic(p.repeat(2, 1), np.stack([good] * 3))


def test_large_stamp_of_compact_galaxy_holds_the_stamp():
    """A compact galaxy on a 97x97 stamp with a PSF image: the DFT size chosen from the wrap-around
    alone (64) would be smaller than the stamp, which the FFT of the inverse DFT cannot hold (it used
    to crash); the renderer now takes the smallest size that holds the stamp (128). The stamp's
    central 61x61 equals a 61x61 render of the same galaxy to 1e-5 of the total flux per pixel (the
    61x61 one is exact to its wrap tolerance), and holds its flux to 2e-4."""
    from galnet.render import required_fourier_size

    psf = MoffatPSF(fwhm=3.5, beta=3.0).draw(25)
    flux = 10 ** (0.4 * (27 - 20))
    for re, n, q, pa in ((0.4, 1.5, 0.7, 30.0), (0.8, 4.0, 0.5, -20.0)):
        big = torch.tensor([[49.3, 48.8, 20.0, re, n, q, pa]], dtype=torch.float64)
        small = big.clone()
        small[0, :2] -= 18
        assert required_fourier_size(big.numpy(), (97, 97), 25)[0] == 128
        assert required_fourier_size(small.numpy(), (61, 61), 25)[0] == 64
        a = render_sersic(big, psf, shape=(97, 97))[0]
        b = render_sersic(small, psf, shape=(61, 61))[0]
        assert float((a[18:79, 18:79] - b).abs().max()) < 1e-5 * flux
        assert float(a.sum()) == pytest.approx(flux, rel=2e-4)
    with pytest.raises(ParameterRangeError, match="DFT size of at least 97"):
        render_sersic(big, psf, shape=(97, 97), fourier_size=64)


def test_check_psf_rules_and_status():
    """check_psf raises on the first rule broken, naming the PSF (and row); psf_status flags the same
    rules per row, vectorised: usable as given (sum within 1e-3 of 1), or after renormalisation."""
    from galnet.render import check_psf, psf_status

    good = MoffatPSF(fwhm=4.0).draw(25).numpy()
    np.testing.assert_array_equal(check_psf(good * 3.0), good * 3.0 / (good * 3.0).sum())
    bad_rows = {
        "NaN or infinite": np.where(np.arange(625).reshape(25, 25) == 7, np.nan, good),
        "sum is 0": np.zeros((25, 25)),
        "negative pixels": good - 0.02 * good.max() * (np.arange(625).reshape(25, 25) == 0),
        "centroid": np.roll(good, 3, axis=1),
    }
    cube = np.stack([good, good * 1.0005, good * 1.2, *bad_rows.values()])
    ok, usable = psf_status(cube)
    assert ok.tolist() == [True, True, False, False, False, False, False]
    assert usable.tolist() == [True, True, True, False, False, False, False]
    assert psf_status(cube, 27)[1].tolist() == [False] * 7  # the wrong size
    assert psf_status(cube.astype(np.float32))[1].tolist() == usable.tolist()
    for i, (what, row) in enumerate(bad_rows.items()):
        with pytest.raises(PSFError, match=f"^p: .*{what}"):
            check_psf(row, name="p")
        with pytest.raises(PSFError, match=rf"^c\[{i + 3}\]: .*{what}"):
            check_psf(cube, name="c")
        cube[i + 3] = good
    with pytest.raises(PSFError, match="sums to 1.2, not 1"):
        check_psf(good * 1.2, renormalise=False)
    assert check_psf(good * 1.02, renormalise=False).sum() == pytest.approx(1.0)
    with pytest.raises(PSFError, match="odd size"):
        check_psf(good[:24, :24])
    with pytest.raises(PSFError, match="square"):
        check_psf(good[:, :23])
    with pytest.raises(PSFError, match="must be 27x27"):
        check_psf(good, size=27)


def test_repair_psfs_keeps_renormalises_or_recentres():
    """repair_psfs: PSFs usable as given are copied (float32), those off unit sum renormalised, other
    sizes or off-centre ones re-centred (all flagged repaired), unrepairable rows a central delta
    with the reason."""
    from galnet.render import psf_centroid, repair_psf, repair_psfs

    good = MoffatPSF(fwhm=4.0).draw(25).numpy()
    bad = np.full((25, 25), np.nan)
    cube = np.stack([good, good * 2.0, np.roll(good, 2, axis=0), bad])
    out, repaired, broken, messages = repair_psfs(cube, 25, names=["a", "b", "c", "d"])
    assert out.dtype == np.float32 and out.shape == (4, 25, 25)
    assert repaired.tolist() == [False, True, True, False] and broken.tolist() == [False, False, False, True]
    np.testing.assert_array_equal(out[0], good.astype(np.float32))
    np.testing.assert_array_equal(out[1], (good * 2.0 / (good * 2.0).sum()).astype(np.float32))
    assert max(abs(c - 12) for c in psf_centroid(out[2])) < 0.05
    assert messages[:3] == ["", "", ""] and messages[3].startswith("d: ") and "NaN" in messages[3]
    assert out[3].sum() == 1.0 and out[3, 12, 12] == 1.0
    wide, fixed = repair_psf(np.pad(good, 3), 25)  # 31x31: re-centred and cropped
    assert fixed and wide.shape == (25, 25)
    np.testing.assert_allclose(wide, good, atol=1e-6)


def test_ellipse_geometry_convention_and_flavours():
    """pa is counter-clockwise from +y: the major axis of pa = 0 is +y, of pa = 90 is -x. numpy,
    torch and float inputs give the same numbers."""
    from galnet.render import ellipse_axes, pa_rotation

    s, c = pa_rotation(0.0)
    assert ellipse_axes(0.0, 1.0, s, c) == (1.0, 0.0)
    s, c = pa_rotation(90.0)
    major, minor = ellipse_axes(-1.0, 0.0, s, c)
    assert major == pytest.approx(1.0) and minor == pytest.approx(0.0, abs=1e-15)
    pa = np.array([-80.0, -10.0, 33.0, 89.0])
    s_np, c_np = pa_rotation(pa)
    s_t, c_t = pa_rotation(torch.as_tensor(pa))
    np.testing.assert_allclose(s_np, s_t.numpy(), rtol=1e-15)
    np.testing.assert_allclose(c_np, c_t.numpy(), rtol=1e-15)
    np.testing.assert_allclose(s_np, [pa_rotation(float(v))[0] for v in pa], rtol=1e-15)
    dx, dy = np.array([1.0, 2.0, -1.0, 0.5]), np.array([0.5, -1.0, 2.0, 3.0])
    major, minor = ellipse_axes(dx, dy, s_np, c_np, inv_q=2.0)
    np.testing.assert_allclose(major ** 2 + (minor / 2.0) ** 2, dx**2 + dy**2, rtol=1e-12)


# ----------------------------------------------------------------------------- scenes
def _scene_objects(rng, count, stamps):
    """Galaxies over the stamp and an 8-px margin (neighbours centred outside included), 1/5 points;
    every stamp gets objects."""
    p = np.column_stack([
        rng.uniform(-8, 69, count), rng.uniform(-8, 69, count), rng.uniform(17, 24, count),
        np.exp(rng.uniform(np.log(0.3), np.log(15), count)),
        np.exp(rng.uniform(np.log(0.3), np.log(8), count)), rng.uniform(0.1, 1.0, count),
        rng.uniform(-90, 90, count),
    ])
    return p, rng.permutation(np.arange(count) % stamps), rng.random(count) < 0.2


def _one_by_one(p, owner, point, psfs, sizes=None):
    """Reference: every object rendered alone (render_sersic / render_point_source), float64."""
    from galnet.render import required_fourier_size

    eff = p.copy()
    eff[point, 3:] = (0.01, 0.5, 1.0, 0.0)
    if sizes is None:
        sizes = required_fourier_size(eff, (61, 61), psfs.shape[-1])
    out = torch.zeros(len(psfs), 61, 61, dtype=torch.float64)
    for j in range(len(p)):
        if point[j]:
            out[owner[j]] += render_point_source(
                psfs[owner[j]], shape=(61, 61), center=tuple(p[j, :2]), flux=10 ** (-0.4 * (p[j, 2] - 27)),
                fourier_size=int(sizes[j]))
        else:
            out[owner[j]] += render_sersic(torch.tensor(p[j : j + 1]), psfs[owner[j]],
                                           fourier_size=int(sizes[j]))[0]
    return out


def test_scene_equals_sum_of_single_renders():
    """render_scene = the sum of render_sersic / render_point_source of each object with its stamp's
    PSF: to 1e-10 of each stamp's peak in float64 (the same model; ~1e-14 in practice), and to 2e-5
    in float32 (single-precision rounding of the sums: render_sersic in float32 is ~1e-6 off too).
    Objects centred up to 8 px outside the stamp, point sources, n 0.3-8, q down to 0.1."""
    from galnet.render import render_scene

    rng = np.random.default_rng(42)
    psfs = torch.stack([MoffatPSF(fwhm=rng.uniform(3.5, 6), beta=rng.uniform(2, 5), q=0.95,
                                  pa=rng.uniform(-90, 90)).draw(25) for _ in range(5)])
    p, owner, point = _scene_objects(rng, 30, 5)
    ref = _one_by_one(p, owner, point, psfs)
    peak = ref.abs().amax(dim=(1, 2))
    scene = render_scene(torch.tensor(p), owner, psfs, point_source=point)
    assert (scene - ref).abs().amax(dim=(1, 2)).div(peak).max() < 1e-10
    scene32 = render_scene(torch.tensor(p, dtype=torch.float32), owner, psfs.float(), point_source=point)
    assert (scene32.double() - ref).abs().amax(dim=(1, 2)).div(peak).max() < 2e-5
    # a shared PSF, sky, and a stamp without objects
    single = render_scene(torch.tensor(p[owner == 0]), np.zeros((owner == 0).sum(), int), psfs[0],
                          point_source=point[owner == 0], n_stamps=2, sky=torch.tensor([1.0, 2.0],
                          dtype=torch.float64))
    assert torch.allclose(single[0] - 1.0, ref[0], rtol=0, atol=1e-10 * float(peak[0]))
    assert torch.equal(single[1], torch.full((61, 61), 2.0, dtype=torch.float64))


def test_scene_shared_grid_is_the_largest_grid_of_the_stamp():
    """shared_grid=True renders each object on its stamp's largest required grid: equal to the single
    renders at that size (1e-10 of the peak), and within the wrap tolerance of the default."""
    from galnet.render import render_scene, required_fourier_size

    rng = np.random.default_rng(7)
    psfs = torch.stack([MoffatPSF(fwhm=4.0, beta=3.0).draw(25)] * 3)
    p, owner, point = _scene_objects(rng, 12, 3)
    eff = p.copy()
    eff[point, 3:] = (0.01, 0.5, 1.0, 0.0)
    need = required_fourier_size(eff, (61, 61), 25)
    largest = np.zeros(3, int)
    np.maximum.at(largest, owner, need)
    ref = _one_by_one(p, owner, point, psfs, sizes=largest[owner])
    peak = ref.abs().amax(dim=(1, 2))
    shared = render_scene(torch.tensor(p), owner, psfs, point_source=point, shared_grid=True)
    assert (shared - ref).abs().amax(dim=(1, 2)).div(peak).max() < 1e-10
    default = render_scene(torch.tensor(p), owner, psfs, point_source=point)
    flux = np.bincount(owner, 10 ** (-0.4 * (p[:, 2] - 27)), minlength=3)
    assert ((default - shared).abs().sum(dim=(1, 2)).numpy() < 1e-3 * flux).all()


def test_scene_gradients_match_single_renders():
    """Autograd through render_scene gives the gradients of the summed single renders."""
    from galnet.render import render_scene, required_fourier_size

    rng = np.random.default_rng(3)
    psf = MoffatPSF(fwhm=4.0, beta=3.0).draw(25)
    p, owner, _ = _scene_objects(rng, 4, 2)
    p[0, 3:5] = (12.0, 6.0)  # extended: its near rings of periodic copies are subtracted
    assert required_fourier_size(p, (61, 61), 25, return_correction=True)[1][0]
    weights = torch.rand(2, 61, 61, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = torch.tensor(p, requires_grad=True)
    (render_scene(a, owner, psf, n_stamps=2) * weights).sum().backward()
    b = torch.tensor(p, requires_grad=True)
    single = render_sersic(b, psf)
    (single * weights[torch.as_tensor(owner)]).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12 * float(b.grad.abs().max()))


def test_scene_rejects_bad_input():
    from galnet.render import render_scene

    p = torch.tensor([[31.0, 31.0, 20.0, 3.0, 1.0, 0.5, 0.0]], dtype=torch.float64)
    psf = MoffatPSF(fwhm=4.0).draw(25)
    with pytest.raises(PSFError, match="PSF images"):
        render_scene(p, [0], MoffatPSF(fwhm=4.0))
    with pytest.raises(ParameterRangeError, match="stamp_index"):
        render_scene(p, [3], psf, n_stamps=2)
    with pytest.raises(ParameterRangeError, match="one entry per object"):
        render_scene(p, [0, 0], psf)
    with pytest.raises(PSFError, match="one stamp per stamp"):
        render_scene(p, [0], torch.stack([psf] * 3), n_stamps=2)
    bad = p.clone()
    bad[0, 4] = 12.0
    with pytest.raises(ParameterRangeError, match="row 0: n = 12"):
        render_scene(bad, [0], psf)


def test_required_fourier_size_per_object_tolerance_and_forced_sizes():
    """Per-object wrap tolerances and forced sizes give what one call per value gives."""
    from galnet.render import required_fourier_size

    rng = np.random.default_rng(5)
    p, _, _ = _scene_objects(rng, 200, 1)
    tol = rng.choice([3e-3, 3e-2], 200)
    sizes, corr = required_fourier_size(p, (61, 61), 25, wrap_tolerance=tol, return_correction=True)
    for t in (3e-3, 3e-2):
        s1, c1 = required_fourier_size(p, (61, 61), 25, wrap_tolerance=t, return_correction=True)
        np.testing.assert_array_equal(sizes[tol == t], s1[tol == t])
        np.testing.assert_array_equal(corr[tol == t], c1[tol == t])
    forced = rng.choice([96, 128, 256], 200)
    _, corr_f = required_fourier_size(p, (61, 61), 25, return_correction=True, forced_size=forced)
    for f in (96, 128, 256):
        _, c1 = required_fourier_size(p, (61, 61), 25, return_correction=True, forced_size=f)
        np.testing.assert_array_equal(corr_f[forced == f], c1[forced == f])


def test_sersic_fourier_grad_equals_forward_ad():
    """sersic_fourier_grad gives sersic_fourier's value exactly and its forward-mode derivatives
    (in ln kappa and n, table ends included) to 1e-12 relative in float64."""
    import torch.autograd.forward_ad as fwad

    from galnet.render.sersic import sersic_fourier, sersic_fourier_grad

    gen = torch.Generator().manual_seed(3)
    n = torch.rand(6, generator=gen, dtype=torch.float64) * 7.5 + 0.25
    ln_kappa = torch.randn(6, 20, 11, generator=gen, dtype=torch.float64) * 3
    ln_kappa[0, 0, 0], ln_kappa[1, 0, 0] = -40.0, 40.0  # beyond both ends of the table
    t, dt_dlnk, dt_dn = sersic_fourier_grad(n, ln_kappa)
    with warnings.catch_warnings():  # torch's own deprecation notice on its first JVP
        warnings.simplefilter("ignore", DeprecationWarning)
        with fwad.dual_level():
            ref = fwad.unpack_dual(sersic_fourier(n, fwad.make_dual(ln_kappa, torch.ones_like(ln_kappa))))
        with fwad.dual_level():
            ref_n = fwad.unpack_dual(sersic_fourier(fwad.make_dual(n, torch.ones_like(n)), ln_kappa)).tangent
    assert torch.equal(t, ref.primal)
    assert (dt_dlnk - ref.tangent).abs().max() <= 1e-12 * ref.tangent.abs().max()
    assert (dt_dn - ref_n).abs().max() <= 1e-12 * ref_n.abs().max()
    assert dt_dlnk[0, 0, 0] == 0 and dt_dlnk[1, 0, 0] == 0
