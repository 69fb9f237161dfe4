"""nce_ref.testing.verify_sharded: sharded implementations on W gloo processes.

Each planted bug is a per-rank InfoNCE / CLIP loss written the way the popular
libraries write theirs (a gather with or without a backward, a local loss, a logit
scale's all_reduce), each with one realistic mistake; each must be caught and named.
The pools (one per W) start once per module; a rank that raises or hangs stops every
rank within the timeout.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: sharded verification untested")
dist = pytest.importorskip("torch.distributed", reason="torch.distributed is not available")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

from nce_ref.testing import VerifyError, verify_sharded  # noqa: E402
from nce_ref.testing._verify import sharded as vs  # noqa: E402
from nce_ref.testing.cases import Case  # noqa: E402
from nce_ref.testing.peers import gradient_gather  # noqa: E402

# multi-process: W gloo processes and JAX devices running users' sharded functions: ~60 s; the README's default run keeps the in-process
# tests (tests/test_sharded.py) and one real DDP step (tests/test_sharded_processes.py), CI runs these with -m slow
pytestmark = pytest.mark.slow

TIMEOUT = 30.0


@pytest.fixture(scope="module", autouse=True)
def _pools():
    yield
    vs.close_pools()


# ----------------------------------------------------------------------------------
# gathers: with a correct backward, and with the bugs of the anchors
# ----------------------------------------------------------------------------------

def _padded_gather(x):
    """All ranks' rows in rank order (unequal shards: padded to the largest)."""
    w = dist.get_world_size()
    n = torch.tensor([x.shape[0]])
    ns = [torch.zeros_like(n) for _ in range(w)]
    dist.all_gather(ns, n)
    ns = [int(v) for v in ns]
    c = max(ns)
    pad = torch.zeros((c,) + tuple(x.shape[1:]), dtype=x.dtype)
    pad[: x.shape[0]] = x.detach()
    out = [torch.zeros_like(pad) for _ in range(w)]
    dist.all_gather(out, pad)
    return torch.cat([o[:m] for o, m in zip(out, ns)]), ns


class _Gather(torch.autograd.Function):
    """mode: 'sum' (exact: all_reduce SUM then own slice), 'own' (no cross-rank sum:
    solo-learn), 'avg' (all_reduce then / W: DisCo-CLIP)."""

    @staticmethod
    def forward(ctx, x, mode):
        full, ns = _padded_gather(x)
        ctx.ns, ctx.mode = ns, mode
        return full

    @staticmethod
    def backward(ctx, g):
        r, w = dist.get_rank(), dist.get_world_size()
        g = g.contiguous()
        if ctx.mode != "own":
            dist.all_reduce(g)
            if ctx.mode == "avg":
                g = g / w
        lo = sum(ctx.ns[:r])
        return g[lo:lo + ctx.ns[r]], None


def _share(q, k, temperature, mode="sum", times_w=True):
    """One-way InfoNCE, this rank's share W L_r (own queries vs every rank's keys)."""
    r, w = dist.get_rank(), dist.get_world_size()
    keys = _Gather.apply(F.normalize(k, dim=1), mode)
    n_total = keys.shape[0]
    lo = sum(_padded_gather(q)[1][:r])
    logits = F.normalize(q, dim=1) @ keys.T / temperature
    labels = torch.arange(lo, lo + q.shape[0])
    part = F.cross_entropy(logits, labels, reduction="sum") / n_total
    return part * w if times_w else part


def good(q, k, *, temperature=0.1):
    return _share(q, k, temperature)


def no_cross_rank_sum(q, k, *, temperature=0.1):
    return _share(q, k, temperature, mode="own")


def averaged_backward(q, k, *, temperature=0.1):
    return _share(q, k, temperature, mode="avg")


def share_without_w(q, k, *, temperature=0.1):
    return _share(q, k, temperature, times_w=False)


def temperature_summed(q, k, *, temperature=0.1):
    # Inf-CL's GradientGather (the identity; backward all_reduces the gradient)
    t = gradient_gather().apply(temperature) if isinstance(temperature, torch.Tensor) else temperature
    return _share(q, k, t)


def clip_local_no_grad(image, text, *, temperature=0.07):
    """OpenCLIP local_loss=True, gather_with_grad=False: the gathered features are detached."""
    r = dist.get_rank()
    img, txt = F.normalize(image, dim=1), F.normalize(text, dim=1)
    all_img, ns = _padded_gather(img)
    all_txt, _ = _padded_gather(txt)
    lo = sum(ns[:r])
    labels = torch.arange(lo, lo + image.shape[0])
    li = img @ all_txt.T / temperature
    lt = txt @ all_img.T / temperature
    part = (F.cross_entropy(li, labels, reduction="sum") + F.cross_entropy(lt, labels, reduction="sum")) / 2
    return part * dist.get_world_size() / all_img.shape[0]


