"""nce_ref.testing.verify: correct implementations pass, planted bugs are caught and explained.

Each planted bug is a small, realistic mistake written out below (a ``log(p + eps)``
cap, a wrong or missing temperature gradient, the row max taken over entries the
mask excludes, a missing symmetric half, a wrong reduction); each must fail with a
message that names it.  The installed peers (info-nce-pytorch, a plain torch CLIP
loss, pytorch-metric-learning, optax) are verified under their conventions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import nce_ref
from nce_ref.testing import CaseResult, VerifyError, VerifyReport, verify
from nce_ref.testing import conventions as conv
from nce_ref.testing.cases import Case


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed: torch implementations untested")


def _jax():
    jax = pytest.importorskip("jax", reason="JAX is not installed: JAX implementations untested")
    jax.config.update("jax_enable_x64", True)
    return jax


def _failed(report: VerifyReport, label: str) -> CaseResult:
    hits = [r for r in report.failures if r.label == label]
    assert hits, f"case {label!r} did not fail:\n{report}"
    return hits[0]


# ----------------------------------------------------------------------------------
# NumPy implementations (no optional dependency)
# ----------------------------------------------------------------------------------

def np_info_nce(q, k, *, temperature=0.1, reduction="mean"):
    """InfoNCE with the N - 1 other keys as negatives, written from the formula."""
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    k = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
    z = q @ k.T / temperature
    m = z.max(axis=1, keepdims=True)
    per = m[:, 0] + np.log(np.exp(z - m).sum(axis=1)) - np.diag(z)
    return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]


def np_info_nce_summed(q, k, *, temperature=0.1):
    """Planted bug: sums the per-query terms where the reference takes the mean."""
    return np_info_nce(q, k, temperature=temperature, reduction="sum")


def np_info_nce_tau_007(q, k):
    """A copy with the temperature fixed at 0.07 (no parameter)."""
    return np_info_nce(q, k, temperature=0.07)


class TestNumPy:
    def test_correct_implementation_passes(self):
        r = verify(np_info_nce, nce_ref.info_nce, framework="numpy", cases="all")
        assert r.passed, str(r)
        ran = r.ran
        assert {x.dtype for x in ran} == {"float64", "float32"}
        assert any(x.label == "positive probability below tiny" for x in ran)
        worst = max(x.value_rel_err for x in ran if x.dtype == "float64")
        assert worst < 1e-13
        assert not any(x.grads for x in ran)  # NumPy does not differentiate
        # options the implementation does not take make their cases not applicable
        na = [x for x in r.results if x.status == "n/a"]
        assert any("`similarity`" in x.message for x in na)
        assert any("positional" in x.message for x in na)  # explicit negatives

    def test_wrong_reduction_is_named(self):
        r = verify(np_info_nce_summed, "info_nce", framework="numpy")
        assert not r.passed
        assert all(x.status == "fail" for x in r.ran)
        assert any("reduction='sum'" in d and "follows" in d for d in r.diagnosis), r.diagnosis

    def test_temperature_convention(self):
        # without a convention, the fixed 0.07 disagrees with nce_ref's default 0.1 ...
        r = verify(np_info_nce_tau_007, "info_nce", framework="numpy", dtype="float64")
        assert not r.passed
        assert any("temperature=0.07" in d for d in r.diagnosis), r.diagnosis
        assert any("takes no `temperature`" in n for n in r.notes)
        # ... and agrees under a convention whose temperature is 0.07
        r = verify(np_info_nce_tau_007, "info_nce", convention="pytorch_metric_learning",
                   framework="numpy", dtype="float64")
        assert r.passed, str(r)

    def test_scaled_convention(self):
        def simclr_like(z1, z2, *, temperature=0.1):  # sum of the two views' means
            u = np.concatenate([z1, z2])
            u = u / np.linalg.norm(u, axis=1, keepdims=True)
            z = u @ u.T / temperature
            n = len(z1)
            np.fill_diagonal(z, -np.inf)
            lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
            pos = z[np.arange(2 * n), (np.arange(2 * n) + n) % (2 * n)]
            per = lse - pos
            return per[:n].mean() + per[n:].mean()

        assert verify(simclr_like, "nt_xent", convention="simclr", framework="numpy").passed
        r = verify(simclr_like, "nt_xent", framework="numpy", dtype="float64")
        assert not r.passed

    def test_report_table_and_json(self):
        r = verify(np_info_nce_summed, "info_nce", framework="numpy", dtype="float32")
        text = str(r)
        assert "DISAGREES" in text and "FAIL random cosine [float32]" in text
        for x in r.ran:
            assert x.label in text
        d = json.loads(r.to_json())
        assert d["passed"] is False and d["reference"] == "info_nce"
        assert d["counts"]["fail"] == len(r.failures)
        assert {"label", "dtype", "value_abs_err", "value_rel_err", "value_ulps", "status",
                "exception", "inputs"} <= set(d["results"][0])
        with pytest.raises(AssertionError, match="DISAGREES"):
            r.assert_passed()

    def test_custom_cases_and_ulps(self):
        rng = np.random.default_rng(1)
        q, k = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))

        def off_by_a_bit(q, k, *, temperature=0.1):
            return np_info_nce(q, k, temperature=temperature) * (1 + 1e-6)

        cases = [Case("mine", (q, k), {"temperature": 0.5})]
        r = verify(off_by_a_bit, "info_nce", framework="numpy", cases=cases, dtype="float64")
        (res,) = r.results
        assert res.status == "fail" and r.cases == "custom"
        assert res.value_rel_err == pytest.approx(1e-6, rel=1e-3)
        assert res.value_ulps > 1e9
        # float64's tolerance is 4 sqrt(eps) = 6e-8 relative: 1e-9 passes
        cases_ok = verify(lambda q, k, *, temperature=0.1: np_info_nce(q, k, temperature=temperature)
                          * (1 + 1e-9), "info_nce", framework="numpy", cases=cases, dtype="float64")
        assert cases_ok.passed

    def test_input_mutation_is_reported(self):
        def normalises_in_place(q, k, *, temperature=0.1):
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            return np_info_nce(q, k, temperature=temperature)

        r = verify(normalises_in_place, "info_nce", framework="numpy", dtype="float64")
        assert not r.passed
        assert "modified its input(s) query in place" in r.failures[0].message

    def test_not_implemented_means_not_applicable(self):
        def no_temperature_above_one(q, k, *, temperature=0.1):
            if temperature > 1:
                raise NotImplementedError("temperatures above 1 are not supported")
            return np_info_nce(q, k, temperature=temperature)

        r = verify(no_temperature_above_one, "info_nce", framework="numpy", cases="edge")
        assert r.passed
        na = [x for x in r.results if x.label == "temperature 1e4"]
        assert na and na[0].status == "n/a" and "not supported" in na[0].message


class TestBadInput:
    def test_not_callable(self):
        with pytest.raises(TypeError, match="`impl` must be callable"):
            verify(3, "info_nce")

    @pytest.mark.parametrize("kwargs, match", [
        ({"convention": "nope"}, "unknown convention 'nope'"),
        ({"convention": "optax"}, "no mapping for nce_ref.info_nce"),
        ({"framework": "tensorflow"}, "`framework` must be one of"),
        ({"dtype": "float16"}, "`dtype` must be"),
        ({"cases": "most"}, "`cases` must be"),
    ])
    def test_bad_options(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            verify(np_info_nce, "info_nce", **({"framework": "numpy"} | kwargs))

    def test_unknown_reference(self):
        with pytest.raises(ValueError, match="unknown function 'infonce'"):
            verify(np_info_nce, "infonce")

    def test_raises_on_every_case(self):
        def broken(q, k, *, temperature=0.1):
            raise KeyError("boom")

        with pytest.raises(VerifyError, match=r"raised on every case .*KeyError: 'boom'") as ei:
            verify(broken, "info_nce", framework="numpy")
        assert len(str(ei.value).splitlines()) == 1
        assert ei.value.report is not None and ei.value.report.failures

    def test_non_array(self):
        def returns_float(q, k, *, temperature=0.1):
            return float(np_info_nce(q, k, temperature=temperature))

        with pytest.raises(VerifyError, match="returned a builtins.float .*not a NumPy array"):
            verify(returns_float, "info_nce", framework="numpy")

    def test_wrong_shape_every_time(self):
        def per_row(q, k, *, temperature=0.1):
            return np_info_nce(q, k, temperature=temperature, reduction="none")

        with pytest.raises(VerifyError, match=r"wrong shape on every case; first: returned shape \(6,\)"):
            verify(per_row, "info_nce", framework="numpy")

    def test_no_case_applies(self):
        with pytest.raises(VerifyError, match="no case applies"):
            verify(lambda x: x, "info_nce", framework="numpy")


# ----------------------------------------------------------------------------------
# torch: planted bugs
# ----------------------------------------------------------------------------------

def torch_info_nce(q, k, *, temperature=0.1, reduction="mean"):
    """A correct plain-torch InfoNCE (N - 1 negatives)."""
    import torch
    import torch.nn.functional as F

    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(q)), reduction=reduction)


def capped(q, k, *, temperature=0.1):
    """Planted bug: -log(p + 1e-8), a capped loss with a vanishing gradient."""
    import torch
    import torch.nn.functional as F

    p = torch.softmax(F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / temperature, dim=1)
    return -torch.log(torch.diagonal(p) + 1e-8).mean()


def detached_temperature(q, k, *, temperature=0.1):
    """Planted bug: the temperature is detached, so it never learns."""
    import torch

    t = temperature.detach() if isinstance(temperature, torch.Tensor) else temperature
    return torch_info_nce(q, k, temperature=t)


def flipped_temperature_gradient(q, k, *, temperature=0.1):
    """Planted bug: 1/τ written as 2/τ_detached - 1/τ: right value, opposite τ gradient."""
    import torch
    import torch.nn.functional as F

    inv = 2.0 / temperature.detach() - 1.0 / temperature
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T * inv
    return F.cross_entropy(logits, torch.arange(len(q)))


def nt_xent_wrong_max(z1, z2, *, temperature=0.5):
    """Planted bug: the row max includes the self-similarity that the mask then drops."""
    import torch
    import torch.nn.functional as F

    n = len(z1)
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    z = u @ u.T / temperature
    m = z.max(dim=1, keepdim=True).values.detach()  # includes z_aa = 1/τ
    e = torch.exp(z - m).masked_fill(torch.eye(2 * n, dtype=torch.bool), 0.0)
    lse = m[:, 0] + torch.log(e.sum(dim=1))
    idx = torch.arange(2 * n)
    return (lse - z[idx, (idx + n) % (2 * n)]).mean()


def clip_one_way(image, text, *, temperature=0.07):
    """Planted bug: CLIP's loss without the text -> image half."""
    import torch
    import torch.nn.functional as F

    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(image)))


