"""Named conventions: which nce_ref options reproduce a popular library's loss.

A :class:`Convention` ties a library name (``"info_nce_pytorch"``, ``"lightly"``,
``"pytorch_metric_learning"``, ``"optax"``, ``"open_clip"``, ``"supcontrast"``,
``"moco"``, ``"simclr"``) and an nce_ref function to the options of that function
that reproduce the library's *defaults*: ``nce_ref.testing.verify(impl, "nt_xent",
convention="optax")`` checks a drop-in copy of optax's ``ntxent`` against
``nce_ref.nt_xent(..., temperature=0.07, eps=sqrt(eps_mach))``.  The options apply to
whatever the implementation does not take as a keyword: a case that passes
``temperature=0.2`` passes it to both sides; an implementation without a
``temperature`` parameter is compared at the convention's temperature.

:data:`VARIANTS` lists, per function, the alternatives that the harness tries when
values disagree (toggled options, a neighbouring function such as NT-Xent's 2N − 2
negatives against InfoNCE's N − 1, ``1/τ`` for ``τ``), so that a mismatch report can
say which convention the implementation follows instead.

The entries come from the installed sources (info-nce-pytorch 0.1.4,
pytorch-metric-learning 2.9.0, optax 0.2.8) or the public repositories (lightly,
OpenCLIP, SupContrast, MoCo, SimCLR); ``docs/conventions.md`` has the table and how
each was checked.  Add a library by appending a :class:`Convention` to
:data:`CONVENTIONS` (and, for a new loss, its :data:`VARIANTS`).

The second half of this module holds *adapters*: functions with the argument
layout of an nce_ref function that call an installed library, so that each
library can be verified from the command line, for example
``nce-ref verify nce_ref.testing.conventions:pml_nt_xent --as nt_xent
--convention pytorch_metric_learning``.  They import the library when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._tolerances import eps_of

__all__ = [
    "Convention",
    "Variant",
    "CONVENTIONS",
    "VARIANTS",
    "get",
    "names",
    "for_reference",
    "variants_for",
]


@dataclass(frozen=True)
class Convention:
    """One library's semantics for one nce_ref function.

    Attributes
    ----------
    name : str
        Library key (``"optax"``).
    reference : str
        Registered nce_ref function (``"nt_xent"``).
    library : str
        The library's call this describes, with the version read.
    options : mapping
        nce_ref options reproducing the library's defaults; a callable value is
        called with the dtype name (``"float32"``) of the implementation's inputs.
    framework : str or None
        ``"torch"``, ``"jax"`` or ``"numpy"``: the framework its arrays live in.
    scale : float
        The library's value is ``scale`` times nce_ref's (SimCLR's official loss
        is the sum of two means: 2).
    notes : str
        What else differs (norm floors, edge-case behaviour).
    adapter : str or None
        ``"module:function"`` calling the library with nce_ref's argument layout.
    unsupported : mapping
        Option values the library does not offer (``{"reduction": ("mean_nonzero",)}``):
        cases that need them are reported as not applicable.
    """

    name: str
    reference: str
    library: str
    options: Mapping[str, Any] = field(default_factory=dict)
    framework: str | None = None
    scale: float = 1.0
    notes: str = ""
    adapter: str | None = None
    unsupported: Mapping[str, tuple] = field(default_factory=dict)

    def options_for(self, dtype: str) -> dict[str, Any]:
        """The options with dtype-dependent values resolved for ``dtype``."""
        return {k: (v(dtype) if callable(v) else v) for k, v in self.options.items()}

    def describe(self) -> str:
        opts = ", ".join(f"{k}={getattr(v, 'label', v) if callable(v) else repr(v)}"
                         for k, v in self.options.items())
        scale = "" if self.scale == 1.0 else f" x {self.scale:g}"
        return f"'{self.name}' = nce_ref.{self.reference}({opts}){scale}"


def _sqrt_eps(dtype: str) -> float:
    """optax floors sum(x**2) at eps_mach: a floor of sqrt(eps_mach) on the norm."""
    return math.sqrt(eps_of(dtype))


_sqrt_eps.label = "sqrt(finfo(dtype).eps)"


_A = "nce_ref.testing.conventions:"

CONVENTIONS: tuple[Convention, ...] = (
    # -- info_nce ----------------------------------------------------------------
    Convention("info_nce_pytorch", "info_nce",
               "info-nce-pytorch 0.1.4 `info_nce` / `InfoNCE`",
               {"temperature": 0.1}, "torch",
               notes="explicit negatives replace the in-batch keys (nce_ref's default)",
               adapter="info_nce:info_nce"),
    Convention("pytorch_metric_learning", "info_nce",
               "pytorch-metric-learning 2.9.0 `SelfSupervisedLoss(NTXentLoss(), symmetric=False)`",
               {"temperature": 0.07}, "torch",
               notes="log(p + finfo.tiny): the loss is capped at -log(tiny)",
               adapter=_A + "pml_info_nce"),
    Convention("open_clip", "info_nce",
               "OpenCLIP 3.3 `ClipLoss` on F.normalize'd features, logit_scale = 1/temperature",
               {"temperature": 0.07, "symmetric": True}, "torch",
               notes="logit_scale is learned, initialised at 1/0.07",
               adapter=_A + "open_clip_clip"),
    Convention("lightly", "info_nce",
               "lightly 1.6 `NTXentLoss(memory_bank_size=M)`: the bank rows are the negatives",
               {"temperature": 0.5}, "torch",
               notes="this is lightly's memory-bank (MoCo) variant: the explicit negatives play "
                     "the bank; lightly's NTXentLoss() without a bank is --as nt_xent "
                     "--convention lightly",
               adapter=_A + "lightly_info_nce"),
    Convention("moco", "info_nce",
               "MoCo v1/v2 `MoCo.forward` + CrossEntropyLoss: the queue rows are the negatives",
               {"temperature": 0.07}, "torch",
               notes="MoCo v2's recipe uses temperature 0.2"),
    # -- nt_xent -----------------------------------------------------------------
    Convention("pytorch_metric_learning", "nt_xent",
               "pytorch-metric-learning 2.9.0 `SelfSupervisedLoss(NTXentLoss())`",
               {"temperature": 0.07}, "torch",
               notes="log(p + finfo.tiny): the loss is capped at -log(tiny)",
               adapter=_A + "pml_nt_xent"),
    Convention("lightly", "nt_xent", "lightly 1.6 `NTXentLoss()` (no memory bank)",
               {"temperature": 0.5}, "torch", adapter=_A + "lightly_nt_xent"),
    Convention("optax", "nt_xent",
               "optax 0.2.8 `losses.ntxent(concat([z1, z2]), concat([arange(N)] * 2))`",
               {"temperature": 0.07, "eps": _sqrt_eps}, "jax",
               notes="x / sqrt(max(sum(x**2), eps_mach)): norm floor sqrt(eps_mach)",
               adapter=_A + "optax_nt_xent"),
    # -- supcon (nce_ref.losses.supcon) -------------------------------------------
    Convention("supcontrast", "supcon",
               "HobbitLong/SupContrast `SupConLoss()` (losses.py with the no-positive fix)",
               {"temperature": 0.07, "base_temperature": 0.07, "no_positive": "zero",
                "similarity": "dot"}, "torch",
               notes="takes the dot product of the features it is given (normalise them "
                     "beforehand); an anchor without a positive counts as 0 in the mean",
               adapter=_A + "supcontrast_supcon"),
    Convention("pytorch_metric_learning", "supcon",
               "pytorch-metric-learning 2.9.0 `SupConLoss()` on (embeddings, labels)",
               {"temperature": 0.1, "no_negative": "zero"}, "torch",
               notes="AvgNonZeroReducer: anchors without a positive, and anchors whose loss is "
                     "exactly 0, are left out of the mean; a batch without a negative pair "
                     "(or without a positive pair) gives 0 (no_negative='zero')",
               adapter=_A + "pml_supcon"),
    Convention("optax", "supcon",
               "optax 0.2.8 `losses.ntxent(embeddings, labels)`: one term per positive pair",
               {"temperature": 0.07, "positives": "per_pair", "eps": _sqrt_eps}, "jax",
               notes="x / sqrt(max(sum(x**2), eps_mach)): norm floor sqrt(eps_mach)",
               adapter=_A + "optax_supcon"),
    # -- triplet (nce_ref.losses.triplet) ------------------------------------------
    Convention("torch", "triplet",
               "torch.nn.functional.triplet_margin_loss / nn.TripletMarginLoss",
               {"margin": 1.0}, "torch",
               notes="torch's pairwise_distance adds eps=1e-6 to the difference: ||a - b + eps||",
               adapter="torch.nn.functional:triplet_margin_loss",
               unsupported={"reduction": ("mean_nonzero",)}),
    Convention("optax", "triplet", "optax 0.2.8 `losses.triplet_margin_loss` (per-sample)",
               {"margin": 1.0, "reduction": "none"}, "jax",
               notes="the distance is (sum |a - b|**p + eps)**(1/p) with eps=1e-6 inside the root",
               adapter=_A + "optax_triplet"),
    # -- the losses of issue 14 -------------------------------------------------------
    Convention("open_clip", "siglip",
               "OpenCLIP 3.3 `SigLipLoss()(F.normalize(x), F.normalize(y), logit_scale, logit_bias)`",
               {"scale": 10.0, "bias": -10.0}, "torch",
               notes="logit_scale is passed exponentiated (the model returns logit_scale.exp()); "
                     "the loss is a sum over the N x N pairs divided by N",
               adapter=_A + "open_clip_siglip",
               unsupported={"similarity": ("dot", "neg_sq_euclidean", "neg_euclidean"),
                            "reduction": ("sum", "none")}),
    Convention("lightly", "dcl",
               "lightly 1.6 `DCLLoss(temperature)` / `DCLWLoss(temperature, sigma)`",
               {"temperature": 0.1}, "torch",
               notes="DCLW's weight is detached; lightly accepts a negative temperature, "
                     "nce_ref refuses it",
               adapter=_A + "lightly_dcl",
               unsupported={"similarity": ("dot", "neg_sq_euclidean", "neg_euclidean"),
                            "reduction": ("sum", "none"), "detach_weight": (False,)}),
    Convention("pytorch_metric_learning", "multi_similarity",
               "pytorch-metric-learning 2.9.0 `MultiSimilarityLoss(alpha, beta, base)` "
               "(with `MultiSimilarityMiner(epsilon)` for mining_margin=epsilon)",
               {}, "torch",
               notes="with a miner, a batch with at most one mined positive and one mined "
                     "negative pair gives PML's 0 (GenericPairLoss's shortcut)",
               adapter=_A + "pml_multi_similarity",
               unsupported={"similarity": ("neg_sq_euclidean", "neg_euclidean"),
                            "reduction": ("sum", "none")}),
    Convention("pytorch_metric_learning", "batch_triplet",
               "pytorch-metric-learning 2.9.0 `TripletMarginLoss(margin=0.05)` with "
               "`LpDistance(normalize_embeddings=False)` (and `BatchHardMiner` for mining='hard')",
               {"margin": 0.05, "reduction": "mean_nonzero"}, "torch",
               notes="PML's default LpDistance() normalises the embeddings (normalise them "
                     "first); AvgNonZeroReducer; its PerAnchorReducer refuses triplets; "
                     "ref_self: the triplets with the anchor's copy removed after mining "
                     "(CrossBatchMemory's order)",
               adapter=_A + "pml_batch_triplet",
               unsupported={"mining": ("semi_hard",), "distance": ("cosine", "lp"),
                            "reduction": ("sum", "none", "per_anchor")}),
    Convention("pytorch_metric_learning", "pairwise_contrastive",
               "pytorch-metric-learning 2.9.0 `ContrastiveLoss(pos_margin, neg_margin)`",
               {"normalize": True, "reduction": "mean_nonzero", "split_pos_neg": True}, "torch",
               notes="LpDistance() normalises the embeddings; AvgNonZeroReducer on the positive "
                     "and the negative pairs' terms separately, summed",
               adapter=_A + "pml_pairwise_contrastive",
               unsupported={"distance": ("sq_euclidean", "cosine", "lp"), "squared": (True,),
                            "normalize": (False,), "split_pos_neg": (False,),
                            "reduction": ("sum", "none")}),
    Convention("simclr", "nt_xent",
               "google-research/simclr `add_contrastive_loss` (loss_a + loss_b)",
               {"temperature": 0.1}, None, scale=2.0,
               notes="tf.math.l2_normalize floors the norm at 1e-6; the sum of the two views' means"),
)

#: Conventions of functions not registered (yet) are ignored: supcon and triplet
#: entries may be listed before those losses exist.


@dataclass(frozen=True)
class Variant:
    """An alternative tried to explain a value mismatch.

    ``options`` override the case's options for ``reference`` (default: the
    function being verified); a callable value is called with the case's
    reference options (``lambda o: 1 / o["temperature"]``).
    """

    description: str
    options: Mapping[str, Any] = field(default_factory=dict)
    reference: str | None = None

    def resolve(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (v(kwargs) if callable(v) else v) for k, v in self.options.items()}


def _inv_temperature(opts):
    return 1.0 / float(opts["temperature"])


VARIANTS: dict[str, tuple[Variant, ...]] = {
    "info_nce": (
        Variant("symmetric=True (CLIP: both directions, averaged)", {"symmetric": True}),
        Variant("symmetric=False (one direction only: a missing symmetric half)",
                {"symmetric": False}),
        Variant("reduction='sum' instead of the mean", {"reduction": "sum"}),
        Variant("reduction='mean' instead of the sum", {"reduction": "mean"}),
        Variant("in_batch_negatives=True (the other keys join explicit negatives)",
                {"in_batch_negatives": True}),
        Variant("similarity='dot' (embeddings not normalised)", {"similarity": "dot"}),
        Variant("temperature -> 1/temperature (a logit scale used as a temperature)",
                {"temperature": _inv_temperature}),
        Variant("nt_xent: 2N - 2 negatives per anchor (SimCLR) instead of N - 1",
                {}, reference="nt_xent"),
    ),
    "nt_xent": (
        Variant("reduction='sum' instead of the mean", {"reduction": "sum"}),
        Variant("similarity='dot' (embeddings not normalised)", {"similarity": "dot"}),
        Variant("temperature -> 1/temperature (a logit scale used as a temperature)",
                {"temperature": _inv_temperature}),
        Variant("info_nce(symmetric=True): N - 1 negatives of the other view (CLIP) "
                "instead of 2N - 2", {"symmetric": True}, reference="info_nce"),
        Variant("info_nce: one direction, N - 1 negatives", {}, reference="info_nce"),
    ),
    "supcon": (
        Variant("positives='in' (log of the mean of the positives' probabilities)",
                {"positives": "in"}),
        Variant("positives='out' (mean of the positives' log-probabilities)", {"positives": "out"}),
        Variant("positives='per_pair' (one term per pair, other positives out of the "
                "denominator: PML NTXentLoss, optax ntxent)", {"positives": "per_pair"}),
        Variant("no_positive='zero' (anchors without a positive count as 0 in the mean)",
                {"no_positive": "zero"}),
        Variant("no_positive='exclude' (anchors without a positive left out of the mean)",
                {"no_positive": "exclude"}),
        Variant("no_negative='zero' (0 for a batch without a negative pair: "
                "pytorch-metric-learning)", {"no_negative": "zero"}),
        Variant("no_negative='keep' (the mathematical value without a negative pair)",
                {"no_negative": "keep"}),
        Variant("base_temperature=None (no temperature/base_temperature factor)",
                {"base_temperature": None}),
        Variant("base_temperature=0.07 (SupContrast's factor temperature/0.07)",
                {"base_temperature": 0.07}),
        Variant("contrast_mode='one' (only the first view anchors)", {"contrast_mode": "one"}),
        Variant("contrast_mode='all'", {"contrast_mode": "all"}),
        Variant("similarity='dot' (features not normalised)", {"similarity": "dot"}),
        Variant("similarity='cosine' (features normalised)", {"similarity": "cosine"}),
        Variant("reduction='sum' instead of the mean", {"reduction": "sum"}),
        Variant("temperature -> 1/temperature (a logit scale used as a temperature)",
                {"temperature": _inv_temperature}),
    ),
    "triplet": (
        Variant("swap=True (the negative's distance is min(d(a, n), d(p, n)))", {"swap": True}),
        Variant("swap=False", {"swap": False}),
        Variant("soft=True (softplus instead of the hinge)", {"soft": True}),
        Variant("soft=False (the hinge)", {"soft": False}),
        Variant("distance='sq_euclidean' (squared distances)", {"distance": "sq_euclidean"}),
        Variant("distance='euclidean'", {"distance": "euclidean"}),
        Variant("reduction='mean_nonzero' (mean over the positive terms: PML's AvgNonZeroReducer)",
                {"reduction": "mean_nonzero"}),
        Variant("reduction='mean'", {"reduction": "mean"}),
        Variant("reduction='sum'", {"reduction": "sum"}),
    ),
    "batch_triplet": (
        Variant("mining='all' (every valid triplet)", {"mining": "all"}),
        Variant("mining='hard' (batch-hard)", {"mining": "hard"}),
        Variant("mining='semi_hard'", {"mining": "semi_hard"}),
        Variant("reduction='mean_nonzero' (PML's AvgNonZeroReducer)", {"reduction": "mean_nonzero"}),
        Variant("reduction='mean'", {"reduction": "mean"}),
        Variant("distance='sq_euclidean' (squared distances)", {"distance": "sq_euclidean"}),
        Variant("distance='euclidean'", {"distance": "euclidean"}),
        Variant("soft=True (softplus instead of the hinge)", {"soft": True}),
    ),
    "info_nce_from_scores": (
        Variant("reduction='sum' instead of the mean", {"reduction": "sum"}),
        Variant("reduction='mean' instead of the sum", {"reduction": "mean"}),
    ),
}


def _all() -> tuple[Convention, ...]:
    """The conventions whose function is registered and takes every option named."""
    from ..autodiff import registry

    reg = registry()
    out = []
    for c in CONVENTIONS:
        entry = reg.get(c.reference)
        if entry is not None and all(k in entry.signature.parameters for k in c.options):
            out.append(c)
    return tuple(out)


def names() -> list[str]:
    """Every known convention name."""
    return sorted({c.name for c in _all()})


def for_reference(reference: str) -> list[Convention]:
    """The conventions known for one nce_ref function."""
    return [c for c in _all() if c.reference == reference]


def get(name: str, reference: str) -> Convention:
    """The convention ``name`` for the nce_ref function ``reference``.

    Raises
    ------
    ValueError
        For an unknown name, or a library with no mapping for that function; the
        message lists what is known.
    """
    known = names()
    if name not in known:
        raise ValueError(f"unknown convention {name!r}; known: {', '.join(known)}")
    for c in _all():
        if c.name == name and c.reference == reference:
            return c
    has = sorted(c.reference for c in _all() if c.name == name)
    others = sorted(c.name for c in for_reference(reference))
    raise ValueError(
        f"convention {name!r} has no mapping for nce_ref.{reference} (it has: {', '.join(has)}); "
        f"conventions for {reference}: {', '.join(others) or 'none'}")


def variants_for(reference: str) -> tuple[Variant, ...]:
    return VARIANTS.get(reference, ())


# ----------------------------------------------------------------------------------
# Adapters: installed libraries called with nce_ref's argument layout.
# ----------------------------------------------------------------------------------

def pml_nt_xent(z1, z2, *, temperature=0.07):
    """pytorch-metric-learning: ``SelfSupervisedLoss(NTXentLoss(temperature))(z1, z2)``.

    A tensor ``temperature`` is kept as a tensor, so its gradient flows.
    """
    from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss

    return SelfSupervisedLoss(NTXentLoss(temperature=temperature), symmetric=True)(z1, z2)


def pml_info_nce(query, key, *, temperature=0.07):
    """pytorch-metric-learning: ``SelfSupervisedLoss(NTXentLoss(temperature), symmetric=False)``."""
    from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss

    return SelfSupervisedLoss(NTXentLoss(temperature=temperature), symmetric=False)(query, key)


def optax_nt_xent(z1, z2, *, temperature=0.07):
    """optax: ``losses.ntxent(concat([z1, z2]), concat([arange(N)] * 2), temperature)``."""
    import jax.numpy as jnp
    import optax

    n = z1.shape[0]
    labels = jnp.concatenate([jnp.arange(n), jnp.arange(n)])
    return optax.losses.ntxent(jnp.concatenate([z1, z2], axis=0), labels, temperature)


def torch_clip(image, text, *, temperature=0.07):
    """CLIP's loss written in plain torch, as OpenCLIP's ``ClipLoss`` computes it.

    ``F.normalize`` both sides (the model's ``encode_image``/``encode_text`` with
    ``normalize=True``), ``logits = logit_scale * image @ text.T`` with
    ``logit_scale = 1/temperature``, and the mean of the two cross-entropies.
    """
    import torch
    import torch.nn.functional as F

    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    logits = (1.0 / temperature) * image @ text.T
    labels = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def open_clip_clip(image, text, *, temperature=0.07):
    """OpenCLIP: ``ClipLoss()(F.normalize(image), F.normalize(text), logit_scale=1/temperature)``.

    The model normalises the features (``normalize=True``) before the loss; a tensor
    ``temperature`` stays a tensor, so the logit scale's gradient flows to it.
    """
    import torch.nn.functional as F

    from .peers import import_peer

    ClipLoss = import_peer("open_clip").ClipLoss
    return ClipLoss()(F.normalize(image, dim=-1), F.normalize(text, dim=-1), 1.0 / temperature)


def lightly_nt_xent(z1, z2, *, temperature=0.5):
    """lightly: ``NTXentLoss(temperature)(z1, z2)`` (no memory bank: 2N - 2 negatives)."""
    from .peers import import_peer

    return import_peer("lightly.loss").NTXentLoss(temperature=temperature)(z1, z2)


def lightly_info_nce(query, key, negatives, *, temperature=0.5):
    """lightly: ``NTXentLoss(temperature, memory_bank_size=(M, D))(query, key)`` with its bank
    holding ``negatives``.

    lightly's bank stores normalised past keys, detached (MoCo's queue): the bank is set
    to ``F.normalize(negatives)`` before the call, so ``negatives`` get no gradient from
    lightly (a property of the memory bank, not a bug).  lightly reads the bank before it
    enqueues the batch, so the loss uses the bank as given.
    ``lightly_info_nce.verify_constants = ("negatives",)`` tells ``verify`` not to
    compare their gradient.
    """
    import torch
    import torch.nn.functional as F

    from .peers import import_peer

    if negatives.ndim != 2:
        raise NotImplementedError("lightly's memory bank holds unpaired negatives (M, D)")
    m, d = negatives.shape
    loss = import_peer("lightly.loss").NTXentLoss(temperature=temperature, memory_bank_size=(m, d))
    with torch.no_grad():
        loss.memory_bank.bank = F.normalize(negatives.detach(), dim=1).to(query.dtype)
    return loss(query, key)


#: verify compares no gradient for the bank (lightly's queue is a constant by design)
lightly_info_nce.verify_constants = ("negatives",)


def _views_flat(features, labels, xp_cat, xp_arange, xp_tile):
    """nce_ref's supcon layout -> one row per view, view-major, with the labels tiled."""
    if features.ndim == 2:
        n, v = features.shape[0], 1
        flat = features
    else:
        n, v = features.shape[0], features.shape[1]
        flat = xp_cat([features[:, i] for i in range(v)])
    lab = xp_arange(n) if labels is None else labels
    return flat, xp_tile(lab, v)


