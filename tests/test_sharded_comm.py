"""The communicators of sharded batches, each against the same expected results.

One set of rank programs (module-level functions ``prog_*(comm, ...)``) and one set of
cases (``_cases(W)``: each rank's arguments and a check of every rank's results) run on

- :class:`~nce_ref.sharded.ThreadGroup` (W threads), W in {1, 2, 3, 4};
- :class:`~nce_ref.sharded.TorchCommunicator` over gloo, W in {1, 2, 3, 4}, on a pool of
  4 worker processes (:class:`~nce_ref.testing.sharded.GlooPool`, one per module);
- :class:`~nce_ref.sharded.MPICommunicator`, 3 processes under ``mpiexec`` running this
  file as a script (``python tests/test_sharded_comm.py mpi OUTDIR``);
- :class:`~nce_ref.sharded.JaxCommunicator` in ``jax.shard_map`` over 4 host devices
  (``XLA_FLAGS`` must be set before JAX starts: a subprocess, ``... jax OUTDIR``).

Shards are unequal with a rank of 0 rows where the framework allows (all but JAX), and
torch/MPI inputs are non-contiguous (Fortran order).  A rank that skips a collective
makes the others raise ``TimeoutError`` within the communicator's timeout.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from nce_ref.sharded import ShardingError, ThreadGroup, agree
from nce_ref.testing import atol_for, eps_of

# multi-process: the adapters over gloo (W = 1..4), MPI (mpiexec -n 3) and JAX subprocesses: ~30 s; the README's default run keeps the in-process
# tests (tests/test_sharded.py) and one real DDP step (tests/test_sharded_processes.py), CI runs these with -m slow
pytestmark = pytest.mark.slow

HERE = pathlib.Path(__file__).resolve()
ROOT = HERE.parent.parent
WS = (1, 2, 3, 4)
#: shard sizes per W: unequal, with a rank of 0 rows from W = 3 on
SIZES = {1: [3], 2: [3, 1], 3: [2, 0, 4], 4: [1, 3, 0, 2]}
D = 3
COMM_TIMEOUT = 2.0


# -- rank programs (module level: picklable for the process pool) --------------------

def prog_gather(comm, x, sizes):
    return comm.gather_rows(x, sizes)


def prog_gather_two(comm, a, b, sizes):
    return comm.gather_rows(a, sizes), comm.gather_rows(b, sizes)


def prog_reduce(comm, dx, sizes):
    return comm.reduce_rows(dx, sizes)


def prog_all_sum(comm, x):
    return comm.all_sum(x)


def prog_ring(comm, x, recv_rows):
    return comm.ring_pass(x, recv_rows)


def prog_object(comm, obj):
    return comm.all_gather_object(obj)


def prog_agree(comm, meta, error):
    """``agree``'s result, or the ``ShardingError`` it raised (returned, to compare the ranks')."""
    try:
        return agree(comm, meta, error)
    except ShardingError as e:
        return e


def prog_skip(comm, skipper, x):
    """Rank ``skipper`` never reaches the ``all_sum``; the others return their
    ``TimeoutError`` and how long it took (and, on torch, the error of a second call)."""
    if comm.rank == skipper:
        return "skipped"
    t0 = time.monotonic()
    try:
        comm.all_sum(x)
    except TimeoutError as e:
        elapsed = time.monotonic() - t0
        if getattr(comm, "broken", None) is not None:
            try:
                comm.all_sum(x)
            except RuntimeError as again:
                e.again = str(again)
        return e, elapsed
    return "no timeout", time.monotonic() - t0


def prog_hang(comm, seconds, x):
    """Rank W - 1 sleeps (never answers in time); the others meet a collective it never reaches."""
    if comm.rank == comm.size - 1:
        time.sleep(seconds)
        return "slept"
    return prog_skip(comm, comm.size - 1, x)


# -- cases: arguments per rank and the check of the results --------------------------

def _rolled(blocks, r):
    W = len(blocks)
    return np.concatenate([blocks[(r + s) % W] for s in range(W)], axis=0)


def _close(got, want):
    got = np.asarray(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=16 * eps_of("float64"), atol=atol_for("float64"))


def _cases(W: int, sizes: list[int] | None = None):
    """``{name: (prog, args_per_rank, check)}``; ``check(results)`` takes every rank's
    result as NumPy arrays (or exceptions)."""
    sizes = SIZES[W] if sizes is None else sizes
    N = sum(sizes)
    rng = np.random.default_rng([20261124, W])
    offs = np.cumsum([0, *sizes])
    cases = {}

    shards = [rng.standard_normal((n, D)) for n in sizes]

    def check_gather(res):
        for r in range(W):
            np.testing.assert_array_equal(np.asarray(res[r]), _rolled(shards, r), err_msg=f"rank {r}")
    cases["gather_rows"] = (prog_gather, [(shards[r], sizes) for r in range(W)], check_gather)

    labels = [rng.integers(-5, 5, size=n) for n in sizes]  # 1-d int64 (column labels)
    flags = [rng.random((n, 2)) < 0.5 for n in sizes]  # bool

    def check_gather_labels(res):
        for r in range(W):
            got = np.asarray(res[r][0]), np.asarray(res[r][1])
            assert got[0].dtype == np.int64 and got[1].dtype == np.bool_, (got[0].dtype, got[1].dtype)
            np.testing.assert_array_equal(got[0], _rolled(labels, r), err_msg=f"rank {r}")
            np.testing.assert_array_equal(got[1], _rolled(flags, r), err_msg=f"rank {r}")
    cases["gather_labels"] = (prog_gather_two, [(labels[r], flags[r], sizes) for r in range(W)],
                              check_gather_labels)

    # rank r's gradient in rank order, G[r]; it sends it in its rolled order
    G = [rng.standard_normal((N, D)) for _ in range(W)]
    dx = [_rolled([G[r][offs[q]:offs[q + 1]] for q in range(W)], r) for r in range(W)]

    def check_reduce(res):
        for q in range(W):
            want = G[0][offs[q]:offs[q + 1]]
            for r in range(1, W):
                want = want + G[r][offs[q]:offs[q + 1]]
            _close(res[q], want)
    cases["reduce_rows"] = (prog_reduce, [(dx[r], sizes) for r in range(W)], check_reduce)

    small = [rng.standard_normal(2) for _ in range(W)]

    def check_sum(res):
        want = small[0]
        for s in small[1:]:
            want = want + s
        for r in range(W):
            _close(res[r], want)
    cases["all_sum"] = (prog_all_sum, [(small[r],) for r in range(W)], check_sum)

    def check_ring(res):
        for r in range(W):
            np.testing.assert_array_equal(np.asarray(res[r]), shards[(r - 1) % W], err_msg=f"rank {r}")
    cases["ring_pass"] = (prog_ring, [(shards[r], sizes[(r - 1) % W]) for r in range(W)], check_ring)

    objs = [{"rank": r, "rows": sizes[r], "name": f"shard-{r}"} for r in range(W)]

    def check_object(res):
        for r in range(W):
            assert res[r] == objs, (r, res[r])
    cases["all_gather_object"] = (prog_object, [(o,) for o in objs], check_object)

    bad = W - 1
    metas = [{"rows": n, "dim": D} for n in sizes]
    errs = [ValueError("x has 2 axes, 3 expected") if r == bad else None for r in range(W)]

    def check_agree_error(res):
        assert all(isinstance(e, ShardingError) for e in res), res
        assert len({str(e) for e in res}) == 1, [str(e) for e in res]
        assert f"rank {bad} of {W}: ValueError: x has 2 axes" in str(res[0])
    cases["agree_error"] = (prog_agree, [(metas[r], errs[r]) for r in range(W)], check_agree_error)

    def check_agree_ok(res):
        for r in range(W):
            assert res[r] == metas, res[r]
    cases["agree_ok"] = (prog_agree, [(metas[r], None) for r in range(W)], check_agree_ok)

    if W > 1:
        other = [dict(m, dim=D + 1) if r == bad else m for r, m in enumerate(metas)]

        def check_agree_meta(res):
            assert all(isinstance(e, ShardingError) for e in res), res
            assert len({str(e) for e in res}) == 1, [str(e) for e in res]
            assert "disagree on dim" in str(res[0]) and f"rank {bad}: {D + 1}" in str(res[0])
        cases["agree_meta"] = (prog_agree, [(other[r], None) for r in range(W)], check_agree_meta)
    return cases


def _check_skip(res, W, skipper, timeout):
    for r in range(W):
        if r == skipper:
            assert res[r] == "skipped"
            continue
        err, elapsed = res[r]
        assert isinstance(err, TimeoutError), (r, err)
        assert re.search(rf"\brank {r}\b", str(err)), str(err)
        assert timeout * 0.9 <= elapsed <= timeout + 3.0, (r, elapsed)


# -- ThreadGroup --------------------------------------------------------------------------

@pytest.mark.parametrize("W", WS)
def test_thread_group(W):
    for name, (prog, args, check) in _cases(W).items():
        try:
            check(ThreadGroup(W, timeout=10).run(prog, args))
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e


def test_agree_sees_a_key_that_only_another_rank_has():
    res = ThreadGroup(2).run(prog_agree, [({"rows": 2}, None), ({"rows": 2, "dim": 3}, None)])
    assert all(isinstance(e, ShardingError) for e in res), res
    assert "disagree on dim: rank 0: None, rank 1: 3" in str(res[0])


def test_thread_group_timeout():
    W = 3
    res = ThreadGroup(W, timeout=1.0).run(prog_skip, [(W - 1, np.ones(2))] * W)
    _check_skip(res, W, W - 1, 1.0)


# -- torch.distributed (gloo) -------------------------------------------------------------

@pytest.fixture(scope="module")
def pool():
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    from nce_ref.testing.sharded import GlooPool

    with GlooPool(max(WS), timeout=30.0) as p:
        yield p


def _torch_args(args):
    import torch

    def conv(a):
        if isinstance(a, np.ndarray):
            # Fortran order: a non-contiguous tensor whenever it has 2 axes of size > 1
            return torch.from_numpy(np.asfortranarray(a))
        return a
    return [tuple(conv(a) for a in t) for t in args]


def _to_numpy(res):
    import torch

    def conv(v):
        if isinstance(v, torch.Tensor):
            return v.numpy()
        if isinstance(v, tuple):
            return tuple(conv(u) for u in v)
        return v
    return [conv(v) for v in res]


@pytest.mark.parametrize("W", WS)
def test_torch_gloo(pool, W):
    import torch

    for name, (prog, args, check) in _cases(W).items():
        targs = _torch_args(args)
        if name in ("gather_rows", "reduce_rows", "ring_pass"):
            assert any(not t[0].is_contiguous() for t in targs), name
        res = pool.run(prog, targs, size=W, comm_timeout=10.0, return_exceptions=True)
        for r, v in enumerate(res):
            if isinstance(v, BaseException) and not isinstance(v, ShardingError):
                raise AssertionError(f"{name}: rank {r} raised") from v
            if isinstance(v, torch.Tensor):
                assert v.dtype == torch.float64, (name, v.dtype)
        try:
            check(_to_numpy(res))
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e


@pytest.mark.parametrize("W", [2, 3])
def test_torch_gloo_takes_and_returns_numpy_arrays(pool, W):
    """NumPy arrays through gloo (non-contiguous, Fortran order): the same results, as
    NumPy arrays of the same dtype; read-only inputs are copied, not written."""
    for name, (prog, args, check) in _cases(W).items():
        nargs = [tuple(np.asfortranarray(a) if isinstance(a, np.ndarray) else a for a in t)
                 for t in args]
        for t in nargs:
            for a in t:
                if isinstance(a, np.ndarray):
                    a.flags.writeable = False
        res = pool.run(prog, nargs, size=W, comm_timeout=10.0, return_exceptions=True)
        for r, v in enumerate(res):
            if isinstance(v, BaseException) and not isinstance(v, ShardingError):
                raise AssertionError(f"{name}: rank {r} raised") from v
            if name in ("gather_rows", "reduce_rows", "ring_pass", "all_sum"):
                assert isinstance(v, np.ndarray) and v.dtype == np.float64, (name, type(v))
        try:
            check(res)
        except AssertionError as e:
            raise AssertionError(f"{name} (NumPy): {e}") from e


def prog_info_nce_numpy(comm, q, k, algorithm):
    """A rank of the sharded CLIP loss on NumPy shards over gloo (NumPy kernels)."""
    import nce_ref

    v, g = nce_ref.value_and_grad(nce_ref.sharded.info_nce)(
        q, k, comm=comm, algorithm=algorithm, symmetric=True, temperature=0.3, block_size=3)
    assert isinstance(g["query"], np.ndarray) and isinstance(g["key"], np.ndarray)
    return float(v), g["query"], g["key"], float(g["temperature"])


@pytest.mark.parametrize("algorithm", ["gather", "ring"])
def test_torch_gloo_runs_the_sharded_loss_on_numpy_arrays(pool, algorithm):
    import nce_ref

    rng = np.random.default_rng(5)
    q, k = rng.standard_normal((11, 4)), rng.standard_normal((11, 4))
    bounds = [0, 3, 7, 11]
    args = [(q[a:b], k[a:b], algorithm) for a, b in zip(bounds[:-1], bounds[1:])]
    out = pool.run(prog_info_nce_numpy, args, size=3)
    v0, g0 = nce_ref.value_and_grad(nce_ref.info_nce)(q, k, symmetric=True, temperature=0.3)
    assert all(o[0] == out[0][0] for o in out)
    np.testing.assert_allclose(out[0][0], v0, rtol=1e-13)
    np.testing.assert_allclose(np.concatenate([o[1] for o in out]), g0["query"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.concatenate([o[2] for o in out]), g0["key"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out[0][3], float(g0["temperature"]), rtol=1e-12)


def test_torch_argument_errors(pool):
    """Raised on every rank before any collective (the group stays usable)."""
    import torch

    x = torch.zeros(2, D)
    cases = [(prog_gather, (x, [2]), ValueError, r"`sizes` must hold 2 non-negative"),
             (prog_gather, (x, [1, 1]), ValueError, r"`x` has 2 rows on rank \d; sizes\[\d\] = 1"),
             (prog_reduce, (x, [1, 2]), ValueError, r"`dx` has 2 rows on rank \d; sum\(sizes\) = 3"),
             (prog_ring, (x, -1), ValueError, r"`recv_rows` must be a non-negative int"),
             (prog_all_sum, ([0.0, 0.0],), TypeError,
              r"`x` must be a torch.Tensor or a NumPy array; got list")]
    starts = pool.starts
    for prog, args, cls, match in cases:
        for e in pool.run(prog, [args] * 2, size=2, return_exceptions=True):
            assert isinstance(e, cls) and re.search(match, str(e)), (match, e)
    pool.run(prog_all_sum, [(torch.ones(1),)] * 2, size=2)
    assert pool.starts == starts


def test_pool_reraises_a_rank_exception_with_its_traceback(pool):
    from nce_ref.testing.sharded import RemoteTraceback

    with pytest.raises(TypeError, match="must be a torch.Tensor") as info:
        pool.run(prog_all_sum, [([1.0],)] * 2, size=2)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "all_sum" in str(info.value.__cause__)


# These two kill or spoil the pool's group: last of the torch tests.

def test_torch_timeout(pool):
    """A rank that skips a collective: the others' TimeoutError within the timeout."""
    import torch

    W = 3
    res = pool.run(prog_skip, [(W - 1, torch.ones(2))] * W, size=W, comm_timeout=COMM_TIMEOUT,
                   timeout=20.0)
    _check_skip(res, W, W - 1, COMM_TIMEOUT)
    assert "all_reduce (all_sum)" in str(res[0][0])
    assert "process group is unusable" in str(res[0][0])
    assert "unusable since an earlier collective failed" in res[0][0].again  # refused at once


