"""Similarities between embeddings, each with its hand-derived VJP.

The kernel :func:`sim_fwd` works on batched operands ``a (..., N, D)`` and
``b (..., M, D)`` (same leading dims) and returns the ``(..., N, M)`` score matrix
and its VJP.  The losses use it for the full matrix, for the per-query explicit
negatives (``(N, 1, D)`` against ``(N, M, D)``) and for the positive pairs
(``(N, 1, D)`` against ``(N, 1, D)``).  Derivations: ``docs/derivations.md``,
section "Similarities".
"""

from __future__ import annotations

from typing import Any

from array_api_compat import is_lazy_array

from ._array import check_option, check_real, resolve
from .autodiff import differentiable

Array = Any

KINDS = ("cosine", "dot", "neg_sq_euclidean", "neg_euclidean")
DEFAULT_EPS = 1e-12

__all__ = ["similarity", "sim_fwd", "pair_sim", "pair_sim_from_features", "bilinear_features", "KINDS",
           "BILINEAR", "DEFAULT_EPS"]


def _mT(x, xp):
    return xp.matrix_transpose(x)


def row_norm(x: Array, *, xp) -> Array:
    """Euclidean norm of the rows of ``x`` (last axis, kept), without overflow or underflow.

    ``‖x‖ = m · sqrt(Σ (x/m)²)`` with ``m = max |x|``, so that entries of magnitude
    up to the dtype's maximum, or below the square root of its smallest normal,
    are handled exactly.
    """
    if not is_lazy_array(x) and x.shape[-1] > 0:
        # fast path, one pass: Σ x² is exact to a few ulps when it neither overflows nor
        # gets within D/eps of the smallest normal (its underflowed squares then weigh
        # less than one ulp); checked on the result, else the scaled form below
        fi = xp.finfo(x.dtype)
        s = xp.expand_dims(xp.vecdot(x, x, axis=-1), axis=-1)
        floor = x.shape[-1] * float(fi.smallest_normal) / float(fi.eps)
        if bool(xp.all((s >= floor) & (s <= float(fi.max)))):
            return xp.sqrt(s)
    m = xp.max(xp.abs(x), axis=-1, keepdims=True)
    m_safe = xp.where(m > 0, m, xp.ones_like(m))
    y = x / m_safe
    return m * xp.sqrt(xp.sum(y * y, axis=-1, keepdims=True))


def unit_rows(x: Array, *, eps: float, xp):
    """``x̂ = x / max(‖x‖, eps)`` row-wise, and its VJP ``back(gx̂, rows=None) -> gx``.

    The VJP is row-wise: ``back(g[rows], rows=rows)`` is ``back(g)[rows]`` for a slice
    ``rows`` of the rows (the NumPy fast paths apply it chunk by chunk, in cache).
    """
    n = row_norm(x, xp=xp)
    d = xp.maximum(n, xp.full_like(n, eps))
    xh = x / d

    def back(g, rows=None):
        if rows is None:
            return _normalize_vjp(xh, n, d, g, eps, xp)
        return _normalize_vjp(xh[rows, ...], n[rows, ...], d[rows, ...], g, eps, xp)

    return xh, back


def _cosine(a, b, eps, xp):
    ah, back_a = unit_rows(a, eps=eps, xp=xp)
    bh, back_b = unit_rows(b, eps=eps, xp=xp)
    s = ah @ _mT(bh, xp)

    def back(g):
        return back_a(g @ bh), back_b(_mT(g, xp) @ ah)

    return s, back


def _normalize_vjp(xh, n, d, gxh, eps, xp):
    # x̂ = x / max(‖x‖, eps).  For ‖x‖ > eps: J = (I − x̂x̂ᵀ)/‖x‖; else J = I/eps.
    # The branch is taken on the per-row factor c, not on the (N, D) arrays.
    c = xp.expand_dims(xp.vecdot(xh, gxh, axis=-1), axis=-1)
    c = xp.where(n > eps, c, xp.zeros_like(c))
    return (gxh - xh * c) * (1.0 / d)


def _dot(a, b, eps, xp):
    s = a @ _mT(b, xp)

    def back(g):
        return g @ b, _mT(g, xp) @ a

    return s, back


