"""Cross-batch memory (``nce_ref.memory``): the queue's state and the two orders, against
pytorch-metric-learning's ``CrossBatchMemory`` (XBM's order) and lightly's memory bank
(MoCo's order), step by step on one stream of float64 batches, and the three pitfalls
that the peers' issue trackers record (PML #488, #24, #141).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nce_ref
from nce_ref import MemoryQueue, cross_batch_args
from nce_ref.testing import rtol_for
from tests._helpers import assert_close, assert_like

TAU = 0.1
N, D, M = 6, 5, 16          # batch, dimension, memory: 16 % 6 != 0, so the ring wraps mid-batch
STEPS = 6                   # ptr 0, 6, 12, 2 (wrapped: filled), 8, 14, 4


def _stream(seed=0, n=N, d=D, steps=STEPS, classes=3):
    """``steps`` float64 batches with integer labels; batch 3 repeats a row of batch 1
    (same values, same label: the same sample seen twice)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        x = rng.standard_normal((n, d))
        y = rng.integers(0, classes, n).astype(np.int64)
        if t == 3:
            x[0], y[0] = out[1][0][2], out[1][1][2]
        out.append((x, y))
    return out


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _supcon_dense(x, y, ref, ref_labels, own, tau=TAU):
    """SupCon (``positives="out"``) of each anchor against the rows of ``ref``, the row
    ``own[i]`` left out (own = None: none), anchors without a positive left out of the
    mean: the formula, written independently of nce_ref."""
    z = _unit(x) @ _unit(ref).T / tau
    keep = np.ones(z.shape, dtype=bool)
    if own is not None:
        for i, j in enumerate(own):
            if j >= 0:
                keep[i, j] = False
    pos = (y[:, None] == ref_labels[None, :]) & keep
    zk = np.where(keep, z, -np.inf)
    lse = np.log(np.sum(np.exp(zk - zk.max(1, keepdims=True)), axis=1)) + zk.max(1)
    has = pos.any(1)
    terms = lse[has] - (np.where(pos, z, 0.0).sum(1) / np.maximum(pos.sum(1), 1))[has]
    return float(terms.mean())


# -- the state ------------------------------------------------------------------------------

def test_enqueue_fills_in_slot_order_then_wraps():
    q = MemoryQueue.empty(5, 2, xp=np, dtype=np.float64)
    assert (q.size, q.dim, q.ptr, q.filled, q.labelled) == (5, 2, 0, 0, True)
    assert q.rows().shape == (0, 2) and q.labels().shape == (0,)
    x1, x2 = np.arange(6.0).reshape(3, 2), -np.arange(1.0, 7.0).reshape(3, 2)
    q1 = q.enqueue(x1, np.array([0, 1, 2]))
    assert (q1.ptr, q1.filled) == (3, 3)
    np.testing.assert_array_equal(q1.rows(), x1)
    np.testing.assert_array_equal(q1.own(3), [0, 1, 2])
    q2 = q1.enqueue(x2, np.array([3, 4, 5]))             # slots 3, 4, then 0
    assert (q2.ptr, q2.filled) == (1, 5)
    np.testing.assert_array_equal(q2.rows(), np.stack([x2[2], x1[1], x1[2], x2[0], x2[1]]))
    np.testing.assert_array_equal(q2.labels(), [5, 1, 2, 3, 4])
    np.testing.assert_array_equal(q2.own(3), [3, 4, 0])  # x2[i] is at rows()[own[i]]
    np.testing.assert_array_equal(q2.rows()[q2.own(3)], x2)
    q3 = q2.enqueue(np.ones((5, 2)), np.full(5, 9))      # a batch of exactly `size` rows
    assert (q3.ptr, q3.filled) == (1, 5)
    np.testing.assert_array_equal(q3.own(5), [1, 2, 3, 4, 0])


@given(size=st.integers(1, 9), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=8))
def test_the_ring_holds_the_last_rows_enqueued(size, sizes):
    """Whatever the batch sizes (<= size): the filled slots hold the last ``min(total,
    size)`` rows enqueued, oldest at slot ``ptr`` once full (at 0 before), and ``own(n)``
    finds the last batch's rows, in order.  Each row carries its serial number as label
    and value."""
    q = MemoryQueue.empty(size, 1, xp=np, dtype=np.float64)
    seen: list[int] = []
    for n in sizes:
        n = min(n, size)
        ids = np.arange(len(seen), len(seen) + n)
        q = q.enqueue(ids[:, None].astype(np.float64), ids)
        seen.extend(ids.tolist())
        last = seen[-size:]
        assert q.filled == len(last) and q.ptr == len(seen) % size
        chronological = np.roll(q.labels(), -q.ptr) if q.filled == size else q.labels()
        np.testing.assert_array_equal(chronological, last)
        np.testing.assert_array_equal(q.rows()[:, 0], q.labels())
        np.testing.assert_array_equal(q.labels()[q.own(n)], ids)