def clip_default(image, text, *, temperature=0.07):
    """OpenCLIP's defaults: gather without grad, own slice put back, the full N x N loss."""
    r = dist.get_rank()
    img, txt = F.normalize(image, dim=1), F.normalize(text, dim=1)
    all_img, ns = _padded_gather(img)
    all_txt, _ = _padded_gather(txt)
    lo = sum(ns[:r])
    all_img = torch.cat([all_img[:lo], img, all_img[lo + ns[r]:]])
    all_txt = torch.cat([all_txt[:lo], txt, all_txt[lo + ns[r]:]])
    logits = all_img @ all_txt.T / temperature
    labels = torch.arange(all_img.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def clip_exact(image, text, *, temperature=0.07):
    """CLIP share with a gather that has a correct backward (OpenCLIP local_loss + gather_with_grad)."""
    r = dist.get_rank()
    img, txt = F.normalize(image, dim=1), F.normalize(text, dim=1)
    all_img = _Gather.apply(img, "sum")
    all_txt = _Gather.apply(txt, "sum")
    lo = sum(_padded_gather(img)[1][:r])
    labels = torch.arange(lo, lo + image.shape[0])
    li = img @ all_txt.T / temperature
    lt = txt @ all_img.T / temperature
    part = (F.cross_entropy(li, labels, reduction="sum") + F.cross_entropy(lt, labels, reduction="sum")) / 2
    return part * dist.get_world_size() / all_img.shape[0]


def rank1_raises(q, k, *, temperature=0.1):
    if dist.get_rank() == 1:
        raise ValueError("rank 1 is broken")
    return good(q, k, temperature=temperature)


def rank1_hangs(q, k, *, temperature=0.1):
    if dist.get_rank() == 1:
        time.sleep(3600)
    return good(q, k, temperature=temperature)


def _cases(w):
    rng = np.random.default_rng(w)
    n = 4 * w + 2
    a, b = rng.standard_normal((n, 5)), rng.standard_normal((n, 5))
    return [Case("random", (a, b), {"temperature": 0.2}),
            Case("temperature 0.01", (a, b), {"temperature": 0.01})]


def _v(fn, w, **kw):
    kw.setdefault("cases", _cases(w))
    kw.setdefault("dtype", "float64")
    return verify_sharded(fn, "info_nce", world_size=w, timeout=TIMEOUT, **kw)


def _diag(report) -> str:
    return "\n".join(report.diagnosis)


@pytest.mark.parametrize("w", [2, 3])
class TestPlantedShardedBugs:
    def test_exact_gather_passes(self, w):
        r = _v(good, w)
        assert r.passed, str(r)
        assert any("value convention read from the ranks' values: share" in n for n in r.notes)
        assert {x.options["shards"][0] for x in r.ran} == {1}  # unequal shards

    def test_cross_rank_sum_missing(self, w):
        r = _v(no_cross_rank_sum, w)
        assert not r.passed
        assert "cross-rank gradient sum is missing" in _diag(r), str(r)
        assert all(x.grads["query"]["ok"] for x in r.ran)  # queries are local: right

    def test_gradient_off_by_1_over_w(self, w):
        r = _v(averaged_backward, w)
        assert "`key`: the gradient is 1/W times the reference" in _diag(r), str(r)

    def test_column_terms_lost(self, w):
        r = _v(clip_local_no_grad, w, convention="open_clip")
        assert "column terms lost" in _diag(r), str(r)

    def test_collective_autograd_does_not_see(self, w):
        r = _v(clip_default, w, convention="open_clip")
        assert any("value convention read from the ranks' values: global" in n for n in r.notes)
        assert "cross-rank gradient sum is missing" in _diag(r), str(r)
        assert "autograd does not see" in _diag(r)

    def test_loss_value_off_by_w(self, w):
        r = _v(share_without_w, w)
        assert "the loss value is off by 1/W" in r.failures[0].message, str(r)

    def test_temperature_gradient_off_by_w(self, w):
        r = _v(temperature_summed, w)
        assert all(x.grads["query"]["ok"] and x.grads["key"]["ok"] for x in r.ran)
        assert "`temperature`: the replicas' mean gradient is W times" in _diag(r), str(r)


def test_exact_clip_passes():
    r = _v(clip_exact, 2, convention="open_clip")
    assert r.passed, str(r)


def test_a_rank_that_raises_stops_every_rank():
    t0 = time.monotonic()
    with pytest.raises(VerifyError, match="rank 1 raised ValueError: rank 1 is broken"):
        verify_sharded(rank1_raises, "info_nce", world_size=2, timeout=6, cases=_cases(2)[:1],
                       dtype="float64")
    assert time.monotonic() - t0 < 30


def test_a_rank_that_hangs_is_stopped():
    t0 = time.monotonic()
    with pytest.raises(VerifyError, match=r"did not finish within 6 s .*every rank was stopped"):
        verify_sharded(rank1_hangs, "info_nce", world_size=2, timeout=6, cases=_cases(2)[:1],
                       dtype="float64")
    assert time.monotonic() - t0 < 30


def test_cli_world_size(capsys):
    from nce_ref.cli import main

    rc = main(["verify", "tests.test_verify_sharded:no_cross_rank_sum", "--as", "info_nce",
               "--world-size", "2", "--dtype", "float64", "--timeout", str(TIMEOUT)])
    out = capsys.readouterr().out
    assert rc == 1 and "cross-rank gradient sum is missing" in out
    rc = main(["verify", "tests.test_verify_sharded:rank1_raises", "--as", "info_nce",
               "--world-size", "2", "--dtype", "float64", "--timeout", "6"])
    err = capsys.readouterr().err
    assert rc == 2 and "rank 1 raised" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------
# the installed peers (equal shards: each assumes them), as recorded in docs/findings.md
# ----------------------------------------------------------------------------------

def _peer(module):
    from nce_ref.testing.peers import peer_unavailable

    why = peer_unavailable(module)
    if why is not None:
        pytest.skip(why)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("adapter, ref, conv, module, verdict, phrase", [
    ("open_clip_sharded_local_grad", "info_nce", "open_clip", "open_clip", "agrees", ""),
    ("open_clip_sharded_local", "info_nce", "open_clip", "open_clip", "disagrees",
     "column terms lost"),
    ("open_clip_sharded_default", "info_nce", "open_clip", "open_clip", "disagrees",
     "cross-rank gradient sum is missing"),
    ("lightly_nt_xent_sharded", "nt_xent", "lightly", "lightly.loss", "agrees", ""),
    ("pml_nt_xent_sharded", "nt_xent", "pytorch_metric_learning", "pytorch_metric_learning",
     "disagrees", "exactly the single-device gradient of the loss"),
])
def test_peers(adapter, ref, conv, module, verdict, phrase):
    _peer(module)
    from nce_ref.testing import peers

    r = verify_sharded(getattr(peers, adapter), ref, world_size=2, convention=conv,
                       equal_shards=True, dtype="float64", timeout=TIMEOUT)
    assert r.verdict == verdict, str(r)
    assert phrase in _diag(r), str(r)


# ----------------------------------------------------------------------------------
# engine="jax": W simulated host devices under jax.shard_map (equal shards)
# ----------------------------------------------------------------------------------

def _jax_share(q, k, temperature, axis_name, stop_keys=False):
    import jax
    import jax.numpy as jnp

    qn = q / jnp.maximum(jnp.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    kn = k / jnp.maximum(jnp.linalg.norm(k, axis=1, keepdims=True), 1e-12)
    keys = jax.lax.all_gather(kn, axis_name, tiled=True)
    if stop_keys:
        keys = jax.lax.stop_gradient(keys)
    n = q.shape[0]
    w = jax.lax.psum(1, axis_name)
    labels = jax.lax.axis_index(axis_name) * n + jnp.arange(n)
    logits = qn @ keys.T / temperature
    lse = jax.scipy.special.logsumexp(logits, axis=1)
    pos = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return w * jnp.sum(lse - pos) / (n * w)


def jax_good(q, k, *, temperature=0.1, axis_name):
    return _jax_share(q, k, temperature, axis_name)


def jax_keys_stopped(q, k, *, temperature=0.1, axis_name):
    return _jax_share(q, k, temperature, axis_name, stop_keys=True)


@pytest.mark.parametrize("fn, verdict, phrase", [
    (jax_good, "agrees", ""),
    (jax_keys_stopped, "disagrees", "column terms lost"),
])
def test_jax_engine(fn, verdict, phrase):
    pytest.importorskip("jax", reason="JAX is not installed")
    r = verify_sharded(fn, "info_nce", world_size=3, engine="jax", dtype="float64",
                       cases=[Case("equal", tuple(np.random.default_rng(5).standard_normal((2, 9, 4))),
                                   {"temperature": 0.3}),
                              ],
                       timeout=TIMEOUT)
    assert r.verdict == verdict, str(r)
    assert phrase in _diag(r), str(r)
    assert any("simulated JAX devices" in n for n in r.notes)
