"""The layering that DESIGN.md promises, checked on the source itself, and the explicit
choice of code path (``method=``) of the public functions.

- no module imports another module's private names (``from .x import _y``);
- ``nce_ref.autodiff`` (the registry, the bottom layer) imports nothing of ``nce_ref``;
- re-importing a module (``importlib.reload``) re-registers its functions without error;
- ``method="dense"`` (the reference) and ``method="streamed"`` (the engine) agree, value
  and gradients, and ``"streamed"`` refuses what the engine does not cover.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import nce_ref
from nce_ref.testing import atol_for, rtol_for

PKG = pathlib.Path(nce_ref.__file__).parent
SOURCES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: pathlib.Path):
    """``(module, name, line)`` of every ``from module import name`` in ``path``, the
    module resolved to its absolute dotted name."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                yield mod, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_private_name_is_imported_from_another_module(path):
    bad = [f"{path.name}:{line}: from {mod} import {name}" for mod, name, line in _imports(path)
           if name and name.startswith("_") and not name.startswith("__") and mod.startswith("nce_ref")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_registry_imports_nothing_above_it():
    above = [f"line {line}: {mod}" for mod, _, line in _imports(PKG / "autodiff.py")
             if mod.startswith("nce_ref")]
    assert not above, f"nce_ref.autodiff imports from nce_ref: {above}"


def test_reloading_a_module_re_registers_its_functions():
    code = ("import importlib, nce_ref, nce_ref.losses.infonce as m, nce_ref.mi.embeddings as e\n"
            "importlib.reload(m); importlib.reload(e)\n"
            "from nce_ref.autodiff import lookup\n"
            "assert lookup('info_nce').public is m.info_nce\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_registering_another_function_under_a_taken_name_raises():
    from nce_ref.autodiff import differentiable

    with pytest.raises(RuntimeError, match="registered twice"):
        @differentiable("info_nce", wrt=("x",))
        def impostor(x):  # pragma: no cover - never called
            return x, None


# -- method= -------------------------------------------------------------------------

def _both(f, *args, **kw):
    """value_and_grad of ``f`` by the reference and by the engine."""
    vg = nce_ref.value_and_grad(f)
    return vg(*args, method="dense", **kw), vg(*args, method="streamed", block_size=3, **kw)


def _assert_same(dense, streamed, tau=None):
    (v0, g0), (v1, g1) = dense, streamed
    np.testing.assert_allclose(v1, v0, rtol=rtol_for("float64", temperature=tau), atol=atol_for("float64"))
    assert sorted(g0) == sorted(g1)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=rtol_for("float64", temperature=tau),
                                   atol=atol_for("float64", float(np.max(np.abs(g0[k]), initial=1.0))),
                                   err_msg=k)


INFO_NCE_OPTIONS = [
    {},
    {"symmetric": True},
    {"negatives": "unpaired"},
    {"negatives": "unpaired", "in_batch_negatives": True},
    {"reduction": "none"},
    {"reduction": "sum", "symmetric": True},
]


@pytest.mark.parametrize("similarity", ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"])
@pytest.mark.parametrize("options", INFO_NCE_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_info_nce_engine_equals_reference(rng, similarity, options):
    q, k = rng.standard_normal((7, 4)), rng.standard_normal((7, 4))
    kw = dict(options, temperature=0.3, similarity=similarity)
    args = [q, k]
    if kw.pop("negatives", None):
        args.append(rng.standard_normal((5, 4)))
    if kw.get("reduction") == "none":
        kw["cotangent"] = rng.standard_normal(7)
    _assert_same(*_both(nce_ref.info_nce, *args, **kw), tau=0.3)


@pytest.mark.parametrize("similarity", ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"])
def test_nt_xent_engine_equals_reference(rng, similarity):
    z1, z2 = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    _assert_same(*_both(nce_ref.nt_xent, z1, z2, temperature=0.4, similarity=similarity), tau=0.4)


@pytest.mark.parametrize("similarity", ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"])
@pytest.mark.parametrize("weight", ["none", "von_mises"])
def test_dcl_engine_equals_reference(rng, similarity, weight):
    z1, z2 = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    _assert_same(*_both(nce_ref.dcl, z1, z2, temperature=0.4, similarity=similarity,
                        weight=weight, detach_weight=False), tau=0.4)


@pytest.mark.parametrize("positives", ["out", "in", "per_pair"])
def test_supcon_engine_equals_reference(rng, positives):
    f = rng.standard_normal((6, 2, 3))
    labels = np.array([0, 1, 0, 2, 1, 0])
    _assert_same(*_both(nce_ref.supcon, f, labels, temperature=0.5, positives=positives), tau=0.5)


@pytest.mark.parametrize("reduction", ["mean", "none", "mean_nonzero"])
@pytest.mark.parametrize("similarity", ["cosine", "dot", "neg_sq_euclidean", "neg_euclidean"])
def test_multi_similarity_engine_equals_reference(rng, similarity, reduction):
    x = rng.standard_normal((7, 3)) / 2
    y = np.array([0, 1, 0, 2, 1, 0, 1])
    kw = {"similarity": similarity, "reduction": reduction, "mining_margin": 0.1, "beta": 5.0}
    if reduction == "none":
        kw["cotangent"] = rng.standard_normal(7)
    _assert_same(*_both(nce_ref.multi_similarity, x, y, **kw))


@pytest.mark.parametrize("reduction", ["mean", "none", "mean_nonzero", "per_anchor"])
@pytest.mark.parametrize("distance", ["euclidean", "sq_euclidean", "cosine", "lp"])
def test_pairwise_contrastive_engine_equals_reference(rng, distance, reduction):
    x, r = rng.standard_normal((7, 3)), rng.standard_normal((5, 3))
    y, ry = np.array([0, 1, 0, 2, 1, 0, 1]), np.array([0, 1, 2, 2, 0])
    kw = {"distance": distance, "reduction": reduction, "split_pos_neg": True,
          "neg_margin": 1.0 if distance == "cosine" else 2.5}
    if reduction == "none":
        kw["cotangent"] = rng.standard_normal(7)
    _assert_same(*_both(nce_ref.pairwise_contrastive, x, y, ref=r, ref_labels=ry, **kw))


def test_auto_runs_the_engine_where_it_applies_and_the_reference_elsewhere(rng):
    q, k = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    paired = rng.standard_normal((5, 4, 3))
    with pytest.raises(ValueError, match="method='streamed'.*paired"):
        nce_ref.info_nce(q, k, paired, negative_mode="paired", method="streamed")
    auto = nce_ref.info_nce(q, k, paired, negative_mode="paired")
    dense = nce_ref.info_nce(q, k, paired, negative_mode="paired", method="dense")
    assert float(auto) == float(dense)  # the same code: bit for bit


@pytest.mark.parametrize("f", [nce_ref.info_nce, nce_ref.nt_xent, nce_ref.dcl, nce_ref.siglip,
                               nce_ref.multi_similarity, nce_ref.pairwise_contrastive])
def test_an_unknown_method_is_refused_by_name(f):
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match="`method` must be one of 'auto', 'dense', 'streamed'; got 'fast'"):
        f(x, x, method="fast")


def test_an_array_temperature_takes_the_path_of_its_float(rng):
    """The path depends on the temperature's value, not on its Python type."""
    q, k = rng.standard_normal((9, 4)), rng.standard_normal((9, 4))
    a = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=0.2)
    b = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=np.asarray(0.2))
    assert float(a[0]) == float(b[0])
    for key in ("query", "key"):
        np.testing.assert_array_equal(a[1][key], b[1][key])