def test_enqueue_returns_a_new_queue_and_writes_no_array():
    x0, y0 = np.zeros((4, 3)), np.zeros(4, dtype=np.int64)
    for a in (x0, y0):
        a.flags.writeable = False                      # any write into them raises
    q = MemoryQueue(x0, y0, 0, 0)
    batch, labels = np.ones((3, 3)), np.array([1, 2, 3])
    batch.flags.writeable = labels.flags.writeable = False
    q1 = q.enqueue(batch, labels)
    q2 = q1.enqueue(batch, labels)
    assert q.filled == 0 and q1.filled == 3 and q2.filled == 4
    np.testing.assert_array_equal(x0, 0.0)
    np.testing.assert_array_equal(q1.rows(), 1.0)
    assert q1.slots is not q2.slots and not np.shares_memory(q2.slots, batch)
    with pytest.raises(AttributeError):
        q1.ptr = 0                                     # frozen


def test_memory_queue_on_every_backend(backend):
    """The state and one XBM step on each backend equal NumPy's: namespace, dtype and
    device kept, nothing written (the read-only NumPy backend raises on a write)."""
    data = _stream(seed=1, n=4, d=3, steps=3)
    size = 7
    q_np = MemoryQueue(np.zeros((size, 3)), np.zeros(size, dtype=np.int64), 0, 0)
    q_b = MemoryQueue(backend.asarray(np.zeros((size, 3)), "float64"),
                      backend.asarray(np.zeros(size, dtype=np.int64), "int64"), 0, 0)
    for x, y in data:
        xb, yb = backend.asarray(x, "float64"), backend.asarray(y, "int64")
        q_np, q_b = q_np.enqueue(x, y), q_b.enqueue(xb, yb)
        rows = assert_like(q_b.rows(), backend, dtype="float64", shape=(q_np.filled, 3),
                           ref_array=xb)
        np.testing.assert_array_equal(rows, q_np.rows())
        np.testing.assert_array_equal(backend.to_numpy(q_b.labels()), q_np.labels())
        np.testing.assert_array_equal(backend.to_numpy(q_b.own(4)), q_np.own(4))
    assert (q_b.ptr, q_b.filled) == (5, 7)
    want = nce_ref.supcon(x, y, **q_np.ref_args(own=4), temperature=TAU)   # the wrapped ring
    got = nce_ref.supcon(xb, yb, **q_b.ref_args(own=4), temperature=TAU)
    assert_close(assert_like(got, backend, dtype="float64", shape=()), want,
                 tol_scale=backend.tol_scale)


def test_empty_uses_the_library_defaults_and_the_given_dtype():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    q = MemoryQueue.empty(3, 2, xp=torch)
    assert q.slots.dtype == torch.get_default_dtype() and q.slot_labels.dtype == torch.int64
    q = MemoryQueue.empty(3, 2, xp=torch, dtype=torch.float64, labelled=False)
    assert q.slots.dtype == torch.float64 and q.slot_labels is None


def test_enqueued_rows_are_cut_from_autograd():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = torch.ones((2, 3), dtype=torch.float64, requires_grad=True)
    q = MemoryQueue.empty(4, 3, xp=torch, dtype=torch.float64, labelled=False).enqueue(x * 2)
    assert not q.slots.requires_grad and not q.rows().requires_grad
    assert bool(torch.all(q.rows() == 2.0))


def test_enqueued_rows_stop_jax_gradients():
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    jnp = jax.numpy
    q = MemoryQueue.empty(4, 3, xp=jnp, dtype=jnp.float32, labelled=False)
    g = jax.grad(lambda x: jnp.sum(q.enqueue(x).rows() ** 2) + jnp.sum(x))(jnp.ones((2, 3), dtype=q.slots.dtype))
    np.testing.assert_array_equal(np.asarray(g), 1.0)   # only the direct term


