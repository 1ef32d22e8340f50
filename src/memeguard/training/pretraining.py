"""Task pretraining on the memes themselves (vilio's ``pretrain_bert{O,V,X}.py``): masked LM + image-text
matching.

* MLM: 15% of the word pieces ([CLS]/[SEP]/padding excluded) are selected; 80% become [MASK], 10% a random
  vocabulary token, 10% stay; the loss is cross-entropy on the selected positions of
  ``encode(batch).text_hidden`` through :class:`~memeguard.models.blocks.MLMHead` tied to the model's word
  embeddings.
* ITM: half of the texts are swapped for another meme's text; a linear head on ``encode(batch).pooled`` says
  whether text and image match. MLM is counted on mismatched pairs too (as vilio's O).
* Feature masking, applied even though there is no visual loss (vilio did the same): per box with p=0.15, 80%
  zero vector, 10% the feature of a random box (vilio drew it from a random image of the dataset; we draw it
  from the batch), 10% unchanged.
* AdamW (eps 1e-6, no decay), warmup 5%, cosine (O, V) or linear (X) decay, clip 1.0, no accumulation.

The randomness of masking and swapping comes from a generator seeded by (seed, epoch, batch), so a resumed run
masks exactly as the uninterrupted one. Output: ``RUN_DIR/model/`` (our ``save_pretrained`` of the backbone
with its untrained classifier, what ``train --init RUN_DIR`` starts from),
``RUN_DIR/pretrain_heads.safetensors`` (``mlm.*`` without the tied decoder, ``itm.*``),
``pretrain_config.json``, ``metrics.jsonl``, ``DONE``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memeguard.data.meme import Meme
from memeguard.errors import ConfigError
from memeguard.features.record import RegionRecord
from memeguard.io import write_bytes_atomic
from memeguard.models.base import MemeModel
from memeguard.models.blocks import MLMHead
from memeguard.names import (
    MODEL_CONFIG_FILE,
    MODEL_DIR,
    MODEL_WEIGHTS_FILE,
    PRETRAIN_CONFIG_FILE,
    PRETRAIN_HEADS_FILE,
)
from memeguard.records import read_record
from memeguard.training import checkpoint as ckpt
from memeguard.training import distributed as ddp
from memeguard.training.build import build_model, require_pretrainable, standardization_overrides
from memeguard.training.config import PretrainConfig
from memeguard.training.data import (
    RegionSource,
    open_regions,
    read_memes,
    region_feature_dim,
    require_regions,
    to_device,
    verify_regions,
)
from memeguard.training.loop import rank_batches
from memeguard.training.optim import parameter_groups
from memeguard.training.run import RunState, already_done, launch, refuse_non_finite_loss
from memeguard.training.runlog import autocast

IGNORE = -100
# What a finished pretraining run dir holds, recorded in and checked against DONE.
PRETRAIN_OUTPUTS = (
    f"{MODEL_DIR}/{MODEL_CONFIG_FILE}",
    f"{MODEL_DIR}/{MODEL_WEIGHTS_FILE}",
    PRETRAIN_HEADS_FILE,
)


class PretrainingModel(nn.Module):
    """The backbone with an MLM head (tied to its word embeddings) and an ITM head on the pooled output."""

    def __init__(self, backbone: MemeModel, text_dim: int, pooled_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        act = getattr(backbone.config, "hidden_act", "gelu")
        self.mlm = MLMHead(
            text_dim, backbone.get_input_embeddings(), act=act, eps=backbone.config.layer_norm_eps
        )
        self.itm = nn.Linear(pooled_dim, 2)
        for module in (self.mlm.transform.dense, self.itm):
            nn.init.normal_(module.weight, std=backbone.config.initializer_range)
            nn.init.zeros_(module.bias)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone.encode(batch)
        return self.mlm(out.text_hidden), self.itm(out.pooled)

    def heads_state(self) -> dict[str, torch.Tensor]:
        """The pretraining heads without the decoder weight (it is the backbone's word embedding matrix)."""
        state = {f"mlm.{k}": v for k, v in self.mlm.state_dict().items() if k != "decoder.weight"}
        state.update({f"itm.{k}": v for k, v in self.itm.state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: Sequence[int],
    mask_id: int,
    vocab_size: int,
    rate: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 masking -> (masked ids, labels with -100 where not selected)."""
    candidates = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(list(special_ids)))
    selected = (torch.rand(input_ids.shape, generator=generator) < rate) & candidates
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    action = torch.rand(input_ids.shape, generator=generator)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[selected & (action < 0.8)] = mask_id
    use_random = selected & (action >= 0.8) & (action < 0.9)
    masked[use_random] = random_tokens[use_random]
    return masked, labels


def mask_features(
    feats: torch.Tensor, visual_mask: torch.Tensor, rate: float, generator: torch.Generator
) -> torch.Tensor:
    """vilio's ``random_feat``: per real box with p=``rate``: 80% zeros, 10% another box's feature, 10%
    kept."""
    batch, boxes, _ = feats.shape
    real = visual_mask.bool()
    selected = (torch.rand((batch, boxes), generator=generator) < rate) & real
    action = torch.rand((batch, boxes), generator=generator)
    pool = feats[real]  # every real box in the batch
    donors = pool[torch.randint(max(1, pool.shape[0]), (batch, boxes), generator=generator)]
    out = feats.clone()
    out[selected & (action < 0.8)] = 0.0
    swap = selected & (action >= 0.8) & (action < 0.9)
    out[swap] = donors[swap]
    return out


def itm_texts(
    memes: Sequence[Meme], all_texts: Sequence[str], generator: torch.Generator
) -> tuple[list[str], torch.Tensor]:
    """Half of the texts replaced by a random other meme's text (re-drawn if it happens to be identical)."""
    texts, matched = [], []
    for meme in memes:
        keep = bool(torch.rand((), generator=generator) >= 0.5)
        text = meme.text
        if not keep:
            for _ in range(10):
                text = all_texts[int(torch.randint(len(all_texts), (), generator=generator))]
                if text != meme.text:
                    break
            keep = text == meme.text
        texts.append(text)
        matched.append(1 if keep else 0)
    return texts, torch.tensor(matched, dtype=torch.long)


def _step_generator(seed: int, epoch: int, batch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 131 + rank)


def make_pretrain_batch(
    processor,
    memes: Sequence[Meme],
    records: Sequence[RegionRecord],
    all_texts: Sequence[str],
    cfg: PretrainConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    if cfg.itm:
        texts, itm_labels = itm_texts(memes, all_texts, generator)
        memes = [Meme(m.id, m.img, t, None) for m, t in zip(memes, texts, strict=True)]
    batch = processor(memes, records)
    batch.pop("labels", None)
    if cfg.itm:
        batch["itm_labels"] = itm_labels
    tok = processor.tokenizer
    special = [i for i in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) if i is not None]
    if cfg.mlm:
        batch["input_ids"], batch["mlm_labels"] = mask_tokens(
            batch["input_ids"],
            batch["attention_mask"],
            special,
            tok.mask_token_id,
            len(tok),
            cfg.word_mask_rate,
            generator,
        )
    if cfg.obj_mask_rate > 0:
        batch["visual_feats"] = mask_features(
            batch["visual_feats"], batch["visual_mask"], cfg.obj_mask_rate, generator
        )
    return batch


def pretrain_loss(model: nn.Module, batch: dict[str, torch.Tensor], cfg: PretrainConfig) -> torch.Tensor:
    """MLM + ITM. ``model`` is the PretrainingModel or its DDP wrapper (so gradients get all-reduced).
    The MLM term is a sum over selected tokens / their count, so a batch with none selected still gives every
    head parameter a (zero) gradient, which DDP needs."""
    mlm_logits, itm_logits = model(batch)
    loss = torch.zeros((), device=itm_logits.device)
    if cfg.mlm:
        labels = batch["mlm_labels"].flatten()
        summed = F.cross_entropy(
            mlm_logits.float().flatten(0, 1), labels, ignore_index=IGNORE, reduction="sum"
        )
        loss = loss + summed / (labels != IGNORE).sum().clamp(min=1)
    if cfg.itm:
        loss = loss + F.cross_entropy(itm_logits.float(), batch["itm_labels"])
    else:
        loss = loss + 0.0 * itm_logits.sum()
    return loss


def pretrain(
    cfg: PretrainConfig,
    *,
    regions: RegionSource | None = None,
    on_update: Callable[[int], None] | None = None,
) -> Path:
    """Run task pretraining; returns the run dir (pass it to ``train --init``). A run dir with ``DONE`` is
    not trained again; one with a checkpoint resumes from it; one written under another configuration is
    refused."""
    require_pretrainable(cfg.model)
    run_dir = Path(cfg.out_dir)
    with launch(cfg) as (device, info):
        if already_done(run_dir, cfg, PRETRAIN_CONFIG_FILE, info, device, PRETRAIN_OUTPUTS):
            return run_dir
        ckpt.seed_everything(cfg.seed)
        source = open_regions(regions if regions is not None else cfg.features)
        memes = read_memes(cfg.data_dir, cfg.split, cfg.limit)
        require_regions(memes, source, cfg.split, str(cfg.features))
        verify_regions(source, memes)
        overrides = standardization_overrides(
            cfg.standardize_features, cfg.init, cfg.model_overrides, source, [meme.id for meme in memes]
        )
        backbone = build_model(
            cfg.model,
            feature_dim=region_feature_dim(source, memes),
            init=cfg.init,
            overrides=overrides,
            tokenizer=cfg.tokenizer,
        )
        if len(memes) < 2 and cfg.itm:
            raise ConfigError("image-text matching needs at least 2 memes")
        _run(cfg, memes, source, backbone, run_dir, device, info, on_update)
        return run_dir


def _with_heads(
    backbone: MemeModel, processor, memes: Sequence[Meme], source: RegionSource, device: torch.device
) -> PretrainingModel:
    """The backbone with its pretraining heads, sized by one probe of the encoder's output widths."""
    backbone.to(device)
    with torch.no_grad():  # eval mode: no dropout, no RNG drawn
        backbone.eval()
        probe = to_device(processor(memes[:2], [source[m.id] for m in memes[:2]]), device)
        out = backbone.encode(probe)
        backbone.train()
    return PretrainingModel(backbone, out.text_hidden.shape[-1], out.pooled.shape[-1]).to(device)


def _run(
    cfg: PretrainConfig,
    memes: list[Meme],
    source: RegionSource,
    backbone: MemeModel,
    run_dir: Path,
    device: torch.device,
    info: ddp.DistInfo,
    on_update: Callable[[int], None] | None,
) -> None:
    processor = backbone.build_processor()
    all_texts = [m.text for m in memes]
    model = _with_heads(backbone, processor, memes, source, device)
    batches_per_epoch = len(rank_batches(len(memes), cfg, 0, info))
    total = batches_per_epoch * cfg.epochs
    state = RunState(
        run_dir,
        cfg,
        PRETRAIN_CONFIG_FILE,
        model,
        parameter_groups(model, lr=cfg.lr),
        schedule=cfg.schedule,
        warmup=int(cfg.warmup_ratio * total),
        total=total,
        device=device,
        info=info,
    )
    state.start()
    with state.running():
        for epoch, _ in state.epochs(cfg.epochs):  # checkpoints are taken at epoch ends only
            loss_sum, count = 0.0, 0
            batches = rank_batches(len(memes), cfg, epoch, info)
            for index, indices in enumerate(batches):
                chosen = [memes[i] for i in indices]
                batch = make_pretrain_batch(
                    processor,
                    chosen,
                    [source[m.id] for m in chosen],
                    all_texts,
                    cfg,
                    _step_generator(cfg.seed, epoch, index, info.rank),
                )
                batch = to_device(batch, device)
                with autocast(device, cfg.precision):
                    loss = pretrain_loss(state.trained, batch, cfg)
                loss_value = float(loss.detach())
                refuse_non_finite_loss(loss_value, run_dir, state.updates, [m.id for m in chosen])
                state.backward(loss)
                state.update()
                loss_sum, count = loss_sum + loss_value, count + 1
                state.show(loss_sum / count, math.nan)
                if on_update is not None:
                    on_update(state.updates)
            state.log(
                {
                    "update": state.updates,
                    "epoch": epoch,
                    "loss": loss_sum / max(1, count),
                    "time": time.time(),
                }
            )
            state.save(epoch + 1, 0)

    def write_outputs() -> None:
        from safetensors.torch import save

        backbone.save_pretrained(run_dir / MODEL_DIR)
        heads = save(model.heads_state(), metadata={"format": "pt"})  # the bytes save_file would write
        write_bytes_atomic(run_dir / PRETRAIN_HEADS_FILE, heads)

    state.finish(write_outputs, lambda: {"finished": time.time(), "updates": state.updates}, PRETRAIN_OUTPUTS)


def read_pretrain_config(run_dir: str | Path) -> PretrainConfig:
    saved = read_record(Path(run_dir) / PRETRAIN_CONFIG_FILE, dict[str, Any], ConfigError)
    return PretrainConfig.from_dict(saved)
