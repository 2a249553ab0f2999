"""helper.tools.metrics against independent float64 references written from each formula in plain loops: top-1
agreement and KL(p_t || p_s) on fixed logits, ECE/NLL/Brier on fixed probabilities, the class-mean logit difference on
hand-built logits, and minibatch linear CKA (invariances, the full-batch unbiased-HSIC formula, batch sizes)."""
import math

import pytest
import torch

from helper.tools import metrics

EPS64 = 2.0 ** -52  # float64's unit roundoff (x2): a sum of n terms in another order differs by at most ~n eps |terms|


def fixed_logits():
    """Teacher and student logits [12, 5] with a tie-free argmax, and labels [12] (every class present)."""
    generator = torch.Generator().manual_seed(20)
    logit_t = torch.randn(12, 5, generator=generator, dtype=torch.float64) * 3
    logit_s = 0.5 * logit_t + torch.randn(12, 5, generator=generator, dtype=torch.float64) * 2
    labels = torch.arange(12) % 5
    return logit_t, logit_s, labels


def softmax_row(row):
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def test_agreement_and_kl_match_their_formulas_on_fixed_logits():
    logit_t, logit_s, _ = fixed_logits()
    matches, kls = 0, []
    for t_row, s_row in zip(logit_t.tolist(), logit_s.tolist()):
        matches += t_row.index(max(t_row)) == s_row.index(max(s_row))
        p_t, p_s = softmax_row(t_row), softmax_row(s_row)
        kls.append(sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s)))
    assert 0 < matches < 12  # the fixture exercises both cases
    assert metrics.agreement(logit_t, logit_s) == pytest.approx(100.0 * matches / 12, rel=12 * EPS64)
    assert metrics.agreement(logit_t.float(), logit_s.float()) == pytest.approx(100.0 * matches / 12, rel=12 * EPS64)
    reference = sum(kls) / len(kls)
    # each KL sums 5 terms of log-probabilities (|log p| <= the logit range): that many roundings of that size
    bound = 64 * 5 * EPS64 * (logit_t.abs().max() + logit_s.abs().max()).item()
    assert metrics.mean_kl(logit_t, logit_s) == pytest.approx(reference, abs=bound)
    assert metrics.mean_kl(logit_t, logit_t) == pytest.approx(0.0, abs=bound)
    assert (metrics.kl_per_sample(logit_t, logit_s) >= -bound).all()


def fixed_probabilities():
    """Probabilities [8, 3] (rows sum to 1; no confidence on a bin edge of 10 or 15 bins) and labels [8]."""
    probs = torch.tensor([[0.71, 0.19, 0.10], [0.05, 0.93, 0.02], [0.34, 0.33, 0.33], [0.48, 0.47, 0.05],
                          [0.12, 0.13, 0.75], [0.61, 0.09, 0.30], [0.22, 0.57, 0.21], [0.01, 0.02, 0.97]],
                         dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1, 2, 0, 0, 2])
    return probs, labels


def reference_ece(probs, labels, bins):
    """Guo et al. 2017's ECE loop: bins (b/B, (b+1)/B], |accuracy - confidence| weighted by the bin's share (%)."""
    rows, total = list(zip(probs.tolist(), labels.tolist())), 0.0
    for b in range(bins):
        lower, upper = b / bins, (b + 1) / bins
        inside = [(max(p), p.index(max(p)) == y) for p, y in rows if lower < max(p) <= upper]
        if inside:
            confidence = sum(c for c, _ in inside) / len(inside)
            accuracy = sum(ok for _, ok in inside) / len(inside)
            total += len(inside) / len(rows) * abs(accuracy - confidence)
    return 100.0 * total


@pytest.mark.parametrize("bins", [15, 10])
def test_ece_matches_the_binned_formula(bins):
    probs, labels = fixed_probabilities()
    assert metrics.ece(probs, labels, bins) == pytest.approx(reference_ece(probs, labels, bins), abs=100 * 8 * EPS64)
    counts, _, _ = metrics.calibration_bins(probs, labels, bins)
    assert counts.sum() == 8 and (counts > 0).sum() > 3  # the fixture spreads over several bins


