"""Verify a *sharded* implementation: W ranks, each calling the user's function on its shard.

:func:`verify_sharded` starts W local gloo processes (``nce_ref.testing.sharded.GlooPool``:
``torch.distributed`` is initialised in each, so the user's function uses its own
collectives on the default group), gives each rank its shard of each case (different
rows per rank, unequal shards unless asked otherwise) and a different upstream weight
``g_r``, runs forward and backward on every rank at once, and compares with nce_ref's
single-process function on the concatenated batch:

- **value**: each rank returns either the global loss ``L`` (``value="global"``) or its
  share ``S_r = W L_r`` (``L_r`` the part of ``L`` made by its rows' terms; the shares
  average to ``L``), read from the values (``value="auto"``) or declared;
- **inputs' gradients**: those of ``sum_r g_r v_r``, where ``v_r`` is rank r's correct
  value under that convention (what makes DDP's mean over ranks the single-device
  gradient);
- **a replicated temperature** (or logit scale): the mean over ranks of its replicas'
  gradients equals ``(1/W) d(sum_r g_r v_r)/dτ``.

When they differ the report names the pattern: the cross-rank gradient sum missing
(each rank right on its own block only: a collective autograd does not see, or a
gather whose backward keeps its own slice), column terms lost (the gathered keys carry
no gradient: ``local_loss`` without ``gather_with_grad``), a gradient off by W or 1/W,
a value off by W, a temperature gradient off by W.  A rank that raises or hangs stops
every rank within ``timeout`` and raises :class:`VerifyError` naming the rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...autodiff import Entry, vjp
from .. import conventions
from ..cases import Case
from .adapters import ADAPTERS, NonArray, impl_name, impl_signature
from .compare import first_line, grad_rtol, rounded
from .guide import lookup_reference
from .harness import apply_accept, convention_notes, pick_adapter, resolve_accept
from .plan import plan_case, resolve_aliases, resolve_dtypes
from .report import CaseResult, VerifyError, VerifyReport, fmt
from .run import aliased_call

__all__ = ["SHARDED_FUNCTIONS", "verify_sharded", "shard_sizes"]

#: functions whose sharded form can be verified: their per-row terms (``reduction="none"``)
#: and how many terms each row owns
SHARDED_FUNCTIONS = ("info_nce", "nt_xent")

_POOLS: dict = {}


def shard_sizes(n: int, world_size: int, *, equal: bool = False) -> list[int] | None:
    """Rows per rank: unequal (1, 2, ... growing, the rest on the last rank) unless
    ``equal``; None when ``n`` rows cannot be split so."""
    w = world_size
    if equal:
        return [n // w] * w if n % w == 0 and n >= w else None
    if n < w * (w + 1) // 2:
        return None if n < w else [1] * (w - 1) + [n - (w - 1)]
    sizes = list(range(1, w + 1))
    sizes[-1] += n - sum(sizes)
    return sizes


def _cases(name: str, world_size: int, seed: int, equal: bool) -> list[Case]:
    """Sharded cases: fresh rows, enough for every rank (4 per rank and 2 more, or 4 per rank)."""
    rng = np.random.default_rng([seed, world_size, 13])
    n, d = 4 * world_size + (0 if equal else 2), 5
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    out = [Case("random cosine", (a, b), {"temperature": 0.2}),
           Case("random dot", (a, b), {"temperature": 0.5, "similarity": "dot"}),
           Case("temperature 0.01", (a, b), {"temperature": 0.01})]
    if name == "info_nce":
        out.insert(1, Case("symmetric (CLIP)", (a, b), {"temperature": 0.07, "symmetric": True}))
        out.append(Case("symmetric (CLIP), temperature 0.01", (a, b),
                        {"temperature": 0.01, "symmetric": True}))
        out.append(Case("reduction sum", (a, b), {"temperature": 0.3, "reduction": "sum"}))
    return out


def get_pool(world_size: int, timeout: float):
    """A :class:`~nce_ref.testing.sharded.GlooPool` of ``world_size`` ranks, kept for reuse
    (its default group is exactly the W ranks the user's collectives see)."""
    from ..sharded import GlooPool

    pool = _POOLS.get(world_size)
    if pool is None:
        pool = _POOLS[world_size] = GlooPool(world_size, timeout=timeout)
    return pool


def close_pools() -> None:
    """Stop every pool :func:`verify_sharded` started."""
    for p in list(_POOLS.values()):
        p.close()
    _POOLS.clear()


def _rank_call(comm, impl, framework, pos, kw, diff, dtype, weight, aliases):
    """On one rank: the implementation's value on this rank's shard and its gradients for
    the upstream weight ``weight`` (forward and backward run on every rank at once)."""
    from .plan import Plan

    fw = ADAPTERS[framework]
    plan = Plan(None, 0, None, pos, kw, {}, tuple(diff), aliases)
    try:
        value, grad_fn, _ = aliased_call(fw, impl, plan, tuple(diff), dtype)
    except NonArray as exc:
        raise TypeError(str(exc)) from None
    ct = None if value.ndim == 0 else np.full(value.shape, weight)
    grads = {} if grad_fn is None else grad_fn(np.asarray(weight) if ct is None else ct)
    return value, {k: (None if v is None else np.asarray(v, dtype=np.float64)) for k, v in grads.items()}


# ------------------------------------------------------------------------------------
# the reference under the sharded contract
# ------------------------------------------------------------------------------------

@dataclass
class _Ref:
    """What the reference says for one case: the terms, their reduction weights and owners."""

    entry: Entry
    args: list           # the full arrays (rounded to the dtype), positional
    kw: dict             # the reference's keywords, without reduction
    terms: np.ndarray    # per-row terms t_i
    w: np.ndarray        # L = sum_i w_i t_i
    owner: np.ndarray    # the rank owning each term
    sizes: list

    def value(self, coef: np.ndarray) -> float:
        return float(np.sum(coef * self.terms))

    def grads(self, coef: np.ndarray) -> dict:
        """Gradients of ``sum_i coef_i t_i`` (inputs and temperature)."""
        _, back = vjp(self.entry.public, *self.args, **self.kw, reduction="none")
        return {k: np.asarray(v, dtype=np.float64) for k, v in back(coef).items()}

    def rows(self, g: np.ndarray, r: int) -> np.ndarray:
        lo = sum(self.sizes[:r])
        return g[lo:lo + self.sizes[r]]


def _reference(entry: Entry, plan, dtype: str, sizes: list) -> _Ref:
    args = [rounded(v, dtype) for _, v in plan.pos]
    kw = {k: rounded(v, dtype) for k, v in plan.ref_kw.items() if k != "reduction"}
    reduction = plan.ref_kw.get("reduction", "mean")
    terms = np.asarray(entry.public(*args, **kw, reduction="none"), dtype=np.float64)
    n = args[0].shape[0]
    own = np.repeat(np.arange(len(sizes)), sizes)
    owner = np.concatenate([own] * (terms.shape[0] // n))
    w = np.full(terms.shape, 1.0 / terms.size if reduction == "mean" else 1.0)
    return _Ref(entry, args, kw, terms, w, owner, sizes)


def _value_models(ref: _Ref, W: int) -> dict:
    """``{convention: coefficients per rank (W x terms)}`` of each rank's value."""
    share = np.stack([W * ref.w * (ref.owner == r) for r in range(W)])
    glob = np.stack([ref.w] * W)
    local = np.stack([(ref.owner == r) / max(1, int(np.sum(ref.owner == r))) for r in range(W)])
    return {"global": glob, "share": share, "local mean": local}


def _close(a, b, rtol, atol) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(a.shape == b.shape and np.all(np.isfinite(a))
                and np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))


def _read_value(values: list, ref: _Ref, models: dict, declared: str, rtol: float, atol: float):
    """``(convention, problem)``: the value convention the ranks follow (or the declared one),
    and what is wrong with the values, if anything."""
    W = len(values)
    got = np.array([float(v) for v in values])
    want = {k: np.array([ref.value(c) for c in m]) for k, m in models.items()}
    if declared != "auto":
        name = declared
        if _close(got, want[name], rtol, atol):
            return name, None, 1.0
    else:
        for name in ("global", "share", "local mean"):
            if _close(got, want[name], rtol, atol):
                return name, None, 1.0
        name = "global" if np.allclose(got, got[0], rtol=1e-6) else "share"
    convs = (name,) if declared != "auto" else ("global", "share")
    for k, factor in (("W", W), ("1/W", 1.0 / W)):
        for conv in convs:
            if W > 1 and _close(got, factor * want[conv], rtol, atol):
                return conv, (f"the loss value is off by {k}: every rank returns {k} times its "
                              f"{conv} value ({fmt(got[0], '.10g')} on rank 0 vs "
                              f"{fmt(want[conv][0], '.10g')})"), factor
    return name, (f"the ranks' values {', '.join(fmt(v, '.10g') for v in got)} match neither the "
                  f"global loss {fmt(want['global'][0], '.10g')} nor the shares "
                  f"{', '.join(fmt(v, '.10g') for v in want['share'])}"), 1.0


# ------------------------------------------------------------------------------------
# the harness
# ------------------------------------------------------------------------------------

def verify_sharded(impl, reference, *, world_size: int, engine: str = "torch",
                   convention: str | None = None, framework: str | None = None,
                   cases: str | Sequence[Case] = "standard", dtype=None, grads: bool = True,
                   seed: int = 0, params: dict | None = None, accept=None, value: str = "auto",
                   equal_shards: bool = False, timeout: float = 60.0,
                   diagnose: bool = True) -> VerifyReport:
    """Verify a sharded implementation on ``world_size`` ranks (see the module's docstring).

    ``impl`` is called on each rank like the single-process implementation, with that
    rank's rows (``torch.distributed`` is initialised: it may call ``dist.get_rank()``
    and its collectives); it must be picklable (a module-level function or class).
    ``value`` is ``"auto"`` (read from the values), ``"global"`` or ``"share"``.  The
    other options are :func:`verify`'s.
    """
    entry = lookup_reference(reference)
    if entry.name not in SHARDED_FUNCTIONS:
        raise ValueError(f"sharded verification supports {', '.join(SHARDED_FUNCTIONS)}; "
                         f"got nce_ref.{entry.name}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"`world_size` must be a positive int; got {world_size!r}")
    if engine not in ("torch", "jax"):
        raise ValueError(f"`engine` must be 'torch' (W gloo processes) or 'jax' (W simulated "
                         f"devices under shard_map); got {engine!r}")
    if engine == "jax" and not equal_shards:
        equal_shards = True  # shard_map splits an axis into equal blocks
    if value not in ("auto", "global", "share"):
        raise ValueError(f"`value` must be 'auto', 'global' or 'share'; got {value!r}")
    conv = conventions.get(convention, entry.name) if convention is not None else None
    accepted = resolve_accept(accept)
    notes: list[str] = []
    framework, fw = pick_adapter(impl, framework if framework else engine, conv, notes)
    if framework != engine:
        raise ValueError(f"engine={engine!r} runs {engine} implementations; got framework "
                         f"{framework!r} (pass engine={framework!r})")
    sig = impl_signature(impl)
    aliases = resolve_aliases(entry, sig, params, notes)
    if isinstance(cases, str):
        case_list, cases_name = _cases(entry.name, world_size, seed, equal_shards), f"sharded-{cases}"
    else:
        case_list, cases_name = list(cases), "custom"
    dtypes = resolve_dtypes(dtype)
    W = world_size
    weights = [1.0 + 0.5 * r for r in range(W)] if W > 1 else [1.5]
    report = VerifyReport(impl=impl_name(impl), reference=entry.name,
                          convention=conv.name if conv else None, framework=framework,
                          dtypes=tuple(dtypes), cases=cases_name, notes=notes)
    report.notes += convention_notes(entry, conv, sig, aliases)
    where = "gloo processes" if engine == "torch" else "simulated JAX devices under shard_map"
    report.notes.append(f"{W} ranks ({where}), {'equal' if equal_shards else 'unequal'} "
                        f"shards, upstream weight {', '.join(f'{g:g}' for g in weights)} on ranks "
                        f"0..{W - 1}")
    pool = get_pool(W, timeout) if engine == "torch" else None
    jax_jobs = []
    conventions_seen = []
    for d in dtypes:
        conv_opts = conv.options_for(d) if conv else {}
        for i, case in enumerate(case_list):
            plan = plan_case(case, i, entry, conv_opts, sig, dict(conv.unsupported) if conv else {},
                             aliases)
            n = case.args[0].shape[0]
            sizes = shard_sizes(n, W, equal=equal_shards)
            if plan.na is None and plan.ref_kw.get("reduction", "mean") == "none":
                plan.na = "reduction='none' is not verified sharded (each rank's rows' terms)"
            if plan.na is None and sizes is None:
                plan.na = f"{n} rows cannot be split {'equally ' if equal_shards else ''}over {W} ranks"
            if plan.na is not None:
                if d == dtypes[0]:
                    report.results.append(CaseResult(case.label, case.kind, "-", case.describe(),
                                                     {}, "n/a", message=plan.na))
                continue
            if engine == "jax":
                jax_jobs.append((plan, d, sizes))
                continue
            res = _run_sharded_case(pool, impl, framework, entry, plan, d, sizes, weights, grads,
                                    value, timeout)
            conventions_seen.append(res.options.get("value convention"))
            report.results.append(res)
    if jax_jobs:
        outs = _run_jax(impl, jax_jobs, W, weights, grads, timeout)
        for (plan, d, sizes), out in zip(jax_jobs, outs):
            diff = plan.diff if grads else ()
            res = _compare(out, _new_result(plan, d, sizes), entry, plan, d, sizes, weights, diff,
                           value)
            conventions_seen.append(res.options.get("value convention"))
            report.results.append(res)
    _raise_if_nothing(report)
    apply_accept(report, accepted)
    seen = sorted({c for c in conventions_seen if c})
    if "local mean" in seen:
        report.notes.append("the ranks return the mean of their own rows' terms: with unequal shards "
                            "DDP's mean over ranks weights rank r's rows by 1/(W n_r) instead of 1/N, "
                            "so it is the single-device gradient only with equal shards")
    if seen:
        report.notes.append(f"value convention read from the ranks' values: {', '.join(seen)}"
                            if value == "auto" else f"value convention declared: {value}")
    if diagnose and report.failures:
        report.diagnosis += _diagnose(report)
    return report


def _run_jax(impl, jobs, W, weights, grads, timeout) -> list:
    """Every job's per-rank ``(value, grads)`` from one child process with W simulated host
    devices (``--xla_force_host_platform_device_count``: XLA reads it at start-up, hence the
    child); killed after ``timeout`` seconds per job."""
    import multiprocessing as mp
    import os
    import pickle

    payload = []
    for plan, d, _ in jobs:
        diff = tuple(plan.diff) if grads else ()
        payload.append((list(plan.pos), dict(plan.impl_kw), diff, d, dict(plan.aliases)))
    try:
        pickle.dumps((impl, payload))
    except Exception as exc:
        raise TypeError(f"a JAX implementation for engine='jax' must be picklable (defined at a "
                        f"module's top level): {exc}") from exc
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    saved = {k: os.environ.get(k) for k in ("XLA_FLAGS", "JAX_PLATFORMS")}
    os.environ["XLA_FLAGS"] = ((saved["XLA_FLAGS"] or "") +
                               f" --xla_force_host_platform_device_count={W}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    try:
        proc = ctx.Process(target=_jax_main, args=(child, impl, payload, W, list(weights)),
                           daemon=True, name="nce_ref-jax-ranks")
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    child.close()
    limit = timeout * len(jobs) + 30.0
    try:
        if not parent.poll(limit):
            raise VerifyError(f"the {W} JAX ranks did not finish within {limit:g} s (a hang: a "
                              "collective not every rank reaches, or a deadlock); they were stopped")
        kind, value = parent.recv()
    except EOFError:
        raise VerifyError(f"the JAX ranks' process died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
    if kind == "error":
        label, msg = value
        raise VerifyError(f"the implementation raised under shard_map on the {W} JAX ranks "
                          f"[case '{label}']: {msg} (in SPMD every rank runs the same program: "
                          "no single rank is to blame)")
    return value


def _jax_main(conn, impl, payload, W, weights) -> None:
    """The child of :func:`_run_jax`: each job under ``jax.shard_map`` over W host devices."""
    try:
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh
        from jax.sharding import PartitionSpec as P

        jax.config.update("jax_enable_x64", True)
        mesh = Mesh(np.array(jax.devices()[:W]), ("ranks",))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", ("start", first_line(exc))))
        return
    results = []
    for pos, kw, diff, dtype, aliases in payload:
        try:
            results.append(_jax_job(jax, jnp, mesh, P, impl, pos, kw, diff, dtype, aliases, W,
                                    weights))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", (f"{dtype}", first_line(exc))))
            return
    conn.send(("ok", results))


def _jax_job(jax, jnp, mesh, P, impl, pos, kw, diff, dtype, aliases, W, weights):
    """One case: the rows sharded over ``"ranks"``, each scalar in ``diff`` replicated as a
    (W,) array (one replica per rank), ``jax.vjp`` with the per-rank weights."""
    arr_names = [n for n, v in pos if isinstance(v, np.ndarray)]
    arrays = [jnp.asarray(np.asarray(v, dtype=dtype if v.dtype.kind == "f" else v.dtype))
              for n, v in pos if isinstance(v, np.ndarray)]
    scal = [n for n in diff if n in kw]
    reps = [jnp.full((W,), float(kw[n]), dtype=dtype) for n in scal]
    static = {k: v for k, v in kw.items() if k not in scal}

    def per_rank(*xs):
        a, t = xs[:len(arrays)], xs[len(arrays):]
        call = dict(static)
        for n, rep in zip(scal, t):
            al = aliases.get(n)
            val = rep[0]
            call[al.name if al else n] = (1.0 / val) if (al is not None and al.inverse) else val
        for n in list(static):
            al = aliases.get(n)
            if al is not None:
                v = call.pop(n)
                call[al.name] = 1.0 / v if al.inverse else v
        out = impl(*a, axis_name="ranks", **call)
        return jnp.reshape(out, (1,))

    f = jax.shard_map(per_rank, mesh=mesh, in_specs=tuple(P("ranks") for _ in arrays + reps),
                      out_specs=P("ranks"), check_vma=False)
    values, vjp_fn = jax.vjp(f, *arrays, *reps)
    gs = vjp_fn(jnp.asarray(weights, dtype=values.dtype)) if diff else [None] * (len(arrays) + len(reps))
    values = np.asarray(values, dtype=np.float64)
    n = arrays[0].shape[0] // W
    out = []
    for r in range(W):
        g = {}
        for name, gv in zip(arr_names, gs[:len(arrays)]):
            if name in diff and gv is not None:
                g[name] = np.asarray(gv, dtype=np.float64)[r * n:(r + 1) * n]
        for name, gv in zip(scal, gs[len(arrays):]):
            if gv is not None:
                g[name] = np.asarray(gv, dtype=np.float64)[r]
        out.append((values[r], g))
    return out


def _raise_if_nothing(report: VerifyReport) -> None:
    if not report.ran:
        reasons = sorted({r.message for r in report.results})
        raise VerifyError(f"no case applies to {report.impl}: {reasons[0] if reasons else 'no cases'}",
                          report)


def _shard(plan, sizes: list) -> list:
    """Each rank's positional arrays: row blocks of every array with the batch's rows."""
    n = plan.pos[0][1].shape[0]
    out = []
    lo = 0
    for s in sizes:
        out.append([(name, v[lo:lo + s] if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n
                     else v) for name, v in plan.pos])
        lo += s
    return out


_UNEQUAL = ("; the shards were unequal: if the implementation needs equal shards (an all_gather "
            "of equal sizes), pass equal_shards=True (--equal-shards)")


def _run_ranks(pool, impl, framework, plan, dtype, sizes, weights, diff, timeout):
    """Every rank's ``(value, grads)``; raises :class:`VerifyError` naming the rank that
    raised, hung or died (every rank is stopped first)."""
    shards = _shard(plan, sizes)
    args = [(impl, framework, shards[r], dict(plan.impl_kw), tuple(diff), dtype, weights[r],
             dict(plan.aliases)) for r in range(len(sizes))]
    where = f"[case '{plan.case.label}', {dtype}]"
    try:
        out = pool.run(_rank_call, args, timeout=timeout, return_exceptions=True)
    except TimeoutError as exc:
        answers = getattr(exc, "answers", {})
        raised = {r: a for r, a in answers.items() if isinstance(a, BaseException)
                  and not isinstance(a, TimeoutError)}
        silent = sorted(set(range(len(sizes))) - set(answers))
        msg = f"rank(s) {silent} did not finish within {timeout:g} s {where}"
        if raised:
            r, e = next(iter(raised.items()))
            msg = (f"rank {r} raised {first_line(e)} {where}; rank(s) {silent} then waited in a "
                   f"collective that rank {r} never reached and were stopped after {timeout:g} s")
        else:
            msg += " (a hang: a collective not every rank reaches, or a deadlock); every rank was stopped"
        if len(set(sizes)) > 1:
            msg += _UNEQUAL
        raise VerifyError(msg) from None
    except RuntimeError as exc:  # a worker died (a crash in a collective: gloo aborts on a size mismatch)
        raise VerifyError(f"{str(exc).replace('GlooPool.run: ', '')} {where}"
                          + (_UNEQUAL if len(set(sizes)) > 1 else "")) from None
    failed = [(r, o) for r, o in enumerate(out) if isinstance(o, BaseException)]
    if failed:
        r, e = next(((r, e) for r, e in failed if not isinstance(e, TimeoutError)), failed[0])
        others = [x for x, _ in failed if x != r]
        unequal = len(set(sizes)) > 1
        raise VerifyError(f"rank {r} raised {first_line(e)} {where}"
                          + (f"; rank(s) {others} failed too" if others else "")
                          + "; every rank was stopped"
                          + (_UNEQUAL if unequal else ""))
    return out


def _new_result(plan, dtype, sizes) -> CaseResult:
    return CaseResult(plan.case.label, plan.case.kind, dtype,
                      f"{plan.case.label} (shards {'+'.join(map(str, sizes))}; "
                      + ", ".join(f"{k}={v!r}" for k, v in plan.impl_kw.items()) + ")",
                      {"shards": list(sizes)}, "pass")


def _run_sharded_case(pool, impl, framework, entry, plan, dtype, sizes, weights, grads, declared,
                      timeout) -> CaseResult:
    diff = plan.diff if grads else ()
    res = _new_result(plan, dtype, sizes)
    out = _run_ranks(pool, impl, framework, plan, dtype, sizes, weights, diff, timeout)
    return _compare(out, res, entry, plan, dtype, sizes, weights, diff, declared)


def _compare(out, res, entry, plan, dtype, sizes, weights, diff, declared) -> CaseResult:
    """Compare every rank's ``(value, grads)`` with the reference under the contract."""
    from .._tolerances import sensitivity, value_tolerances

    W = len(sizes)
    ref = _reference(entry, plan, dtype, sizes)
    models = _value_models(ref, W)
    values = [np.asarray(v) for v, _ in out]
    if any(v.ndim != 0 for v in values):
        res.status, res.problem = "fail", "shape"
        res.message = f"rank values of shapes {[v.shape for v in values]}; expected scalars"
        return res
    names = [nm for nm, _ in plan.pos]
    g_loss = ref.grads(ref.w)
    sens = sensitivity({k: g_loss[k] for k in names if k in g_loss},
                       {k: a for k, a in zip(names, ref.args)})
    rtol, atol = value_tolerances(dtype, np.asarray(W * ref.value(ref.w)), W * sens)
    conv, vproblem, vfactor = _read_value(values, ref, models, declared, rtol, atol)
    res.options["value convention"] = conv
    if vfactor != 1.0:  # the gradients are judged against the values as returned
        models = {k: vfactor * m for k, m in models.items()}
        res.options["value factor"] = vfactor
    g = np.asarray(weights)
    coef = g @ models[conv]  # sum_r g_r v_r
    want = ref.grads(coef)
    problems, patterns = ([vproblem] if vproblem else []), {}
    rtol_g = grad_rtol(dtype, plan.ref_kw)
    for name in diff:
        got = [o[1].get(name) for o in out]
        if name in entry.scalars:
            _check_scalar(name, got, want[name] / W, rtol_g, res, problems, patterns, W)
            continue
        got_full = np.concatenate([np.zeros_like(ref.rows(want[name], r)) if x is None else x
                                   for r, x in enumerate(got)])
        _check_input(name, got_full, want[name], ref, models[conv], g, rtol_g, res, problems,
                     patterns, plan, conv)
    res.value_rel_err = _rel(np.array([float(v) for v in values]),
                             np.array([ref.value(c) for c in models[conv]]))
    res.options["patterns"] = patterns
    if problems:
        res.status = "fail"
        res.message = "; ".join(problems)
    return res


def _rel(a, b) -> float:
    d = np.abs(a - b)
    s = np.maximum(np.abs(b), 1e-300)
    return float(np.max(d / s)) if np.all(np.isfinite(a)) else math.inf


def _grad_ok(got, want, rtol) -> tuple[bool, float]:
    scale = float(np.max(np.abs(want), initial=0.0))
    err = float(np.max(np.abs(got - want), initial=0.0)) if np.all(np.isfinite(got)) else math.inf
    tol = rtol * scale + 1e-12 * max(scale, 1.0)
    return err <= tol, err / scale if scale > 0 else err


def _check_scalar(name, got, want_mean, rtol, res, problems, patterns, W) -> None:
    if any(x is None for x in got):
        problems.append(f"gradient of `{name}`: not connected on rank(s) "
                        f"{[r for r, x in enumerate(got) if x is None]}")
        patterns[name] = "not connected"
        res.grads[name] = {"rel_err": math.inf, "ok": False}
        return
    mean = float(np.mean([float(x) for x in got]))
    ok, rel = _grad_ok(np.asarray(mean), np.asarray(want_mean), rtol)
    res.grads[name] = {"rel_err": rel, "ok": ok, "err_over_tol": rel / rtol}
    if ok:
        return
    ratio = mean / want_mean if want_mean else math.inf
    for k, f in (("W", W), ("1/W", 1 / W)):
        if abs(ratio - f) <= 1e-3 * f and W > 1:
            patterns[name] = f"off by {k}"
            problems.append(f"gradient of `{name}` (mean over ranks): {mean:.6g} vs reference "
                            f"{want_mean:.6g}: off by {k}")
            return
    patterns[name] = f"factor {ratio:.4g}"
    problems.append(f"gradient of `{name}` (mean over ranks): {mean:.6g} vs reference {want_mean:.6g} "
                    f"(ratio {ratio:.4g})")


def _check_input(name, got, want, ref, model, g, rtol, res, problems, patterns, plan, conv) -> None:
    W = len(ref.sizes)
    ok, rel = _grad_ok(got, want, rtol)
    res.grads[name] = {"rel_err": rel, "ok": ok, "err_over_tol": rel / rtol}
    if ok:
        return
    # the hypotheses, each a gradient the ranks would produce
    own = np.concatenate([ref.rows(ref.grads(g[r] * model[r])[name], r) for r in range(W)])
    hyps = {"off by W": W * want, "off by 1/W": want / W, "own block only": own,
            "own block only, x W": W * own}
    cols = _columns_lost(name, ref, model, g, plan)
    if cols is not None:
        hyps["column terms lost"] = cols
    for label, h in hyps.items():
        if _grad_ok(got, h, max(rtol, 1e-6))[0] and not _grad_ok(h, want, rtol)[0]:
            patterns[name] = label
            problems.append(f"gradient of `{name}`: {_PATTERN_TEXT[label]} (rel err {fmt(rel)})")
            return
    zero = [r for r in range(W) if not np.any(ref.rows(got, r))]
    patterns[name] = "other"
    problems.append(f"gradient of `{name}` differs (rel err {fmt(rel)}"
                    + (f"; zero on rank(s) {zero}" if zero else "") + ")")


_PATTERN_TEXT = {
    "off by W": "W times the reference",
    "off by 1/W": "1/W times the reference",
    "own block only": "each rank's is the gradient of its own loss only (right on its own block, "
                      "the other ranks' terms missing)",
    "own block only, x W": "each rank's is W times the gradient of its own loss only",
    "column terms lost": "only the query (row) terms: the gathered keys carry no gradient",
}


def _columns_lost(name, ref, model, g, plan):
    """The gradient when every gathered array is detached: each rank's own loss through its
    rows' queries (anchors) only; info_nce (one-way and symmetric) only."""
    if ref.entry.name != "info_nce" or name not in ("query", "key"):
        return None
    W = len(ref.sizes)
    n = ref.args[0].shape[0]
    symmetric = bool(ref.kw.get("symmetric", False))
    out = np.zeros_like(ref.args[0])
    for r in range(W):
        lo, hi = sum(ref.sizes[:r]), sum(ref.sizes[:r + 1])
        c = g[r] * model[r]
        if not symmetric:
            if name == "key":
                continue
            kw = {k: v for k, v in ref.kw.items()}
            _, back = vjp(ref.entry.public, *ref.args, **kw, reduction="none")
            out[lo:hi] = back(c)["query"][lo:hi]
            continue
        kw = {k: v for k, v in ref.kw.items() if k != "symmetric"}
        q, k = ref.args[0], ref.args[1]
        # symmetric terms t_i = (row_i + col_i)/2: rows are query q_i vs keys, columns key k_i vs queries
        first, second = (q, k) if name == "query" else (k, q)
        _, back = vjp(ref.entry.public, first, second, **kw, reduction="none")
        out[lo:hi] = back(c[:n] / 2)["query"][lo:hi]
    return out


def _diagnose(report: VerifyReport) -> list[str]:
    """Name the sharded bug from the patterns of the failing cases."""
    pats: dict[str, dict[str, int]] = {}
    for r in report.failures:
        for name, p in (r.options.get("patterns") or {}).items():
            pats.setdefault(p, {}).setdefault(name, 0)
            pats[p][name] += 1
    out = []
    for p, names in pats.items():
        which = ", ".join(f"`{n}`" for n in sorted(names))
        if p == "off by W" and set(names) <= {"temperature"}:
            out.append(f"{which}: the replicas' mean gradient is W times the reference: each "
                       "replica gets the sum over ranks (an all_reduce(SUM) of the temperature's or "
                       "logit scale's gradient, as Inf-CL's GradientGather), and DDP's mean keeps it")
            continue
        text = _DIAG.get(p)
        if text:
            out.append(f"{which}: {text}")
    off_w = [r for r in report.failures if "the loss value is off by W" in r.message]
    convs = {r.options.get("value convention") for r in off_w}
    if off_w and "own block only" in pats and convs == {"share"}:
        out.append("each rank returns W times its share and its gradient is that of its own value "
                   "only: the W does not make up for the missing cross-rank terms (the other ranks' "
                   "rows, gathered without gradient, never send theirs back), so DDP's mean is not "
                   "the single-device gradient even with equal upstream weights "
                   "(pytorch-metric-learning's DistributedLossWrapper(efficient=True))")
    elif off_w and "own block only" in pats and convs == {"global"}:
        out.append("the value is W times the loss and each rank's gradient is that of its own value "
                   "only: with every rank's upstream weight equal, DDP's mean of these gradients is "
                   "exactly the single-device gradient of the loss (the factor W replaces the "
                   "cross-rank sum, as pytorch-metric-learning's DistributedLossWrapper(efficient=False) "
                   "does); with "
                   "unequal weights, or read as each rank's loss, it is not")
    elif any("the loss value is off by" in r.message for r in report.failures):
        out.append("the loss value is off by a factor of W or 1/W on every rank (a sum over ranks "
                   "where a mean is meant, or a loss computed on the whole gathered batch and scaled "
                   "by W)")
    return out


_DIAG = {
    "own block only": (
        "the cross-rank gradient sum is missing: each rank's gradient is right on its own "
        "(diagonal) block only and the other ranks' terms contribute nothing. A collective that "
        "autograd does not see (dist.all_gather with the local slice put back: OpenCLIP's "
        "defaults), or a gather whose backward returns this rank's slice without summing over "
        "ranks (solo-learn's GatherLayer, lightly before PR #1531). Under DDP's mean this is "
        "(1/W) of the gradient when every rank returns the global loss"),
    "own block only, x W": (
        "each rank's gradient is W times that of its own loss only: the cross-rank sum is "
        "replaced by a factor W. Exact under DDP's mean only when every rank's upstream "
        "weight is the same"),
    "column terms lost": (
        "column terms lost: only the query (row) terms carry gradient, the gathered keys "
        "carry none, not even this rank's own (a gather without gradient: OpenCLIP's "
        "local_loss=True without gather_with_grad)"),
    "off by W": "the gradient is W times the reference (a sum over ranks where a mean is meant)",
    "off by 1/W": "the gradient is 1/W times the reference (an all_reduce(AVG) or a mean over ranks "
                  "in the backward where the sum is due: DisCo-CLIP's gather)",
    "not connected": "the replicated parameter's gradient is not connected on some rank",
}