def _centered(a, b, xp, center=None):
    # Distances are translation invariant; centring both sets on their common mean
    # reduces the cancellation of ‖a‖² + ‖b‖² − 2 a·b.  The centre is treated as a
    # constant in the VJP: by invariance its total contribution is exactly zero.
    if center is None:
        n, m = a.shape[-2], b.shape[-2]
        center = (xp.sum(a, axis=-2, keepdims=True) + xp.sum(b, axis=-2, keepdims=True)) / float(n + m)
    return a - center, b - center


def _sq_dist(a, b, xp):
    ac, bc = _centered(a, b, xp)
    na2 = xp.sum(ac * ac, axis=-1, keepdims=True)  # (..., N, 1)
    nb2 = _mT(xp.sum(bc * bc, axis=-1, keepdims=True), xp)  # (..., 1, M)
    d2 = na2 + nb2 - 2.0 * (ac @ _mT(bc, xp))
    d2 = xp.maximum(d2, xp.zeros_like(d2))
    return ac, bc, na2, nb2, d2


def _sq_dist_vjp(ac, bc, w, xp):
    # d2_ij = ‖a_i − b_j‖²;  ∂/∂a_i Σ_j w_ij d2_ij = 2 (Σ_j w_ij) a_i − 2 (w b)_i
    ga = 2.0 * (xp.sum(w, axis=-1, keepdims=True) * ac - w @ bc)
    gb = 2.0 * (_mT(xp.sum(w, axis=-2, keepdims=True), xp) * bc - _mT(w, xp) @ ac)
    return ga, gb


def _neg_sq_euclidean(a, b, eps, xp):
    ac, bc, _, _, d2 = _sq_dist(a, b, xp)

    def back(g):
        return _sq_dist_vjp(ac, bc, -g, xp)

    return -d2, back


#: squared distances below ``NOISE_ULPS·eps·(‖a'‖² + ‖b'‖²)`` (centred) are taken as 0
NOISE_ULPS = 16.0


def euclidean_noise(fa: Array, fb: Array, xp) -> tuple[Array, Array]:
    """``(u, v)`` with ``u_i + v_j`` the zero threshold of ``‖a_i − b_j‖²`` (see
    :func:`similarity`), from the neg_sq_euclidean features of :func:`bilinear_features`
    (``fa = [2a', −‖a'‖², −1]``, ``fb = [b', 1, ‖b'‖²]``)."""
    k = fa.shape[1]
    e = NOISE_ULPS * xp.finfo(fa.dtype).eps
    return -e * fa[:, k - 2], e * fb[:, k - 1]


def _neg_euclidean(a, b, eps, xp):
    ac, bc, na2, nb2, d2 = _sq_dist(a, b, xp)
    # Below the rounding noise of the expansion the distance is taken as exactly 0,
    # where the subgradient 0 is used (the minimum-norm element of the unit ball).
    noise = NOISE_ULPS * xp.finfo(d2.dtype).eps * (na2 + nb2)
    zero = d2 <= noise
    d = xp.where(zero, xp.zeros_like(d2), xp.sqrt(d2))

    def back(g):
        # ∂(−d)/∂d2 = −1/(2d) for d > 0, and 0 (subgradient) at d = 0.
        w = xp.where(zero, xp.zeros_like(d), -g / (2.0 * xp.where(zero, xp.ones_like(d), d)))
        return _sq_dist_vjp(ac, bc, w, xp)

    return -d, back


_KERNELS = {
    "cosine": _cosine,
    "dot": _dot,
    "neg_sq_euclidean": _neg_sq_euclidean,
    "neg_euclidean": _neg_euclidean,
}


def sim_fwd(a: Array, b: Array, *, kind: str, eps: float, xp):
    """Scores ``s[..., i, j] = sim(a[..., i, :], b[..., j, :])`` and their VJP.

    Returns ``(s, back)`` with ``back(g) -> (grad_a, grad_b)``.  Inputs must already
    be validated and in the computation dtype.
    """
    return _KERNELS[kind](a, b, eps, xp)


def check_similarity(kind: str, eps: float) -> tuple[str, float]:
    """Validate the ``similarity=`` and ``eps=`` options shared by the losses."""
    check_option(kind, "similarity", KINDS)
    eps = check_real(eps, "eps", positive=True)
    return kind, eps


