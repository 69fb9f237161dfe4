r"""
How the temperature shapes the gradient over hard and easy negatives
====================================================================

For one query :math:`q` with positive :math:`k^+` and negatives :math:`n_j`, InfoNCE is
:math:`\mathcal{L} = -\log \frac{e^{s^+/\tau}}{e^{s^+/\tau} + \sum_j e^{s_j/\tau}}`, and
its gradient with respect to the score of negative :math:`j` is
:math:`\partial \mathcal{L}/\partial s_j = p_j/\tau`, with :math:`p_j` the softmax
probability of that negative. A small temperature concentrates the gradient on the
*hard* negatives (those most similar to the query); a large one spreads it over all of
them (Wang and Liu, 2021, "Understanding the behaviour of contrastive loss").

Here every vector has unit norm and the similarity is the dot product
(``similarity="dot"``), so :math:`s_j = \cos(q, n_j)` and the gradient that
:func:`nce_ref.value_and_grad` returns for negative :math:`j` is
:math:`\partial\mathcal{L}/\partial n_j = (p_j/\tau)\, q`, of norm :math:`p_j/\tau`.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

import nce_ref

# %%
# One query, its positive at 25 degrees, and 200 negatives from 10 to 180 degrees away
# (those closer than the positive are the hardest).
angles = np.deg2rad(np.linspace(10, 180, 200))
query = np.array([[1.0, 0.0]])
positive = np.array([[np.cos(np.deg2rad(25)), np.sin(np.deg2rad(25))]])
negatives = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (M, D) shared negatives
cos_neg = negatives @ query[0]

grad_fn = nce_ref.value_and_grad(nce_ref.info_nce)
temperatures = [0.05, 0.1, 0.2, 0.5, 1.0]
weights = {}
for tau in temperatures:
    loss, g = grad_fn(query, positive, negatives, temperature=tau, similarity="dot")
    weights[tau] = np.linalg.norm(g["negatives"], axis=1)  # = p_j / tau
    hard = cos_neg > positive[0] @ query[0]
    share = weights[tau][hard].sum() / weights[tau].sum()
    print(f"tau = {tau:<5} loss = {float(loss):8.4f}   share of the negatives' gradient on the "
          f"{hard.sum()} negatives closer than the positive: {share:6.1%}   "
          f"dL/dtau = {float(g['temperature']):+.4f}")

# %%
# The picture
# -----------
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
ax = axes[0]
for tau, color in zip(temperatures, plt.cm.viridis(np.linspace(0, 0.9, len(temperatures)))):
    ax.semilogy(cos_neg, weights[tau], color=color, lw=2, label=f"τ = {tau}")
ax.axvline(np.cos(np.deg2rad(25)), color="k", ls=":", label="similarity of the positive")
ax.set_xlabel("cosine similarity of the negative to the query (dimensionless)")
ax.set_ylabel("‖∂L/∂n_j‖  (per unit of embedding)")
ax.set_title("Gradient on each negative")
ax.set_ylim(1e-12, 1e2)
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8, loc="lower right")

ax = axes[1]
order = np.argsort(-cos_neg)  # hardest first
for tau, color in zip(temperatures, plt.cm.viridis(np.linspace(0, 0.9, len(temperatures)))):
    w = weights[tau][order]
    ax.plot(100 * np.arange(1, len(w) + 1) / len(w), 100 * np.cumsum(w) / w.sum(), color=color,
            lw=2, label=f"τ = {tau}")
ax.plot([0, 100], [0, 100], color="grey", ls="--", label="uniform over the negatives")
ax.set_xlabel("hardest negatives, share of the M = 200 (%)")
ax.set_ylabel("share of the total negative gradient (%)")
ax.set_title("Cumulative gradient, hardest negatives first")
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="lower right")
fig.suptitle("A small temperature puts the gradient on the hard negatives")
plt.show()

# %%
# At :math:`\tau = 0.05` nearly all of the push goes to the few negatives nearer to
# the query than its positive; at :math:`\tau = 1` every negative gets a comparable
# share. The loss is continuous in :math:`\tau` and nce_ref differentiates it too
# (``g["temperature"]`` above), which is how a learned temperature (CLIP's
# ``logit_scale``) trains.
