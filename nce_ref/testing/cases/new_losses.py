"""Cases for siglip, dcl, multi_similarity and pairwise_contrastive: every option, both
code paths of each (``method``), and the edge cases (N = 1, one class, all classes distinct,
extreme scales and biases, tiny terms next to large ones, zero vectors)."""

from __future__ import annotations

import numpy as np

from . import Case
from .triplet import ref_set

_KINK = "zero distance is a kink of the euclidean distance: subgradient 0"
_SELECT = "a selection (hinge or mining) switches within a 1e-6 step"


def _siglip(rng):
    n, d = 6, 4
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    y = 0.6 * x + 0.8 * y  # positives closer than the negatives on average
    out = []
    for sim in ("cosine", "dot", "neg_sq_euclidean", "neg_euclidean"):
        for method in ("dense", "streamed"):
            out.append(Case(f"{sim}, {method}", (x, y),
                            {"similarity": sim, "method": method, "scale": 2.0, "bias": -1.0,
                             "reduction": "none", "block_size": 4}))
    out += [
        Case("defaults (scale 10, bias -10)", (x, y), {}),
        Case("sum, positive bias", (x, y), {"reduction": "sum", "scale": 3.0, "bias": 2.5}),
        Case("array scale and bias", (x, y), {"scale": np.asarray(5.0), "bias": np.asarray(-3.0),
                                              "method": "dense"}),
    ]
    eye = np.eye(3)
    out += [
        Case("N = 1", (x[:1], y[:1]), {}, kind="edge"),
        Case("tiny positive term next to a large logit (streamed)", (eye, eye.copy()),
             {"scale": 40.0, "bias": 0.0, "reduction": "none", "method": "streamed"}, kind="edge"),
        Case("large scale, the general (exp(-|u|)) path", (x, y),
             {"scale": 300.0, "bias": -5.0, "reduction": "none", "method": "streamed"}, kind="edge",
             fd=False, note="logits ~300: a 1e-6 relative step moves them by 3e-4"),
        Case("huge dot logits (no overflow)", (x * 30.0, y * 30.0),
             {"similarity": "dot", "scale": 1.0, "bias": 0.0, "reduction": "none"}, kind="edge",
             fd=False, note="logits ~1e3: the softplus is linear there"),
        Case("zero vectors under cosine", (np.concatenate([np.zeros((1, d)), x[1:]]), y),
             {"method": "streamed"}, kind="edge", fd=False,
             note="inside the eps-ball the normalisation is x/eps"),
        Case("collinear embeddings", (np.ones((4, d)), np.ones((4, d))),
             {"scale": 2.0, "bias": -2.0}, kind="edge"),
    ]
    return out


def _dcl(rng):
    n, d = 5, 3
    z1, z2 = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    z2 = 0.7 * z1 + 0.7 * z2
    out = [Case(f"{sim}, {method}", (z1, z2), {"similarity": sim, "temperature": 0.5,
                                               "reduction": "none", "method": method,
                                               "block_size": 3})
           for sim in ("cosine", "dot", "neg_sq_euclidean", "neg_euclidean")
           for method in ("dense", "streamed") if method == "streamed" or sim in (
               "cosine", "neg_euclidean")]
    out += [
        Case("defaults (temperature 0.1)", (z1, z2), {}),
        Case("von Mises weight, not detached, blocks of one row", (z1, z2),
             {"weight": "von_mises", "detach_weight": False, "temperature": 0.4,
              "block_size": 1, "reduction": "none"}),
        Case("von Mises weight, detached (lightly DCLW)", (z1, z2),
             {"weight": "von_mises", "temperature": 0.3}, fd=False,
             note="detach_weight=True: the gradient treats the weight as a constant, by design"),
        Case("von Mises weight, not detached, sigma 0.2, sum", (z1, z2),
             {"weight": "von_mises", "detach_weight": False, "sigma": 0.2, "reduction": "sum",
              "temperature": 0.7}),
        Case("array temperature", (z1, z2), {"temperature": np.asarray(0.25)}),
        Case("N = 2 (two negatives each)", (z1[:2], z2[:2]), {"temperature": 0.2}, kind="edge"),
        Case("extreme temperature", (z1, z2), {"temperature": 1e-3, "reduction": "none"},
             kind="edge", fd=False, note="logits ~1e3: a 1e-6 step is below rounding"),
        Case("collinear embeddings", (np.ones((3, d)), np.ones((3, d))),
             {"weight": "von_mises", "detach_weight": False}, kind="edge"),
    ]
    return out


