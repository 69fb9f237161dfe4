"""Hypothesis properties: the engine equals the reference, and the maths' invariances.

For the streamed losses (``info_nce`` one-way, symmetric and with unpaired negatives,
``nt_xent``, ``dcl``, ``supcon`` with labels, ``mi.bound_from_embeddings`` for every bound,
``multi_similarity`` and ``pairwise_contrastive``, these two in float64 only) the
engine (``method="streamed"``, ``block_size=b``) equals the reference
(``method="dense"``) in value and every gradient (``nce_ref.value_and_grad``), over
N in 1..200, D in 1..16, a block of one row, a block that does not divide N and the
whole N, every similarity and the functions' options; in float64 to the table's
float64 tolerance, and in float32 against the float64 reference on the same rounded
inputs to the table's float32 tolerance.  Where a function has no ``method`` option
yet, the reference is the dense formula it is defined by, ``f(nce_ref.similarity(x,
y)/τ)``, with the registered VJPs chained by hand.  Then the invariances: permuting
the pairs, positive row scaling under cosine, symmetric = mean of both directions,
supcon without labels on two views = nt_xent, and the temperature's gradient = a
central difference along τ.

Inputs are drawn from a seed (NumPy's generator; STYLE.md B5: inputs are NumPy float64)
and scaled so that the logits stay moderate (|s/τ| ≲ 20) and no input is near a kink
(SMILE's clip is kept away from every score).  Tolerances come from
``nce_ref.testing`` (rtol_for, atol_for, value_tolerances, FD_*), never literals.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nce_ref
from nce_ref import mi
from nce_ref.mi.embeddings import STREAMED_BOUNDS
from nce_ref.testing import atol_for, rtol_for, sensitivity, value_tolerances
from nce_ref.testing._tolerances import FD_ATOL, FD_EPS, FD_RTOL

KINDS = ("cosine", "dot", "neg_sq_euclidean", "neg_euclidean")
MI_KINDS = ("cosine", "dot", "neg_sq_euclidean")  # bound_from_embeddings' similarities
vg = nce_ref.value_and_grad

#: the file runs in about ten seconds with these (each example is a few dense N x N)
FEW = settings(max_examples=50)


def _has_method(fn) -> bool:
    return "method" in inspect.signature(fn).parameters


# -- strategies ------------------------------------------------------------------------------

@st.composite
def problems(draw, *, n_min=1, n_max=200, kinds=KINDS):
    """(rng, N, D, block, similarity, τ): a seeded problem with moderate logits."""
    n = draw(st.integers(n_min, n_max))
    kind = draw(st.sampled_from(kinds))
    # neg_euclidean has a kink at zero distance: in D < 4 two of ~400 random rows are
    # often within float32's rounding of each other (see _separated)
    d = draw(st.integers(4 if kind == "neg_euclidean" else 1, 16))
    layout = draw(st.sampled_from(["one row", "non-divisor", "whole"]))
    if layout == "one row":
        block = 1
    elif layout == "whole":
        block = n
    else:
        nondiv = [b for b in range(2, n) if n % b]
        block = draw(st.sampled_from(nondiv)) if nondiv else max(1, n - 1)
    tau = draw(st.floats(0.1, 2.0) if kind == "cosine" else st.floats(0.5, 2.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng, n, d, block, kind, tau


def _separated(kind, *arrays):
    """Under neg_euclidean, assume every two rows are at least 1e-2 apart (the distance's
    gradient (x − y)/|x − y| is ill-conditioned near 0, its kink)."""
    if kind != "neg_euclidean":
        return
    u = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays])
    d2 = np.sum((u[:, None, :] - u[None, :, :]) ** 2, axis=-1)
    np.fill_diagonal(d2, np.inf)
    assume(float(np.min(d2, initial=np.inf)) > 1e-4)


def _embed(rng, shape, kind):
    """Rows of norm about 1 (|dot| ≲ 1, squared distances ≲ 4): logits ≲ 20 at τ ≥ 0.1."""
    x = rng.standard_normal(shape)
    return x / math.sqrt(shape[-1]) if kind != "cosine" else x


# -- comparisons by the table ---------------------------------------------------------------

def _check(got, want, inputs, *, dtype, tau, what):
    """Value and gradients ``got = (v, g)`` against ``want`` (float64 reference on the
    same rounded inputs): the value by :func:`value_tolerances` (atol scaled by the
    first-order sensitivity), each gradient by the table's rtol (with its 1/τ term)
    and an atol on the gradient's scale (entries can be ~0; STYLE.md B6 row 2)."""
    (v, g), (wv, wg) = got, want
    v = np.asarray(v, dtype=np.float64)
    wv = np.asarray(wv, dtype=np.float64)
    rtol, atol = value_tolerances(dtype, wv, sensitivity(wg, inputs))
    np.testing.assert_allclose(v, wv, rtol=rtol, atol=atol, err_msg=f"{what}: value")
    assert set(g) == set(wg), (sorted(g), sorted(wg))
    for name, ref in wg.items():
        ref = np.asarray(ref, dtype=np.float64)
        scale = float(np.max(np.abs(ref), initial=1.0))
        if dtype != "float64":  # float32 logits carry eps/τ: the gradient's entries too
            scale /= tau
        np.testing.assert_allclose(np.asarray(g[name], dtype=np.float64), ref,
                                   rtol=rtol_for(dtype, temperature=tau),
                                   atol=atol_for(dtype, scale), err_msg=f"{what}: gradient of {name}")


