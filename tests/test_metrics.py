"""Saliency metrics: hand-computed cases, documented edge rules, and agreement with a plain-numpy
restatement of the MIT saliency benchmark's MATLAB functions on random maps."""

import math

import numpy as np
import pytest
import torch

from dtfsal_hf import metrics

EPS = 2.2204e-16


# Plain-numpy restatements of CC.m, NSS.m, similarity.m, KLdiv.m, AUC_Judd.m, AUC_shuffled.m and
# AUC_Borji.m, written loop by loop as the MATLAB code reads (maps already at the same size).
def matlab_cc(s, g):
    s = (s - s.mean()) / s.std(ddof=1)
    g = (g - g.mean()) / g.std(ddof=1)
    return np.corrcoef(s.ravel(), g.ravel())[0, 1]


def matlab_nss(s, f):
    s = (s - s.mean()) / s.std(ddof=1)
    return s[f.astype(bool)].mean()


def matlab_sim(s, g):
    s = (s - s.min()) / (s.max() - s.min())
    s = s / s.sum()
    g = (g - g.min()) / (g.max() - g.min())
    g = g / g.sum()
    return np.minimum(s, g).sum()


def matlab_kld(s, g):
    if np.any(s):
        s = s / s.sum()
    if np.any(g):
        g = g / g.sum()
    return np.sum(g * np.log(EPS + g / (s + EPS)))


def matlab_auc_judd(s, f):
    s = (s - s.min()) / (s.max() - s.min())
    S, F = s.ravel(), f.ravel()
    sth = S[F > 0]
    n_fix, n_pix = len(sth), len(S)
    thresholds = np.sort(sth)[::-1]
    tp, fp = np.zeros(n_fix + 2), np.zeros(n_fix + 2)
    tp[-1] = fp[-1] = 1
    for i in range(1, n_fix + 1):
        above = np.sum(S >= thresholds[i - 1])
        tp[i] = i / n_fix
        fp[i] = (above - i) / (n_pix - n_fix)
    return np.trapezoid(tp, fp)


def matlab_grid_auc(sth, curfix, step=0.1):
    top = max(sth.max(), curfix.max())
    thresholds = (np.arange(0, math.floor(top / step + 1e-10) + 1) * step)[::-1]
    tp, fp = np.zeros(len(thresholds) + 2), np.zeros(len(thresholds) + 2)
    tp[-1] = fp[-1] = 1
    for i, threshold in enumerate(thresholds, start=1):
        tp[i] = np.sum(sth >= threshold) / len(sth)
        fp[i] = np.sum(curfix >= threshold) / len(curfix)
    return np.trapezoid(tp, fp)


def matlab_auc_shuffled_all_other(s, f, other):
    """`AUC_shuffled.m` when the other map has no more fixations than `f`: every split draws all of them."""
    s = (s - s.min()) / (s.max() - s.min())
    S = s.ravel()
    return matlab_grid_auc(S[f.ravel() > 0], S[other.ravel() > 0])


def matlab_auc_borji(s, f, picks):
    """`AUC_Borji.m` with the random pixel draws `picks` `(splits, fixations)` given."""
    s = (s - s.min()) / (s.max() - s.min())
    S = s.ravel()
    return np.mean([matlab_grid_auc(S[f.ravel() > 0], S[row]) for row in picks])


def random_case(rng, height=24, width=32, fixations=20):
    prediction = rng.random((height, width)) ** 2
    target = rng.random((height, width))
    fixation = np.zeros((height, width))
    fixation.ravel()[rng.choice(height * width, fixations, replace=False)] = 1
    return prediction, target, fixation


