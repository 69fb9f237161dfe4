r"""
The batch-size ceiling of InfoNCE
=================================

With N candidates per query, :math:`\log N - \mathcal{L} \le \log N` on **every** batch
(each row's term is :math:`\log(N p_{ii})` with :math:`p_{ii} \le 1` the softmax
probability of the positive), and :math:`\mathbb{E}[\log N - \mathcal{L}] \le I(X;Y)`
for any critic. So the bound can certify at most :math:`\min(I, \log N)` nats, and it
approaches :math:`I` only once :math:`\log N` is well above it.

Two ways to see the expectation against N, both with the optimal critic:

- **exactly**, for discrete joint tables: :func:`nce_ref.mi.theory.expected_infonce_bound`
  sums over the multinomial counts of the negatives' symbols (no sampling), and
  :func:`nce_ref.mi.theory.infonce_limits` gives the sandwich
  :math:`\max(0, I - \log(1 + \chi^2/N)) \le \mathbb{E} \le \min(I, \log N)`;
- **by Monte Carlo**, for a 10-dimensional correlated Gaussian with 3 nats, averaging
  :func:`nce_ref.mi.infonce` of the closed-form optimal critic
  :func:`nce_ref.mi.critics.gaussian` over many batches.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

from nce_ref import mi

# %%
# Exact expectations for two tables
# ---------------------------------
# A noiseless channel over 32 symbols (:math:`I = \log 32 = 3.47` nats) and a small
# noisy 3 x 3 table with zeros (:math:`I = 0.46` nats).
noiseless = np.eye(32) / 32
noisy = np.array([[0.30, 0.10, 0.00],
                  [0.00, 0.25, 0.05],
                  [0.05, 0.05, 0.20]])
ns = np.unique(np.geomspace(2, 1024, 28).astype(int))
tables = {"noiseless, 32 symbols": noiseless, "noisy 3 x 3 table": noisy}
exact = {}
for name, pmf in tables.items():
    expected = np.array([mi.theory.expected_infonce_bound(pmf, int(n)) for n in ns])
    limits = np.array([mi.theory.infonce_limits(pmf, int(n)) for n in ns])
    exact[name] = (mi.exact.discrete(pmf), expected, limits)
    print(f"{name}: I = {exact[name][0]:.4f} nats; E[log N - L] at N = 2, 64, 1024: "
          + ", ".join(f"{e:.4f}" for n, e in zip(ns, expected) if n in (2, 64, 1024)))

# %%
# Monte Carlo for a Gaussian
# --------------------------
rng = np.random.default_rng(0)
I_GAUSS, DIM = 3.0, 10
rho = mi.exact.rho_for_mi(I_GAUSS, DIM)
ns_mc = np.array([2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
mc_mean, mc_sem = [], []
for n in ns_mc:
    batches = max(16, 4000 // n)
    x, y = mi.sample.correlated_gaussian(batches * n, rho, DIM, rng)
    v = np.array([float(mi.infonce(mi.critics.gaussian(x[b * n:(b + 1) * n], y[b * n:(b + 1) * n], rho)))
                  for b in range(batches)])
    mc_mean.append(v.mean())
    mc_sem.append(v.std(ddof=1) / np.sqrt(batches))
    assert v.max() <= np.log(n) + 1e-12  # the ceiling holds on every batch, not only on average
mc_mean, mc_sem = np.array(mc_mean), np.array(mc_sem)
print("Gaussian, I = 3 nats: mean of log N - L at N = 2 .. 1024:", np.round(mc_mean, 3))

# %%
# The picture
# -----------
fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
ax = axes[0]
for (name, (I, expected, limits)), color in zip(exact.items(), ["C0", "C2"]):
    ax.plot(ns, expected, color=color, lw=2, label=f"E[log N − L], {name}")
    ax.fill_between(ns, limits[:, 0], limits[:, 1], color=color, alpha=0.15,
                    label="sandwich: max(0, I − log(1 + χ²/N)) .. min(I, log N)")
    ax.axhline(I, color=color, ls=":", lw=1.5, label=f"I(X;Y) = {I:.2f} nats")
ax.plot(ns, np.log(ns), color="C3", ls="--", lw=1.5, label="log N")
ax.set_title("Discrete tables: the exact expectation")
ax.set_ylim(0, 6.2)

ax = axes[1]
ax.errorbar(ns_mc, mc_mean, yerr=2 * mc_sem, fmt="o-", color="C1", capsize=3,
            label="mean of log N − L (± 2 standard errors)")
ax.axhline(I_GAUSS, color="C1", ls=":", lw=1.5, label=f"I(X;Y) = {I_GAUSS:g} nats")
ax.plot(ns_mc, np.log(ns_mc), color="C3", ls="--", lw=1.5, label="log N")
ax.set_title(f"{DIM}-d correlated Gaussian: Monte Carlo")
ax.set_ylim(0, 6.2)
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size N (candidates per query)")
    ax.set_ylabel("nats")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left")
fig.suptitle("InfoNCE's bound with the optimal critic never exceeds min(I(X;Y), log N)")
plt.show()

# %%
# While :math:`\log N < I` the curves hug :math:`\log N`; they reach :math:`I` only
# for N in the hundreds. A batch of 64 can certify at most :math:`\log 64 = 4.16`
# nats, which is why the staircase of
# :ref:`sphx_glr_auto_examples_plot_01_mi_staircase.py` flattens. :doc:`/mi` (section 2)
# proves both inequalities.
