"""siglip, dcl, multi_similarity and pairwise_contrastive against the peers that ship them,
run as their own code where it installs, and against torch autograd transcriptions.

- OpenCLIP's ``SigLipLoss`` (``open_clip/loss.py``) and lightly's ``DCLLoss``/``DCLWLoss``
  (``lightly/loss/dcl_loss.py``), imported by ``nce_ref.testing.peers.import_peer`` (their
  packages import torchvision, a CUDA build beside the CPU torch here:
  ``operator torchvision::nms does not exist``);
- pytorch-metric-learning's ``MultiSimilarityLoss`` (with and without its
  ``MultiSimilarityMiner``) and ``ContrastiveLoss`` are imported as they are;
- the options the peers lack (the paper's squared contrastive loss, DCLW's gradient
  through its weight, every reduction) against plain torch autograd of the formula.

Values and every gradient in float64; the engine against the reference for siglip and dcl.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import numpy as np
import pytest

import nce_ref
from nce_ref.testing import atol_for, rtol_for

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = 1e-12


def _peer(module: str):
    """``module`` imported by ``nce_ref.testing.peers.import_peer`` (which makes torchvision
    importable where its CUDA extension does not load beside this torch); skip when the
    peer is not installed."""
    from nce_ref.testing.peers import import_peer

    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{module.split('.')[0]} is not installed")
    return import_peer(module)


def _t(a, grad=True):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def _close(got, want, what=""):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=RTOL,
                               atol=1e-13 * max(1.0, float(np.max(np.abs(want), initial=0))),
                               err_msg=what)


# -- SigLIP ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 5, 37])
@pytest.mark.parametrize("method", ["dense", "streamed"])
@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (3.7, 0.4), (118.0, -16.0)])
def test_siglip_equals_open_clip(rng, n, method, scale, bias):
    """OpenCLIP's ``SigLipLoss()(img, txt, logit_scale, logit_bias)`` on normalised features
    (the model's ``normalize=True``), ``logit_scale`` exponentiated as the model passes it."""
    oc = _peer("open_clip.loss")
    x, y = rng.standard_normal((n, 6)), rng.standard_normal((n, 6))
    X, Y, T, B = _t(x), _t(y), _t(scale), _t(bias)
    want = oc.SigLipLoss()(F.normalize(X, dim=-1), F.normalize(Y, dim=-1), T, B)
    want.backward()
    v, g = nce_ref.value_and_grad(nce_ref.siglip)(x, y, scale=scale, bias=bias, method=method,
                                                 block_size=4)
    _close(v, want.item(), "value")
    for k, ref in (("x", X), ("y", Y), ("scale", T), ("bias", B)):
        _close(g[k], ref.grad.numpy(), k)


def test_siglip_dot_on_normalised_features_is_open_clip_with_log_scale(rng):
    """The gradient of OpenCLIP's learned log-scale ``t'`` is ``scale · ∂L/∂scale``."""
    oc = _peer("open_clip.loss")
    x = rng.standard_normal((9, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.standard_normal((9, 4))
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    X, Y, LOG_T = _t(x), _t(y), _t(np.log(10.0))
    loss = oc.SigLipLoss()(X, Y, LOG_T.exp(), torch.tensor(-10.0, dtype=torch.float64))
    loss.backward()
    v, g = nce_ref.value_and_grad(nce_ref.siglip)(x, y, similarity="dot")
    _close(v, loss.item())
    _close(10.0 * float(g["scale"]), LOG_T.grad.item(), "log-scale")


@pytest.mark.parametrize("similarity", ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_siglip_engine_equals_reference_and_torch(rng, similarity, reduction):
    x, y = rng.standard_normal((11, 3)), rng.standard_normal((11, 3))
    kw = dict(scale=2.5, bias=-1.5, similarity=similarity, reduction=reduction)
    ct = rng.standard_normal(11) if reduction == "none" else None
    vg = nce_ref.value_and_grad(nce_ref.siglip)
    dense = vg(x, y, method="dense", cotangent=ct, **kw)
    for block in (1, 4, 11):
        streamed = vg(x, y, method="streamed", block_size=block, cotangent=ct, **kw)
        _close(streamed[0], dense[0])
        for k in dense[1]:
            _close(streamed[1][k], dense[1][k], k)
    X, Y, T, B = _t(x), _t(y), _t(2.5), _t(-1.5)
    if similarity == "cosine":
        s = F.normalize(X, dim=1) @ F.normalize(Y, dim=1).T
    elif similarity == "dot":
        s = X @ Y.T
    else:
        d2 = ((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1)
        s = -d2 if similarity == "neg_sq_euclidean" else -d2.sqrt()
    z = 2 * torch.eye(11, dtype=torch.float64) - 1
    per = -F.logsigmoid(z * (T * s + B)).sum(1)
    loss = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    loss.backward(None if ct is None else torch.tensor(ct))
    _close(dense[0], loss.detach().numpy())
    for k, ref in (("x", X), ("y", Y), ("scale", T), ("bias", B)):
        _close(dense[1][k], ref.grad.numpy(), k)


def test_siglip_positive_term_is_exact_when_tiny():
    """softplus(−u⁺) far below softplus(u⁺) ≈ u⁺: kept apart, it is not lost to cancellation."""
    x = np.eye(3)
    for method in ("dense", "streamed"):
        loss = nce_ref.siglip(x, x, scale=40.0, bias=0.0, method=method, reduction="none")
        # each row: softplus(−40) + 2 softplus(0 · 40)... the negatives are orthogonal: u = 0
        want = np.log1p(np.exp(-40.0)) + 2 * np.log(2.0)
        np.testing.assert_allclose(loss, want, rtol=1e-15)
        loss = nce_ref.siglip(x, x, scale=40.0, bias=-60.0, method=method, reduction="none")
        want = np.log1p(np.exp(20.0)) + 2 * np.log1p(np.exp(-60.0))
        np.testing.assert_allclose(loss, want, rtol=1e-15)


def test_siglip_float32_engine_is_accurate_on_its_fast_path(rng):
    x, y = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    want = nce_ref.value_and_grad(nce_ref.siglip)(x, y)
    got = nce_ref.value_and_grad(nce_ref.siglip)(x.astype(np.float32), y.astype(np.float32))
    assert got[0].dtype == np.float32
    np.testing.assert_allclose(got[0], want[0], rtol=rtol_for("float32"))
    for k in want[1]:
        np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-4,
                                   atol=atol_for("float32", float(np.max(np.abs(want[1][k])))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", ["pairs", "one", "no bias"])
def test_siglip_numpy_specialisation_equals_the_generic_kernel(rng, dtype, path):
    """NumPy's in-place block (``np_sigmoid_block``: chunks of rows in cache, two threads,
    the paired ``log1p``) gives the generic Array API kernel's result (array-api-strict),
    on both one-``exp`` paths, with an odd number of columns and blocks that do not
    divide N."""
    xs = pytest.importorskip("array_api_strict", reason="array-api-strict is optional")
    # "one": 2(t + |b|) beyond the dtype's exp range, t + |b| within it: no paired log1p
    scale, bias = {"pairs": (10.0, -10.0), "no bias": (4.0, 0.0),
                   "one": (30.0, -20.0) if dtype == "float32" else (300.0, -100.0)}[path]
    x, y = (rng.standard_normal((301, 8)).astype(dtype) for _ in range(2))
    kw = dict(scale=scale, bias=bias, block_size=100)
    vg = nce_ref.value_and_grad(nce_ref.siglip)
    with nce_ref.tuning(chunk_bytes=4096, thread_min_rows=2, thread_min_size=2):
        got = vg(x, y, **kw)
    want = vg(xs.asarray(x), xs.asarray(y), **kw)
    rtol = rtol_for(dtype, temperature=1.0 / scale)
    np.testing.assert_allclose(got[0], np.asarray(want[0]), rtol=rtol)
    for k in want[1]:
        ref = np.asarray(want[1][k])
        np.testing.assert_allclose(got[1][k], ref, rtol=rtol,
                                   atol=atol_for(dtype, float(np.max(np.abs(ref)))), err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("block_size", [None, 40])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_siglip_two_pipelines_equal_one_sweep_and_the_reference(rng, monkeypatch, dtype,
                                                                block_size, reduction):
    """NumPy with two threads and a BLAS of at most two: the halves of the rows are two
    sweeps at once (``_exec.by_blas_halves``), each with its own block buffer and its own
    ``f̄b``; they give one sweep's result (``threads=1``) and the dense reference's."""
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is a dependency")
    if not [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]:
        pytest.skip("threadpoolctl finds no BLAS library in this process")
    mod = sys.modules["nce_ref.losses.siglip"]
    ran = []

    def spy(part, n):
        out = halves(part, n)
        ran.append(out is not None)
        return out

    halves = mod.by_blas_halves
    monkeypatch.setattr(mod, "by_blas_halves", spy)
    x, y = (rng.standard_normal((301, 8)).astype(dtype) for _ in range(2))
    ct = rng.standard_normal(301).astype(dtype) if reduction == "none" else None
    kw = dict(scale=10.0, bias=-10.0, reduction=reduction, block_size=block_size, cotangent=ct)
    vg = nce_ref.value_and_grad(nce_ref.siglip)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"), \
            nce_ref.tuning(threads=2, thread_min_rows=4, chunk_bytes=4096):
        got = vg(x, y, **kw)
    assert ran and all(ran)  # every sweep (forward, then gradient for "none") in halves
    ran.clear()
    with nce_ref.tuning(threads=1):
        one = vg(x, y, **kw)
    assert ran and not any(ran)
    dense = vg(x, y, method="dense", **{k: v for k, v in kw.items() if k != "block_size"})
    rtol = rtol_for(dtype, temperature=0.1)
    for want, tol in ((one, 8 * np.finfo(dtype).eps), (dense, rtol)):
        np.testing.assert_allclose(got[0], want[0], rtol=tol)
        for k in want[1]:
            ref = np.asarray(want[1][k])
            np.testing.assert_allclose(got[1][k], ref, rtol=tol,
                                       atol=atol_for(dtype, float(np.max(np.abs(ref)))), err_msg=k)


@pytest.mark.parametrize("fn", ["siglip", "dcl"])
def test_the_fused_vjp_returns_fresh_arrays_on_every_call(rng, fn):
    """The engine fuses the gradient into the forward sweep; each call of the VJP still
    returns arrays of its own (changing one call's gradient leaves the next one's)."""
    x, y = rng.standard_normal((20, 4)), rng.standard_normal((20, 4))
    _, back = nce_ref.vjp(getattr(nce_ref, fn), x, y)
    first, second = back(), back()
    for k in first:
        assert first[k] is not second[k]
        _close(first[k], second[k], k)
    want = {k: np.array(v, copy=True) for k, v in second.items()}
    for v in first.values():
        v *= 0.0
    third = back()
    for k in want:
        _close(third[k], want[k], k)


# -- DCL --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 16])
@pytest.mark.parametrize("weighted", [False, True])
def test_dcl_equals_lightly(rng, n, weighted):
    """lightly's ``DCLLoss(temperature)`` / ``DCLWLoss(temperature, sigma)`` (weight detached)."""
    dl = _peer("lightly.loss.dcl_loss")
    z1, z2 = rng.standard_normal((n, 5)), rng.standard_normal((n, 5))
    Z1, Z2 = _t(z1), _t(z2)
    fn = dl.DCLWLoss(temperature=0.3, sigma=0.7) if weighted else dl.DCLLoss(temperature=0.3)
    with pytest.warns(UserWarning) if weighted else _nullcontext():
        want = fn(Z1, Z2)  # DCLW's torch.tensor(tensor) warns
    want.backward()
    kw = dict(weight="von_mises", sigma=0.7) if weighted else {}
    v, g = nce_ref.value_and_grad(nce_ref.dcl)(z1, z2, temperature=0.3, **kw)
    _close(v, want.item())
    _close(g["z1"], Z1.grad.numpy(), "z1")
    _close(g["z2"], Z2.grad.numpy(), "z2")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _torch_dcl(Z1, Z2, T, weighted, sigma, detach, reduction):
    n = Z1.shape[0]
    u = F.normalize(torch.cat([Z1, Z2]), dim=1)
    s = u @ u.T
    z = s / T
    eye = torch.eye(2 * n, dtype=torch.bool)
    keep = ~(eye | eye.roll(n, dims=1))
    lse = torch.logsumexp(z.masked_fill(~keep, -torch.inf), dim=1)
    s_pos = (u[:n] * u[n:]).sum(1)
    w = torch.ones(n, dtype=torch.float64)
    if weighted:
        sp = s_pos.detach() if detach else s_pos
        w = 2 - n * torch.softmax(sp / sigma, dim=0)
    per = lse - torch.cat([w, w]) * torch.cat([s_pos, s_pos]) / T
    return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]


@pytest.mark.parametrize("weighted,detach", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dcl_equals_torch_autograd_with_temperature(rng, weighted, detach, reduction):
    n = 6
    z1, z2 = rng.standard_normal((n, 4)), rng.standard_normal((n, 4))
    Z1, Z2, T = _t(z1), _t(z2), _t(0.4)
    loss = _torch_dcl(Z1, Z2, T, weighted, 0.5, detach, reduction)
    ct = rng.standard_normal(2 * n) if reduction == "none" else None
    loss.backward(None if ct is None else torch.tensor(ct))
    v, g = nce_ref.value_and_grad(nce_ref.dcl)(
        z1, z2, temperature=0.4, weight="von_mises" if weighted else "none",
        detach_weight=detach, reduction=reduction, cotangent=ct)
    _close(v, loss.detach().numpy())
    for k, ref in (("z1", Z1), ("z2", Z2), ("temperature", T)):
        _close(g[k], ref.grad.numpy(), k)


@pytest.mark.parametrize("similarity", ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"])
@pytest.mark.parametrize("weighted,detach", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dcl_engine_equals_reference(rng, similarity, weighted, detach, reduction):
    """The engine (blocks of 1, 4 and all rows of a segment) equals the dense reference,
    value and every gradient (temperature included), in float64."""
    n = 7
    z1, z2 = rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
    kw = dict(temperature=0.4, similarity=similarity, weight="von_mises" if weighted else "none",
              detach_weight=detach, sigma=0.6, reduction=reduction)
    ct = rng.standard_normal(2 * n) if reduction == "none" else None
    vg = nce_ref.value_and_grad(nce_ref.dcl)
    dense = vg(z1, z2, method="dense", cotangent=ct, **kw)
    assert sorted(dense[1]) == ["temperature", "z1", "z2"]
    for block in (1, 4, n):
        streamed = vg(z1, z2, method="streamed", block_size=block, cotangent=ct, **kw)
        _close(streamed[0], dense[0], f"value, block {block}")
        for k in dense[1]:
            _close(streamed[1][k], dense[1][k], f"{k}, block {block}")


def test_dcl_auto_runs_the_engine_and_its_blocks_do_not_change_the_result(rng):
    """``method="auto"`` is the engine (bit for bit), and a small ``block_size`` (the memory:
    a block x 2N buffer, never (2N, 2N)) gives the whole-segment result to rounding."""
    z1, z2 = rng.standard_normal((40, 6)), rng.standard_normal((40, 6))
    auto = nce_ref.dcl(z1, z2, weight="von_mises")
    assert float(auto) == float(nce_ref.dcl(z1, z2, weight="von_mises", method="streamed"))
    vg = nce_ref.value_and_grad(nce_ref.dcl)
    whole = vg(z1, z2, block_size=40)
    for block in (1, 3):
        small = vg(z1, z2, block_size=block)
        _close(small[0], whole[0])
        for k in whole[1]:
            _close(small[1][k], whole[1][k], k)
    with nce_ref.tuning(memory_budget=2 * 80 * 8 * 2):  # two rows of 2N float64 per buffer
        _close(nce_ref.dcl(z1, z2), whole[0])


def test_dcl_engine_float32_and_extreme_temperature(rng):
    """float32 through the engine against the float64 reference; at τ = 1e-3 (logits ~1e3,
    the shifted path) the engine matches the reference in float64."""
    z1, z2 = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    want = nce_ref.value_and_grad(nce_ref.dcl)(z1, z2, method="dense")
    got = nce_ref.value_and_grad(nce_ref.dcl)(z1.astype(np.float32), z2.astype(np.float32))
    assert got[0].dtype == np.float32
    np.testing.assert_allclose(got[0], want[0], rtol=rtol_for("float32", temperature=0.1))
    for k in want[1]:
        np.testing.assert_allclose(got[1][k], want[1][k], rtol=rtol_for("float32", temperature=0.1),
                                   atol=atol_for("float32", float(np.max(np.abs(want[1][k]))) / 0.1),
                                   err_msg=k)
    x1, x2 = z1[:9], z2[:9]
    kw = dict(temperature=1e-3, reduction="none", weight="von_mises", detach_weight=False,
              cotangent=rng.standard_normal(18))
    dense = nce_ref.value_and_grad(nce_ref.dcl)(x1, x2, method="dense", **kw)
    streamed = nce_ref.value_and_grad(nce_ref.dcl)(x1, x2, method="streamed", block_size=4, **kw)
    np.testing.assert_allclose(streamed[0], dense[0], rtol=rtol_for("float64", temperature=1e-3))
    for k in dense[1]:
        np.testing.assert_allclose(streamed[1][k], dense[1][k],
                                   rtol=rtol_for("float64", temperature=1e-3),
                                   atol=atol_for("float64", float(np.max(np.abs(dense[1][k])))),
                                   err_msg=k)


@pytest.mark.parametrize("backend", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_dcl_engine_on_torch_and_jax_equals_numpy(rng, backend):
    """The generic (Array API) kernel on torch and JAX equals NumPy's specialisation."""
    z1, z2 = rng.standard_normal((9, 4)), rng.standard_normal((9, 4))
    kw = dict(temperature=0.3, weight="von_mises", detach_weight=False, block_size=4)
    want = nce_ref.value_and_grad(nce_ref.dcl)(z1, z2, method="dense", **kw)
    if backend == "torch":
        a, b = torch.tensor(z1), torch.tensor(z2)
    else:
        jax = pytest.importorskip("jax", reason="JAX is optional")
        jax.config.update("jax_enable_x64", True)
        a, b = jax.numpy.asarray(z1), jax.numpy.asarray(z2)
    got = nce_ref.value_and_grad(nce_ref.dcl)(a, b, method="streamed", **kw)
    _close(np.asarray(got[0]), want[0])
    for k in want[1]:
        _close(np.asarray(got[1][k]), want[1][k], k)


# -- multi-similarity ------------------------------------------------------------------------

def _labels(rng, n, classes):
    return rng.integers(0, classes, n)


@pytest.mark.parametrize("mined", [False, True])
@pytest.mark.parametrize("params", [{}, {"alpha": 1.3, "beta": 7.0, "base": 0.2}])
def test_multi_similarity_equals_pml(rng, mined, params):
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import MultiSimilarityLoss
    from pytorch_metric_learning.miners import MultiSimilarityMiner

    del pml
    x = rng.standard_normal((12, 5))
    y = _labels(rng, 12, 3)
    X, Y = _t(x), torch.tensor(y)
    loss_fn = MultiSimilarityLoss(**params)
    if mined:
        want = loss_fn(X, Y, MultiSimilarityMiner(epsilon=0.1)(X, Y))
    else:
        want = loss_fn(X, Y)
    want.backward()
    v, g = nce_ref.value_and_grad(nce_ref.multi_similarity)(
        x, y, mining_margin=0.1 if mined else None, **params)
    _close(v, want.item())
    _close(g["embeddings"], X.grad.numpy())


def test_multi_similarity_mining_keeps_the_pairs_pml_mines(rng):
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.miners import MultiSimilarityMiner

    x = rng.standard_normal((10, 3))
    y = _labels(rng, 10, 2)
    a1, p, a2, ng = MultiSimilarityMiner(epsilon=0.2)(_t(x, False), torch.tensor(y))
    # the loss's value with every pair but the mined ones sent far away
    v = nce_ref.multi_similarity(x, y, mining_margin=0.2, reduction="none")
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    pos = np.zeros((10, 10), bool)
    pos[a1.numpy(), p.numpy()] = True
    neg = np.zeros((10, 10), bool)
    neg[a2.numpy(), ng.numpy()] = True
    want = (np.log1p(np.sum(np.where(pos, np.exp(-2 * (s - 0.5)), 0), axis=1)) / 2
            + np.log1p(np.sum(np.where(neg, np.exp(50 * (s - 0.5)), 0), axis=1)) / 50)
    np.testing.assert_allclose(v, want, rtol=1e-12)


# -- pairwise contrastive ------------------------------------------------------------------

PML_CONTRASTIVE = dict(distance="euclidean", normalize=True, reduction="mean_nonzero",
                       split_pos_neg=True)


@pytest.mark.parametrize("margins", [{}, {"pos_margin": 0.3, "neg_margin": 1.2}])
@pytest.mark.parametrize("classes", [1, 3, 12])
def test_pairwise_contrastive_equals_pml(rng, margins, classes):
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import ContrastiveLoss

    x = rng.standard_normal((12, 4))
    y = _labels(rng, 12, classes) if classes < 12 else np.arange(12)
    X, Y = _t(x), torch.tensor(y)
    want = ContrastiveLoss(**margins)(X, Y)
    want.backward()
    v, g = nce_ref.value_and_grad(nce_ref.pairwise_contrastive)(x, y, **margins, **PML_CONTRASTIVE)
    _close(v, want.item())
    _close(g["embeddings"], X.grad.numpy())


def test_pairwise_contrastive_pml_mean_reducer_is_split_mean(rng):
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.reducers import MeanReducer

    x = rng.standard_normal((10, 3))
    y = _labels(rng, 10, 3)
    X = _t(x)
    want = ContrastiveLoss(pos_margin=0.1, neg_margin=1.5, reducer=MeanReducer())(X, torch.tensor(y))
    want.backward()
    v, g = nce_ref.value_and_grad(nce_ref.pairwise_contrastive)(
        x, y, pos_margin=0.1, neg_margin=1.5, normalize=True, split_pos_neg=True)
    _close(v, want.item())
    _close(g["embeddings"], X.grad.numpy())


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("reduction,split", [("mean", False), ("mean", True), ("sum", False),
                                             ("none", False), ("mean_nonzero", False),
                                             ("mean_nonzero", True)])
@pytest.mark.parametrize("distance", ["euclidean", "sq_euclidean", "cosine"])
def test_pairwise_contrastive_equals_torch_autograd(rng, squared, reduction, split, distance):
    n = 9
    x = rng.standard_normal((n, 3))
    y = _labels(rng, n, 3)
    X = _t(x)
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    eye = torch.eye(n, dtype=torch.bool)
    if distance == "euclidean":
        d = d2.masked_fill(eye, 1.0).sqrt().masked_fill(eye, 0.0)
    elif distance == "sq_euclidean":
        d = d2
    else:
        xn = F.normalize(X, dim=1)
        d = 1 - xn @ xn.T
    same = torch.tensor(y[:, None] == y[None, :])
    pos, neg = same & ~eye, ~same
    h = (lambda v: 0.5 * torch.relu(v) ** 2) if squared else torch.relu
    tp = torch.where(pos, h(d - 0.4), 0.0)
    tn = torch.where(neg, h(1.3 - d), 0.0)
    if reduction == "none":
        loss = (tp + tn).sum(1)
    elif reduction == "sum":
        loss = (tp + tn).sum()
    else:
        if reduction == "mean":
            cp, cn = pos.sum(), neg.sum()
        else:
            cp, cn = (tp > 0).sum(), (tn > 0).sum()

        def m(t, c):
            return t.sum() / c if c > 0 else t.sum() * 0

        loss = m(tp, cp) + m(tn, cn) if split else m(tp + tn, cp + cn)
    ct = rng.standard_normal(n) if reduction == "none" else None
    loss.backward(None if ct is None else torch.tensor(ct))
    v, g = nce_ref.value_and_grad(nce_ref.pairwise_contrastive)(
        x, y, pos_margin=0.4, neg_margin=1.3, distance=distance, squared=squared,
        reduction=reduction, split_pos_neg=split, cotangent=ct)
    _close(v, loss.detach().numpy())
    _close(g["embeddings"], X.grad.numpy())


# -- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda x, y: nce_ref.siglip(x, y, scale=0.0), "`scale` must be > 0"),
    (lambda x, y: nce_ref.siglip(x, y, scale=-3.0), "`scale` must be > 0"),
    (lambda x, y: nce_ref.siglip(x, y, bias=float("nan")), "`bias` must be finite"),
    (lambda x, y: nce_ref.siglip(x, y[:3]), "`y` must have the shape of `x`"),
    (lambda x, y: nce_ref.siglip(x, y, method="fast"), "`method` must be one of"),
    (lambda x, y: nce_ref.dcl(x, y, temperature=-0.1), "`temperature` must be > 0"),
    (lambda x, y: nce_ref.dcl(x[:1], y[:1]), "at least two rows"),
    (lambda x, y: nce_ref.dcl(x, y, weight="vmf"), "`weight` must be one of"),
    (lambda x, y: nce_ref.dcl(x, y, sigma=0.0), "`sigma` must be > 0"),
    (lambda x, y: nce_ref.dcl(x, y, block_size=0), "`block_size` must be >= 1"),
    (lambda x, y: nce_ref.dcl(x, y, method="fast"), "`method` must be one of"),
    (lambda x, y: nce_ref.dcl(x, y, detach_weight=1), "`detach_weight` must be a bool"),
    (lambda x, y: nce_ref.multi_similarity(x, np.arange(5)), "`labels` must have shape"),
    (lambda x, y: nce_ref.multi_similarity(x, np.arange(4), alpha=0.0), "`alpha` must be > 0"),
    (lambda x, y: nce_ref.multi_similarity(x, np.arange(4), mining_margin=-0.1),
     "`mining_margin` must be >= 0"),
    (lambda x, y: nce_ref.pairwise_contrastive(x, np.arange(4), neg_margin=-1.0),
     "`neg_margin` must be >= 0"),
    (lambda x, y: nce_ref.pairwise_contrastive(x, np.arange(4), distance="l2"),
     "`distance` must be one of"),
    (lambda x, y: nce_ref.pairwise_contrastive(x, np.arange(4), p=3), "`p` applies to distance='lp'"),
    (lambda x, y: nce_ref.pairwise_contrastive(x, np.arange(4), squared="yes"),
     "`squared` must be a bool"),
    (lambda x, y: nce_ref.pairwise_contrastive(x, np.arange(4), reduction="avg"),
     "`reduction` must be one of"),
])
def test_bad_input_is_refused_by_name(call, match):
    x, y = np.ones((4, 3)), np.ones((4, 3))
    with pytest.raises((ValueError, TypeError), match=match):
        call(x, y)


def test_nan_inputs_are_refused():
    x = np.ones((4, 3))
    bad = x.copy()
    bad[1, 1] = np.nan
    for f, args in ((nce_ref.siglip, (bad, x)), (nce_ref.dcl, (x, bad)),
                    (nce_ref.multi_similarity, (bad, np.arange(4))),
                    (nce_ref.pairwise_contrastive, (bad, np.arange(4)))):
        with pytest.raises(ValueError, match="must be finite"):
            f(*args)


# -- nce-ref verify: each peer's own function under its convention ------------------------------

@pytest.mark.parametrize("adapter,reference,convention,module", [
    ("open_clip_siglip", "siglip", "open_clip", "open_clip"),
    ("lightly_dcl", "dcl", "lightly", "lightly"),
    ("pml_multi_similarity", "multi_similarity", "pytorch_metric_learning", "pytorch_metric_learning"),
    ("pml_pairwise_contrastive", "pairwise_contrastive", "pytorch_metric_learning",
     "pytorch_metric_learning"),
])
def test_verify_agrees_with_the_peer(adapter, reference, convention, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    from nce_ref.testing import conventions, verify

    report = verify(conventions.ADAPTERS[adapter], reference, convention=convention, cases="all",
                    dtype="float64")
    assert report.passed, str(report)