def test_pool_timeout_kills_and_names_the_silent_rank(pool):
    import torch

    W = 4
    starts = pool.starts
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"rank\(s\) \[3\] of 4 did not answer") as info:
        pool.run(prog_hang, [(60.0, torch.ones(1))] * W, size=W, comm_timeout=COMM_TIMEOUT,
                 timeout=COMM_TIMEOUT + 2)
    assert time.monotonic() - t0 < COMM_TIMEOUT + 2 + 20  # + a fresh start of the workers
    assert not pool.running
    assert pool.starts == starts + 1  # the previous test's pending collective: new workers
    answers = info.value.answers
    assert sorted(answers) == [0, 1, 2]
    _check_skip([*answers.values(), "skipped"], W, W - 1, COMM_TIMEOUT)


# -- MPI ------------------------------------------------------------------------------------

def _mpiexec() -> str:
    pytest.importorskip("mpi4py")
    for candidate in (pathlib.Path(sys.executable).parent / "mpiexec", shutil.which("mpiexec")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.skip("no mpiexec (pip install mpich)")


def _subprocess_env(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _run_script(cmd, out: pathlib.Path, timeout: float, **env):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=_subprocess_env(**env), cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd[0]} did not finish within {timeout} s:\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_mpi(tmp_path):
    W = 3
    mpiexec = _mpiexec()
    _run_script([mpiexec, "-n", str(W), sys.executable, str(HERE), "mpi", str(tmp_path)],
                tmp_path, timeout=60)
    per_rank = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(W)]
    for name, (_, _, check) in _cases(W).items():
        res = [p[name] for p in per_rank]
        for r, v in enumerate(res):
            if isinstance(v, BaseException) and not isinstance(v, ShardingError):
                raise AssertionError(f"{name}: rank {r} raised {v!r}")
        try:
            check(res)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e
    _check_skip([p["skip"] for p in per_rank], W, W - 1, COMM_TIMEOUT)
    assert "Iallreduce (all_sum)" in str(per_rank[0]["skip"][0])


