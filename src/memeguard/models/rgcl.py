"""RGCL (Mei et al., ACL 2024, ``JingbiaoMei/RGCL``): retrieval-guided contrastive learning on frozen CLIP.

The head is Hate-CLIPper's (align fusion, 3 pre-output layers of 1024, dropout [0.2, 0.4, 0.1]) on the
pooled CLIP outputs; its *embedding* is the last pre-output layer before its ReLU. Training adds, to the
classification loss, a triplet-style contrastive loss on that embedding (``loss=triplet``, ``metric=cos``
and ``hybrid_loss`` of the authors' ``scripts/experiments.sh``), per meme q:

    relu( mean_{in-batch negatives n} cos(q, n) + sum_{hard negatives h} cos(q, h)
          - mean_{pseudo-gold positives g} cos(q, g) + margin )

averaged over the batch and mixed ``(1 - ce_weight) * contrastive + ce_weight * BCE``. Hard negatives
(the nearest memory entries with the other label) and pseudo-gold positives (the nearest with the same
label) are searched in a faiss inner-product index over the L2-normalised embeddings of every *training*
meme (the memory), rebuilt with the model in eval mode at the start of every epoch, as the authors do.
Unlike the authors' script, a meme never retrieves itself (its own stale embedding would be its easiest
pseudo-gold positive): entries with the query's id are skipped. The memory holds the train split only, so
dev and test memes never enter it.

The kNN retrieval classifier (``classifier="knn"``): a meme's probability is the rank-weighted vote of the
labels of its ``knn_top_k`` nearest memory entries (weights k, k-1, ..., 1: the authors' "arithmetic"
majority voting). The final memory (embeddings, labels, ids) is saved with the model, so a trained model
can switch to it (``classifier`` in its ``config.json``) without the training data; trained with
``classifier="knn"``, evaluations during training vote on the epoch's memory. At prediction a meme skips
an entry only when it is that meme (same id and same embedding): the scorer numbers memes 0, 1, ....

``unfreeze_clip_layers = k`` works as for Hate-CLIPper (:mod:`memeguard.models.clip_heads`): the embedding
and the memory then come from the fine-tuned CLIP layers' outputs, recomputed at every epoch's start.

Other deviations: the authors run the MLP twice per batch (embedding and logit get independent dropout
masks), we once; our AdamW spares biases from weight decay. The memory is rebuilt at every epoch start, so
a run resumed from an epoch checkpoint is identical to the uninterrupted one; one resumed mid-epoch
(``checkpoint_every``) rebuilds it from the resumed weights instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from memeguard.errors import ConfigError
from memeguard.models.base import VLConfig
from memeguard.models.checkpoints import OriginalLayout, has_prefix, rename_unique
from memeguard.models.clip_heads import HATECLIPPER_TRAIN_DEFAULTS, ClipFusionModel, ClipHeadConfig
from memeguard.models.registry import register_architecture, register_config

# experiments.sh: Hate-CLIPper's settings (batch 64, lr 1e-4, grad clip 0.1, no lr schedule) for 30 epochs;
# the authors' AdamW is built with lr only, so its weight decay is torch's default 0.01. Our trainer decays
# the lr linearly (warmup 0).
RGCL_TRAIN_DEFAULTS: dict[str, Any] = {**HATECLIPPER_TRAIN_DEFAULTS, "weight_decay": 0.01, "epochs": 30}
# Cosine above which a query with a memory entry's id is that entry (the same meme, same weights).
SAME_EMBEDDING = 0.9999
# A probability of exactly 0 or 1 from the vote becomes a finite logit.
KNN_EPS = 1e-4


# ``RGCL:src/model/classifier.py`` (``classifier_hateClipper``) -> our names; the indices inside the
# Sequentials are the same (projection Linear at 0; Dropout, then Linear/ReLU/Dropout per layer).
RGCL_RENAMES = (("img_proj.", "image_map."), ("text_proj.", "text_map."), ("mlp.", "pre_output."))


def _from_rgcl(key: str) -> str:
    if key.startswith("output_layer."):
        return "output." + key.removeprefix("output_layer.")
    for old, new in RGCL_RENAMES:
        if key.startswith(old):
            return new + key.removeprefix(old)
    return key


# ``run_rac.py`` saves ``torch.save(model.state_dict(), .../ckpt/best_model_<epoch>_<acc>.pt)``.
RGCL_STATE_DICT = OriginalLayout(
    "rgcl-state-dict",
    lambda state: (
        has_prefix("img_proj.")(state) and has_prefix("mlp.")(state) and "output_layer.weight" in state
    ),
    lambda state, config: rename_unique(state, _from_rgcl),
    has_head=True,
    hint="RGCL best_model_*.pt: img_proj.*, text_proj.*, mlp.*, output_layer.*",
)


def _require_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ConfigError("RGCL needs faiss: pip install faiss-cpu (or memeguard[clip])") from None
    return faiss


@dataclass
class RgclConfig(ClipHeadConfig):
    """RGCL's head and loss settings (``scripts/experiments.sh``)."""

    model_type: ClassVar[str] = "rgcl"

    fusion: Literal["concat", "align", "cross"] = "align"
    num_pre_output_layers: int = 3
    hard_negatives: int = 1
    pseudo_gold_positives: int = 1
    retrieval_pool: int = 12  # nearest memory entries searched for them (hard_negatives_multiple)
    in_batch_loss: bool = True
    triplet_margin: float = 0.1
    ce_weight: float = 0.5
    classifier: Literal["head", "knn"] = "head"
    knn_top_k: int = 20
    memory_size: int = 0  # training memes in the saved memory (set when training attaches it)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_pre_output_layers < 1:
            raise ConfigError("RgclConfig: the embedding is a pre-output layer: num_pre_output_layers >= 1")
        counts = {k: getattr(self, k) for k in ("hard_negatives", "pseudo_gold_positives", "memory_size")}
        if min(counts.values()) < 0 or self.retrieval_pool < 1 or self.knn_top_k < 1:
            raise ConfigError(f"RgclConfig: counts must be >= 0 and retrieval_pool, knn_top_k >= 1: {counts}")
        if not 0 <= self.ce_weight <= 1:
            raise ConfigError(f"RgclConfig: ce_weight must be in [0, 1], got {self.ce_weight}")