def _both_dtypes(call, args, kw, *, tau, what):
    """``call(*args, **kw, method=...)``: the engine in float64 and in float32 against
    the float64 reference on the same rounded inputs."""
    for dtype in ("float64", "float32"):
        a = [x.astype(dtype) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x
             for x in args]
        a64 = [x.astype(np.float64) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x
               for x in a]
        want = call(a64, "dense")
        got = call(a, "streamed")
        names = list(want[1])
        inputs = dict(zip(names, a64))
        inputs["temperature"] = tau
        _check(got, want, inputs, dtype=dtype, tau=tau, what=f"{what} [{dtype}]")


# -- the engine equals the reference ---------------------------------------------------------

@FEW
@given(problems(), st.sampled_from(["one-way", "symmetric", "unpaired"]),
       st.sampled_from(["mean", "sum", "none"]), st.integers(1, 5), st.booleans())
def test_info_nce_engine_equals_dense(p, form, reduction, m, in_batch):
    rng, n, d, block, kind, tau = p
    q, k = _embed(rng, (n, d), kind), _embed(rng, (n, d), kind)
    args = [q, k]
    kw = {"temperature": tau, "similarity": kind, "reduction": reduction}
    if form == "symmetric":
        kw["symmetric"] = True
    if form == "unpaired":
        args.append(_embed(rng, (m, d), kind))
        kw["in_batch_negatives"] = in_batch
    _separated(kind, *args)
    ct = rng.uniform(0.5, 1.5, n) if reduction == "none" else None
    assert _has_method(nce_ref.info_nce)

    def call(a, method):
        opts = {"block_size": block} if method == "streamed" else {}
        if ct is not None:
            opts["cotangent"] = ct.astype(a[0].dtype)
        return vg(nce_ref.info_nce)(*a, **kw, method=method, **opts)

    _both_dtypes(call, args, kw, tau=tau, what=f"info_nce {form} {kw} block {block}")


@FEW
@given(problems(), st.sampled_from(["mean", "sum", "none"]))
def test_nt_xent_engine_equals_dense(p, reduction):
    rng, n, d, block, kind, tau = p
    z1, z2 = _embed(rng, (n, d), kind), _embed(rng, (n, d), kind)
    _separated(kind, z1, z2)
    kw = {"temperature": tau, "similarity": kind, "reduction": reduction}
    ct = rng.uniform(0.5, 1.5, 2 * n) if reduction == "none" else None
    assert _has_method(nce_ref.nt_xent)

    def call(a, method):
        opts = {"block_size": block} if method == "streamed" else {}
        if ct is not None:
            opts["cotangent"] = ct.astype(a[0].dtype)
        return vg(nce_ref.nt_xent)(*a, **kw, method=method, **opts)

    _both_dtypes(call, [z1, z2], kw, tau=tau, what=f"nt_xent {kw} block {block}")


@FEW
@given(problems(n_min=2), st.sampled_from(["mean", "sum", "none"]),
       st.sampled_from([("none", True), ("von_mises", True), ("von_mises", False)]))