def test_ece_of_a_perfectly_calibrated_set_is_zero_and_of_a_confident_wrong_one_is_its_confidence():
    probs = torch.tensor([[0.75, 0.25]] * 4, dtype=torch.float64)  # 75 % confident, 3 of 4 right
    assert metrics.ece(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0, abs=100 * 4 * EPS64)
    assert metrics.ece(probs, torch.tensor([1, 1, 1, 1])) == pytest.approx(75.0, abs=100 * 4 * EPS64)


def test_nll_and_brier_match_their_formulas():
    probs, labels = fixed_probabilities()
    rows = list(zip(probs.tolist(), labels.tolist()))
    nll = sum(-math.log(p[y]) for p, y in rows) / len(rows)
    brier = sum(sum((p[k] - (k == y)) ** 2 for k in range(3)) for p, y in rows) / len(rows)
    assert metrics.nll(probs, labels) == pytest.approx(nll, abs=8 * EPS64 * max(nll, 1))
    assert metrics.brier(probs, labels) == pytest.approx(brier, abs=3 * 8 * EPS64 * 4)
    assert metrics.top1(probs, labels) == pytest.approx(100 * 5 / 8, rel=8 * EPS64)
    onehot = torch.eye(3, dtype=torch.float64)[labels]
    assert metrics.brier(onehot, labels) == 0.0 and metrics.brier(torch.eye(3, dtype=torch.float64)[(labels + 1) % 3],
                                                                   labels) == 2.0