@pytest.mark.parametrize("call, match", [
    (lambda q: q.enqueue(np.ones((6, 2)), np.zeros(6, dtype=np.int64)), "`batch` must have 1 to size"),
    (lambda q: q.enqueue(np.ones((2, 3)), np.zeros(2, dtype=np.int64)), r"`batch` must have shape \(n, 2\)"),
    (lambda q: q.enqueue(np.ones((2, 2), dtype=np.float32), np.zeros(2, dtype=np.int64)), "`batch` must have the queue's dtype"),
    (lambda q: q.enqueue(np.ones((2, 2))), "`labels` is required"),
    (lambda q: q.enqueue(np.ones((2, 2)), np.zeros(3, dtype=np.int64)), r"`labels` must have shape \(2,\)"),
    (lambda q: q.enqueue(np.ones((2, 2)), np.zeros(2, dtype=np.int32)), "`labels` must have the queue's label dtype"),
    (lambda q: q.enqueue([[1.0, 2.0]], np.zeros(1, dtype=np.int64)), "`batch` must be an array"),
    (lambda q: q.own(1), "`n` must be <= filled = 0"),
    (lambda q: MemoryQueue(q.slots, q.slot_labels, 2, 0), "`ptr` must equal `filled`"),
    (lambda q: MemoryQueue(q.slots, q.slot_labels, 5, 5), "`ptr` must be < size"),
    (lambda q: MemoryQueue(q.slots, q.slot_labels[:3], 0, 0), r"`slot_labels` must have shape \(5,\)"),
    (lambda q: MemoryQueue(np.zeros((5, 2), dtype=np.int64), None, 0, 0), "`slots` must have a real floating"),
    (lambda q: MemoryQueue.empty(0, 2, xp=np), "`size` must be >= 1"),
    (lambda q: MemoryQueue.empty(3, 2, xp=np, dtype=np.int64), "`dtype` must be a real floating"),
    (lambda q: MemoryQueue.empty(3, 2, xp="numpy"), "`xp` must be an array library"),
    (lambda q: cross_batch_args(np.ones(3)), "`memory` must be 2-D"),
    (lambda q: cross_batch_args(np.ones((3, 2)), np.ones(2)), r"`memory_labels` must have shape \(3,\)"),
    (lambda q: cross_batch_args(np.ones((3, 2)), own=np.ones(2)), "`own` must have an integer dtype"),
])
def test_bad_input_is_refused_naming_the_argument(call, match):
    q = MemoryQueue.empty(5, 2, xp=np, dtype=np.float64)
    with pytest.raises((ValueError, TypeError), match=match):
        call(q)


def test_an_unlabelled_queue_refuses_labels():
    q = MemoryQueue.empty(5, 2, xp=np, labelled=False)
    with pytest.raises(ValueError, match="`labels` given to a queue without labels"):
        q.enqueue(np.ones((2, 2)), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="holds no labels"):
        q.labels()
    assert sorted(q.enqueue(np.ones((2, 2))).ref_args()) == ["ref"]


# -- the pitfalls ---------------------------------------------------------------------------

def _xbm_stream(data, size=M):
    """XBM's order with nce_ref: ``(x, y, queue after the enqueue, loss)`` per step."""
    q = MemoryQueue.empty(size, data[0][0].shape[1], xp=np, dtype=np.float64)
    for x, y in data:
        q = q.enqueue(x, y)
        yield x, y, q, nce_ref.supcon(x, y, **q.ref_args(own=len(x)), temperature=TAU)


def test_pml_141_the_batch_is_not_compared_with_its_own_copy_in_the_memory():
    """PML #141: after the batch is enqueued, each anchor's own copy sits in the memory
    and, unless excluded, is its most similar "positive" (similarity 1).  The own slots
    are excluded by index: the loss equals the dense formula without them, and keeping
    them (``ref_self`` omitted) gives the other, wrong, value."""
    for x, y, q, loss in _xbm_stream(_stream()):
        own = q.own(len(x))
        want = _supcon_dense(x, y, q.rows(), q.labels(), own)
        assert_close(loss, want)
        wrong = nce_ref.supcon(x, y, ref=q.rows(), ref_labels=q.labels(), temperature=TAU)
        assert_close(wrong, _supcon_dense(x, y, q.rows(), q.labels(), None))
        assert abs(float(wrong) - want) > 1e-3