def torch_summed(q, k, *, temperature=0.1):
    """Planted bug: a sum over queries where the mean is meant."""
    return torch_info_nce(q, k, temperature=temperature, reduction="sum")


class TestTorchPlantedBugs:
    def test_log_p_plus_eps_cap(self):
        _torch()
        r = verify(capped, "info_nce", cases="edge")
        res = _failed(r, "positive probability below tiny")
        assert "capped at -log(1e-8)" in res.message
        assert "gradient of `query`" in res.message
        # on well-conditioned cases the cap costs < 1e-7 relative: float32 cannot see it
        assert all(x.status == "pass" for x in r.ran if x.dtype == "float32"
                   and x.label == "duplicate embeddings")

    def test_detached_temperature(self):
        _torch()
        r = verify(detached_temperature, "info_nce")
        assert not r.passed
        for res in r.failures:
            assert res.value_rel_err < 1e-6  # the value is right
            assert "gradient of `temperature`" in res.message
            assert "not connected to the output" in res.message
            assert not res.grads["temperature"]["ok"] and res.grads["query"]["ok"]
        assert any("values agree but the gradient of `temperature`" in d for d in r.diagnosis)

    def test_wrong_temperature_gradient(self):
        _torch()
        r = verify(flipped_temperature_gradient, "info_nce", dtype="float64")
        assert not r.passed
        msg = r.failures[0].message
        assert "gradient of `temperature`" in msg and "factor -1" in msg
        assert "gradient of `query`" not in msg

    def test_row_max_over_excluded_entries(self):
        _torch()
        r = verify(nt_xent_wrong_max, "nt_xent", cases="edge", dtype="float64")
        res = _failed(r, "temperature 1e-4")
        assert "inf where the reference is finite" in res.message
        assert "row max taken over entries the mask excludes" in res.message
        assert all(x.status == "pass" for x in r.ran if x.label != "temperature 1e-4")

    def test_missing_symmetric_half(self):
        _torch()
        r = verify(clip_one_way, "info_nce", convention="open_clip")
        assert not r.passed
        assert any("symmetric=False" in d and "follows" in d and "open_clip" in d
                   for d in r.diagnosis), r.diagnosis

    def test_wrong_reduction(self):
        _torch()
        r = verify(torch_summed, "info_nce", dtype="float64")
        assert any("reduction='sum'" in d for d in r.diagnosis), r.diagnosis
        # the gradients are N times too large
        assert "factor 6" in r.failures[0].message