@differentiable("similarity", wrt=("a", "b"))
def similarity(a: Array, b: Array, /, *, similarity: str = "cosine", eps: float = DEFAULT_EPS,
               check_finite: bool = True, xp=None):
    r"""Pairwise similarity matrix between the rows of two embedding matrices.

    Parameters
    ----------
    a : array, shape (N, D)
    b : array, shape (M, D)
        Real floating arrays of one namespace and device.
    similarity : {"cosine", "dot", "neg_sq_euclidean", "neg_euclidean"}, default "cosine"
        The same option, with the same values, as the losses' ``similarity=``
        (this keyword was ``kind=`` before; see the README's changelog).

        - ``"cosine"``: :math:`s_{ij} = \hat a_i \cdot \hat b_j` with
          :math:`\hat x = x / \max(\lVert x\rVert_2, \varepsilon)`
          (``torch.nn.functional.normalize``'s convention; a zero vector gives a zero
          row of scores and a finite gradient :math:`g/\varepsilon`).
        - ``"dot"``: :math:`s_{ij} = a_i \cdot b_j`.
        - ``"neg_sq_euclidean"``: :math:`s_{ij} = -\lVert a_i - b_j\rVert_2^2`.
        - ``"neg_euclidean"``: :math:`s_{ij} = -\lVert a_i - b_j\rVert_2`; at zero
          distance the subgradient 0 is used.  Distances below the rounding noise of
          the expansion :math:`\lVert a\rVert^2+\lVert b\rVert^2-2a\cdot b` (after
          centring on the common mean) count as zero.

        The euclidean kinds use that GEMM expansion after centring both sets on their
        common mean :math:`c`: the absolute error of :math:`d^2_{ij}` is
        :math:`O(\varepsilon_{\text{mach}})(\lVert a_i-c\rVert^2+\lVert b_j-c\rVert^2)`,
        so a distance far below the spread of the points has fewer correct digits
        (as in ``torch.cdist`` and scikit-learn).  The positive pairs of the losses
        are row-wise and do not have this cancellation.
    eps : float, default 1e-12
        Norm floor of ``"cosine"``.
    check_finite : bool, default True
        Raise ``ValueError`` on NaN or inf inputs.
    xp : namespace, optional
        The inputs' Array API namespace (inferred by default).

    Returns
    -------
    s : array, shape (N, M)
        In the inputs' namespace, dtype and device (float16/bfloat16 are computed in
        float32 and returned in the input dtype).

    Notes
    -----
    VJPs, with :math:`G = \partial\ell/\partial s`:
    dot: :math:`\bar a = G b,\ \bar b = G^\top a`;
    cosine: :math:`\bar a_i = (I - \hat a_i\hat a_i^\top)(G\hat b)_i/\lVert a_i\rVert`;
    squared euclidean: :math:`\bar a_i = -2[(\textstyle\sum_j G_{ij}) a_i - (G b)_i]`;
    euclidean: the same with :math:`G_{ij}/(2 d_{ij})`.  See ``docs/derivations.md``.

    Examples
    --------
    >>> import numpy as np, nce_ref
    >>> a = np.array([[3.0, 4.0], [1.0, 0.0]])
    >>> nce_ref.similarity(a, a, similarity="cosine")
    array([[1. , 0.6],
           [0.6, 1. ]])
    >>> nce_ref.similarity(a, a, similarity="neg_euclidean")
    array([[-0.        , -4.47213595],
           [-4.47213595, -0.        ]])
    """
    kind, eps = check_similarity(similarity, eps)
    ctx = resolve({"a": a, "b": b}, ndims={"a": 2, "b": 2}, xp=xp, check_finite=check_finite)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"`a` and `b` must have the same number of columns D; got "
                         f"{a.shape[1]} and {b.shape[1]}")
    s, back = sim_fwd(ctx.to_compute(a), ctx.to_compute(b), kind=kind, eps=eps, xp=ctx.xp)

    def vjp(g):
        ga, gb = back(ctx.to_compute(g))
        return {"a": ctx.like(ga, a), "b": ctx.like(gb, b)}

    return ctx.to_out(s), vjp


#: similarity kinds whose score matrix is a product of per-row features (streamable)
BILINEAR = ("cosine", "dot", "neg_sq_euclidean")