def test_pml_24_xbm_enqueues_before_the_loss():
    """PML #24: enqueueing after the loss scores the batch against earlier batches only,
    so the pairs inside the batch never count.  In XBM's order the first step (an
    empty memory) is the batch against itself, the diagonal excluded: ``supcon(x, y)``;
    and every step equals the batch against [the rows kept from before ∪ the batch]."""
    data = _stream()
    prev = MemoryQueue.empty(M, D, xp=np, dtype=np.float64)
    for t, (x, y, q, loss) in enumerate(_xbm_stream(data)):
        if t == 0:
            assert_close(loss, nce_ref.supcon(x, y, temperature=TAU))
        own = q.own(len(x))
        old = np.setdiff1d(np.arange(q.filled), own)          # slots not overwritten
        ref = np.concatenate([q.rows()[old], x])
        ref_y = np.concatenate([q.labels()[old], y])
        self_idx = np.arange(len(old), len(old) + len(x))
        assert_close(loss, _supcon_dense(x, y, ref, ref_y, self_idx))
        if t > 0:   # the wrong order: the memory as it was, no in-batch pair
            late = nce_ref.supcon(x, y, **prev.ref_args(), temperature=TAU)
            assert abs(float(late) - float(loss)) > 1e-3
        prev = q


def test_pml_488_self_pairs_are_excluded_by_index_never_by_identity():
    """PML #488: PML drops the diagonal when ``ref_labels is labels`` (object
    identity), so two views passed with one labels tensor lose every true positive
    pair (i, i).  Here only ``ref_self`` excludes: the same object or a copy gives one
    value; the batch passed as its own ``ref`` keeps its diagonal unless ``ref_self``
    names it; a row equal to an anchor at another slot of the memory (the same sample
    enqueued at an earlier step) is a positive like any other."""
    rng = np.random.default_rng(3)
    x, x2 = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    y = np.array([0, 0, 1, 1, 2])
    same = nce_ref.supcon(x, y, ref=x2, ref_labels=y, temperature=TAU)
    copy = nce_ref.supcon(x, y, ref=x2.copy(), ref_labels=y.copy(), temperature=TAU)
    assert float(same) == float(copy)
    assert_close(same, _supcon_dense(x, y, x2, y, None))
    itself = nce_ref.supcon(x, y, ref=x, ref_labels=y, temperature=TAU)
    assert_close(itself, _supcon_dense(x, y, x, y, None))
    assert_close(nce_ref.supcon(x, y, ref=x, ref_labels=y, ref_self=np.arange(5), temperature=TAU),
                 nce_ref.supcon(x, y, temperature=TAU))
    # the stream's batch 3 repeats row 2 of batch 1: that older slot stays a positive
    data = _stream()
    for t, (x, y, q, loss) in enumerate(_xbm_stream(data)):
        if t == 3:
            rows = q.rows()
            dup = [j for j in range(q.filled) if np.array_equal(rows[j], x[0])]
            own = q.own(len(x))
            assert len(dup) == 2 and int(own[0]) in dup
            assert_close(loss, _supcon_dense(x, y, rows, q.labels(), own))
            also = own.copy()
            also[0] = -1
            kept = [j for j in dup if j != int(own[0])]
            # excluding the earlier copy as well would change the value
            fewer = _supcon_dense(x, y, np.delete(rows, kept, 0), np.delete(q.labels(), kept),
                                  np.where(own > kept[0], own - 1, own))
            assert abs(fewer - float(loss)) > 1e-6


def test_moco_order_the_keys_join_the_queue_after_the_loss():
    """MoCo: the queries are scored against the queue as it was; enqueueing the keys
    first would put each query's positive key among its negatives as well."""
    rng = np.random.default_rng(4)
    q = MemoryQueue.empty(8, 3, xp=np, dtype=np.float64, labelled=False)
    q = q.enqueue(rng.standard_normal((4, 3)))
    qs, ks = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss = nce_ref.info_nce(qs, ks, q.rows(), temperature=TAU)
    z = _unit(qs) @ _unit(np.concatenate([ks, q.rows()])).T / TAU
    cand = np.concatenate([np.diag(z)[:, None], z[:, 4:]], axis=1)
    want = np.mean(np.log(np.exp(cand).sum(1)) - np.diag(z))
    assert_close(loss, want)
    early = nce_ref.info_nce(qs, ks, q.enqueue(ks).rows(), temperature=TAU)
    assert float(early) > float(loss) + 1e-3


