r"""Exact mutual information, in nats, for distributions where it is known (NumPy/SciPy, float64).

This is ground truth, not a backend path: inputs are converted to NumPy float64.

- :func:`discrete`: a joint probability table (zeros allowed);
- :func:`gaussian`: a joint covariance, by log-determinants;
- :func:`correlated_gaussian` and its inverse :func:`rho_for_mi`: the coordinate-wise
  correlated Gaussians of Poole et al.'s experiment (:mod:`nce_ref.mi.sample`);
- :func:`student_t`: the multivariate Student-t (Gaussian MI of the dispersion plus
  a correction that depends only on the dimensions and the degrees of freedom);
- :func:`additive_uniform`: :math:`Y = X + U(-\varepsilon, \varepsilon)`,
  :math:`X \sim U(0, 1)`.

The last three cover tasks of the benchmark of Czyż et al., "Beyond Normal: On the
Evaluation of Mutual Information Estimators" (NeurIPS 2023).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "discrete",
    "gaussian",
    "correlated_gaussian",
    "rho_for_mi",
    "student_t",
    "additive_uniform",
    "check_pmf",
    "check_rho",
    "log1m_rho2",
]

#: tolerance on the total probability of a table
PMF_ATOL = 1e-9


def check_pmf(pmf, name: str = "pmf") -> np.ndarray:
    """Return ``pmf`` as a float64 ``(|X|, |Y|)`` table after validation.

    Raises ``ValueError`` for a table that is not 2-D, is empty, holds NaN, inf or
    a negative entry, or does not sum to 1 (within ``1e-9``).
    """
    p = np.asarray(pmf)
    if p.dtype == object or not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise TypeError(f"`{name}` must be a real array (a joint probability table); got dtype {p.dtype}")
    p = p.astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D joint table p[x, y]; got {p.ndim}-D with shape {p.shape}")
    if p.size == 0:
        raise ValueError(f"`{name}` must not be empty; got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"`{name}` must be finite; got {int(np.sum(np.isnan(p)))} NaN and "
                         f"{int(np.sum(np.isinf(p)))} infinite entries")
    if np.any(p < 0):
        raise ValueError(f"`{name}` must be non-negative; got a minimum of {p.min()!r}")
    total = math.fsum(p.ravel())
    if abs(total - 1.0) > PMF_ATOL:
        raise ValueError(f"`{name}` must sum to 1 (a probability table); got a total of {total!r}")
    return p


def check_rho(rho, name: str = "rho") -> np.ndarray | float:
    """Return ``rho`` (float or array) after checking every value lies in (−1, 1)."""
    if isinstance(rho, bool):
        raise TypeError(f"`{name}` must be a real number in (-1, 1); got {rho!r}")
    r = np.asarray(rho, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(np.abs(r) >= 1):
        bad = r[~(np.isfinite(r) & (np.abs(r) < 1))] if r.ndim else r
        raise ValueError(f"`{name}` must lie in the open interval (-1, 1); got {np.ravel(bad)[:3].tolist()}")
    return float(r) if r.ndim == 0 else r


def _check_dim(dim, name: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"`{name}` must be a positive integer; got {dim!r}")
    if dim < 1:
        raise ValueError(f"`{name}` must be >= 1; got {dim}")
    return int(dim)


def discrete(pmf) -> float:
    r"""Mutual information of a joint probability table ``pmf[x, y]``.

    .. math::

        I(X;Y) = \sum_{x,y} p(x,y) \log\frac{p(x,y)}{p(x)p(y)},

    with :math:`0 \log 0 = 0` (``scipy.special.rel_entr``), summed as one relative
    entropy rather than as a difference of entropies (no cancellation when the
    entropies are large and the MI small).

    Parameters
    ----------
    pmf : array_like, shape ``(|X|, |Y|)``
        Non-negative, summing to 1; zeros allowed.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.mi import exact
    >>> exact.discrete(np.eye(4) / 4), float(np.log(4))     # a perfect copy: log k
    (1.3862943611198906, 1.3862943611198906)
    >>> exact.discrete(np.outer([0.2, 0.8], [0.5, 0.5]))      # independent: 0
    0.0
    """
    from scipy import special  # imported on use: `import nce_ref.mi` stays light

    p = check_pmf(pmf)
    px = p.sum(axis=1, keepdims=True)
    py = p.sum(axis=0, keepdims=True)
    mi = math.fsum(special.rel_entr(p, px * py).ravel())
    return max(mi, 0.0)


def _logdet_spd(m: np.ndarray, name: str) -> float:
    sign, logdet = np.linalg.slogdet(m)
    if not sign > 0 or not np.isfinite(logdet):
        raise ValueError(f"`{name}` must be symmetric positive definite; its determinant is not positive")
    return float(logdet)


def check_cov(cov, name: str = "cov") -> np.ndarray:
    """Return ``cov`` as float64 after checking it is square, symmetric and positive definite."""
    c = np.asarray(cov, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"`{name}` must be a square (d, d) matrix; got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"`{name}` must be finite")
    scale = max(float(np.max(np.abs(c))), np.finfo(np.float64).tiny)
    if not np.allclose(c, c.T, rtol=0, atol=1e-12 * scale):
        asym = float(np.max(np.abs(c - c.T)))
        raise ValueError(f"`{name}` must be symmetric; max |cov - cov.T| = {asym:.3g}")
    try:
        np.linalg.cholesky(c)
    except np.linalg.LinAlgError:
        ev = float(np.linalg.eigvalsh(c).min())
        raise ValueError(f"`{name}` must be positive definite; its smallest eigenvalue is {ev:.3g}") from None
    return c


def gaussian(cov, dim_x: int) -> float:
    r"""Mutual information of a jointly Gaussian :math:`(X, Y)` with covariance ``cov``.

    .. math::

        I(X;Y) = \tfrac12\big(\log\det\Sigma_{XX} + \log\det\Sigma_{YY} - \log\det\Sigma\big),

    :math:`X` being the first ``dim_x`` coordinates; computed with ``slogdet``
    (never a determinant, which under- or overflows in high dimension).

    Parameters
    ----------
    cov : array_like, shape (d, d)
        Symmetric positive definite.
    dim_x : int
        ``1 <= dim_x < d``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.mi import exact
    >>> round(exact.gaussian(np.array([[1.0, 0.75], [0.75, 1.0]]), 1), 4)   # Czyż et al.: 0.41
    0.4133
    """
    c = check_cov(cov)
    d = c.shape[0]
    dx = _check_dim(dim_x, "dim_x")
    if not dx < d:
        raise ValueError(f"`dim_x` must be < d = {d} (Y needs at least one coordinate); got {dx}")
    mi = 0.5 * (_logdet_spd(c[:dx, :dx], "cov[:dim_x, :dim_x]")
                + _logdet_spd(c[dx:, dx:], "cov[dim_x:, dim_x:]") - _logdet_spd(c, "cov"))
    return max(mi, 0.0)


def correlated_gaussian(rho, dim: int = 1):
    r"""MI of :func:`nce_ref.mi.sample.correlated_gaussian`: ``dim`` independent pairs of correlation ρ.

    .. math::

        I(X;Y) = -\frac{d}{2}\log(1 - \rho^2)

    (:func:`log1m_rho2`: accurate as :math:`|\rho| \to 1`).

    Parameters
    ----------
    rho : float or array_like, in (−1, 1)
    dim : int, default 1

    Returns
    -------
    float (or ndarray for an array ``rho``)

    Examples
    --------
    >>> from nce_ref.mi import exact
    >>> round(exact.correlated_gaussian(exact.rho_for_mi(2.0, 20), 20), 12)
    2.0
    """
    r = check_rho(rho)
    d = _check_dim(dim, "dim")
    return -0.5 * d * log1m_rho2(r)


def log1m_rho2(rho):
    """``log(1 − ρ²)`` to full relative accuracy for every ρ in (−1, 1).

    ``log1p(−ρ²)`` for ``|ρ| < 1/2`` (where ``ρ²`` may be below the spacing of 1);
    ``log((1 − ρ)(1 + ρ))`` otherwise (``1 − ρ`` is exact there, Sterbenz), where
    ``1 − ρ·ρ`` would cancel as ``ρ → 1``.
    """
    r = np.asarray(rho, dtype=np.float64)
    a = np.abs(r)
    small = a < 0.5
    out = np.where(small, np.log1p(-np.square(np.where(small, r, 0.0))),
                   np.log((1.0 - np.where(small, 0.0, a)) * (1.0 + a)))
    return float(out) if out.ndim == 0 else out


def rho_for_mi(mi, dim: int = 1):
    r"""The correlation ρ >= 0 at which ``dim`` correlated pairs carry ``mi`` nats.

    .. math::

        \rho = \sqrt{1 - e^{-2I/d}} = \sqrt{-\operatorname{expm1}(-2I/d)}.

    Parameters
    ----------
    mi : float or array_like, >= 0
    dim : int, default 1

    Returns
    -------
    float (or ndarray)
        ``rho`` is a float64: beyond about 18 nats per pair (``mi / dim``) it rounds to
        1, and near there the MI it represents is only as accurate as
        :math:`\tfrac d2 \rho^2/(1-\rho^2)` times its rounding.

    Examples
    --------
    >>> from nce_ref.mi import exact
    >>> round(exact.rho_for_mi(0.5 * 0.6931471805599453), 12)   # I = log(2)/2 when rho^2 = 1/2
    0.707106781187
    """
    d = _check_dim(dim, "dim")
    if isinstance(mi, bool):
        raise TypeError(f"`mi` must be a non-negative real number; got {mi!r}")
    m = np.asarray(mi, dtype=np.float64)
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError(f"`mi` must be finite and >= 0; got {np.ravel(m)[:3].tolist()}")
    r = np.sqrt(-np.expm1(-2.0 * m / d))
    return float(r) if r.ndim == 0 else r


def _t_entropy_standard(k: int, df: float) -> float:
    """Differential entropy of the standard k-dimensional Student-t with ``df`` degrees of freedom."""
    from scipy import special

    a, b = (df + k) / 2.0, df / 2.0
    return (-special.gammaln(a) + special.gammaln(b) + 0.5 * k * math.log(df * math.pi)
            + a * (special.digamma(a) - special.digamma(b)))


def student_t_correction(dim_x: int, dim_y: int, df: float) -> float:
    r"""The MI of a multivariate Student-t beyond the Gaussian MI of its dispersion.

    .. math::

        c(\nu, d_x, d_y) = h_\nu(d_x) + h_\nu(d_y) - h_\nu(d_x + d_y),

    :math:`h_\nu(k)` the entropy of the standard k-dimensional t distribution,
    :math:`-\log\Gamma(\tfrac{\nu+k}2) + \log\Gamma(\tfrac\nu2) + \tfrac k2\log(\nu\pi)
    + \tfrac{\nu+k}2\big(\psi(\tfrac{\nu+k}2) - \psi(\tfrac\nu2)\big)`.  Positive,
    and zero in the limit :math:`\nu \to \infty`.
    """
    dx, dy = _check_dim(dim_x, "dim_x"), _check_dim(dim_y, "dim_y")
    nu = _check_df(df)
    return float(_t_entropy_standard(dx, nu) + _t_entropy_standard(dy, nu)
                 - _t_entropy_standard(dx + dy, nu))


def _check_df(df) -> float:
    if isinstance(df, bool) or not isinstance(df, numbers.Real):
        raise TypeError(f"`df` must be a positive real number; got {df!r}")
    nu = float(df)
    if not (nu > 0 and math.isfinite(nu)):
        raise ValueError(f"`df` must be finite and > 0; got {df}")
    return nu


def student_t(dispersion, dim_x: int, df: float) -> float:
    r"""MI of a multivariate Student-t :math:`(X, Y) \sim t_\nu(0, \Omega)`.

    .. math::

        I(X;Y) = I_{\rm Gauss}(\Omega) + c(\nu, d_x, d_y)

    (Arellano-Valle et al. 2013): :func:`gaussian` of the dispersion matrix plus
    :func:`student_t_correction`, from the entropies of standard t distributions
    (``scipy.stats.multivariate_t(...).entropy()`` agrees, see the tests).

    Parameters
    ----------
    dispersion : array_like, shape (d, d)
        Symmetric positive definite (the shape matrix, not the covariance).
    dim_x : int
    df : float > 0

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from nce_ref.mi import exact
    >>> round(exact.student_t(np.eye(2), 1, df=1), 4)   # uncorrelated, yet dependent
    0.2242
    """
    c = check_cov(dispersion, "dispersion")
    dx = _check_dim(dim_x, "dim_x")
    if not dx < c.shape[0]:
        raise ValueError(f"`dim_x` must be < d = {c.shape[0]}; got {dx}")
    g = 0.5 * (_logdet_spd(c[:dx, :dx], "dispersion[:dim_x, :dim_x]")
               + _logdet_spd(c[dx:, dx:], "dispersion[dim_x:, dim_x:]") - _logdet_spd(c, "dispersion"))
    return float(g + student_t_correction(dx, c.shape[0] - dx, df))


def additive_uniform(eps: float) -> float:
    r"""MI of :math:`Y = X + U(-\varepsilon, \varepsilon)` with :math:`X \sim U(0, 1)`.

    :math:`I = h(Y) - \log(2\varepsilon)`, :math:`Y` having a trapezoidal density:

    .. math::

        I = \begin{cases} \varepsilon - \log(2\varepsilon) & \varepsilon \le 1/2,\\
                          1/(4\varepsilon) & \varepsilon \ge 1/2. \end{cases}

    Parameters
    ----------
    eps : float > 0

    Returns
    -------
    float

    Examples
    --------
    >>> from nce_ref.mi import exact
    >>> round(exact.additive_uniform(0.1), 4), round(exact.additive_uniform(0.75), 4)
    (1.7094, 0.3333)
    """
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"`eps` must be a positive real number; got {eps!r}")
    e = float(eps)
    if not (e > 0 and math.isfinite(e)):
        raise ValueError(f"`eps` must be finite and > 0; got {eps}")
    if e <= 0.5:
        return e - math.log(2.0 * e)
    return 1.0 / (4.0 * e)
