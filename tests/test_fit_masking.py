"""Neighbour masking (galnet.fit.masking): what it masks, what it never masks, and what it buys a fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galnet.errors import InputDataError
from galnet.fit import fit_stamps, neighbour_mask, segment_stamps
from galnet.flags import Flag
from galnet.render import MoffatPSF, render_sersic

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (61, 61)
B = 4


@pytest.fixture(scope="module")
def psf():
    return np.asarray(MoffatPSF(fwhm=3.5, beta=3.5).draw(25))


def _render(p, psf):
    return render_sersic(torch.as_tensor(p, dtype=torch.float64), psf, shape=SHAPE).numpy()


@pytest.fixture(scope="module")
def pair(psf):
    """Four stamps: a target near the centre and an equally bright, more compact neighbour 13–15 px away
    in four directions; σ = sqrt(0.5² + model/20) (sky + Poisson), Gaussian noise."""
    rng = np.random.default_rng(1)
    target = np.tile([31.3, 30.8, 18.5, 2.5, 1.0, 0.7, 30.0], (B, 1))
    target[:, :2] += rng.uniform(-0.5, 0.5, (B, 2))
    ang = np.deg2rad([20.0, 110.0, 200.0, 290.0])
    dist = np.array([13.0, 14.0, 15.0, 14.0])
    nb = np.stack([target[:, 0] + dist * np.cos(ang), target[:, 1] + dist * np.sin(ang),
                   np.full(B, 18.5), np.full(B, 1.0), np.full(B, 1.0), np.full(B, 0.8), np.full(B, -20.0)], 1)
    t_img, nb_img = _render(target, psf), _render(nb, psf)
    sigma = np.sqrt(0.25 + np.maximum(t_img + nb_img, 0) / 20.0)
    images = t_img + nb_img + rng.normal(size=t_img.shape) * sigma
    return dict(images=images, sigma=sigma, target=target, nb=nb, t_img=t_img, nb_img=nb_img)


def test_mask_covers_the_neighbour_not_the_target(pair, psf):
    """≥ 98% of the neighbour's light is masked, one source per stamp; the mask never touches the
    target's segment, and covers the target's centre nowhere within 4 px."""
    mask, n = neighbour_mask(pair["images"], pair["sigma"], psf=psf)
    assert mask.shape == pair["images"].shape and mask.dtype == bool
    assert n.tolist() == [1] * B
    nb_frac = (pair["nb_img"] * mask).sum((1, 2)) / pair["nb_img"].sum((1, 2))
    assert np.all(nb_frac > 0.98), nb_frac
    segments, target = segment_stamps(pair["images"], pair["sigma"], psf=psf)
    assert np.all(target > 0)
    assert not np.any(mask & (segments == target[:, None, None]))
    yy, xx = np.indices(SHAPE)
    for i in range(B):
        r = np.hypot(xx + 1 - pair["target"][i, 0], yy + 1 - pair["target"][i, 1])
        assert not mask[i][r < 4].any()
        # even a huge growth never reaches into the target's segment
    big, _ = neighbour_mask(pair["images"], pair["sigma"], psf=psf, grow=12)
    assert not np.any(big & (segments == target[:, None, None]))


def test_masked_fit_recovers_the_target_unmasked_does_not(pair, psf):
    """With the mask: x, y within 0.1 px, mag within 0.05, re within 5% (statistical errors here are
    ~0.02 px, 0.01 mag, 1.5%). Without it the fit runs off towards the neighbour (re error > 100%,
    centre > 1 px off) on every stamp."""
    mask, _ = neighbour_mask(pair["images"], pair["sigma"], psf=psf)
    truth = pair["target"]
    good = fit_stamps(pair["images"], psf, sigma=pair["sigma"], mask=mask)
    bad = fit_stamps(pair["images"], psf, sigma=pair["sigma"])
    assert np.all(good.status >= 0)
    assert np.abs(good.params[:, :2] - truth[:, :2]).max() < 0.1
    assert np.abs(good.params[:, 2] - truth[:, 2]).max() < 0.05
    assert np.abs(good.params[:, 3] / truth[:, 3] - 1).max() < 0.05
    re_err_bad = np.abs(bad.params[:, 3] / truth[:, 3] - 1)
    off_bad = np.hypot(*(bad.params[:, :2] - truth[:, :2]).T)
    assert np.all(re_err_bad > 1.0), re_err_bad
    assert np.all(off_bad > 1.0), off_bad


def test_isolated_and_empty_stamps_mask_nothing(psf):
    """Pure noise, an isolated bright galaxy and an isolated faint one: nothing masked. A constant
    (zero-noise) stamp and a σ-less call work too."""
    rng = np.random.default_rng(7)
    p = np.array([[31.0, 31.0, 20.0, 3.0, 1.0, 0.6, 10.0], [31.4, 30.6, 23.0, 4.0, 1.0, 0.5, -50.0],
                  [30.8, 31.2, 17.5, 6.0, 4.0, 0.8, 70.0]])
    model = np.concatenate([np.zeros((1, *SHAPE)), _render(p, psf)])
    sigma = np.sqrt(0.25 + np.maximum(model, 0) / 20.0)
    images = model + rng.normal(size=model.shape) * sigma
    for sig in (sigma, None):
        mask, n = neighbour_mask(images, sig, psf=psf)
        assert not mask.any() and n.tolist() == [0, 0, 0, 0]
    mask, n = neighbour_mask(np.zeros(SHAPE))  # single stamp, no noise at all
    assert mask.shape == SHAPE and not mask.any() and int(n) == 0


def test_bad_pixels_centre_and_flag(pair, psf):
    """NaN pixels and a user mask are ignored for detection; an explicit centre on the neighbour makes
    it the target (the other galaxy is masked instead); the flag exists and is described."""
    images = pair["images"].copy()
    images[:, :5, :5] = np.nan
    user = np.zeros(images.shape, dtype=bool)
    user[:, -3:, :] = True
    mask, n = neighbour_mask(images, pair["sigma"], mask=user, psf=psf)
    assert n.tolist() == [1] * B
    swapped, _ = neighbour_mask(pair["images"], pair["sigma"], psf=psf, centre=pair["nb"][:, :2])
    t_frac = (pair["t_img"] * swapped).sum((1, 2)) / pair["t_img"].sum((1, 2))
    assert np.all(t_frac > 0.8), t_frac
    from galnet.flags import describe

    assert "NEIGHBOURS_MASKED" in describe() and Flag.NEIGHBOURS_MASKED.value == 1 << 13


def test_centre_on_a_bright_neighbours_wings(psf):
    """A faint target on the wings of a bright galaxy 12 px away, whose segment covers the stamp centre:
    the segment is split between the centre and the galaxy's peak; the galaxy's core is masked, the
    target's surroundings are not."""
    p = np.array([[31.0, 31.0, 23.0, 2.0, 1.0, 0.8, 0.0], [43.0, 31.0, 16.5, 6.0, 1.0, 0.9, 0.0]])
    model = _render(p, psf).sum(0)
    sigma = np.sqrt(0.25 + np.maximum(model, 0) / 20.0)
    image = model + np.random.default_rng(3).normal(size=model.shape) * sigma
    segments, target = segment_stamps(image, sigma, psf=psf, peak_radius=1e9)  # no split: one segment
    assert segments[0, 30, 30] == segments[0, 30, 42] > 0
    mask, n = neighbour_mask(image, sigma, psf=psf)
    assert int(n) == 1 and mask[30, 42] and mask[30, 39:].all()
    assert not mask[28:34, 26:35].any()