def test_dcl_engine_equals_dense(p, reduction, weighting):
    rng, n, d, block, kind, tau = p
    z1, z2 = _embed(rng, (n, d), kind), _embed(rng, (n, d), kind)
    _separated(kind, z1, z2)
    kw = {"temperature": tau, "similarity": kind, "reduction": reduction,
          "weight": weighting[0], "detach_weight": weighting[1]}
    ct = rng.uniform(0.5, 1.5, 2 * n) if reduction == "none" else None
    assert _has_method(nce_ref.dcl)

    def call(a, method):
        opts = {"block_size": block} if method == "streamed" else {}
        if ct is not None:
            opts["cotangent"] = ct.astype(a[0].dtype)
        return vg(nce_ref.dcl)(*a, **kw, method=method, **opts)

    _both_dtypes(call, [z1, z2], kw, tau=tau, what=f"dcl {kw} block {block}")


@FEW
@given(problems(n_max=80), st.integers(1, 3), st.integers(1, 6),
       st.sampled_from(["out", "in", "per_pair"]), st.sampled_from(["all", "one"]),
       st.sampled_from(["exclude", "zero"]), st.sampled_from(["mean", "sum", "none"]),
       st.sampled_from([None, 0.07, 1.0]))
def test_supcon_with_labels_engine_equals_dense(p, views, classes, positives, contrast_mode,
                                                no_positive, reduction, base_temperature):
    rng, n, d, block, kind, tau = p
    f = _embed(rng, (n, views, d), kind)
    _separated(kind, f)
    labels = rng.integers(0, classes, n)
    if positives == "per_pair":  # its terms are (anchor, positive) pairs: 'exclude' only
        no_positive = "exclude"
    kw = {"temperature": tau, "similarity": kind, "positives": positives,
          "contrast_mode": contrast_mode, "no_positive": no_positive, "reduction": reduction,
          "base_temperature": base_temperature}
    anchors = n if contrast_mode == "one" else n * views
    ct = rng.uniform(0.5, 1.5, anchors) if reduction == "none" else None
    block = min(block, n * views)
    assert _has_method(nce_ref.supcon)

    def call(a, method):
        opts = {"block_size": block} if method == "streamed" else {}
        if ct is not None:
            opts["cotangent"] = ct.astype(a[0].dtype)
        return vg(nce_ref.supcon)(*a, **kw, method=method, **opts)

    _both_dtypes(call, [f, labels], kw, tau=tau, what=f"supcon {kw} block {block}")


def _same_in_float64(got, want, *, beta, what):
    """The engine's value and gradients against the reference's, both in float64, by the
    table (the pair losses' masks and hinges are piecewise constant: a float32 rounding
    may move a pair across a margin, so they are compared in one dtype)."""
    (v, g), (wv, wg) = got, want
    np.testing.assert_allclose(v, wv, rtol=rtol_for("float64", temperature=1.0 / beta),
                               atol=atol_for("float64"), err_msg=f"{what}: value")
    assert set(g) == set(wg), (sorted(g), sorted(wg))
    for name, ref in wg.items():
        scale = float(np.max(np.abs(ref), initial=1.0)) * beta
        np.testing.assert_allclose(g[name], ref, rtol=rtol_for("float64", temperature=1.0 / beta),
                                   atol=atol_for("float64", scale), err_msg=f"{what}: gradient of {name}")


def _pair_problem(rng, n, d, kind, classes, with_ref, m, draw_self):
    """(args, options): a labelled batch, with a reference set of ``m`` rows whose
    first rows are copies of anchors (``ref_self``) when ``draw_self``."""
    x = _embed(rng, (n, d), kind)
    labels = rng.integers(0, classes, n)
    if not with_ref:
        _separated(kind, x)
        return [x, labels], {}
    r = _embed(rng, (m, d), kind)
    ry = rng.integers(0, classes, m)
    kw = {"ref": r, "ref_labels": ry}
    if draw_self:
        k = min(n, m)
        r[:k], ry[:k] = x[:k], labels[:k]
        kw["ref_self"] = np.concatenate([np.arange(k), np.full(n - k, -1)])
        _separated(kind, x, r[k:])
    else:
        _separated(kind, x, r)
    return [x, labels], kw