def _multi_similarity(rng):
    n, d = 8, 3
    x = rng.standard_normal((n, d))
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    # both code paths: the dense reference and the engine in blocks of 3 rows (3, 3, 2)
    out = [Case(f"{sim}, {method}", (x, y),
                {"similarity": sim, "reduction": "none", "alpha": 1.5, "beta": 4.0,
                 "base": 0.3 if sim in ("cosine", "dot") else -2.0, "method": method,
                 **({"block_size": 3} if method == "streamed" else {})})
           for sim in ("cosine", "dot", "neg_sq_euclidean", "neg_euclidean")
           for method in ("dense", "streamed")]
    out += [
        Case("PML defaults (alpha 2, beta 50, base 0.5)", (x, y), {}),
        Case("mined (PML MultiSimilarityMiner(0.1))", (x, y), {"mining_margin": 0.1}, fd=False,
             note=_SELECT),
        Case("sum, mean_nonzero", (x, y), {"reduction": "mean_nonzero", "beta": 10.0}),
        Case("mean_nonzero, streamed in blocks of 3 (two passes)", (x, y),
             {"reduction": "mean_nonzero", "beta": 10.0, "method": "streamed", "block_size": 3}),
        Case("N = 1", (x[:1], y[:1]), {}, kind="edge"),
        Case("one class (no negative)", (x, np.zeros(n, dtype=np.int64)), {"reduction": "none"},
             kind="edge"),
        Case("all classes distinct (no positive)", (x, np.arange(n)), {"reduction": "none"},
             kind="edge"),
        Case("large beta (no overflow)", (x, y), {"beta": 2000.0, "base": -0.5, "reduction": "none"},
             kind="edge", fd=False, note="exponents ~3000: a 1e-6 step moves them by 3e-3"),
        Case("float labels", (x, y + 0.5), {"alpha": 3.0}, kind="edge"),
    ]
    r, ry, mem, mem_y, own = ref_set(rng, x, y)
    out += [
        Case("ref set", (x, y), {"ref": r, "ref_labels": ry, "reduction": "none", "beta": 10.0}),
        Case("ref set, mined (PML MultiSimilarityMiner(0.1) with ref_emb)", (x, y),
             {"ref": r, "ref_labels": ry, "mining_margin": 0.1}, fd=False, note=_SELECT),
        Case("memory holding the batch (ref_self), dot, mean_nonzero", (x, y),
             {"ref": mem, "ref_labels": mem_y, "ref_self": own, "similarity": "dot",
              "reduction": "mean_nonzero", "beta": 5.0}),
        Case("ref set of one row", (x, y), {"ref": r[:1], "ref_labels": ry[:1]}, kind="edge"),
    ]
    return out