def _single_labels(labels, who: str) -> None:
    if labels is not None and labels.ndim != 1:
        raise NotImplementedError(f"{who} takes one label per sample, not multi-label rows")


def pml_supcon(features, labels=None, *, ref=None, ref_labels=None, temperature=0.1):
    """pytorch-metric-learning: ``SupConLoss(temperature)(embeddings, labels)``, or with
    a reference set ``(..., ref_emb=ref, ref_labels=ref_labels)``.

    nce_ref's (N, V, D) views become V·N rows (view-major) with the labels tiled;
    without labels the views of one sample share a label.  PML has no ``ref_self``
    (its ``CrossBatchMemory`` removes those pairs by queue index).
    """
    import torch
    from pytorch_metric_learning.losses import SupConLoss

    _single_labels(labels, "pytorch-metric-learning's SupConLoss")
    _single_labels(ref_labels, "pytorch-metric-learning's SupConLoss")
    emb, lab = _views_flat(features, labels, lambda xs: torch.cat(xs),
                           lambda n: torch.arange(n, device=features.device),
                           lambda y, v: y.repeat(v))
    if ref is None:
        return SupConLoss(temperature=temperature)(emb, lab)
    return SupConLoss(temperature=temperature)(emb, lab, ref_emb=ref, ref_labels=ref_labels)


