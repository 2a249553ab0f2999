"""What `python -m helper.analyze` measures, as small pure functions of tensors: logits [N, K] (or probabilities
[N, K], rows summing to 1), labels [N] int64. Everything is computed in float64; results are Python floats or float64
tensors on the inputs' device.

Conventions: percentages are 0-100 (agreement, ECE); KL and NLL are in nats; the Brier score is the sum over the K
classes of the squared error against the one-hot label, averaged over the samples (Brier 1950: 0 is perfect, 2 the
worst); calibration bins are equal-width over (0, 1], bin b holding the confidences in (b/B, (b+1)/B] (Guo et al.
2017's code).
"""
import math

import torch

LOGIT_DIFF_SCALE = 3.0  # mdistiller tools/visualizations/correlation.ipynb: |student - teacher| / 3.0
GRAM_CHUNK = 1 << 24  # float64 elements of one slice of the features when a Gram matrix is summed in slices


# ---- fidelity (Stanton et al. 2021) -------------------------------------------------------------------------------
def top1_matches(logit_t, logit_s):
    """[N] bool: where the argmaxes of teacher and student logits [N, K] agree (Stanton et al. 2021's top-1 agreement
    per sample)."""
    return logit_t.argmax(dim=1) == logit_s.argmax(dim=1)


def agreement(logit_t, logit_s):
    """Top-1 agreement (Stanton et al. 2021): % of samples where the argmaxes of logits [N, K] match."""
    return 100.0 * top1_matches(logit_t, logit_s).double().mean().item()


def kl_per_sample(logit_t, logit_s):
    """[N] KL(p_teacher || p_student) at T = 1 in nats (Stanton et al. 2021), from logits [N, K], in float64."""
    log_p_t = torch.log_softmax(logit_t.double(), dim=1)
    log_p_s = torch.log_softmax(logit_s.double(), dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)


def mean_kl(logit_t, logit_s):
    """Mean KL(p_teacher || p_student) at T = 1 over the samples, in nats (Stanton et al. 2021)."""
    return kl_per_sample(logit_t, logit_s).mean().item()


def per_class_mean(values, labels, num_classes):
    """[K] float64: the mean of values [N] over the samples of each class (NaN for a class without samples)."""
    labels = labels.to(values.device).long()
    sums = torch.zeros(num_classes, dtype=torch.float64, device=values.device).index_add_(0, labels, values.double())
    counts = torch.bincount(labels, minlength=num_classes).double()
    return sums / counts  # 0 / 0 = NaN for an absent class


# ---- calibration ----------------------------------------------------------------------------------------------------
def top1(probs, labels):
    """Top-1 accuracy in % of probabilities (or logits) [N, K]."""
    return 100.0 * (probs.argmax(dim=1) == labels.to(probs.device)).double().mean().item()


def calibration_bins(probs, labels, bins=15):
    """Reliability-diagram bins (Guo et al. 2017): (counts [B] int64, accuracy [B], mean confidence [B]) of the samples
    whose confidence (max probability of [N, K]) falls in (b/B, (b+1)/B]; accuracy and confidence are fractions,
    NaN in an empty bin."""
    probs = probs.double()
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels.to(probs.device)).double()
    inner_edges = torch.arange(1, bins, dtype=torch.float64, device=probs.device) / bins
    index = torch.bucketize(confidence, inner_edges, right=False)  # edges[b-1] < c <= edges[b]
    counts = torch.bincount(index, minlength=bins)
    zeros = torch.zeros(bins, dtype=torch.float64, device=probs.device)
    accuracy = zeros.index_add(0, index, correct) / counts
    mean_confidence = zeros.index_add(0, index, confidence) / counts
    return counts, accuracy, mean_confidence


def ece(probs, labels, bins=15):
    """Expected calibration error in % (Naeini et al. 2015; Guo et al. 2017): sum over equal-width bins of
    |accuracy - mean confidence| weighted by the bin's share of the samples."""
    counts, accuracy, confidence = calibration_bins(probs, labels, bins)
    filled = counts > 0
    weights = counts[filled].double() / counts.sum()
    return 100.0 * (weights * (accuracy[filled] - confidence[filled]).abs()).sum().item()


def nll(probs, labels):
    """Mean negative log-likelihood -log p_y in nats (Guo et al. 2017) of probabilities [N, K]."""
    p_true = probs.double().gather(1, labels.to(probs.device).long().view(-1, 1))[:, 0]
    return -p_true.log().mean().item()


def brier(probs, labels):
    """Brier score (Brier 1950): sum over classes of (p_k - onehot_k)^2, averaged over samples, of probabilities
    [N, K]; in [0, 2]."""
    probs = probs.double()
    onehot = torch.zeros_like(probs).scatter_(1, labels.to(probs.device).long().view(-1, 1), 1.0)
    return ((probs - onehot) ** 2).sum(dim=1).mean().item()