@FEW
@given(problems(n_max=80), st.integers(1, 6), st.sampled_from(["mean", "sum", "none", "mean_nonzero"]),
       st.sampled_from([None, 0.1]), st.booleans(), st.integers(1, 40), st.booleans())
def test_multi_similarity_engine_equals_dense(p, classes, reduction, mining, with_ref, m, draw_self):
    rng, n, d, block, kind, _ = p
    args, kw = _pair_problem(rng, n, d, kind, classes, with_ref, m, draw_self)
    beta = 50.0 if kind == "cosine" else 5.0
    kw.update(similarity=kind, reduction=reduction, mining_margin=mining, beta=beta)
    ct = rng.uniform(0.5, 1.5, n) if reduction == "none" else None
    assert _has_method(nce_ref.multi_similarity)

    def call(method):
        opts = {"block_size": block} if method == "streamed" else {}
        if ct is not None:
            opts["cotangent"] = ct
        return vg(nce_ref.multi_similarity)(*args, **kw, method=method, **opts)

    _same_in_float64(call("streamed"), call("dense"), beta=beta,
                     what=f"multi_similarity {sorted(kw)} block {block}")


@FEW
@given(problems(n_max=80), st.integers(1, 6),
       st.sampled_from(["mean", "sum", "none", "mean_nonzero", "per_anchor"]),
       st.sampled_from(["euclidean", "sq_euclidean", "cosine", "lp"]), st.booleans(),
       st.booleans(), st.booleans(), st.booleans(), st.integers(1, 40), st.booleans())
def test_pairwise_contrastive_engine_equals_dense(p, classes, reduction, distance, squared,
                                                  normalize, split, with_ref, m, draw_self):
    rng, n, d, block, kind, _ = p
    args, kw = _pair_problem(rng, n, d, "neg_euclidean", classes, with_ref, m, draw_self)
    kw.update(distance=distance, reduction=reduction, squared=squared, normalize=normalize,
              split_pos_neg=split, pos_margin=0.3, neg_margin=0.6 if distance == "cosine" else 1.0)
    if distance == "lp":
        kw["p"] = 3.0
    ct = rng.uniform(0.5, 1.5, n) if reduction == "none" else None
    assert _has_method(nce_ref.pairwise_contrastive)

    def call(method):
        opts = {"block_size": block} if method == "streamed" else {}
        if ct is not None:
            opts["cotangent"] = ct
        return vg(nce_ref.pairwise_contrastive)(*args, **kw, method=method, **opts)

    _same_in_float64(call("streamed"), call("dense"), beta=1.0,
                     what=f"pairwise_contrastive {kw.get('distance')} {reduction} block {block}")