# ----------------------------------------------------------------------------------
# torch: correct implementations and the installed peers, under their conventions
# ----------------------------------------------------------------------------------

class TestTorchCorrect:
    def test_plain_torch_infonce(self):
        _torch()
        r = verify(torch_info_nce, "info_nce", cases="all")
        assert r.passed, str(r)
        assert r.framework == "torch" and "detected" in r.notes[0]
        grads = [x.grads for x in r.ran if x.label == "random cosine" and x.dtype == "float64"][0]
        assert set(grads) == {"query", "key", "temperature"}
        assert max(g["rel_err"] for g in grads.values()) < 1e-12

    def test_info_nce_pytorch(self):
        _torch()
        peer = pytest.importorskip("info_nce", reason="info-nce-pytorch is not installed")
        r = verify(peer.info_nce, "info_nce", convention="info_nce_pytorch", cases="all")
        assert r.passed, str(r)
        labels = {x.label for x in r.ran}
        assert {"paired negatives", "unpaired negatives", "positive probability below tiny",
                "zero vectors under cosine", "reduction none"} <= labels
        negs = [x for x in r.ran if x.label == "paired negatives" and x.dtype == "float64"][0]
        assert set(negs.grads) == {"query", "key", "negatives", "temperature"}

    def test_info_nce_pytorch_module(self):
        _torch()
        peer = pytest.importorskip("info_nce", reason="info-nce-pytorch is not installed")
        r = verify(peer.InfoNCE(), "info_nce", convention="info_nce_pytorch", dtype="float64")
        assert r.passed, str(r)
        assert any("takes no `temperature`" in n for n in r.notes)

    def test_plain_torch_clip(self):
        _torch()
        r = verify(conv.torch_clip, "info_nce", convention="open_clip", cases="all")
        assert r.passed, str(r)
        assert any(x.label == "symmetric (CLIP)" for x in r.ran)

    def test_the_torch_bridge_itself(self):
        _torch()
        from nce_ref.interop.torch import function

        r = verify(function(nce_ref.nt_xent), "nt_xent", framework="torch", cases="all")
        assert r.passed, str(r)
        assert not [x for x in r.results if x.status == "n/a"]  # it takes every option
        assert all(x.value_rel_err < 1e-15 for x in r.ran if x.dtype == "float64")

    def test_temperature_tensor_rejected_falls_back_to_float(self):
        torch = _torch()

        def float_only(q, k, *, temperature=0.1):
            if isinstance(temperature, torch.Tensor):
                raise TypeError("temperature must be a float")
            return torch_info_nce(q, k, temperature=temperature)

        r = verify(float_only, "info_nce", dtype="float64")
        assert r.passed
        assert all("temperature" not in x.grads and "query" in x.grads for x in r.ran)
        assert any("passed as a Python float" in n for x in r.ran for n in x.notes)

    def test_pml_cap_is_found(self):
        _torch()
        pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed")
        r = verify(conv.pml_info_nce, "info_nce", convention="pytorch_metric_learning", cases="edge")
        res = _failed(r, "positive probability below tiny")
        assert "capped at -log(finfo(float64).tiny)" in res.message or res.dtype == "float32"
        assert "gradient is 0" in res.message or res.dtype == "float32"


