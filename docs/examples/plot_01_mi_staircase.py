r"""
The MI staircase of every bound
===============================

Poole et al. (2019), Figure 2, smaller: 20-dimensional correlated Gaussians whose true
mutual information steps through 2, 4, 6, 8 and 10 nats, and every bound of
:mod:`nce_ref.mi` computed on batches of N = 64 pairs with the **optimal critic**
:math:`f^*(x, y) = \log p(y|x)/p(y)`, known here in closed form
(:func:`nce_ref.mi.critics.gaussian`). With the best possible critic, what is left is each
bound's own bias and variance:

- InfoNCE, :math:`\log N - \mathcal{L}`, has low variance but can never exceed
  :math:`\log N = 4.16` nats, whatever the true MI;
- NWJ (at :math:`1 + f^*`) is unbiased, but its variance grows like :math:`e^{I}`;
- DV (and MINE's value) is biased upwards, SMILE trades that bias for clipping;
- the interpolated bound :math:`I_\alpha` sits between InfoNCE and NWJ;
- the leave-one-out bound is an *upper* bound.

``nce-ref bounds`` runs the full experiment (4000 batches per level, a table of the
estimates and the checks of the theorem); this script runs 300 batches per level.
"""

# %%
# The experiment, with the public API only
# ----------------------------------------
import matplotlib.pyplot as plt
import numpy as np

from nce_ref import mi

N, DIM, STEPS = 64, 20, 300
LEVELS = [2.0, 4.0, 6.0, 8.0, 10.0]
rng = np.random.default_rng(0)

bounds = {
    "InfoNCE  (log N − L)": lambda s: mi.infonce(s),
    "NWJ at 1 + f*": lambda s: mi.nwj(s + 1.0),
    "DV  (= MINE's value)": lambda s: mi.dv(s),
    "I_α  (α = 0.01)": lambda s: mi.interpolated(s, 0.0, alpha=0.01),
    "SMILE  (clip = 5)": lambda s: mi.smile(s, clip=5.0),
    "leave-one-out upper bound": lambda s: mi.loo_upper(s),
}
estimates = {name: np.empty(len(LEVELS) * STEPS) for name in bounds}
truth = np.repeat(LEVELS, STEPS)

for li, level in enumerate(LEVELS):
    rho = mi.exact.rho_for_mi(level, DIM)  # the correlation that carries `level` nats
    x, y = mi.sample.correlated_gaussian(STEPS * N, rho, DIM, rng)
    for s in range(STEPS):
        scores = mi.critics.gaussian(x[s * N:(s + 1) * N], y[s * N:(s + 1) * N], rho)
        for name, bound in bounds.items():
            estimates[name][li * STEPS + s] = float(bound(scores))

# %%
# The mean of each bound at each level, against the truth and log N:
print(f"{'bound':28s}" + "".join(f"  I = {lv:4.1f}" for lv in LEVELS))
for name, v in estimates.items():
    means = v.reshape(len(LEVELS), STEPS).mean(axis=1)
    print(f"{name:28s}" + "".join(f"  {m:8.3f}" for m in means))
print(f"{'min(I, log N)':28s}" + "".join(f"  {min(lv, np.log(N)):8.3f}" for lv in LEVELS))

# %%
# The staircase
# -------------
# Each panel shows the per-batch estimates (light), their moving average over 30
# batches within each level (dark), the true MI (black) and :math:`\log N` (dashed).


def moving_average(v, window=30):
    out = np.empty_like(v)
    for li in range(len(LEVELS)):
        seg = v[li * STEPS:(li + 1) * STEPS]
        c = np.convolve(seg, np.ones(window) / window, mode="same")
        norm = np.convolve(np.ones(STEPS), np.ones(window) / window, mode="same")
        out[li * STEPS:(li + 1) * STEPS] = c / norm
    return out


fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex=True, sharey=True, layout="constrained")
step = np.arange(len(truth))
for ax, (name, v) in zip(axes.flat, estimates.items()):
    ax.plot(step, np.clip(v, -2, 14), color="C0", alpha=0.25, lw=0.6, label="one batch")
    ax.plot(step, moving_average(v), color="C0", lw=1.6, label="moving average")
    ax.plot(step, truth, color="k", lw=1.4, label="true I(X;Y)")
    ax.axhline(np.log(N), color="C3", ls="--", lw=1.2, label=f"log N = {np.log(N):.2f}")
    ax.set_title(name)
    ax.set_ylim(-1, 13)
    ax.grid(alpha=0.3)
for ax in axes[1]:
    ax.set_xlabel("batch (300 per MI level)")
for ax in axes[:, 0]:
    ax.set_ylabel("estimate (nats)")
axes[0, 0].legend(loc="upper left", fontsize=8)
fig.suptitle(f"Every MI bound with the optimal critic, N = {N}, {DIM}-d correlated Gaussians")
plt.show()

# %%
# InfoNCE flattens at :math:`\log N` however much information there is; NWJ follows
# the truth on average but its spread explodes; DV overshoots. The ceiling is the
# subject of :ref:`sphx_glr_auto_examples_plot_02_batch_size_ceiling.py`.