# -- against pytorch-metric-learning's CrossBatchMemory (XBM's order) -----------------------

def _has_ref(f) -> bool:
    return "ref" in inspect.signature(f).parameters


def _pml_cases():
    """(id, PML loss factory, nce_ref loss with its options)."""
    return [
        ("SupConLoss", lambda L: L.SupConLoss(temperature=TAU),
         nce_ref.supcon, dict(temperature=TAU, no_negative="zero")),
        ("ContrastiveLoss", lambda L: L.ContrastiveLoss(pos_margin=0.2, neg_margin=1.1),
         nce_ref.pairwise_contrastive,
         dict(pos_margin=0.2, neg_margin=1.1, normalize=True, reduction="mean_nonzero",
              split_pos_neg=True)),
        ("MultiSimilarityLoss", lambda L: L.MultiSimilarityLoss(),
         nce_ref.multi_similarity, dict()),
        ("TripletMarginLoss", lambda L: L.TripletMarginLoss(
            margin=3.0, distance=_lp_raw()), nce_ref.batch_triplet,
         dict(mining="all", margin=3.0, reduction="mean_nonzero")),
    ]


def _lp_raw():
    """PML's ``LpDistance`` without its row normalisation (``batch_triplet`` has none)."""
    from pytorch_metric_learning.distances import LpDistance

    return LpDistance(normalize_embeddings=False)


@pytest.mark.parametrize("case", _pml_cases(), ids=lambda c: c[0])
def test_pml_cross_batch_memory_step_by_step(case):
    """Six steps of PML ``CrossBatchMemory(loss, memory_size=16)`` and of a
    :class:`MemoryQueue` in XBM's order on one float64 stream of batches of 6: the
    memory not yet filled (steps 1-2), a batch that wraps the ring (step 3), a full
    ring; PML's memory, pointer and filled flag equal the queue's state, the loss
    values and the gradients with respect to the batch (PML detaches the memory; the
    gradient of ``ref`` is discarded) agree."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    L = pytest.importorskip("pytorch_metric_learning.losses",
                            reason="pytorch-metric-learning is not installed")
    name, make, loss, opts = case
    if not _has_ref(loss):
        pytest.fail(f"nce_ref.{loss.__name__} takes no `ref` yet (issue 14)")
    pml = L.CrossBatchMemory(make(L), D, memory_size=M)
    q = MemoryQueue.empty(M, D, xp=np, dtype=np.float64)
    vg = nce_ref.value_and_grad(loss)
    for t, (x, y) in enumerate(_stream()):
        xt = torch.tensor(x, requires_grad=True)
        v_pml = pml(xt, torch.tensor(y))
        v_pml.backward()
        q = q.enqueue(x, y)
        assert pml.queue_idx == q.ptr and pml.has_been_filled == (q.filled == M), t
        np.testing.assert_array_equal(pml.embedding_memory.numpy(), q.slots)
        np.testing.assert_array_equal(pml.label_memory.numpy()[:q.filled], q.labels())
        v, g = vg(x, y, **q.ref_args(own=len(x)), **opts)
        first = next(iter(g))
        assert_close(v, v_pml.item(), err_msg=f"{name} value, step {t}")
        assert_close(g[first], xt.grad.numpy(), err_msg=f"{name} gradient, step {t}")


# -- against lightly's memory bank (MoCo's order) -------------------------------------------

def _lightly_ntxent():
    pytest.importorskip("torch", reason="torch is not installed")
    from nce_ref.testing.peers import import_peer, peer_unavailable

    why = peer_unavailable("lightly.loss")
    if why is not None:
        pytest.skip(f"lightly is not importable: {why}")
    return import_peer("lightly.loss").NTXentLoss


def _lightly_steps(size, n, steps, seed=5):
    """lightly's ``NTXentLoss(memory_bank_size=(size, D))`` and a queue started from its
    (random, full) bank, in MoCo's order: per step the two losses, gradients and banks."""
    import torch

    torch.manual_seed(seed)
    crit = _lightly_ntxent()(temperature=0.5, memory_bank_size=(size, D)).double()
    with torch.no_grad():   # its float32 rows, made unit in float64 (cosine renormalises)
        crit.memory_bank.bank.copy_(torch.nn.functional.normalize(crit.memory_bank.bank, dim=1))
    q = MemoryQueue(crit.memory_bank.bank.numpy().copy(), None, 0, size)
    rng = np.random.default_rng(seed)
    vg = nce_ref.value_and_grad(nce_ref.info_nce)
    for _ in range(steps):
        o0, o1 = rng.standard_normal((n, D)), rng.standard_normal((n, D))
        t0, t1 = torch.tensor(o0, requires_grad=True), torch.tensor(o1, requires_grad=True)
        v_l = crit(t0, t1)
        v_l.backward()
        v, g = vg(o0, o1, q.rows(), temperature=0.5)
        q = q.enqueue(_unit(o1))            # lightly stores the normalised keys
        yield (v, g, v_l.item(), t0.grad.numpy(), t1.grad.numpy(), q,
               crit.memory_bank.bank.numpy().copy())