def test_bad_inputs_raise_clear_errors(psf):
    img = np.zeros((2, 21, 21))
    with pytest.raises(InputDataError, match="images must have shape"):
        neighbour_mask(np.zeros(21))
    with pytest.raises(InputDataError, match="images must have shape"):
        neighbour_mask(np.zeros((1, 2, 21, 21)))
    with pytest.raises(InputDataError, match="sigma"):
        neighbour_mask(img, np.ones((2, 20, 21)))
    with pytest.raises(InputDataError, match="mask shape"):
        neighbour_mask(img, mask=np.zeros((21, 21)))
    with pytest.raises(InputDataError, match="centre"):
        neighbour_mask(img, centre=np.zeros((3, 2)))
    with pytest.raises(InputDataError, match="psf cube"):
        neighbour_mask(img, psf=np.stack([psf] * 3))
    with pytest.raises(InputDataError, match="grow"):
        neighbour_mask(img, grow=-1)
    with pytest.raises(InputDataError, match="nsigma"):
        neighbour_mask(img, nsigma=0)
    empty, n = neighbour_mask(np.zeros((0, 21, 21)))
    assert empty.shape == (0, 21, 21) and n.shape == (0,)


def test_cli_masks_by_default_and_flags_rows(tmp_path, pair, psf):
    """`galnet fit` masks neighbours by default (flag + n_masked column), not with --no-mask-neighbours."""
    from astropy.io import fits

    from galnet.catalog import read_table
    from galnet.cli import main

    fits.writeto(tmp_path / "cube.fits", pair["images"][:2].astype(np.float32))
    fits.writeto(tmp_path / "psf.fits", psf.astype(np.float32))
    fits.writeto(tmp_path / "sigma.fits", pair["sigma"][:2].astype(np.float32))
    common = [str(tmp_path / "cube.fits"), "--psf", str(tmp_path / "psf.fits"), "--sigma",
              str(tmp_path / "sigma.fits"), "--max-iter", "40"]
    assert main(["fit", *common, "-o", str(tmp_path / "on.ecsv")]) == 0
    assert main(["fit", *common, "--no-mask-neighbours", "-o", str(tmp_path / "off.ecsv")]) == 0
    on, off = read_table(tmp_path / "on.ecsv"), read_table(tmp_path / "off.ecsv")
    assert list(on["n_masked"]) == [1, 1] and list(off["n_masked"]) == [0, 0]
    assert all(int(f) & Flag.NEIGHBOURS_MASKED for f in on["flags"])
    assert not any(int(f) & Flag.NEIGHBOURS_MASKED for f in off["flags"])
    truth = pair["target"][:2]
    assert np.abs(np.asarray(on["mag"]) - truth[:, 2]).max() < 0.05
    assert np.abs(np.asarray(off["x"]) - truth[:, 0]).max() > 1.0