# ----------------------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------------------

def jax_info_nce(q, k, *, temperature=0.1):
    import jax
    import jax.numpy as jnp

    qn = q / jnp.linalg.norm(q, axis=1, keepdims=True)
    kn = k / jnp.linalg.norm(k, axis=1, keepdims=True)
    z = qn @ kn.T / temperature
    return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.diag(z))


def jax_stopped_temperature(q, k, *, temperature=0.1):
    import jax

    return jax_info_nce(q, k, temperature=jax.lax.stop_gradient(temperature))


class TestJax:
    def test_correct_passes_with_gradients(self):
        _jax()
        r = verify(jax_info_nce, "info_nce")
        assert r.framework == "jax" and r.passed, str(r)
        g = [x.grads for x in r.ran if x.dtype == "float64"][0]
        assert set(g) == {"query", "key", "temperature"}
        assert max(v["rel_err"] for v in g.values()) < 1e-12

    def test_stop_gradient_on_temperature_is_caught(self):
        _jax()
        r = verify(jax_stopped_temperature, "info_nce", dtype="float64")
        assert not r.passed
        assert "gradient of `temperature`" in r.failures[0].message
        assert "gradient is 0" in r.failures[0].message

    def test_optax_ntxent(self):
        _jax()
        pytest.importorskip("optax", reason="optax is not installed")
        r = verify(conv.optax_nt_xent, "nt_xent", convention="optax", dtype="float64")
        assert r.passed, str(r)


