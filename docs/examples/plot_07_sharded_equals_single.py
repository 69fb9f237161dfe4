r"""
A sharded loss equals the single-process loss
=============================================

Data-parallel training splits a batch over W ranks, but a contrastive loss couples every
row with every other: each query needs all the keys. :mod:`nce_ref.sharded` computes the
loss of the **whole** batch from each rank's rows (the columns are gathered, or passed
round a ring), and its value and gradients equal the single-process loss on the
concatenated batch, to rounding (:doc:`/sharded`).

:class:`nce_ref.sharded.ThreadGroup` runs W ranks as W threads of this process, the same
code path as torch.distributed or MPI with their communicators. Here a CLIP-style
symmetric InfoNCE on N = 50 pairs is split into unequal shards over W = 1 .. 4 ranks,
with both algorithms, and compared with :func:`nce_ref.info_nce`.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

import nce_ref
from nce_ref.sharded import ThreadGroup

rng = np.random.default_rng(0)
N, D, TAU = 50, 16, 0.07
image, text = rng.standard_normal((N, D)), rng.standard_normal((N, D))

# the reference: one process, the whole batch
ref_loss, ref_grad = nce_ref.value_and_grad(nce_ref.info_nce)(image, text, temperature=TAU, symmetric=True)
sharded_vg = nce_ref.value_and_grad(nce_ref.sharded.info_nce)


def rank_step(comm, q, k, algorithm):
    """What each rank runs: its own rows in, the global loss and its rows' gradients out."""
    return sharded_vg(q, k, comm=comm, temperature=TAU, symmetric=True, algorithm=algorithm)


# %%
# W ranks with unequal shards (a cut at random places), both algorithms
# ----------------------------------------------------------------------
errors = {}
for algorithm in ("gather", "ring"):
    for W in (1, 2, 3, 4):
        cuts = np.sort(rng.choice(np.arange(1, N), size=W - 1, replace=False))
        bounds = np.concatenate([[0], cuts, [N]])
        shards = [(image[a:b], text[a:b], algorithm) for a, b in zip(bounds[:-1], bounds[1:])]
        out = ThreadGroup(W).run(rank_step, shards)
        losses = [float(loss) for loss, _ in out]
        g_image = np.concatenate([g["query"] for _, g in out])  # each rank's rows, in order
        g_text = np.concatenate([g["key"] for _, g in out])
        g_tau = float(out[0][1]["temperature"])
        errors[algorithm, W] = (
            max(abs(v - float(ref_loss)) for v in losses) / abs(float(ref_loss)),
            max(np.abs(g_image - ref_grad["query"]).max(), np.abs(g_text - ref_grad["key"]).max())
            / np.abs(ref_grad["query"]).max(),
            abs(g_tau - float(ref_grad["temperature"])) / abs(float(ref_grad["temperature"])),
        )
        print(f"{algorithm:6s} W = {W}  shard sizes {np.diff(bounds).tolist()!s:18s} loss on every rank "
              f"{losses[0]:.15f}  (single process {float(ref_loss):.15f})")

# %%
# Relative differences from the single-process value and gradients:
print(f"{'':10s}{'value':>12s}{'embeddings':>14s}{'temperature':>14s}")
for (algorithm, W), e in errors.items():
    print(f"{algorithm:6s} W={W}" + "".join(f"{x:14.2e}" for x in e))

# %%
# The picture
# -----------
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
floor = 1e-18  # an exact 0 is drawn at the bottom of the log axis
width = 0.27
for ax, algorithm in zip(axes, ("gather", "ring")):
    Ws = np.array([1, 2, 3, 4])
    whats = ["value", "embedding gradients (max, relative to the largest entry)", "temperature gradient"]
    for k, (what, color) in enumerate(zip(whats, ["C0", "C1", "C2"])):
        v = [max(errors[algorithm, W][k], floor) for W in Ws]
        ax.bar(Ws + (k - 1) * width, v, width, color=color, label=what)
    ax.axhline(np.finfo(np.float64).eps, color="k", ls=":", label="float64 machine epsilon")
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, 1e-10)
    ax.set_xticks(Ws)
    ax.set_xlabel("number of ranks W (threads)")
    ax.set_title(f'algorithm="{algorithm}"')
    ax.grid(alpha=0.3, axis="y")
axes[0].set_ylabel("relative difference from one process\n(dimensionless; an exact 0 drawn at 10⁻¹⁸)")
axes[1].legend(fontsize=8, loc="upper right")
fig.suptitle("nce_ref.sharded.info_nce (symmetric, N = 50 in unequal shards) against nce_ref.info_nce")
plt.show()

# %%
# Every difference is a few units of rounding: the sharded loss *is* the loss of the
# whole batch, with the gradient of each rank's rows delivered to that rank. Under
# torch.distributed or MPI, replace the ``ThreadGroup`` by a ``TorchCommunicator`` or an
# ``MPICommunicator`` (:doc:`/sharded` shows both scripts).