# ---- class-mean logit difference (CRD Fig. 3, DKD; mdistiller's correlation.ipynb) ---------------------------------
def class_mean_logits(logits, labels, num_classes):
    """[K, K] float64: row c is the mean logit vector [K] over the samples of class c (NaN row for an absent class),
    as mdistiller's correlation.ipynb (get_output_metric) computes it."""
    logits, labels = logits.double(), labels.to(logits.device).long()
    sums = torch.zeros(num_classes, logits.shape[1], dtype=torch.float64, device=logits.device)
    sums.index_add_(0, labels, logits)
    counts = torch.bincount(labels, minlength=num_classes).double().view(-1, 1)
    return sums / counts


def class_mean_logit_difference(logit_t, logit_s, labels, num_classes, scale=LOGIT_DIFF_SCALE):
    """[K, K] float64: |class-mean student logits - class-mean teacher logits| / scale, diagonal zeroed (the papers'
    "correlation difference", CRD Fig. 3 and DKD; mdistiller's correlation.ipynb with its scale 3.0); an absent class's
    row is NaN."""
    diff = (class_mean_logits(logit_s, labels, num_classes) - class_mean_logits(logit_t, labels, num_classes)).abs()
    diff = diff / scale
    absent = diff.isnan().any(dim=1)
    diff.fill_diagonal_(0.0)
    diff[absent] = math.nan
    return diff


def difference_summary(diff):
    """(mean, max) of a class-mean logit difference matrix [K, K] over its entries, the zeroed diagonal included
    (as the notebook's diff.mean()); rows of absent classes (NaN) are left out."""
    present = diff[~diff.isnan().any(dim=1)]
    if present.numel() == 0:
        return math.nan, math.nan
    return present.mean().item(), present.max().item()


# ---- representation similarity: minibatch linear CKA ---------------------------------------------------------------
def gram(features):
    """Linear kernel X X^T [n, n] in float64 of features [n, ...] (flattened per sample); summed in slices of the
    feature dimension so the float64 copy never exceeds GRAM_CHUNK elements."""
    x = features.flatten(1)
    step = max(1, GRAM_CHUNK // max(1, x.shape[0]))
    out = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[1], step):
        block = x[:, start:start + step].double()
        out += block @ block.T
    return out


def u_centred(k):
    """The U-centred Gram matrix [n, n] (diagonal zeroed, Szekely & Rizzo 2014): <U(K), U(L)> / (n (n - 3)) is the
    unbiased HSIC_1 estimator (Song et al. 2012) that minibatch CKA sums (Nguyen et al. 2021). Needs n >= 4."""
    n = k.shape[0]
    k = k.clone()
    k.fill_diagonal_(0.0)
    means = k.sum(dim=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    k = k - means.view(-1, 1) - means.view(1, -1)
    k.fill_diagonal_(0.0)
    return k


class MinibatchCKA:
    """Linear CKA (Kornblith et al. 2019) between every feature of one list and every feature of another, accumulated
    over minibatches with the unbiased HSIC_1 estimator (Nguyen et al. 2021): CKA_ij = sum_b HSIC(K_i, L_j) /
    sqrt(sum_b HSIC(K_i, K_i) * sum_b HSIC(L_j, L_j)); memory is one minibatch's Gram matrices, whatever the data.
    A minibatch of fewer than 4 samples (where the estimator is undefined) is skipped and counted in `skipped`."""

    MIN_BATCH = 4

    def __init__(self, n_x, n_y):
        self.hsic_xy = torch.zeros(n_x, n_y, dtype=torch.float64)
        self.hsic_xx = torch.zeros(n_x, dtype=torch.float64)
        self.hsic_yy = torch.zeros(n_y, dtype=torch.float64)
        self.batches = 0
        self.skipped = 0

    def update(self, feats_x, feats_y):
        """Add one minibatch: feats_x, feats_y lists of features [n, ...] of the same n samples."""
        n = feats_x[0].shape[0]
        if n < self.MIN_BATCH:
            self.skipped += 1
            return
        gx = torch.stack([u_centred(gram(f)).flatten() for f in feats_x])  # [n_x, n * n]
        gy = torch.stack([u_centred(gram(f)).flatten() for f in feats_y])
        scale = n * (n - 3)
        self.hsic_xy += (gx @ gy.T).cpu() / scale
        self.hsic_xx += (gx * gx).sum(dim=1).cpu() / scale
        self.hsic_yy += (gy * gy).sum(dim=1).cpu() / scale
        self.batches += 1

    def compute(self):
        """[n_x, n_y] float64 CKA values (NaN before any minibatch or where a self-HSIC sum is not positive)."""
        denominator = (self.hsic_xx.view(-1, 1) * self.hsic_yy.view(1, -1)).sqrt()
        cka = self.hsic_xy / denominator
        cka[~(denominator > 0)] = math.nan
        return cka