# ----------------------------------------------------------------------------------
# conventions
# ----------------------------------------------------------------------------------

class TestConventions:
    def test_issue_names_are_known(self):
        names = conv.names()
        for n in ("info_nce_pytorch", "lightly", "pytorch_metric_learning", "optax", "open_clip"):
            assert n in names

    def test_every_convention_resolves(self):
        from nce_ref.autodiff import registry

        reg = registry()
        for c in conv.CONVENTIONS:
            if c.reference not in reg:
                continue
            opts = c.options_for("float32")
            params = reg[c.reference].signature.parameters
            assert set(opts) <= set(params), c
            assert conv.get(c.name, c.reference) is c
            assert c.framework in (None, "torch", "jax", "numpy")

    def test_optax_norm_floor_depends_on_dtype(self):
        c = conv.get("optax", "nt_xent")
        assert c.options_for("float64")["eps"] == pytest.approx(2.0 ** -26)
        assert c.options_for("float32")["eps"] == pytest.approx(2.0 ** -11.5)
        assert "sqrt(finfo(dtype).eps)" in c.describe()

    def test_variants_name_real_options(self):
        from nce_ref.autodiff import registry

        reg = registry()
        for ref, variants in conv.VARIANTS.items():
            if ref not in reg:
                continue
            for v in variants:
                target = reg[v.reference or ref]
                assert set(v.options) <= set(target.signature.parameters), (ref, v)


