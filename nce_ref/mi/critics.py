r"""Optimal critics in closed form: the pointwise MI :math:`\log p(y|x)/p(y)` on a batch (NumPy, float64).

Each function returns the (n, n) score matrix ``scores[i, j] = log p(y_j|x_i)/p(y_j)``
(**rows are x**, the joint pairs on the diagonal) that the bounds of
:mod:`nce_ref.mi` take.  It is the optimal critic of InfoNCE, DV, SMILE (up to its
clip), JS and TUBA with :math:`a = 1`; NWJ's optimum is ``1 + scores``.  ``xp=``
returns the matrix in another Array API namespace.
"""

from __future__ import annotations

import numpy as np

from .exact import check_pmf, check_rho, log1m_rho2
from .sample import to_namespace

__all__ = ["gaussian", "discrete", "pointwise_mi_table"]

def _as_2d(a, name: str) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (n, dim); got shape {x.shape}")
    return x


def gaussian(x, y, rho: float, *, xp=None, dtype: str = "float64", device=None):
    r"""``scores[i, j] = log p(y_j|x_i)/p(y_j)`` for :func:`nce_ref.mi.sample.correlated_gaussian`.

    .. math::

        f^*(x, y) = -\frac d2\log(1-\rho^2) - \frac{\lVert y - \rho x\rVert^2}{2(1-\rho^2)}
                    + \frac{\lVert y\rVert^2}{2}.

    The squared distances come from one GEMM (:math:`\lVert y\rVert^2 + \rho^2\lVert x\rVert^2
    - 2\rho\, x\cdot y`), whose rounding is :math:`\varepsilon` times the norms:
    harmless off the diagonal, where the pairs are independent and the distance is of
    the order of the norms.  The diagonal (the joint pairs, where :math:`y \approx \rho x`
    and the expansion would cancel as :math:`\rho \to 1`) is recomputed from the
    difference :math:`y_i - \rho x_i` itself.  :math:`\mathbb{E}_{p(x,y)}[f^*] = I(X;Y)`.

    Parameters
    ----------
    x, y : array_like, shape (n, dim) and (m, dim)
        With ``m == n`` the diagonal holds the pairs ``(x_i, y_i)``.
    rho : float in (−1, 1)
    xp, dtype, device : optional
        Return the matrix in this namespace (default NumPy float64).

    Returns
    -------
    scores : array, shape (n, m)

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.mi import critics, exact, sample
    >>> x, y = sample.correlated_gaussian(20_000, 0.6, 1, np.random.default_rng(0))
    >>> critics.gaussian(x[:3], y[:3], 0.6).shape
    (3, 3)
    >>> f = critics.gaussian(x, y[:1], 0.6)        # column 0: f*(x_i, y_0) for every x_i
    >>> round(float(np.mean(np.exp(f))), 1)         # E_p(x)[p(y|x)/p(y)] = 1
    1.0
    """
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have the same dim; got {x.shape} and {y.shape}")
    r = check_rho(rho)
    if not isinstance(r, float):
        raise TypeError("`rho` must be a scalar")
    n, d = x.shape
    one_m = (1.0 - r) * (1.0 + r)
    const = -0.5 * d * log1m_rho2(r)
    ny2 = np.sum(y * y, axis=1)
    rx = r * x
    d2 = ny2[None, :] + np.sum(rx * rx, axis=1)[:, None] - 2.0 * (rx @ y.T)
    d2 = np.maximum(d2, 0.0)
    if y.shape[0] == n:
        diff = y - rx
        d2[np.arange(n), np.arange(n)] = np.sum(diff * diff, axis=1)
    out = const - d2 / (2.0 * one_m) + 0.5 * ny2[None, :]
    return to_namespace(out, xp, dtype=dtype if xp is not None else None, device=device)


def pointwise_mi_table(pmf) -> np.ndarray:
    r"""``log p(x, y)/(p(x)p(y))`` for every cell of a table, ``-inf`` where ``p(x, y) = 0``.

    Rows or columns of zero probability (never sampled) also get ``-inf``.
    """
    p = check_pmf(pmf)
    px = p.sum(axis=1, keepdims=True)
    py = p.sum(axis=0, keepdims=True)
    prod = px * py
    pos = p > 0
    out = np.full(p.shape, -np.inf)
    np.log(p, out=out, where=pos)
    out[pos] -= np.log(prod[pos])
    return out


def discrete(pmf, x, y, *, xp=None, dtype: str = "float64", device=None):
    r"""``scores[i, j] = log p(y_j|x_i)/p(y_j)`` for symbols ``x``, ``y`` drawn from ``pmf``.

    Entries where :math:`p(x_i, y_j) = 0` are ``-inf`` (the optimal critic rules the
    pair out; call the bounds with ``allow_neg_inf=True``).

    Parameters
    ----------
    pmf : array_like, shape ``(|X|, |Y|)``
    x, y : integer array_like, shape (n,)
        Row and column indices into ``pmf`` (as from :func:`nce_ref.mi.sample.discrete`).
    xp, dtype, device : optional

    Returns
    -------
    scores : array, shape (n, n)

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.mi import critics
    >>> critics.discrete(np.eye(2) / 2, [0, 1], [0, 1])      # a noiseless copy
    array([[0.69314718,       -inf],
           [      -inf, 0.69314718]])
    """
    table = pointwise_mi_table(pmf)
    xi = np.asarray(x)
    yi = np.asarray(y)
    for name, v, k in (("x", xi, table.shape[0]), ("y", yi, table.shape[1])):
        if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"`{name}` must be a 1-D integer array of symbols; got {v.dtype} {v.shape}")
        if v.size and (v.min() < 0 or v.max() >= k):
            raise ValueError(f"`{name}` holds symbols outside [0, {k}); got range [{v.min()}, {v.max()}]")
    out = table[xi[:, None], yi[None, :]]
    return to_namespace(out, xp, dtype=dtype if xp is not None else None, device=device)