def _bound_options(bound, rng, n, s, draw_alpha, js_report):
    """(extra positional args, options) of one bound, away from its kinks."""
    if bound in ("tuba", "interpolated"):
        extra = (rng.standard_normal(n),)
        return extra, ({"alpha": draw_alpha} if bound == "interpolated" else {})
    if bound == "mine":
        return (), {"log_moving_average": float(mi.mine_update(s)) - 0.25}
    if bound == "smile":
        w = np.sort(np.abs(s[~np.eye(n, dtype=bool)]))
        c = float(0.5 * (w[len(w) // 2] + w[min(len(w) - 1, len(w) // 2 + 1)]))
        # the clip is a kink of the gradient: keep it away from every score
        assume(np.min(np.abs(w - c)) > 1e-3 * max(1.0, c))
        return (), {"clip": c}
    if bound == "js":
        return (), {"report": js_report}
    return (), {}


def _dense_bound(x, y, extra, kw, *, bound, kind, tau, axis):
    """The reference: ``mi.<bound>(similarity(x, y)/τ)``, the registered VJPs chained
    by hand (``∂/∂τ = −Σ G∘s/τ²``)."""
    s, back_s = nce_ref.vjp(nce_ref.similarity, x, y, similarity=kind)
    v, back = nce_ref.vjp(getattr(mi, bound), s / tau, *extra, axis=axis, **kw)
    g = back()
    ga = back_s(g["scores"] / tau)
    out = {"x": ga["a"], "y": ga["b"], "temperature": -float(np.sum(g["scores"] * s)) / tau ** 2}
    if "log_baseline" in g:
        out["log_baseline"] = g["log_baseline"]
    return v, out


@settings(max_examples=80)
@given(problems(n_min=2, n_max=120, kinds=MI_KINDS), st.sampled_from(STREAMED_BOUNDS),
       st.sampled_from([0.0, 0.01, 0.5, 0.99, 1.0]), st.sampled_from(["mi", "objective"]),
       st.sampled_from([1, 0]))
def test_mi_bound_from_embeddings_engine_equals_dense(p, bound, alpha, js_report, axis):
    rng, n, d, block, kind, tau = p
    x, y = _embed(rng, (n, d), kind), _embed(rng, (n, d), kind)
    s = nce_ref.similarity(x, y, similarity=kind) / tau
    extra, kw = _bound_options(bound, rng, n, s, alpha, js_report)
    opts = {"bound": bound, "similarity": kind, "temperature": tau, "axis": axis, **kw}
    if bound == "mine":  # the state is an option of the embeddings function, an argument of mi.mine
        dextra, dkw = (kw["log_moving_average"],), {}
    else:
        dextra, dkw = extra, kw
    method = _has_method(mi.bound_from_embeddings)

    def call(a, which):
        if which == "streamed":
            more = {"method": "streamed"} if method else {}
            return vg(mi.bound_from_embeddings)(*a, **opts, block_size=block, **more)
        if method:
            return vg(mi.bound_from_embeddings)(*a, **opts, method="dense")
        xa, ya, *ea = a
        return _dense_bound(xa, ya, tuple(ea) if ea else dextra, dkw, bound=bound, kind=kind,
                            tau=tau, axis=axis)

    _both_dtypes(call, [x, y, *extra], opts, tau=tau,
                 what=f"bound_from_embeddings {opts} block {block}")


# -- invariances (float64, the default method) -----------------------------------------------

def _close(got, want, *, scale=None, what=""):
    want = np.asarray(want, dtype=np.float64)
    s = float(np.max(np.abs(want), initial=1.0)) if scale is None else scale
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol_for("float64"),
                               atol=atol_for("float64", s), err_msg=what)


@FEW
@given(problems(), st.booleans())
def test_permuting_the_pairs_permutes_the_gradients(p, symmetric):
    rng, n, d, block, kind, tau = p
    q, k = _embed(rng, (n, d), kind), _embed(rng, (n, d), kind)
    _separated(kind, q, k)
    perm = rng.permutation(n)
    kw = {"temperature": tau, "similarity": kind, "symmetric": symmetric}
    v, g = vg(nce_ref.info_nce)(q, k, **kw, block_size=block)
    vp, gp = vg(nce_ref.info_nce)(q[perm], k[perm], **kw, block_size=block)
    _close(vp, v, what="value")
    for name in ("query", "key"):
        _close(gp[name], g[name][perm], what=name)
    _close(gp["temperature"], g["temperature"], what="temperature")


@FEW
@given(problems(kinds=("cosine",)), st.booleans())
def test_cosine_is_invariant_to_positive_row_scaling(p, symmetric):
    rng, n, d, block, kind, tau = p
    q, k = _embed(rng, (n, d), kind), _embed(rng, (n, d), kind)
    cq, ck = rng.uniform(0.1, 10.0, (n, 1)), rng.uniform(0.1, 10.0, (n, 1))
    kw = {"temperature": tau, "similarity": "cosine", "symmetric": symmetric, "block_size": block}
    v, g = vg(nce_ref.info_nce)(q, k, **kw)
    vs, gs = vg(nce_ref.info_nce)(cq * q, ck * k, **kw)
    _close(vs, v, what="value")
    _close(gs["query"], g["query"] / cq, scale=float(np.max(np.abs(g["query"]))), what="query")
    _close(gs["key"], g["key"] / ck, scale=float(np.max(np.abs(g["key"]))), what="key")


@FEW
@given(problems(), st.sampled_from(["mean", "sum", "none"]))
def test_symmetric_is_the_mean_of_both_directions(p, reduction):
    rng, n, d, block, kind, tau = p
    q, k = _embed(rng, (n, d), kind), _embed(rng, (n, d), kind)
    _separated(kind, q, k)
    kw = {"temperature": tau, "similarity": kind, "reduction": reduction, "block_size": block}
    ct = {"cotangent": rng.uniform(0.5, 1.5, n)} if reduction == "none" else {}
    v, g = vg(nce_ref.info_nce)(q, k, symmetric=True, **kw, **ct)
    a, ga = vg(nce_ref.info_nce)(q, k, **kw, **{c: x / 2 for c, x in ct.items()})
    b, gb = vg(nce_ref.info_nce)(k, q, **kw, **{c: x / 2 for c, x in ct.items()})
    if reduction == "none":  # the column terms are per key: term j of info_nce(k, q)
        _close(v, (np.asarray(a) + np.asarray(b)) / 2, what="value")
        # with a per-term cotangent the row and column terms of pair i share it
    else:
        _close(v, (float(a) + float(b)) / 2, what="value")
        ga = {n_: x / 2 for n_, x in ga.items()}
        gb = {n_: x / 2 for n_, x in gb.items()}
    _close(g["query"], ga["query"] + gb["key"], what="query")
    _close(g["key"], ga["key"] + gb["query"], what="key")
    _close(g["temperature"], ga["temperature"] + gb["temperature"], what="temperature")


@FEW
@given(problems(n_max=100), st.sampled_from(["mean", "sum", "none"]))
def test_supcon_without_labels_on_two_views_is_nt_xent(p, reduction):
    rng, n, d, block, kind, tau = p
    z1, z2 = _embed(rng, (n, d), kind), _embed(rng, (n, d), kind)
    _separated(kind, z1, z2)
    kw = {"temperature": tau, "similarity": kind, "reduction": reduction}
    ct = {"cotangent": rng.uniform(0.5, 1.5, 2 * n)} if reduction == "none" else {}
    # supcon's features are (N, V, D); its anchors are view-major (row v·N + i), as nt_xent's
    v, g = vg(nce_ref.supcon)(np.stack([z1, z2], axis=1), **kw, block_size=min(block, 2 * n), **ct)
    w, h = vg(nce_ref.nt_xent)(z1, z2, **kw, block_size=block, **ct)
    _close(v, w, what="value")
    _close(g["features"][:, 0], h["z1"], what="z1")
    _close(g["features"][:, 1], h["z2"], what="z2")
    _close(g["temperature"], h["temperature"], what="temperature")


@FEW
@given(problems(n_max=60), st.sampled_from(["info_nce", "symmetric", "nt_xent", "supcon"]))
def test_temperature_gradient_is_the_derivative_along_tau(p, which):
    rng, n, d, block, kind, tau = p
    a, b = _embed(rng, (n, d), kind), _embed(rng, (n, d), kind)
    _separated(kind, a, b)
    if which == "supcon":
        fn, args = nce_ref.supcon, (np.stack([a, b], axis=1), rng.integers(0, 3, n))
        kw = {"similarity": kind, "block_size": min(block, 2 * n)}
    else:
        fn, args = (nce_ref.nt_xent if which == "nt_xent" else nce_ref.info_nce), (a, b)
        kw = {"similarity": kind, "block_size": block}
        if which == "symmetric":
            kw["symmetric"] = True
    _, g = vg(fn)(*args, temperature=tau, **kw)
    h = FD_EPS * max(1.0, tau)
    num = (float(fn(*args, temperature=tau + h, **kw)) - float(fn(*args, temperature=tau - h, **kw))) / (2 * h)
    np.testing.assert_allclose(float(g["temperature"]), num, rtol=FD_RTOL, atol=FD_ATOL)


def test_every_streamed_function_has_a_method_option_or_a_dense_formula_here():
    """Which references the properties use today (``method="dense"`` or the formula)."""
    for fn in (nce_ref.info_nce, nce_ref.nt_xent, nce_ref.supcon, nce_ref.dcl,
               nce_ref.multi_similarity, nce_ref.pairwise_contrastive):
        assert _has_method(fn), fn.__name__
    if not _has_method(mi.bound_from_embeddings):
        pytest.skip("mi.bound_from_embeddings has no `method` yet: the reference is the "
                    "dense composition mi.<bound>(similarity(x, y)/τ)")