class TestSupConTriplet:
    """The conventions of supcon and triplet, where those losses are registered."""

    def test_supcontrast_transcription(self):
        _torch()
        pytest.importorskip("nce_ref.losses.supcon", reason="supcon is not available")
        r = verify(conv.supcontrast_supcon, "supcon", convention="supcontrast", cases="all",
                   dtype="float64")
        assert not r.passed
        res = _failed(r, "positive probability below tiny")
        assert "NaN where the reference is finite" in res.message
        assert all(x.status == "pass" for x in r.ran if x.kind == "standard"), str(r)

    def test_pml_supcon(self):
        _torch()
        pytest.importorskip("nce_ref.losses.supcon", reason="supcon is not available")
        pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed")
        r = verify(conv.pml_supcon, "supcon", convention="pytorch_metric_learning", dtype="float64")
        assert r.passed, str(r)
        assert any("multi-label" in x.message for x in r.results if x.status == "n/a")

    def test_torch_triplet(self):
        torch = _torch()
        pytest.importorskip("nce_ref.losses.triplet", reason="triplet is not available")
        r = verify(torch.nn.functional.triplet_margin_loss, "triplet", convention="torch",
                   dtype="float32")
        assert r.passed, str(r)  # torch's eps=1e-6 inside the norm is below float32's tolerance
        assert any("reduction='mean_nonzero'" in x.message for x in r.results if x.status == "n/a")


# ----------------------------------------------------------------------------------
# issue 13, section 2: what a new user hit
# ----------------------------------------------------------------------------------

def np_nt_xent_no_floor(z1, z2, *, temperature=0.5):
    """Planted bug: z / ||z|| without a floor (NaN on a zero row)."""
    u = np.concatenate([z1, z2])
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    z = u @ u.T / temperature
    n = len(z1)
    np.fill_diagonal(z, -np.inf)
    m = z.max(1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(1)) + m[:, 0]
    return np.mean(lse - z[np.arange(2 * n), (np.arange(2 * n) + n) % (2 * n)])


def np_supcon_flat(features, labels=None, *, temperature=0.1):
    """A SupCon that takes (N, D) rows only: raises on nce_ref's (N, V, D) layout."""
    if features.ndim != 2:
        raise ValueError(f"expected (N, D) features, got shape {features.shape}")
    import nce_ref as _n

    return np.asarray(_n.supcon(features, labels, temperature=temperature))


def torch_missing_inv_tau(q, k, *, temperature=0.1):
    """Planted bug: a custom backward that forgets the 1/τ of the logits' gradient."""
    import torch
    import torch.nn.functional as tF

    t = float(temperature.detach()) if isinstance(temperature, torch.Tensor) else float(temperature)

    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k):
            qn, kn = tF.normalize(q, dim=1), tF.normalize(k, dim=1)
            ctx.save_for_backward(q, k)
            z = qn @ kn.T / t
            return (torch.logsumexp(z, 1) - z.diagonal()).mean()

        @staticmethod
        def backward(ctx, g):
            q, k = ctx.saved_tensors
            with torch.enable_grad():
                q2, k2 = q.detach().requires_grad_(), k.detach().requires_grad_()
                z = tF.normalize(q2, dim=1) @ tF.normalize(k2, dim=1).T
                p = torch.softmax(z / t, 1)
                dz = (p - torch.eye(len(q), dtype=q.dtype)) / len(q)  # the bug: no / t
                gq, gk = torch.autograd.grad(z, (q2, k2), grad_outputs=dz)
            return g * gq, g * gk

    return F.apply(q, k)


