r"""
A verification report of a planted bug
======================================

:func:`nce_ref.testing.verify` runs another implementation of a loss on nce_ref's cases
(random batches and the edge cases where implementations break: N = 1, collinear
embeddings, extreme temperatures, zero vectors, ...), in float64 and float32, and
compares its values (and, for PyTorch and JAX, its gradients) with the reference.

Here is an NT-Xent written in NumPy with a classic bug planted: each view's row of the
:math:`2N \times 2N` similarity matrix keeps its **similarity with itself** in the
softmax denominator, so the denominator has :math:`2N - 1` terms instead of SimCLR's
:math:`2N - 2`. On a random batch the value is only some 10 % too large, easy to miss
by eye; the report shows it on every case, and the N = 1 case (whose exact loss is 0)
makes it obvious.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

from nce_ref.testing import verify


def nt_xent_buggy(z1, z2, *, temperature=0.1):
    z = np.concatenate([z1, z2])
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    s = z @ z.T / temperature  # BUG: the diagonal (a view against itself) is not masked
    n = len(z1)
    pos = np.concatenate([np.diag(s, n), np.diag(s, -n)])
    m = s.max(axis=1, keepdims=True)
    return np.mean(m[:, 0] + np.log(np.exp(s - m).sum(axis=1)) - pos)


def nt_xent_fixed(z1, z2, *, temperature=0.1):
    z = np.concatenate([z1, z2])
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    s = z @ z.T / temperature
    s[np.diag_indices_from(s)] = -np.inf  # a view is not its own candidate
    n = len(z1)
    pos = np.concatenate([np.diag(s, n), np.diag(s, -n)])
    m = s.max(axis=1, keepdims=True)
    return np.mean(m[:, 0] + np.log(np.exp(s - m).sum(axis=1)) - pos)


# %%
# The report
# ----------
# ``str(report)`` holds the verdict, the table of cases, one line per failure, why the
# remaining cases were not applicable (options this function does not take) and the
# diagnosis: ``verify`` reruns the reference under every known convention of NT-Xent
# to see whether one of them explains the mismatch (none does here: it is a bug, not a
# convention).
report = verify(nt_xent_buggy, "nt_xent", framework="numpy", cases="all")
print(report)

# %%
# The fix masks the diagonal, and every applicable case passes:
fixed = verify(nt_xent_fixed, "nt_xent", framework="numpy", cases="all")
print(fixed.summary())
print(fixed.counts())

# %%
# The picture: each case's relative error of the value, float64
# -------------------------------------------------------------
rows = {}
for rep, name in [(report, "planted bug"), (fixed, "fixed")]:
    for r in rep.results:
        if r.dtype == "float64" and r.status != "n/a":
            rows.setdefault(r.label, {})[name] = r.value_rel_err
labels = list(rows)
floor = 1e-17  # a relative error of exactly 0 drawn at the bottom of the log axis
fig, ax = plt.subplots(figsize=(10, 4.8), layout="constrained")
y = np.arange(len(labels))
for k, (name, color) in enumerate([("planted bug", "C3"), ("fixed", "C2")]):
    v = [max(rows[lab].get(name, np.nan), floor) for lab in labels]
    ax.barh(y + (k - 0.5) * 0.4, v, height=0.4, color=color,
            label=name + (" (an exact 0 drawn at 10⁻¹⁷)" if name == "fixed" else ""))
ax.axvline(np.finfo(np.float64).eps, color="k", ls=":", label="float64 machine epsilon")
ax.set_xscale("log")
ax.set_xlim(floor / 2, 10)
ax.set_yticks(y, labels)
ax.invert_yaxis()
ax.set_xlabel("relative error of the value against nce_ref.nt_xent (dimensionless, log scale)")
ax.set_ylabel("verification case")
ax.set_title("nce_ref.testing.verify: an NT-Xent with its self-similarity left in the denominator")
ax.legend(loc="lower right", fontsize=8)
ax.grid(alpha=0.3, axis="x")
plt.show()