def test_lightly_memory_bank_step_by_step():
    """lightly's ``NTXentLoss`` with a memory bank of 12 rows and batches of 4, five
    steps (the ring wraps after three): each loss is ``info_nce(out0, out1, bank)``
    against the bank as it was, then the normalised keys are enqueued; the values,
    both gradients and the banks agree."""
    for t, (v, g, v_l, g0, g1, q, bank) in enumerate(_lightly_steps(12, 4, 5)):
        assert_close(v, v_l, err_msg=f"value, step {t}")
        assert_close(g["query"], g0, err_msg=f"query gradient, step {t}")
        assert_close(g["key"], g1, err_msg=f"key gradient, step {t}")
        np.testing.assert_allclose(q.slots, bank, rtol=0, atol=4 * np.finfo(float).eps)


def test_lightly_drops_the_rows_that_do_not_fit_at_the_end_of_the_bank():
    """With a bank of 10 and batches of 4, the third batch runs past the last slot:
    lightly writes its first two rows at slots 8-9, drops the other two and restarts at
    slot 0; the queue (as PML and MoCo's ring) writes them at slots 0-1.  The banks then
    differ in exactly those two slots, and so does the next loss."""
    runs = list(_lightly_steps(10, 4, 4))
    v, g, v_l, g0, g1, q, bank = runs[2]
    assert_close(v, v_l)                                # scored before the enqueue
    differ = np.flatnonzero(np.any(np.abs(q.slots - bank) > 1e-12, axis=1))
    np.testing.assert_array_equal(differ, [0, 1])
    assert q.ptr == 2
    v, g, v_l, *_ = runs[3]
    assert abs(float(v) - v_l) > 10 * rtol_for("float64") * abs(v_l)


def test_pml_cross_batch_memory_with_two_views():
    """SupCon's (N, V, D) views through the queue: the views enqueued view-major
    (``concat`` of view 0, view 1: PML's layout), ``ref_self`` of shape (N, V) the own
    slots ``own(V·N)`` reshaped; values and the gradient of the views equal PML's
    ``CrossBatchMemory(SupConLoss)`` on the concatenated views, four steps with a wrap.
    At step 3 the batch and the whole memory hold one class: PML returns 0 there, which
    is ``no_negative="zero"``."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    L = pytest.importorskip("pytorch_metric_learning.losses",
                            reason="pytorch-metric-learning is not installed")
    n, v, size = 3, 2, 10
    pml = L.CrossBatchMemory(L.SupConLoss(temperature=TAU), D, memory_size=size)
    q = MemoryQueue.empty(size, D, xp=np, dtype=np.float64)
    rng = np.random.default_rng(6)
    vg = nce_ref.value_and_grad(nce_ref.supcon)
    for t in range(4):
        f, y = rng.standard_normal((n, v, D)), rng.integers(0, 2, n)
        u, yu = np.concatenate([f[:, 0], f[:, 1]]), np.tile(y, v)
        ut = torch.tensor(u, requires_grad=True)
        v_pml = pml(ut, torch.tensor(yu))
        v_pml.backward()
        q = q.enqueue(u, yu)
        own = np.reshape(q.own(v * n), (v, n)).T          # own[i, w]: view w of sample i
        val, g = vg(f, y, ref=q.rows(), ref_labels=q.labels(), ref_self=own, temperature=TAU,
                    no_negative="zero")
        assert_close(val, v_pml.item(), err_msg=f"value, step {t}")
        gu = ut.grad.numpy()
        assert_close(g["features"], np.stack([gu[:n], gu[n:]], axis=1), err_msg=f"step {t}")