def test_class_mean_logit_difference_on_hand_built_logits():
    labels = torch.tensor([0, 0, 1, 2])
    logit_t = torch.tensor([[3.0, 0.0, 0.0], [5.0, 2.0, 0.0], [0.0, 6.0, 3.0], [1.0, 1.0, 1.0]])
    logit_s = torch.tensor([[1.0, 3.0, 0.0], [1.0, 1.0, 6.0], [0.0, 0.0, 0.0], [4.0, -2.0, 1.0]])
    # class 0: teacher mean (4, 1, 0), student mean (1, 2, 3); class 1: (0, 6, 3) vs (0, 0, 0); class 2: (1, 1, 1)
    # vs (4, -2, 1). |difference| / 3, diagonal zeroed:
    expected = torch.tensor([[0.0, 1 / 3, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    diff = metrics.class_mean_logit_difference(logit_t, logit_s, labels, 3)
    assert torch.allclose(diff, expected, rtol=0, atol=8 * EPS64)
    mean, top = metrics.difference_summary(diff)
    assert mean == pytest.approx((1 / 3 + 1 + 1 + 1 + 1) / 9, abs=9 * EPS64) and top == 1.0


def test_a_class_without_samples_is_left_out_of_the_summary():
    labels = torch.tensor([0, 0, 1])
    logit_t, logit_s = torch.zeros(3, 3), torch.tensor([[0.0, 3.0, 0.0], [0.0, 3.0, 0.0], [6.0, 0.0, 0.0]])
    diff = metrics.class_mean_logit_difference(logit_t, logit_s, labels, 3)
    assert diff[2].isnan().all()
    assert metrics.difference_summary(diff) == (pytest.approx(3 / 6), 2.0)
    assert metrics.per_class_mean(torch.tensor([1.0, 0.0, 1.0]), labels, 3)[:2].tolist() == [0.5, 1.0]


# ---- CKA -------------------------------------------------------------------------------------------------------------
def reference_hsic1(k, l):
    """Song et al. 2012's unbiased HSIC_1 written from its formula: K, L with zeroed diagonals,
    [tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3))."""
    n = k.shape[0]
    k, l = k.clone(), l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, 1, dtype=torch.float64)
    value = torch.trace(k @ l).item() + (ones.T @ k @ ones).item() * (ones.T @ l @ ones).item() / ((n - 1) * (n - 2)) \
        - 2.0 / (n - 2) * (ones.T @ k @ l @ ones).item()
    return value / (n * (n - 3))


def reference_cka(x, y):
    """Full-batch linear CKA with the unbiased HSIC (Kornblith et al. 2019; Nguyen et al. 2021) on [n, d] features."""
    k, l = x.double() @ x.double().T, y.double() @ y.double().T
    return reference_hsic1(k, l) / math.sqrt(reference_hsic1(k, k) * reference_hsic1(l, l))


def features(n, seed=0):
    """Features [n, 6] and a noisy, partly non-linear function of them [n, 2, 2, 2] (a 'feature map')."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    y = torch.tanh(x[:, :4] @ torch.randn(4, 8, generator=generator, dtype=torch.float64))
    y = y + 0.5 * torch.randn(n, 8, generator=generator, dtype=torch.float64)
    return x, y.view(n, 2, 2, 2)


def cka_of(x, y, batch):
    cka = metrics.MinibatchCKA(1, 1)
    for start in range(0, x.shape[0], batch):
        cka.update([x[start:start + batch]], [y[start:start + batch]])
    return cka.compute()[0, 0].item()


def test_cka_is_one_for_a_rotation_and_a_scaling_of_the_same_features():
    x, _ = features(64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    # the Gram matrices agree up to n * d rounding of entries of size |x|^2: CKA is 1 to that relative precision
    bound = 64 * 6 * 64 * EPS64
    assert cka_of(x, x @ q, 16) == pytest.approx(1.0, abs=bound)
    assert cka_of(x, 7.5 * x, 16) == pytest.approx(1.0, abs=bound)
    assert cka_of(x.float(), (x @ q).float(), 16) == pytest.approx(1.0, abs=64 * 6 * 2.0 ** -23)


def test_one_minibatch_is_the_full_batch_unbiased_cka_formula():
    x, y = features(40)
    reference = reference_cka(x, y.flatten(1))
    assert 0.1 < reference < 0.99
    assert cka_of(x, y, 40) == pytest.approx(reference, abs=40 * 40 * 8 * EPS64)
    cka = metrics.MinibatchCKA(2, 3)
    cka.update([x, y], [y, x, 2 * x])
    assert torch.allclose(cka.compute(), torch.tensor([[reference, 1.0, 1.0], [1.0, reference, reference]],
                                                      dtype=torch.float64), rtol=0, atol=40 * 40 * 8 * EPS64)


def test_minibatch_sizes_agree_within_the_estimators_spread():
    x, y = features(1200, seed=3)
    estimates, spreads = {}, {}
    for batch in (60, 200):
        per_batch = [cka_of(x[s:s + batch], y[s:s + batch], batch) for s in range(0, 1200, batch)]
        estimates[batch] = cka_of(x, y, batch)
        # the standard error of an average over the minibatches, from their own spread
        spreads[batch] = torch.tensor(per_batch).std().item() / math.sqrt(len(per_batch))
    gap = abs(estimates[60] - estimates[200])
    assert gap < 4 * math.sqrt(spreads[60] ** 2 + spreads[200] ** 2), (estimates, spreads)
    full = reference_cka(x, y.flatten(1))
    assert abs(estimates[60] - full) < 4 * spreads[60] and abs(estimates[200] - full) < 4 * spreads[200]


def test_a_minibatch_too_small_for_the_estimator_is_skipped():
    x, y = features(10)
    cka = metrics.MinibatchCKA(1, 1)
    cka.update([x[:8]], [y[:8]])
    cka.update([x[8:]], [y[8:]])
    assert (cka.batches, cka.skipped) == (1, 1)
    assert cka.compute()[0, 0].item() == pytest.approx(reference_cka(x[:8], y[:8].flatten(1)), abs=64 * 8 * EPS64)
    assert metrics.MinibatchCKA(1, 1).compute()[0, 0].isnan()
