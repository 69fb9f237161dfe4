r"""Seeded samplers with known mutual information (NumPy ground truth, ``xp=`` for other namespaces).

Every sampler takes a :class:`numpy.random.Generator` (``numpy.random.default_rng(seed)``)
and draws in NumPy float64; ``xp=`` (an Array API namespace such as
``array_api_compat.torch``) returns the arrays in that namespace instead, with
``dtype=`` (a name, default ``"float64"``) and ``device=``.

- :func:`correlated_gaussian`: Poole et al.'s task, ``dim`` independent pairs of
  correlation ρ, :math:`I = -\tfrac d2\log(1-\rho^2)` (:func:`nce_ref.mi.exact.correlated_gaussian`);
- :func:`discrete`: pairs of symbols drawn from a joint table;
- :func:`cubic`: the transform :math:`y \mapsto y^3`, a bijection, so the MI is unchanged.
"""

from __future__ import annotations

import numbers

import numpy as np

from .exact import check_pmf, check_rho

__all__ = ["correlated_gaussian", "discrete", "cubic", "to_namespace"]


def _check_n(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"`{name}` must be a positive integer; got {n!r}")
    if n < 1:
        raise ValueError(f"`{name}` must be >= 1; got {n}")
    return int(n)


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError("`rng` must be a numpy.random.Generator (numpy.random.default_rng(seed)); "
                        f"got {type(rng).__name__}")
    return rng


def to_namespace(a: np.ndarray, xp=None, *, dtype: str | None = None, device=None):
    """``a`` itself (``xp=None``) or a fresh array of namespace ``xp`` with dtype name ``dtype``."""
    if xp is None:
        return a if dtype is None else a.astype(dtype)
    dt = None if dtype is None else getattr(xp, dtype)
    return xp.asarray(np.ascontiguousarray(a), dtype=dt, device=device)


def correlated_gaussian(n: int, rho: float, dim: int, rng: np.random.Generator, *, xp=None,
                        dtype: str = "float64", device=None):
    r"""``n`` draws of :math:`(X, Y)`, each of shape (n, dim), coordinates independent.

    Coordinate k of :math:`X` and of :math:`Y` are standard normal with correlation ρ:
    :math:`x = \epsilon_1`, :math:`y = \rho\,\epsilon_1 + \sqrt{1-\rho^2}\,\epsilon_2`.

    Parameters
    ----------
    n : int
    rho : float in (−1, 1)
    dim : int
    rng : numpy.random.Generator
    xp : namespace, optional
        Return arrays of this namespace (default: NumPy).
    dtype : str, default "float64"
    device : optional
        Device of the returned arrays (with ``xp``).

    Returns
    -------
    x, y : arrays of shape (n, dim)

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.mi import sample
    >>> x, y = sample.correlated_gaussian(100_000, 0.8, 2, np.random.default_rng(0))
    >>> x.shape, round(float(np.corrcoef(x[:, 1], y[:, 1])[0, 1]), 2)
    ((100000, 2), 0.8)
    """
    n = _check_n(n)
    d = _check_n(dim, "dim")
    r = check_rho(rho)
    if not isinstance(r, float):
        raise TypeError(f"`rho` must be a scalar; got an array of shape {np.shape(r)}")
    rng = _check_rng(rng)
    e = rng.standard_normal((2, n, d))
    x = e[0]
    y = r * e[0] + np.sqrt((1.0 - r) * (1.0 + r)) * e[1]
    return to_namespace(x, xp, dtype=dtype, device=device), to_namespace(y, xp, dtype=dtype, device=device)


def discrete(pmf, n: int, rng: np.random.Generator, *, xp=None, device=None):
    """``n`` draws of the pair of symbols :math:`(x, y) \\sim` ``pmf[x, y]``.

    Parameters
    ----------
    pmf : array_like, shape ``(|X|, |Y|)``
    n : int
    rng : numpy.random.Generator
    xp, device : optional
        Return arrays of this namespace (int64).

    Returns
    -------
    x, y : integer arrays of shape (n,), the row and column indices of the table

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.mi import sample
    >>> x, y = sample.discrete(np.eye(3) / 3, 5, np.random.default_rng(0))
    >>> bool(np.all(x == y)), x.dtype
    (True, dtype('int64'))
    """
    p = check_pmf(pmf)
    n = _check_n(n)
    rng = _check_rng(rng)
    flat = p.ravel() / p.sum()
    idx = rng.choice(flat.size, size=n, p=flat)
    x, y = np.divmod(idx, p.shape[1])
    x, y = x.astype(np.int64), y.astype(np.int64)
    return to_namespace(x, xp, dtype=None if xp is None else "int64", device=device), \
        to_namespace(y, xp, dtype=None if xp is None else "int64", device=device)


def cubic(y):
    r"""The transform :math:`y \mapsto y^3`, elementwise: a bijection of the reals, so
    :math:`I(X; Y^3) = I(X; Y)` (Poole et al.'s "cubic" task).  The optimal critic of
    the transformed pairs is that of the originals, evaluated at :math:`\sqrt[3]{y}`
    (``numpy.cbrt``): the Jacobians cancel in :math:`p(y|x)/p(y)`.

    Parameters
    ----------
    y : array (any Array API namespace)

    Returns
    -------
    array of the same namespace, shape and dtype

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.mi import sample
    >>> sample.cubic(np.array([-2.0, 0.5]))
    array([-8.   ,  0.125])
    """
    return y * y * y
