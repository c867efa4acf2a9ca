"""The generation metrics: the closed-form Frechet distance, the Gaussian baseline, nearest-image
distances."""

import numpy as np
import pytest
import torch

from modelworks.evaluate.generation import (
    GaussianBaseline,
    feature_stats,
    fid,
    frechet_distance,
    nearest_distances,
)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = [fid(a, a + d) for d in (0.5, 1.0, 2.0)]
    assert shifted[0] > 0.1 and shifted[0] < shifted[1] < shifted[2]
    # a mean shift of d in every one of 16 dimensions adds exactly 16 d^2 (covariances equal)
    assert shifted[1] == pytest.approx(16.0, rel=1e-6)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    # for diagonal covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2 over standard deviations
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([2.0, 2.0, 1.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2)
    got = frechet_distance(mu1, np.diag(sd1**2), mu2, np.diag(sd2**2))
    assert got == pytest.approx(expected, rel=1e-9)


def test_fid_separates_a_same_distribution_sample_from_another_distribution():
    rng = np.random.default_rng(1)
    ref, same = rng.normal(size=(2000, 8)), rng.normal(size=(400, 8))
    wider = rng.normal(size=(400, 8)) * 1.5
    assert fid(same, ref) < 0.3 < fid(wider, ref)


def test_feature_stats_refuses_a_single_row():
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(np.zeros((1, 4)))


def test_gaussian_baseline_reproduces_per_class_means_and_stays_in_range():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.full((200, 1, 2, 2), -0.5), torch.full((200, 1, 2, 2), 0.5)])
    x = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    y = torch.tensor([0] * 200 + [1] * 200)
    base = GaussianBaseline(x, y)
    s = base.sample(torch.tensor([0] * 300 + [1] * 300), seed=3)
    assert s.shape == (600, 1, 2, 2) and s.min() >= -1 and s.max() <= 1
    assert s[:300].mean().item() == pytest.approx(-0.5, abs=0.03)
    assert s[300:].mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(s, base.sample(torch.tensor([0] * 300 + [1] * 300), seed=3))


def test_nearest_distances_are_zero_for_copies_and_rms_otherwise():
    train = torch.rand(50, 1, 4, 4) * 2 - 1
    assert np.allclose(nearest_distances(train[:5], train), 0, atol=1e-5)
    far = torch.full((1, 1, 4, 4), 3.0)  # RMS distance to the nearest is at least 2
    assert nearest_distances(far, train)[0] >= 2.0