def _pairwise_contrastive(rng):
    n, d = 8, 3
    x = rng.standard_normal((n, d))
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    # both code paths: the dense reference and the engine in blocks of 3 rows (3, 3, 2)
    out = [Case(f"{dist}, {method}", (x, y),
                {"distance": dist, "reduction": "none", "pos_margin": 0.2,
                 "neg_margin": 2.0 if dist != "cosine" else 1.0, "method": method,
                 **({"block_size": 3} if method == "streamed" else {})})
           for dist in ("euclidean", "sq_euclidean", "cosine")
           for method in ("dense", "streamed")]
    out += [
        Case("lp p=1.5", (x, y), {"distance": "lp", "p": 1.5, "neg_margin": 2.5}),
        Case("squared (the paper)", (x, y), {"squared": True, "neg_margin": 2.0}),
        Case("PML defaults", (x, y), {"normalize": True, "reduction": "mean_nonzero",
                                      "split_pos_neg": True}),
        Case("split mean", (x, y), {"split_pos_neg": True, "neg_margin": 1.5}),
        Case("sum, normalised, squared", (x, y), {"normalize": True, "squared": True,
                                                  "reduction": "sum", "neg_margin": 1.2}),
        Case("mean_nonzero", (x, y), {"reduction": "mean_nonzero", "pos_margin": 0.5,
                                      "neg_margin": 1.5}),
        Case("N = 1", (x[:1], y[:1]), {}, kind="edge"),
        Case("one class", (x, np.zeros(n, dtype=np.int64)), {"split_pos_neg": True}, kind="edge"),
        Case("all classes distinct", (x, np.arange(n)), {"reduction": "mean_nonzero",
                                                         "neg_margin": 2.0}, kind="edge"),
        Case("no active term: mean_nonzero is 0", (x, np.arange(n)),
             {"reduction": "mean_nonzero", "neg_margin": 0.0}, kind="edge"),
        Case("duplicated rows (zero distance, positive)", (np.concatenate([x[:4], x[:4]]), y),
             {"reduction": "none"}, kind="edge", fd=False, note=_KINK),
        Case("duplicated rows, squared distance (smooth at 0)", (np.concatenate([x[:4], x[:4]]), y),
             {"distance": "sq_euclidean", "squared": True}, kind="edge"),
    ]
    r, ry, _, _, _ = ref_set(rng, x, y)
    # a memory of M = N rows (PML's PerAnchorReducer needs M <= N): 4 older rows and
    # the batch's last 4, which are anchors 4..7's own copies
    mem, mem_y = np.concatenate([r[:4], x[4:]]), np.concatenate([ry[:4], y[4:]])
    own = np.array([-1, -1, -1, -1, 4, 5, 6, 7])
    out += [
        Case("per_anchor", (x, y), {"reduction": "per_anchor", "neg_margin": 2.0}),
        Case("per_anchor, split, streamed in blocks of 3 (two passes)", (x, y),
             {"reduction": "per_anchor", "split_pos_neg": True, "neg_margin": 2.0,
              "method": "streamed", "block_size": 3}),
        Case("split mean, dense", (x, y), {"split_pos_neg": True, "neg_margin": 1.5,
                                           "method": "dense"}),
        Case("PML's PerAnchorReducer(AvgNonZeroReducer()) (split, normalised)", (x, y),
             {"normalize": True, "split_pos_neg": True, "reduction": "per_anchor",
              "pos_margin": 0.3, "neg_margin": 1.2}),
        Case("ref set, PML defaults", (x, y), {"ref": r, "ref_labels": ry, "normalize": True,
                                               "split_pos_neg": True, "reduction": "mean_nonzero"}),
        Case("ref set, none", (x, y), {"ref": r, "ref_labels": ry, "reduction": "none",
                                       "neg_margin": 2.0, "pos_margin": 0.2}),
        Case("memory holding the batch (ref_self), per_anchor, split", (x, y),
             {"ref": mem, "ref_labels": mem_y, "ref_self": own, "reduction": "per_anchor",
              "split_pos_neg": True, "neg_margin": 2.0}),
        Case("memory holding the batch (ref_self), squared, sum", (x, y),
             {"ref": mem, "ref_labels": mem_y, "ref_self": own, "squared": True,
              "reduction": "sum", "neg_margin": 1.5}),
        Case("memory holding the batch (ref_self), mean", (x, y),
             {"ref": mem, "ref_labels": mem_y, "ref_self": own, "normalize": True,
              "split_pos_neg": True, "reduction": "mean"}),
        Case("per_anchor, no active term is 0", (x, np.arange(n)),
             {"reduction": "per_anchor", "neg_margin": 0.0}, kind="edge"),
    ]
    return out


CASES = {"siglip": _siglip, "dcl": _dcl, "multi_similarity": _multi_similarity,
         "pairwise_contrastive": _pairwise_contrastive}