@pytest.mark.parametrize("seed", range(5))
def test_map_metrics_match_matlab_restatement(seed):
    s, g, f = random_case(np.random.default_rng(seed))
    S, G, F = (torch.from_numpy(x) for x in (s, g, f))
    assert float(metrics.cc(S, G)) == pytest.approx(matlab_cc(s, g), abs=1e-6)
    assert float(metrics.nss(S, F)) == pytest.approx(matlab_nss(s, f), abs=1e-6)
    assert float(metrics.sim(S, G)) == pytest.approx(matlab_sim(s, g), abs=1e-6)
    assert float(metrics.kld(S, G)) == pytest.approx(matlab_kld(s, g), abs=1e-6)
    assert float(metrics.auc_judd(S, F, jitter=False)) == pytest.approx(matlab_auc_judd(s, f), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_shuffled_auc_matches_matlab_restatement(seed):
    rng = np.random.default_rng(100 + seed)
    s, _, f = random_case(rng, fixations=30)
    _, _, other = random_case(rng, fixations=12)
    score = metrics.auc_shuffled(torch.from_numpy(s), torch.from_numpy(f), torch.from_numpy(other))
    assert float(score) == pytest.approx(matlab_auc_shuffled_all_other(s, f, other), abs=1e-6)


def test_borji_auc_matches_matlab_restatement_with_the_same_draws():
    s, _, f = random_case(np.random.default_rng(7), fixations=25)
    generator = torch.Generator().manual_seed(3)
    picks = torch.randint(0, s.size, (100, 25), generator=generator).numpy()
    score = metrics.auc_borji(torch.from_numpy(s), torch.from_numpy(f), seed=3)
    assert float(score) == pytest.approx(matlab_auc_borji(s, f, picks), abs=1e-6)


def test_batched_equals_per_frame_and_jitter_barely_matters():
    rng = np.random.default_rng(11)
    cases = [random_case(rng) for _ in range(4)]
    S, G, F = (torch.from_numpy(np.stack([c[i] for c in cases])) for i in range(3))
    batched = metrics.compute_metrics(S, G, F, metrics=("cc", "nss", "sim", "kld"))
    for i, case in enumerate(cases):
        assert float(batched["cc"][i]) == pytest.approx(matlab_cc(case[0], case[1]), abs=1e-9)
        assert float(batched["kld"][i]) == pytest.approx(matlab_kld(case[0], case[1]), abs=1e-9)
    jittered = metrics.auc_judd(S, F, jitter=True, seed=1)
    exact = metrics.auc_judd(S, F, jitter=False)
    assert torch.allclose(jittered, exact, atol=1e-6)
    assert torch.equal(jittered, metrics.auc_judd(S, F, jitter=True, seed=1))


def test_hand_computed_small_maps():
    prediction = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    fixations = torch.tensor([[0, 0], [0, 1]])
    # Values 0..3: mean 1.5, n−1 std sqrt(5/3); the fixated 3 standardises to 1.5 / 1.2910 = 1.1619.
    assert float(metrics.nss(prediction, fixations)) == pytest.approx(1.5 / math.sqrt(5 / 3))
    # The fixated pixel holds the largest value: thresholds {1} -> tp 1 at fp 0: AUC 1.
    assert float(metrics.auc_judd(prediction, fixations, jitter=False)) == pytest.approx(1.0)
    # Fixated pixel has the lowest value: the only threshold gives (fp 1, tp 1): the diagonal, AUC 0.5.
    assert float(metrics.auc_judd(prediction, torch.tensor([[1, 0], [0, 0]]), jitter=False)) == pytest.approx(0.5)
    # Fixations on the values 3 and 1 (normalised 1 and 1/3): points (fp, tp) = (0, 0), (0, 1/2), (1/2, 1),
    # (1, 1); trapezoids 0 + 0.5·(1/2 + 1)/2 + 0.5·1 = 0.875.
    assert float(metrics.auc_judd(prediction, torch.tensor([[0, 1], [0, 1]]), jitter=False)) == pytest.approx(0.875)
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # CC of [0,1,2,3] with [0,0,1,1]: covariance 2 / sqrt(5 * 1) = 0.8944.
    assert float(metrics.cc(prediction, target)) == pytest.approx(2 / math.sqrt(5))
    # SIM: prediction -> [0,1/3,2/3,1]/2 = [0,1/6,1/3,1/2]; target -> [0,0,1/2,1/2]; minima sum 1/3 + 1/2.
    assert float(metrics.sim(prediction, target)) == pytest.approx(1 / 3 + 1 / 2)
    # KLD: p = [0,1,2,3]/6, g = [0,0,.5,.5]: .5 log(.5/(1/3)) + .5 log(.5/.5).
    assert float(metrics.kld(prediction, target)) == pytest.approx(0.5 * math.log(1.5), abs=1e-12)


def test_auc_judd_counts_tied_fixated_values_together():
    prediction = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    fixations = torch.tensor([[1, 0, 1, 0]])
    # Threshold 1: tp 1/2, fp 1/2; threshold 0: tp 1, fp 1: the diagonal, AUC 0.5.
    assert float(metrics.auc_judd(prediction, fixations, jitter=False)) == pytest.approx(0.5)


def test_shuffled_auc_uses_the_threshold_grid():
    # Fixated value 1.0, the other map's fixation 0.0: separated at every threshold above 0: AUC 1.
    prediction = torch.tensor([[0.0, 0.5, 1.0]])
    assert float(metrics.auc_shuffled(prediction, torch.tensor([[0, 0, 1]]), torch.tensor([[1, 0, 0]]))) == pytest.approx(1.0)
    # Fixated and other values both 0.5: tied at every threshold: AUC 0.5.
    assert float(metrics.auc_shuffled(prediction, torch.tensor([[0, 1, 0]]), torch.tensor([[0, 1, 0]]))) == pytest.approx(0.5)


def test_constant_prediction_scores_chance():
    constant = torch.full((8, 8), 0.3, dtype=torch.float64)
    target = torch.rand(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fixations = (target > 0.8).to(torch.float64)
    assert float(metrics.cc(constant, target)) == 0.0
    assert float(metrics.nss(constant, fixations)) == 0.0
    assert float(metrics.auc_judd(constant, fixations)) == 0.5
    assert float(metrics.auc_borji(constant, fixations)) == 0.5
    assert float(metrics.auc_shuffled(constant, fixations, fixations)) == 0.5
    uniform = torch.full_like(target, 1 / 64)
    normalised = (target - target.min()) / (target.max() - target.min())
    normalised = normalised / normalised.sum()
    assert float(metrics.sim(constant, target)) == pytest.approx(float(torch.minimum(uniform, normalised).sum()))
    assert float(metrics.kld(constant, target)) == pytest.approx(matlab_kld(uniform.numpy(), target.numpy()))


def test_all_zero_prediction_follows_kldiv():
    target = torch.tensor([[0.0, 1.0], [1.0, 2.0]])
    g = target.numpy() / 4
    expected = np.sum(g * np.log(EPS + g / EPS))
    assert float(metrics.kld(torch.zeros(2, 2), target)) == pytest.approx(expected)


def test_frames_without_fixations_are_nan_and_skipped():
    prediction = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))
    target = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(1))
    fixations = torch.zeros(3, 6, 6)
    fixations[0, 2, 3] = fixations[2, 1, 1] = 1
    scores = metrics.compute_metrics(prediction, target, fixations, other_map=fixations[0])
    for name, values in scores.items():
        assert math.isnan(float(values[1])), name
        assert not math.isnan(float(values[0])), name
    assert metrics.nanmean(scores["nss"]) == pytest.approx(float(scores["nss"][[0, 2]].mean()))
    assert math.isnan(metrics.nanmean([math.nan]))
    assert math.isnan(float(metrics.cc(prediction[0], torch.zeros(6, 6))))


def test_inputs_are_checked():
    with pytest.raises(ValueError, match=r"same height and width.*\(4, 4\) and \(5, 5\)"):
        metrics.cc(torch.rand(4, 4), torch.rand(5, 5))
    with pytest.raises(ValueError, match="shape"):
        metrics.nss(torch.rand(4), torch.rand(4))
    with pytest.raises(ValueError, match="NaN"):
        metrics.sim(torch.full((2, 2), math.nan), torch.rand(2, 2))
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.compute_metrics(torch.rand(2, 2), torch.rand(2, 2), torch.ones(2, 2), metrics=("auc",))
    with pytest.raises(ValueError, match="batch sizes differ"):
        metrics.cc(torch.rand(2, 4, 4), torch.rand(3, 4, 4))


def test_float32_and_float64_inputs_agree():
    s, g, _ = random_case(np.random.default_rng(5))
    single = metrics.cc(torch.from_numpy(s).float(), torch.from_numpy(g).float())
    assert single.dtype == torch.float64
    assert float(single) == pytest.approx(matlab_cc(s.astype(np.float32), g.astype(np.float32)), abs=1e-6)
