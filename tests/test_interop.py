"""The autograd bridges: every registered function as a torch.autograd.Function and a
jax.custom_vjp, checked with the frameworks' own gradient checkers on the registered cases."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import nce_ref
from nce_ref.autodiff import registry
from nce_ref.testing.cases import cases_for

for _mod in ("supcon", "triplet"):  # register the losses being added alongside, when present
    try:
        __import__(f"nce_ref.losses.{_mod}")
    except ImportError:
        pass

FUNCTIONS = sorted(registry())
MAX_CASES = 2  # finite-difference-able standard cases per function


def _fd_cases(name, which="standard"):
    return [c for c in cases_for(name, which=which) if c.fd][:MAX_CASES]


def _split(entry, case, to_array, *, scalar_array):
    """Bind a case; return (names of differentiated inputs, their values, a call(*vals) closure)."""
    bound = entry.signature.bind(*case.args, **case.kwargs)
    args = dict(bound.arguments)
    diff = []
    for name, v in list(args.items()):
        if isinstance(v, np.ndarray):
            args[name] = to_array(v)
            if name in entry.wrt and v.dtype.kind == "f":
                diff.append(name)
        elif name in entry.scalars and isinstance(v, float):
            if scalar_array:
                args[name] = to_array(np.asarray(v))
                diff.append(name)
    pos_names = list(entry.signature.parameters)[:len(case.args)]

    def call(f, *vals):
        a = dict(args)
        a.update(zip(diff, vals))
        return f(*[a[n] for n in pos_names], **{k: v for k, v in a.items() if k not in pos_names})

    return diff, [args[n] for n in diff], call


def test_no_framework_imported_by_nce_ref():
    code = ("import sys, nce_ref, nce_ref.interop, nce_ref.testing, nce_ref.testing.conventions; "
            "print('torch' in sys.modules, 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_unregistered_function_is_refused():
    pytest.importorskip("torch", reason="torch is not installed")
    from nce_ref.interop.torch import function

    with pytest.raises(TypeError, match="not a differentiable nce_ref function"):
        function(np.sum)
    with pytest.raises(ValueError, match="unknown function"):
        function("no_such_loss")


# ----------------------------------------------------------------------------------
# torch
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FUNCTIONS)
def test_torch_gradcheck_every_function(name):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from nce_ref.interop.torch import function

    entry = registry()[name]
    f = function(name)
    cases = _fd_cases(name)
    if not cases:
        pytest.skip(f"{name} registers no standard case where finite differences apply")
    for case in cases:
        diff, vals, call = _split(entry, case, lambda a: torch.from_numpy(a.copy()), scalar_array=True)
        vals = [v.requires_grad_(True) for v in vals]
        value = call(f, *vals)
        if value.ndim:  # a fixed random cotangent makes the output scalar for gradcheck
            ct = torch.from_numpy(np.random.default_rng(0).standard_normal(tuple(value.shape)))

            def fn(*v, _ct=ct, _call=call):
                return (_call(f, *v) * _ct).sum()
        else:
            def fn(*v, _call=call):
                return _call(f, *v)
        assert torch.autograd.gradcheck(fn, tuple(vals)), (name, case.label)


def test_torch_grads_equal_value_and_grad():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from nce_ref.interop.torch import function

    rng = np.random.default_rng(0)
    q, k, n = rng.standard_normal((6, 4)), rng.standard_normal((6, 4)), rng.standard_normal((5, 4))
    ct = rng.standard_normal(6)
    value, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, n, temperature=0.3, reduction="none",
                                                        cotangent=ct)
    tq, tk, tn = (torch.tensor(a, requires_grad=True) for a in (q, k, n))
    tt = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    out = function(nce_ref.info_nce)(tq, tk, tn, temperature=tt, reduction="none")
    assert isinstance(out, torch.Tensor) and out.shape == (6,)
    out.backward(torch.from_numpy(ct))
    np.testing.assert_allclose(out.detach().numpy(), value, rtol=1e-14)
    for name, t in (("query", tq), ("key", tk), ("negatives", tn), ("temperature", tt)):
        np.testing.assert_allclose(t.grad.numpy(), g[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_torch_float32_and_python_float_temperature():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from nce_ref.interop.torch import function

    q = torch.randn(5, 3, requires_grad=True)
    k = torch.randn(5, 3)
    out = function("nt_xent")(q, k, temperature=0.5)
    assert out.dtype == torch.float32 and out.ndim == 0
    out.backward()
    assert q.grad.dtype == torch.float32 and q.grad.shape == (5, 3)
    assert k.grad is None  # not requiring grad


def test_torch_once_differentiable_and_inplace_guard():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from nce_ref.interop.torch import function

    f = function(nce_ref.info_nce)
    q = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    (gq,) = torch.autograd.grad(f(q, k), q, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(gq.sum(), q)  # second derivatives are not provided
    k2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    k_leafless = k2 * 1.0
    out = f(q, k_leafless)
    with torch.no_grad():
        k_leafless.add_(1.0)  # modified between forward and backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_torch_labels_receive_no_gradient():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("nce_ref.losses.supcon", reason="supcon is not available")
    from nce_ref.interop.torch import function

    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    loss = function("supcon")(x, y, temperature=0.2)
    loss.backward()
    ref, g = nce_ref.value_and_grad("supcon")(x.detach().numpy(), y.numpy(), temperature=0.2)
    np.testing.assert_allclose(x.grad.numpy(), g["features"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(loss.item(), float(ref), rtol=1e-14)


# ----------------------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------------------

@pytest.fixture
def jax64():
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    jax.config.update("jax_enable_x64", True)
    return jax


@pytest.mark.parametrize("name", FUNCTIONS)
def test_jax_check_grads_every_function(name, jax64):
    import jax.numpy as jnp
    from jax.test_util import check_grads

    from nce_ref.interop.jax import function

    entry = registry()[name]
    f = function(name)
    cases = _fd_cases(name)[:1]
    if not cases:
        pytest.skip(f"{name} registers no standard case where finite differences apply")
    for case in cases:
        diff, vals, call = _split(entry, case, jnp.asarray, scalar_array=False)
        # under jit: the bridge must trace (nce_ref runs on tracers), and it is faster
        check_grads(jax64.jit(lambda *v, _call=call: _call(f, *v)), tuple(vals), order=1, modes=("rev",),
                    atol=1e-6, rtol=1e-6)


def test_jax_grad_jit_and_python_float_temperature(jax64):
    jax = jax64
    import jax.numpy as jnp

    from nce_ref.interop.jax import function

    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    _, g = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, temperature=0.25, symmetric=True)
    f = function(nce_ref.info_nce)
    grad = jax.jit(jax.grad(lambda q, k, t: f(q, k, temperature=t, symmetric=True),
                            argnums=(0, 1, 2)))
    gq, gk, gt = grad(jnp.asarray(q), jnp.asarray(k), 0.25)
    np.testing.assert_allclose(np.asarray(gq), g["query"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(gk), g["key"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(float(gt), float(g["temperature"]), rtol=1e-12)


def test_jax_vector_output_cotangent(jax64):
    jax = jax64
    import jax.numpy as jnp

    from nce_ref.interop.jax import function

    rng = np.random.default_rng(2)
    z1, z2, ct = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.standard_normal(8)
    value, g = nce_ref.value_and_grad("nt_xent")(z1, z2, reduction="none", cotangent=ct)
    out, back = jax.vjp(jax.jit(lambda a, b: function("nt_xent")(a, b, reduction="none")),
                        jnp.asarray(z1), jnp.asarray(z2))
    g1, g2 = back(jnp.asarray(ct))
    np.testing.assert_allclose(np.asarray(out), value, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(g1), g["z1"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(g2), g["z2"], rtol=1e-12, atol=1e-15)


def test_jax_integer_labels_get_no_cotangent(jax64):
    jax = jax64
    import jax.numpy as jnp

    pytest.importorskip("nce_ref.losses.supcon", reason="supcon is not available")
    from nce_ref.interop.jax import function

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 2, 3)), np.array([0, 1, 0, 2, 1, 0])
    _, g = nce_ref.value_and_grad("supcon")(x, y, temperature=0.2)
    gx = jax.jit(jax.grad(lambda x, y: function("supcon")(x, y, temperature=0.2)))(
        jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(gx), g["features"], rtol=1e-12, atol=1e-15)
