"""evaluate.frechet against scipy.linalg.sqrtm, and the cached FID classifier of evaluate.fid."""

import json
import os

import numpy as np
import pytest
import scipy.linalg

from evaluate import fid, frechet


def _scipy_frechet(mu_1, cov_1, mu_2, cov_2):
    root = scipy.linalg.sqrtm(cov_1 @ cov_2)
    root = root.real if np.iscomplexobj(root) else root
    return float(np.sum((mu_1 - mu_2) ** 2) + np.trace(cov_1) + np.trace(cov_2) - 2.0 * np.trace(root))


def _random_covariance(rng, dim, rank=None):
    a = rng.normal(size=(dim, rank or dim + 3))
    return a @ a.T / a.shape[1]


@pytest.mark.parametrize("dim", [1, 4, 16, 64])
def test_frechet_distance_matches_scipy_sqrtm(dim):
    rng = np.random.default_rng(dim)
    for _ in range(3):
        mu_1, mu_2 = rng.normal(size=dim), rng.normal(size=dim)
        cov_1, cov_2 = _random_covariance(rng, dim), 2.0 * _random_covariance(rng, dim)
        ours = float(frechet.frechet_distance(mu_1, cov_1, mu_2, cov_2).numpy())
        np.testing.assert_allclose(ours, _scipy_frechet(mu_1, cov_1, mu_2, cov_2), rtol=1e-6, atol=1e-8)


def test_frechet_distance_of_rank_deficient_covariances_matches_scipy():
    # Fewer samples than dimensions makes sample covariances singular, as in FID with few images.
    rng = np.random.default_rng(7)
    dim = 12
    cov_1, cov_2 = _random_covariance(rng, dim, rank=5), _random_covariance(rng, dim, rank=7)
    mu = np.zeros(dim)
    ours = float(frechet.frechet_distance(mu, cov_1, mu, cov_2).numpy())
    np.testing.assert_allclose(ours, _scipy_frechet(mu, cov_1, mu, cov_2), rtol=1e-5, atol=1e-6)


def test_frechet_distance_is_zero_for_the_same_gaussian_and_known_for_shifts():
    rng = np.random.default_rng(1)
    cov = _random_covariance(rng, 8)
    mu = rng.normal(size=8)
    assert float(frechet.frechet_distance(mu, cov, mu, cov).numpy()) == pytest.approx(0.0, abs=1e-8)
    # Same covariance: only the means differ.
    assert float(frechet.frechet_distance(mu, cov, mu + 2.0, cov).numpy()) == pytest.approx(8 * 4.0, rel=1e-8)
    # Isotropic: d^2 = D (s_1 - s_2)^2.
    eye = np.eye(8)
    assert float(frechet.frechet_distance(mu, 4 * eye, mu, 9 * eye).numpy()) == pytest.approx(8.0, rel=1e-8)


def test_gaussian_statistics_match_numpy():
    features = np.random.default_rng(2).normal(size=(50, 6)).astype(np.float32)
    mean, cov = frechet.gaussian_statistics(features)
    np.testing.assert_allclose(mean.numpy(), features.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(cov.numpy(), np.cov(features, rowvar=False), rtol=1e-5, atol=1e-6)


def test_feature_classifier_is_trained_once_then_cached(tfds_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no_keras_weights"))
    logs = []
    cache = str(tmp_path / "cache")
    extractor = fid.make_extractor("auto", "color_mnist", tfds_dir, cache, 256, 1, log=logs.append)
    description = extractor.description
    assert description["kind"] == "classifier"  # no InceptionV3 weights cached: the offline classifier
    assert os.path.exists(description["path"]) and description["path"].startswith(os.path.join(cache, "color_mnist"))
    assert set(description["test_accuracy"]) == {"digit", "color"}
    with open(description["path"][: -len(".keras")] + ".json") as f:
        assert json.load(f)["train_examples"] == 256
    images = np.random.default_rng(0).uniform(size=(10, 28, 28, 3)).astype(np.float32)
    features = extractor(images)
    assert features.shape == (10, 128)

    logs.clear()
    again = fid.make_extractor("classifier", "color_mnist", tfds_dir, cache, 256, 1, log=logs.append)
    assert any("using cached" in line for line in logs)
    np.testing.assert_allclose(again(images), features, rtol=1e-5, atol=1e-6)
    # Different settings are a different classifier, never a stale cache hit.
    assert fid._cache_key("color_mnist", tfds_dir, 256, 1, 0) != fid._cache_key("color_mnist", tfds_dir, 512, 1, 0)
    assert fid.fid(extractor, images, images) == pytest.approx(0.0, abs=1e-6)


def test_unknown_feature_kind_is_refused():
    with pytest.raises(ValueError, match="unknown FID features"):
        fid.make_extractor("vgg", "mnist", None, "/tmp", 1, 1)
