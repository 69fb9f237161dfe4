"""Mutual information: exact ground truth, variational bounds on critic scores, theory.

The bounds are objectives on a critic score matrix ``scores[i, j] = f(x_i, y_j)``
(**rows are x**, ``axis=0`` for the transpose) whose diagonal holds the joint
samples; each returns an estimate in nats with a registered analytic gradient:

- :func:`infonce` (``log N − L``), :func:`nwj`, :func:`tuba`, :func:`dv`, :func:`mine`
  (with :func:`mine_update` for its explicit state), :func:`js`,
  :func:`interpolated`, :func:`smile`: lower bounds;
- :func:`loo_upper`: the leave-one-out upper bound for a known conditional;
- :func:`bound_from_embeddings`: any of them on the critic ``sim(x_i, y_j)/τ`` of two
  embedding batches, by the dense reference (``method="dense"``) or streamed over row
  blocks with no N x N matrix (``"streamed"``, the default under ``"auto"``);
  :func:`nce_ref.sharded.bound_from_embeddings` for a batch split over ranks.

Ground truth, in NumPy/SciPy float64:

- :mod:`nce_ref.mi.exact`: exact MI of discrete tables, Gaussians, Student-t and
  additive uniform noise;
- :mod:`nce_ref.mi.sample`: seeded samplers (correlated Gaussians, discrete tables);
- :mod:`nce_ref.mi.critics`: the optimal critic ``log p(y|x)/p(y)`` in closed form;
- :mod:`nce_ref.mi.theory`: the exact expectation of the InfoNCE bound at finite N.

``nce-ref bounds`` runs the demonstration (``docs/mi.md``).
"""

from . import critics, exact, sample, theory
from .bounds import dv, infonce, interpolated, js, loo_upper, mine, mine_update, nwj, smile, tuba
from .embeddings import bound_from_embeddings

__all__ = [
    "bound_from_embeddings",
    "critics",
    "dv",
    "exact",
    "infonce",
    "interpolated",
    "js",
    "loo_upper",
    "mine",
    "mine_update",
    "nwj",
    "sample",
    "smile",
    "theory",
    "tuba",
]