def optax_supcon(features, labels=None, *, temperature=0.07):
    """optax: ``losses.ntxent(embeddings, labels, temperature)`` (one term per positive pair)."""
    import jax.numpy as jnp
    import optax

    _single_labels(labels, "optax's ntxent")
    emb, lab = _views_flat(features, labels, lambda xs: jnp.concatenate(xs), jnp.arange,
                           lambda y, v: jnp.tile(y, v))
    return optax.losses.ntxent(emb, lab, temperature)


def supcontrast_supcon(features, labels=None, *, mask=None, temperature=0.07,
                       base_temperature=0.07, contrast_mode="all"):
    """SupContrast's ``SupConLoss.forward`` (HobbitLong/SupContrast ``losses.py``), transcribed.

    The upstream code with its fix for anchors without a positive (``mask_pos_pairs``);
    the only change is that nce_ref's (N, D) layout is accepted as one view,
    (N, 1, D).  It takes the dot product of the features as given.
    """
    import torch

    if features.ndim == 2:
        features = features.unsqueeze(1)
    if labels is not None and labels.ndim != 1:
        raise NotImplementedError("SupContrast takes one label per sample (or a mask)")
    device = features.device
    batch_size = features.shape[0]
    if labels is not None and mask is not None:
        raise ValueError("Cannot define both `labels` and `mask`")
    elif labels is None and mask is None:
        mask = torch.eye(batch_size, dtype=torch.float32).to(device)
    elif labels is not None:
        labels = labels.contiguous().view(-1, 1)
        mask = torch.eq(labels, labels.T).float().to(device)
    else:
        mask = mask.float().to(device)
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    if contrast_mode == "one":
        anchor_feature, anchor_count = features[:, 0], 1
    else:
        anchor_feature, anchor_count = contrast_feature, contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(torch.ones_like(mask), 1,
                                torch.arange(batch_size * anchor_count).view(-1, 1).to(device), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mask_pos_pairs = mask.sum(1)
    mask_pos_pairs = torch.where(mask_pos_pairs < 1e-6, 1, mask_pos_pairs)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask_pos_pairs
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean()


def optax_triplet(anchor, positive, negative, *, margin=1.0):
    """optax: ``losses.triplet_margin_loss(anchor, positive, negative, margin=margin)``."""
    import optax

    return optax.losses.triplet_margin_loss(anchor, positive, negative, margin=margin)


def open_clip_siglip(x, y, *, scale=10.0, bias=-10.0):
    """OpenCLIP: ``SigLipLoss()(F.normalize(x), F.normalize(y), scale, bias)`` (``scale`` is
    the exponentiated ``logit_scale`` the model passes; tensors keep their gradients)."""
    import torch
    import torch.nn.functional as F

    from .peers import import_peer

    scale = scale if torch.is_tensor(scale) else torch.tensor(scale, dtype=x.dtype)
    bias = bias if torch.is_tensor(bias) else torch.tensor(bias, dtype=x.dtype)
    return import_peer("open_clip.loss").SigLipLoss()(F.normalize(x, dim=-1), F.normalize(y, dim=-1),
                                                      scale, bias)


def lightly_dcl(z1, z2, *, temperature=0.1, weight="none", sigma=0.5):
    """lightly: ``DCLLoss(temperature)(z1, z2)``, or ``DCLWLoss(temperature, sigma)`` for
    ``weight="von_mises"`` (its weight detached)."""
    import warnings

    from .peers import import_peer

    loss = import_peer("lightly.loss")
    fn = (loss.DCLWLoss(temperature=temperature, sigma=sigma) if weight == "von_mises"
          else loss.DCLLoss(temperature=temperature))
    with warnings.catch_warnings():  # DCLW's torch.tensor(tensor)
        warnings.simplefilter("ignore", UserWarning)
        return fn(z1, z2)


def _pml_ref(ref, ref_labels):
    """PML's ``ref_emb``/``ref_labels`` keywords (none without a reference set)."""
    return {} if ref is None else {"ref_emb": ref, "ref_labels": ref_labels}


def _pml_drop_self(indices, ref_self):
    """PML's indices without the pairs or triplets of an anchor with its own copy
    ``ref_self[anchor]`` (what ``CrossBatchMemory`` does by queue index, after mining)."""
    if ref_self is None:
        return indices
    own = ref_self.to(indices[0].device)
    if len(indices) == 3:
        a, p, n = indices
        keep = (p != own[a]) & (n != own[a])
        return a[keep], p[keep], n[keep]
    a1, p, a2, n = indices
    kp, kn = p != own[a1], n != own[a2]
    return a1[kp], p[kp], a2[kn], n[kn]


def pml_multi_similarity(embeddings, labels, *, alpha=2.0, beta=50.0, base=0.5,
                         mining_margin=None, reduction="mean", ref=None, ref_labels=None,
                         ref_self=None):
    """pytorch-metric-learning: ``MultiSimilarityLoss(alpha, beta, base)(embeddings, labels)``,
    with ``MultiSimilarityMiner(epsilon=mining_margin)``'s pairs when it is given,
    ``AvgNonZeroReducer()`` for ``reduction="mean_nonzero"`` (its default: ``MeanReducer``),
    and ``ref_emb=ref, ref_labels=ref_labels``; ``ref_self``'s pairs are removed from the
    (mined or all) pairs, as ``CrossBatchMemory`` does."""
    from pytorch_metric_learning.losses import MultiSimilarityLoss
    from pytorch_metric_learning.miners import MultiSimilarityMiner
    from pytorch_metric_learning.reducers import AvgNonZeroReducer
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    fn = MultiSimilarityLoss(alpha=alpha, beta=beta, base=base,
                             reducer=AvgNonZeroReducer() if reduction == "mean_nonzero" else None)
    kw = _pml_ref(ref, ref_labels)
    if mining_margin is not None:
        idx = MultiSimilarityMiner(epsilon=mining_margin)(embeddings, labels, *kw.values())
    elif ref_self is not None:
        idx = lmu.get_all_pairs_indices(labels, ref_labels)
    else:
        return fn(embeddings, labels, **kw)
    return fn(embeddings, labels, _pml_drop_self(idx, ref_self), **kw)


def pml_pairwise_contrastive(embeddings, labels, *, pos_margin=0.0, neg_margin=1.0,
                             reduction="mean_nonzero", ref=None, ref_labels=None, ref_self=None):
    """pytorch-metric-learning: ``ContrastiveLoss(pos_margin, neg_margin)(embeddings, labels)``
    with the reducer of ``reduction``: ``"mean_nonzero"`` its default
    ``AvgNonZeroReducer``, ``"mean"`` ``MeanReducer()``, ``"per_anchor"``
    ``PerAnchorReducer(AvgNonZeroReducer())``; ``ref_emb=ref, ref_labels=ref_labels``,
    and ``ref_self``'s pairs removed from its pairs (as ``CrossBatchMemory`` does)."""
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer, PerAnchorReducer
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    reducer = {"mean_nonzero": None, "mean": MeanReducer(),
               "per_anchor": PerAnchorReducer(AvgNonZeroReducer())}[reduction]
    fn = ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, reducer=reducer)
    kw = _pml_ref(ref, ref_labels)
    if ref_self is None:
        return fn(embeddings, labels, **kw)
    idx = _pml_drop_self(lmu.get_all_pairs_indices(labels, ref_labels), ref_self)
    return fn(embeddings, labels, idx, **kw)


