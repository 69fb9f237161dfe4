r"""
SupCon's ``out``, ``in`` and ``per_pair`` on the classic worked example
=========================================================================

The worked example of a popular tutorial on supervised contrastive learning: ten
2-dimensional embeddings in two classes and :math:`\tau = 0.1`,

- class A: a1 = (1.0, 0.8), a2 = (0.7, 1.2), a3 = (1.1, 1.4), a4 = (0.9, 1.1), a5 = (1.2, 0.9);
- class B: b1 = (−1.1, −1.2), b2 = (−0.8, −1.0), b3 = (−1.3, −1.1), b4 = (−0.9, −0.7),
  b5 = (−1.0, −1.4).

The tutorial rounds anchor a1's loss to "about 1.40". What the number is depends on two
choices that this example states explicitly:

- **similarity and normalisation**: cosine similarity, that is the dot product of the
  rows scaled to unit norm (:func:`nce_ref.supcon`'s default ``similarity="cosine"``,
  as in the SupCon paper and SupContrast, whose features are L2-normalised); the
  logits are :math:`z_{ap} = \cos(x_a, x_p)/\tau`;
- **the positive-set form** (``positives=``), with :math:`K_a` every other sample, and
  :math:`P_a` the :math:`n_a = 4` others of the anchor's class:

  - ``"out"``, the paper's :math:`\mathcal{L}^{sup}_{out}`:
    :math:`\ell_a = \operatorname{LSE}_{K_a} z_a - \frac{1}{n_a}\sum_{p \in P_a} z_{ap}`;
  - ``"in"``, :math:`\mathcal{L}^{sup}_{in}`:
    :math:`\ell_a = \operatorname{LSE}_{K_a} z_a - \operatorname{LSE}_{P_a} z_a + \log n_a`;
  - ``"per_pair"`` (pytorch-metric-learning's ``NTXentLoss`` with labels, optax's
    ``ntxent``): one term per positive pair, whose denominator holds that positive and
    the negatives only, :math:`\ell_{ap} = \log(e^{z_{ap}} + \sum_{n \in N_a} e^{z_{an}}) - z_{ap}`;
    ``reduction="none"`` gives each anchor the sum of its pairs' terms.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

import nce_ref

names = ["a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3", "b4", "b5"]
features = np.array([(1.0, 0.8), (0.7, 1.2), (1.1, 1.4), (0.9, 1.1), (1.2, 0.9),
                     (-1.1, -1.2), (-0.8, -1.0), (-1.3, -1.1), (-0.9, -0.7), (-1.0, -1.4)])
labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
TAU = 0.1

per_anchor = {form: nce_ref.supcon(features, labels, temperature=TAU, positives=form, reduction="none")
              for form in ("out", "in", "per_pair")}
batch = {form: float(nce_ref.supcon(features, labels, temperature=TAU, positives=form))
         for form in ("out", "in", "per_pair")}

# %%
# The exact per-anchor table (nats), float64:
print(f"{'anchor':6s} {'x':>5s} {'y':>5s}  {'out':>18s}  {'in':>18s}  {'per_pair':>22s}")
for i, name in enumerate(names):
    print(f"{name:6s} {features[i, 0]:5.1f} {features[i, 1]:5.1f}  {per_anchor['out'][i]:18.15f}  "
          f"{per_anchor['in'][i]:18.15f}  {per_anchor['per_pair'][i]:22.15e}")
print(f"{'mean':18s}  {batch['out']:18.15f}  {batch['in']:18.15f}  {batch['per_pair']:22.15e}"
      "   (per_pair: the mean over the 40 pairs)")
print(f"\nlog n_a = log 4 = {np.log(4):.15f}")

# %%
# So, with cosine similarity and :math:`\tau = 0.1`, anchor a1's :math:`\mathcal{L}_{out}`
# is **1.41373** nats (to 6 digits), and 1.40284 is the mean over the ten anchors: the
# tutorial's "about 1.40" matches the batch mean, not a1's own term. The three forms
# differ by far more than rounding on the same batch:
#
# - the classes are well separated, so every negative's logit is far below every
#   positive's: ``"in"`` is then :math:`\log n_a = \log 4 = 1.38629` (its minimum) up to
#   :math:`10^{-8}`;
# - ``"out"`` is larger, :math:`\log 4` plus the spread of the positives' logits (Jensen's
#   inequality makes :math:`\mathcal{L}_{out} \ge \mathcal{L}_{in}`);
# - ``"per_pair"`` compares each positive with the negatives only, so it is near 0 here.
#
# With the dot product on the raw (unnormalised) points instead, a1's ``"out"`` term is
# different again:
raw = nce_ref.supcon(features, labels, temperature=TAU, similarity="dot", reduction="none")
print(f"a1, similarity='dot' on the raw points: {raw[0]:.6f} nats")

# %%
# The picture
# -----------
fig, axes = plt.subplots(1, 3, figsize=(15, 5), layout="constrained",
                         gridspec_kw={"width_ratios": [1.1, 1, 1]})
ax = axes[0]
unit = features / np.linalg.norm(features, axis=1, keepdims=True)
t = np.linspace(0, 2 * np.pi, 200)
ax.plot(np.cos(t), np.sin(t), color="grey", lw=0.8, label="unit circle (where cosine compares)")
for cls, color, marker in [(0, "C0", "o"), (1, "C3", "s")]:
    sel = labels == cls
    ax.scatter(*features[sel].T, color=color, marker=marker, s=60, label=f"class {'AB'[cls]}")
    ax.scatter(*unit[sel].T, facecolor="none", edgecolor=color, marker=marker, s=60,
               label=f"class {'AB'[cls]}, normalised")
for i, name in enumerate(names):
    ax.annotate(name, features[i], textcoords="offset points", xytext=(6, 4), fontsize=9)
ax.set_aspect("equal")
ax.set_xlabel("embedding coordinate 1 (dimensionless)")
ax.set_ylabel("embedding coordinate 2 (dimensionless)")
ax.set_title("The ten embeddings")
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="upper left")

x = np.arange(len(names))
ax = axes[1]
for k, (form, color) in enumerate([("out", "C0"), ("in", "C1")]):
    ax.bar(x + (k - 0.5) * 0.4, per_anchor[form], 0.4, color=color, label=f'positives="{form}"')
ax.axhline(np.log(4), color="k", ls=":", lw=1.2, label="log n_a = log 4 (the minimum of both)")
ax.set_ylim(1.38, 1.45)
ax.set_xticks(x, names)
ax.set_xlabel("anchor")
ax.set_ylabel("per-anchor loss (nats)")
ax.set_title('"out" and "in" (reduction="none")')
ax.legend(fontsize=8, loc="upper right")
ax.grid(alpha=0.3, axis="y")

ax = axes[2]
ax.bar(x, 1e8 * per_anchor["per_pair"], 0.6, color="C2", label='positives="per_pair" (sum of 4 pairs)')
ax.set_xticks(x, names)
ax.set_xlabel("anchor")
ax.set_ylabel("per-anchor loss (10⁻⁸ nats)")
ax.set_title('"per_pair": each positive against the negatives only')
ax.legend(fontsize=8, loc="upper right")
ax.set_ylim(0, 1.3e8 * per_anchor["per_pair"].max())
ax.grid(alpha=0.3, axis="y")
fig.suptitle("SupCon's three positive-set forms on the same batch (cosine similarity, τ = 0.1)")
plt.show()