def bilinear_features(a: Array, b: Array, *, kind: str, eps: float, xp, center: Array | None = None):
    """Features ``fa (N, K)``, ``fb (M, K)`` with ``sim(a_i, b_j) = fa_i · fb_j``, and their VJP.

    - cosine: ``fa = â``, ``fb = b̂`` (K = D);
    - dot: ``fa = a``, ``fb = b``;
    - neg_sq_euclidean, after centring both sets on their common mean ``c``:
      ``fa = [2a', −‖a'‖², −1]``, ``fb = [b', 1, ‖b'‖²]`` (K = D + 2), so that
      ``fa·fb = 2a'·b' − ‖a'‖² − ‖b'‖² = −‖a − b‖²``.

    ``center`` (1, D), optional: the centre of the neg_sq_euclidean features instead of
    the common mean of ``a`` and ``b`` (the same on every rank of a sharded batch whose
    columns' features are computed where they live).

    Returns ``(fa, fb, back)`` with ``back(dfa, dfb) -> (da, db)``; for cosine and dot
    the VJP is row-wise, ``back(dfa[rows], dfb[rows], rows=rows)`` (``a`` and ``b`` with
    the same number of rows), see :func:`unit_rows`.
    """
    if kind == "cosine":
        ah, back_a = unit_rows(a, eps=eps, xp=xp)
        bh, back_b = unit_rows(b, eps=eps, xp=xp)
        return ah, bh, lambda gfa, gfb, rows=None: (back_a(gfa, rows), back_b(gfb, rows))
    if kind == "dot":
        return a, b, lambda gfa, gfb, rows=None: (gfa, gfb)
    if kind != "neg_sq_euclidean":
        raise ValueError(f"{kind!r} is not bilinear")
    ac, bc = _centered(a, b, xp, center)
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    na2 = xp.sum(ac * ac, axis=-1, keepdims=True)
    nb2 = xp.sum(bc * bc, axis=-1, keepdims=True)
    ones_a = xp.ones((n, 1), dtype=a.dtype, device=_device(a))
    ones_b = xp.ones((m, 1), dtype=b.dtype, device=_device(b))
    fa = xp.concat([2.0 * ac, -na2, -ones_a], axis=1)
    fb = xp.concat([bc, ones_b, nb2], axis=1)

    def back(gfa, gfb):
        ga = 2.0 * gfa[:, :d] - 2.0 * gfa[:, d:d + 1] * ac
        gb = gfb[:, :d] + 2.0 * gfb[:, d + 1:d + 2] * bc
        return ga, gb

    return fa, fb, back


def _device(x):
    from array_api_compat import device

    return device(x)


def pair_sim(a: Array, b: Array, *, kind: str, eps: float, xp):
    """Row-wise similarity ``s_i = sim(a_i, b_i)`` (O(N·D)) and its VJP."""
    n = a.shape[0]
    s, back = sim_fwd(xp.expand_dims(a, axis=1), xp.expand_dims(b, axis=1), kind=kind, eps=eps, xp=xp)

    def vjp(g):
        ga, gb = back(xp.reshape(g, (n, 1, 1)))
        return xp.reshape(ga, a.shape), xp.reshape(gb, b.shape)

    return xp.reshape(s, (n,)), vjp


def pair_sim_from_features(a: Array, b: Array, fa: Array, fb: Array, *, kind: str, eps: float, xp):
    """Positive-pair similarities ``s_i = sim(a_i, b_i)`` of a streamed loss, from the
    features of :func:`bilinear_features` where they give it, and a VJP that also carries
    the features' cotangents: ``back(ds, dfa, dfb) -> (dfa', dfb', da_extra, db_extra)``.

    For cosine and dot, ``s_i = fa_i · fb_i`` and the pair's cotangent is added to the
    features' in place (``dfa``, ``dfb`` must be the caller's own buffers; one
    normalisation VJP in all; ``back(ds[rows], dfa[rows], dfb[rows], rows=rows)`` for a
    slice of the rows), and the extra terms are None (zero); for the euclidean kinds the
    exact row-wise difference is used (no cancellation), through :func:`pair_sim`.
    """
    if kind in ("cosine", "dot"):
        s = xp.vecdot(fa, fb, axis=-1)

        def back(ds, dfa, dfb, rows=None):  # row-wise: rows slices fa and fb
            dsk = xp.expand_dims(ds, axis=1)
            ra, rb = (fa, fb) if rows is None else (fa[rows, ...], fb[rows, ...])
            dfa += dsk * rb  # the callers' own buffers
            dfb += dsk * ra
            return dfa, dfb, None, None

        return s, back
    s, bp = pair_sim(a, b, kind=kind, eps=eps, xp=xp)

    def back(ds, dfa, dfb):
        ga, gb = bp(ds)
        return dfa, dfb, ga, gb

    return s, back