def pml_batch_triplet(embeddings, labels, *, mining="all", margin=0.05, soft=False,
                      distance="euclidean", reduction="mean_nonzero", ref=None, ref_labels=None,
                      ref_self=None):
    """pytorch-metric-learning: ``TripletMarginLoss(margin, smooth_loss=soft,
    distance=LpDistance(normalize_embeddings=False[, power=2]))(embeddings, labels)``
    (its default ``LpDistance()`` normalises the embeddings first: normalise them before
    the call to reproduce it), with ``BatchHardMiner``'s triplets for ``mining="hard"``,
    ``MeanReducer()`` for ``reduction="mean"``, ``ref_emb=ref, ref_labels=ref_labels``,
    and ``ref_self``'s triplets removed after mining (as ``CrossBatchMemory`` does)."""
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.miners import BatchHardMiner
    from pytorch_metric_learning.reducers import MeanReducer
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    dist = LpDistance(normalize_embeddings=False, power=2 if distance == "sq_euclidean" else 1)
    fn = TripletMarginLoss(margin=margin, smooth_loss=soft, distance=dist,
                           reducer=MeanReducer() if reduction == "mean" else None)
    kw = _pml_ref(ref, ref_labels)
    if mining == "hard":
        idx = BatchHardMiner(distance=dist)(embeddings, labels, *kw.values())
    elif ref_self is not None:
        idx = lmu.get_all_triplets_indices(labels, ref_labels)
    else:
        return fn(embeddings, labels, **kw)
    return fn(embeddings, labels, _pml_drop_self(idx, ref_self), **kw)


ADAPTERS: dict[str, Callable] = {
    "pml_supcon": pml_supcon,
    "optax_supcon": optax_supcon,
    "supcontrast_supcon": supcontrast_supcon,
    "optax_triplet": optax_triplet,
    "pml_nt_xent": pml_nt_xent,
    "pml_info_nce": pml_info_nce,
    "optax_nt_xent": optax_nt_xent,
    "torch_clip": torch_clip,
    "open_clip_clip": open_clip_clip,
    "lightly_nt_xent": lightly_nt_xent,
    "lightly_info_nce": lightly_info_nce,
    "open_clip_siglip": open_clip_siglip,
    "lightly_dcl": lightly_dcl,
    "pml_multi_similarity": pml_multi_similarity,
    "pml_pairwise_contrastive": pml_pairwise_contrastive,
    "pml_batch_triplet": pml_batch_triplet,
}