class TestNewUser:
    def test_nt_xent_zero_vector_without_floor_is_caught(self):
        r = verify(np_nt_xent_no_floor, "nt_xent", framework="numpy", cases="edge", dtype="float64")
        res = _failed(r, "zero vectors under cosine")
        assert "NaN where the reference is finite" in res.message
        labels = {x.label for x in r.ran}
        assert {"positive probability below tiny", "duplicate embeddings"} <= labels

    def test_every_function_with_a_temperature_has_the_edge_cases(self):
        from nce_ref.testing.cases import cases_for

        for name in ("info_nce", "nt_xent", "supcon"):
            labels = {c.label for c in cases_for(name, which="edge")}
            assert "zero vectors under cosine" in labels, name
            assert "positive probability below tiny" in labels, name
            assert "duplicate embeddings" in labels, name

    def test_every_case_raising_points_at_the_layout_and_adapters(self):
        def flat_only(features, labels=None, *, temperature=0.1):
            raise ValueError("operands could not be broadcast together")

        with pytest.raises(VerifyError) as ei:
            verify(flat_only, "supcon", framework="numpy")
        msg = str(ei.value)
        assert "layout probably differs" in msg and "(N, V, D), view-major" in msg
        assert "pml_supcon" in msg and len(msg.splitlines()) == 1

    def test_some_cases_raising_could_not_run_not_disagrees(self):
        r = verify(np_supcon_flat, "supcon", framework="numpy", dtype="float64")
        assert r.verdict == "could not run" and r.exit_code == 2 and not r.passed
        assert "COULD NOT RUN" in r.summary()
        assert not [x for x in r.results if x.status == "fail"]
        d = [x for x in r.diagnosis if "could not run" in x]
        assert d and "whose `features` is 3-d" in d[0] and "layout probably differs" in d[0]

    def test_tau_alias_runs_the_extreme_temperatures(self):
        def with_tau(q, k, *, tau=0.1):
            return np_info_nce(q, k, temperature=tau)

        r = verify(with_tau, "info_nce", framework="numpy", cases="edge", dtype="float64")
        assert r.passed, str(r)
        assert any("`tau` = temperature" in n for n in r.notes)
        assert "temperature 1e-4" in {x.label for x in r.ran}

    def test_logit_scale_alias_compares_its_gradient(self):
        torch = _torch()
        import torch.nn.functional as F

        def clip_scale(image, text, *, logit_scale):
            logits = logit_scale * F.normalize(image, dim=1) @ F.normalize(text, dim=1).T
            labels = torch.arange(len(image))
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

        r = verify(clip_scale, "info_nce", convention="open_clip", cases="all", dtype="float64")
        assert r.passed, str(r)
        assert any("`logit_scale` = 1/temperature" in n for n in r.notes)
        row = [x for x in r.ran if x.label == "temperature 1e-4"][0]
        assert "temperature" in row.grads and row.grads["temperature"]["ok"]

    def test_param_mapping_and_its_errors(self):
        def with_beta(q, k, *, beta=0.1):
            return np_info_nce(q, k, temperature=beta)

        r = verify(with_beta, "info_nce", framework="numpy", cases="edge", dtype="float64",
                   params={"temperature": "beta"})
        assert r.passed and "temperature 1e4" in {x.label for x in r.ran}
        with pytest.raises(ValueError, match="takes no parameter 'gamma'"):
            verify(with_beta, "info_nce", framework="numpy", params={"temperature": "gamma"})

    def test_fixed_temperature_lists_the_cases_not_tested(self):
        r = verify(np_info_nce_tau_007, "info_nce", framework="numpy", cases="edge",
                   convention="pytorch_metric_learning", dtype="float64")
        na = {x.label: x.message for x in r.results if x.status == "n/a"}
        assert "temperature 1e4" in na and "not tested" in na["temperature 1e4"]
        note = [n for n in r.notes if n.startswith("not tested at their own `temperature`")]
        assert note and "temperature 1e-4 (ran at temperature=0.07)" in note[0]
        assert "temperature 1e4 (not run" in note[0]
        assert "temperature 1e4" in r.table(show_na=True) and "temperature 1e4" not in r.table()

    def test_accepting_a_named_deviation(self):
        _torch()
        pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed")
        r = verify(conv.pml_nt_xent, "nt_xent", convention="pytorch_metric_learning", cases="all",
                   dtype="float64", accept=["capped"])
        assert r.passed and r.exit_code == 0, str(r)
        assert r.accepted and all(x.accepted == "capped" for x in r.accepted)
        assert "ACCEPTED (capped) temperature 1e-4" in str(r)
        # anything else still fails
        r = verify(capped, "info_nce", cases="edge", dtype="float64", accept="nan")
        assert not r.passed and r.exit_code == 1
        assert any("'nan' matched no failing case" in n for n in r.notes)

    def test_missing_inverse_temperature_in_the_backward(self):
        _torch()
        r = verify(torch_missing_inv_tau, "info_nce", cases="all", dtype="float64")
        assert not r.passed
        assert any("missing 1/τ in the backward" in d for d in r.diagnosis), r.diagnosis

    def test_case_column_is_cut_at_a_word(self):
        from nce_ref.testing._verify.report import cut

        text = ("streamed, 2-row memory budget, per_pair, multi-label (6x2x3, 6x3; "
                "temperature=0.001, positives='per_pair')")
        out = cut(text, 64)
        assert len(out) <= 64 and out.endswith("…")
        assert "temperature=0.0…" not in out and not out[:-1].endswith("0.0")

    def test_custom_case_constructor(self):
        rng = np.random.default_rng(3)
        case = Case("my batch", (rng.standard_normal((4, 3)), rng.standard_normal((4, 3))),
                    {"temperature": 0.05}, kind="edge")
        r = verify(np_info_nce, "info_nce", framework="numpy", cases=[case])
        assert r.passed and r.cases == "custom" and r.results[0].kind == "edge"

    def test_misspelt_reference_suggests(self):
        with pytest.raises(ValueError, match="did you mean 'nt_xent'"):
            verify(np_info_nce, "ntxent", framework="numpy")

    def test_wrong_framework_is_named(self):
        _torch()
        _jax()
        with pytest.raises(VerifyError, match="framework is probably wrong.*looks like torch"):
            verify(torch_info_nce, "info_nce", framework="jax")

    def test_lightly_info_nce_says_memory_bank(self):
        r = verify(np_info_nce, "info_nce", convention="lightly", framework="numpy", dtype="float64")
        assert any("memory-bank" in n and "--as nt_xent" in n for n in r.notes)