class Memory:
    """A faiss inner-product index over L2-normalised embeddings, with each entry's label and meme id."""

    def __init__(self, embeds: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
        faiss = _require_faiss()
        self.embeds = np.ascontiguousarray(normalize(embeds))
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.index = faiss.IndexFlatIP(self.embeds.shape[1])
        self.index.add(self.embeds)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def own_ids(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``ids`` where the query IS that memory entry (same id, same embedding), else -1.

        At prediction a training meme must not vote for itself, but ids alone do not say it is one: the
        scorer numbers the memes it is given 0, 1, ..., which may be ids of unrelated training memes.
        """
        row_of = {int(meme_id): row for row, meme_id in enumerate(self.ids)}
        unit = normalize(queries)
        out = np.full(len(ids), -1, dtype=np.int64)
        for q, meme_id in enumerate(np.asarray(ids).tolist()):
            row = row_of.get(int(meme_id))
            if row is not None and float(unit[q] @ self.embeds[row]) > SAME_EMBEDDING:
                out[q] = meme_id
        return out

    def search(self, queries: np.ndarray, k: int, query_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cosine similarities, memory rows) [Q, k] of each query's k nearest entries, best first,
        skipping entries with the query's own id; rows are -1 (score -inf) past the memory's end."""
        k = max(1, min(k, len(self)))
        wanted = min(k + 1, len(self))  # ids are unique in the memory: one extra covers the query itself
        scores, rows = self.index.search(np.ascontiguousarray(normalize(queries)), wanted)
        rows = rows.astype(np.int64)
        own = (rows >= 0) & (self.ids[np.clip(rows, 0, None)] == np.asarray(query_ids)[:, None])
        out_scores = np.full((rows.shape[0], k), -np.inf, dtype=np.float32)
        out_rows = np.full((rows.shape[0], k), -1, dtype=np.int64)
        for q in range(rows.shape[0]):
            keep = (rows[q] >= 0) & ~own[q]
            n = min(k, int(keep.sum()))
            out_scores[q, :n] = scores[q][keep][:n]
            out_rows[q, :n] = rows[q][keep][:n]
        return out_scores, out_rows


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_vote(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rank-weighted vote (weights k, ..., 1 over the found neighbours) of ``labels[rows]``: P(hateful)."""
    k = rows.shape[1]
    weights = np.arange(k, 0, -1, dtype=np.float64)[None, :] * (rows >= 0)
    votes = labels[np.clip(rows, 0, None)] * weights
    return votes.sum(1) / np.maximum(weights.sum(1), 1e-12)


@dataclass
class Mined:
    """Per query: hard negatives [B, h, P] and pseudo-gold positives [B, g, P], zero where none was found
    (with masks [B, h], [B, g])."""

    negatives: torch.Tensor
    negative_mask: torch.Tensor
    positives: torch.Tensor
    positive_mask: torch.Tensor


def mine(
    memory: Memory,
    queries: torch.Tensor,
    labels: torch.Tensor,
    ids: torch.Tensor,
    *,
    hard_negatives: int,
    pseudo_gold_positives: int,
    pool: int,
) -> Mined:
    """The first ``hard_negatives`` entries with the other label and the first ``pseudo_gold_positives``
    with the same label among each query's ``pool`` nearest memory entries (itself excluded)."""
    q = queries.detach().float().cpu().numpy()
    _, rows = memory.search(q, pool, ids.cpu().numpy())
    query_labels = labels.detach().cpu().numpy().astype(np.int64)
    batch, dim = q.shape
    out = [np.zeros((batch, n, dim), np.float32) for n in (hard_negatives, pseudo_gold_positives)]
    masks = [np.zeros((batch, n), bool) for n in (hard_negatives, pseudo_gold_positives)]
    for b in range(batch):
        filled = [0, 0]
        for row in rows[b][rows[b] >= 0]:
            kind = 0 if memory.labels[row] != query_labels[b] else 1
            if filled[kind] < out[kind].shape[1]:
                out[kind][b, filled[kind]] = memory.embeds[row]
                masks[kind][b, filled[kind]] = True
                filled[kind] += 1
    device = queries.device
    return Mined(*(torch.from_numpy(a).to(device) for a in (out[0], masks[0], out[1], masks[1])))


def contrastive_loss(
    feats: torch.Tensor, labels: torch.Tensor, mined: Mined, *, margin: float, in_batch: bool = True
) -> torch.Tensor:
    """RGCL's triplet loss (see the module docstring), mean over the batch."""
    feats = feats.float()
    batch = feats.shape[0]
    zero = feats.new_zeros(batch)
    in_batch_term = zero
    if in_batch:
        sim = F.cosine_similarity(feats.unsqueeze(2), feats.T.unsqueeze(0), dim=1, eps=1e-8)
        negative = (labels.view(-1, 1) != labels.view(1, -1)).float()
        count = negative.sum(1)
        in_batch_term = (sim * negative).sum(1) / count.clamp(min=1)
    hard_term = zero
    if mined.negatives.shape[1]:
        cos = F.cosine_similarity(feats.unsqueeze(1), mined.negatives, dim=2, eps=1e-8)
        hard_term = (cos * mined.negative_mask).sum(1)
    gold_term = zero
    if mined.positives.shape[1]:
        # the authors average over all slots; an empty slot (a zero vector) has cosine 0
        cos = F.cosine_similarity(feats.unsqueeze(1), mined.positives, dim=2, eps=1e-8)
        gold_term = (cos * mined.positive_mask).mean(1)
    return torch.relu(in_batch_term + hard_term - gold_term + margin).mean()


@register_architecture
class RgclModel(ClipFusionModel):
    """RGCL's head; ``training_objective()`` gives the trainer its loss and memory."""

    config_class: ClassVar[type[VLConfig]] = RgclConfig
    original_name: ClassVar[str] = "RGCL"
    original_layouts: ClassVar[tuple[OriginalLayout, ...]] = (RGCL_STATE_DICT,)
    train_defaults: ClassVar[dict[str, Any]] = RGCL_TRAIN_DEFAULTS

    def __init__(self, config: VLConfig) -> None:
        super().__init__(config)
        assert isinstance(config, RgclConfig)
        self.last_embedding: torch.Tensor | None = None
        self.memory: Memory | None = None
        if config.memory_size > 0:
            self._register_memory(config.memory_size)

    _MEMORY_BUFFERS = ("memory_embeds", "memory_labels", "memory_ids")

    def _register_memory(self, size: int) -> None:
        """The saved memory's buffers (persistent: in ``model.safetensors``, not a checkpoint's concern)."""
        dim = self.config.pre_output_dim  # type: ignore[attr-defined]
        device = self.output.weight.device
        self.register_buffer("memory_embeds", torch.zeros(size, dim, device=device))
        self.register_buffer("memory_labels", torch.zeros(size, dtype=torch.long, device=device))
        self.register_buffer("memory_ids", torch.zeros(size, dtype=torch.long, device=device))

    def embedding(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The contrastive embedding: the last pre-output Linear's output, before its ReLU and dropout."""
        return self.pre_output[:-2](self.fused(batch))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        embed = self.embedding(batch)
        self.last_embedding = embed if self.training else None
        if self.config.classifier == "knn" and not self.training:  # type: ignore[attr-defined]
            return self.knn_logits(embed, batch["ids"])
        return self.output(self.pre_output[-2:](embed)).squeeze(-1)

    def attribution_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The CLIP heads' two vectors, unless the logit is the kNN vote (a count of neighbours' labels,
        with no gradient to integrate): then a one-line refusal."""
        if self.config.classifier == "knn":  # type: ignore[attr-defined]
            raise ConfigError(
                "rgcl with classifier=knn cannot be explained: its score is a vote of retrieved training "
                "memes, not differentiable in the inputs (classifier=head is)"
            )
        return super().attribution_inputs(batch)

    # -- the memory ------------------------------------------------------------------------------
    def attach_memory(
        self, embeds: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, persistent: bool
    ) -> None:
        """Make (embeds, labels, ids) the model's memory. During training (``persistent`` False) it is a
        plain attribute, rebuilt every epoch: never in a checkpoint, never broadcast by DDP; the final one
        (``persistent``) also goes into buffers saved with the weights."""
        self.memory = Memory(embeds.detach().float().cpu().numpy(), labels.cpu().numpy(), ids.cpu().numpy())
        if not persistent:
            return
        self._register_memory(int(ids.shape[0]))
        self.memory_embeds.copy_(embeds)
        self.memory_labels.copy_(labels.long())
        self.memory_ids.copy_(ids.long())
        self.config.memory_size = int(ids.shape[0])  # type: ignore[attr-defined]

    def forget_saved_memory(self) -> None:
        """Training starts: a memory loaded with the weights (``--init`` from a trained RGCL) is rebuilt
        each epoch and saved again at the end, so meanwhile it leaves the state (and the checkpoints)."""
        for name in self._MEMORY_BUFFERS:
            self._buffers.pop(name, None)
        self.config.memory_size = 0  # type: ignore[attr-defined]
        self.memory = None

    def current_memory(self) -> Memory:
        if self.memory is None:
            if "memory_ids" not in self._buffers or self.memory_ids.numel() == 0:
                raise ConfigError(
                    "rgcl: the kNN classifier needs the training memory, which this model does not hold "
                    "(a model saved by `memeguard train` holds it)"
                )
            self.memory = Memory(
                self.memory_embeds.detach().float().cpu().numpy(),
                self.memory_labels.cpu().numpy(),
                self.memory_ids.cpu().numpy(),
            )
        return self.memory

    def _load_from_state_dict(
        self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        if prefix + "memory_ids" in state_dict:
            self.memory = None  # the loaded buffers replace the index built from the old ones
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def knn_logits(self, embed: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        memory = self.current_memory()
        top_k = self.config.knn_top_k  # type: ignore[attr-defined]
        queries = embed.detach().float().cpu().numpy()
        _, rows = memory.search(queries, top_k, memory.own_ids(queries, ids.cpu().numpy()))
        proba = np.clip(knn_vote(memory.labels, rows), KNN_EPS, 1 - KNN_EPS)
        return torch.from_numpy(np.log(proba / (1 - proba))).float().to(embed.device)

    def training_objective(self) -> RgclObjective:
        return RgclObjective(self)


class RgclObjective:
    """What the trainer asks of RGCL: refresh the memory each epoch, the hybrid loss, the final memory."""

    def __init__(self, model: RgclModel) -> None:
        self.model = model
        self.config: RgclConfig = model.config  # type: ignore[assignment]
        _require_faiss()
        model.forget_saved_memory()

    @torch.no_grad()
    def _embed_all(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        model = self.model
        was_training = model.training
        model.eval()
        embeds, labels, ids = [], [], []
        for batch in batches:
            embeds.append(model.embedding(batch).float())
            labels.append(batch["labels"])
            ids.append(batch["ids"])
        model.train(was_training)
        return torch.cat(embeds), torch.cat(labels), torch.cat(ids)

    def refresh(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """Rebuild the memory from the training memes' batches (called at every epoch's start)."""
        self.model.attach_memory(*self._embed_all(batches), persistent=False)

    def finish(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """The final weights' memory, saved with the model (for the kNN classifier)."""
        self.model.attach_memory(*self._embed_all(batches), persistent=True)

    def loss(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """(1 - ce_weight) * contrastive + ce_weight * BCE for the batch just forwarded (mean over it)."""
        cfg = self.config
        feats = self.model.last_embedding
        if feats is None:
            raise RuntimeError("RgclObjective.loss needs the embedding of a training-mode forward")
        labels = batch["labels"]
        mined = mine(
            self.model.current_memory(),
            feats,
            labels,
            batch["ids"],
            hard_negatives=cfg.hard_negatives,
            pseudo_gold_positives=cfg.pseudo_gold_positives,
            pool=cfg.retrieval_pool,
        )
        contrastive = contrastive_loss(
            feats, labels, mined, margin=cfg.triplet_margin, in_batch=cfg.in_batch_loss
        )
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return (1 - cfg.ce_weight) * contrastive + cfg.ce_weight * bce


_TINY = {"map_dim": 16, "pre_output_dim": 16, "image_dim": 32, "text_dim": 24, "knn_top_k": 5}
register_config("rgcl", "rgcl", map_dim=1024, pre_output_dim=1024)
register_config("rgcl-tiny", "rgcl", **_TINY)