def _mpi_main(out: pathlib.Path):
    """Each rank runs every case (its own arguments) and pickles its results."""
    from nce_ref.sharded import MPICommunicator

    comm = MPICommunicator(timeout=20.0)
    W, r = comm.size, comm.rank
    results = {}
    for name, (prog, args, _) in _cases(W).items():
        a = tuple(np.asfortranarray(v) if isinstance(v, np.ndarray) else v for v in args[r])
        try:
            results[name] = prog(comm, *a)
        except Exception as e:  # noqa: BLE001 - checked by the test
            results[name] = e
    # last: a rank that skips a collective spoils the communicator
    comm.timeout = COMM_TIMEOUT
    results["skip"] = prog_skip(comm, W - 1, np.ones(2))
    (out / f"rank{r}.pkl").write_bytes(pickle.dumps(results))
    if r == W - 1:
        time.sleep(COMM_TIMEOUT + 0.5)  # exit after the others timed out


# -- JAX ------------------------------------------------------------------------------------

def test_jax(tmp_path):
    pytest.importorskip("jax")
    _run_script([sys.executable, str(HERE), "jax", str(tmp_path)], tmp_path, timeout=120,
                XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    got = pickle.loads((tmp_path / "jax.pkl").read_bytes())
    for W in WS:
        cases = _cases(W, [2] * W)
        for name in ("gather_rows", "gather_labels", "reduce_rows", "all_sum", "ring_pass"):
            try:
                cases[name][2](got[W][name])
            except AssertionError as e:
                raise AssertionError(f"W = {W}, {name}: {e}") from e
        # one program: every device's metadata are rank 0's
        assert got[W]["all_gather_object"] == [cases["all_gather_object"][1][0][0]] * W
        assert got[W]["agree_ok"] == [cases["agree_ok"][1][0][0]] * W
        assert isinstance(got[W]["agree_error"], ShardingError), got[W]["agree_error"]
        assert "ValueError: bad" in str(got[W]["agree_error"])
        if W > 1:
            assert isinstance(got[W]["unequal"], ValueError) and "equal shards" in str(got[W]["unequal"])


def _jax_main(out: pathlib.Path):
    """Every case of equal shards, run in ``jax.shard_map`` on W of the 4 host devices;
    each device's result stacked along a leading axis and split back per rank."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from nce_ref.sharded import JaxCommunicator

    jax.config.update("jax_enable_x64", True)
    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:  # older JAX
        from jax.experimental.shard_map import shard_map
    assert jax.device_count() >= max(WS), jax.devices()
    got = {}
    for W in WS:
        mesh = Mesh(np.array(jax.devices()[:W]), ("batch",))
        res = got[W] = {}
        for name, (prog, args, _) in _cases(W, [2] * W).items():
            if name in ("agree_error", "agree_meta"):
                continue
            arrays = [i for i, v in enumerate(args[0]) if isinstance(v, np.ndarray)]
            statics = {i: v for i, v in enumerate(args[0]) if i not in arrays}
            if not arrays:  # metadata: the same on every device by construction (rank 0's)
                captured = []

                def meta_only(prog=prog, a=args[0], captured=captured):
                    captured.append(prog(JaxCommunicator("batch"), *a))
                    return jnp.zeros((1,))
                shard_map(meta_only, mesh=mesh, in_specs=(), out_specs=P("batch"))()
                res[name] = captured[0]
                continue
            stacked = [np.stack([args[r][i] for r in range(W)]) for i in arrays]

            def per_device(*xs, prog=prog, arrays=arrays, statics=statics):
                comm = JaxCommunicator("batch")
                full = dict(statics)
                full.update({i: x[0] for i, x in zip(arrays, xs)})
                out = prog(comm, *[full[i] for i in sorted(full)])
                return tuple(o[None] for o in out) if isinstance(out, tuple) else out[None]

            f = jax.jit(shard_map(per_device, mesh=mesh, in_specs=tuple(P("batch") for _ in arrays),
                                  out_specs=P("batch")))
            outs = f(*[jnp.asarray(s) for s in stacked])
            if isinstance(outs, tuple):
                res[name] = [tuple(np.asarray(o)[r] for o in outs) for r in range(W)]
            else:
                res[name] = [np.asarray(outs)[r] for r in range(W)]

        def bad(*_):
            comm = JaxCommunicator("batch")
            agree(comm, {"rows": 2}, ValueError("bad shard"))
            return jnp.zeros((1,))

        def unequal(x, W=W):
            JaxCommunicator("batch").gather_rows(x, [2] + [1] * (W - 1))
            return x

        for key, fn, ins in (("agree_error", bad, ()), ("unequal", unequal, (jnp.zeros((2 * W, D)),))):
            try:
                shard_map(fn, mesh=mesh, in_specs=tuple(P("batch") for _ in ins),
                          out_specs=P("batch"))(*ins)
                res[key] = None
            except Exception as e:  # noqa: BLE001 - checked by the test
                res[key] = e
    (out / "jax.pkl").write_bytes(pickle.dumps(got))


if __name__ == "__main__":
    {"mpi": _mpi_main, "jax": _jax_main}[sys.argv[1]](pathlib.Path(sys.argv[2]))