class TestInstalledPeers:
    """lightly and open_clip, imported through nce_ref.testing.peers (torchvision's CUDA
    wheel beside the CPU torch)."""

    @pytest.mark.parametrize("module", ["lightly.loss", "open_clip"])
    def test_imports(self, module):
        _torch()
        from nce_ref.testing.peers import import_peer, peer_unavailable

        why = peer_unavailable(module)
        if why is not None:
            pytest.skip(why)
        assert import_peer(module) is not None

    @pytest.mark.parametrize("adapter, ref, name", [
        ("open_clip_clip", "info_nce", "open_clip"),
        ("lightly_nt_xent", "nt_xent", "lightly"),
        ("lightly_info_nce", "info_nce", "lightly"),
        ("open_clip_siglip", "siglip", "open_clip"),
        ("lightly_dcl", "dcl", "lightly"),
        ("pml_multi_similarity", "multi_similarity", "pytorch_metric_learning"),
        ("pml_pairwise_contrastive", "pairwise_contrastive", "pytorch_metric_learning"),
    ])
    def test_agree_under_their_convention(self, adapter, ref, name):
        """Every case of the function, float64, values and gradients: `nce-ref verify
        nce_ref.testing.conventions:<adapter> --as <ref> --convention <name> --cases all`."""
        _torch()
        from nce_ref.testing.peers import peer_unavailable

        module = {"open_clip": "open_clip", "lightly": "lightly.loss"}.get(name, "pytorch_metric_learning")
        why = peer_unavailable(module)
        if why is not None:
            pytest.skip(why)
        r = verify(getattr(conv, adapter), ref, convention=name, cases="all", dtype="float64")
        assert r.passed, str(r)


def test_docs_list_every_edge_case():
    """docs/verify.md's table of edge cases matches nce_ref.testing.cases, function by function."""
    import pathlib
    import re

    from nce_ref.testing.cases import cases_for

    text = (pathlib.Path(__file__).parents[1] / "docs" / "verify.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| (\d+) \| (.+) \|$", text, flags=re.M)
    assert len(rows) >= 8
    for name, n_std, edges in rows:
        cases = cases_for(name)
        assert [c.label for c in cases if c.kind == "edge"] == edges.split("; "), name
        assert sum(c.kind == "standard" for c in cases) == int(n_std), name
