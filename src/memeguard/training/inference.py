"""Predicting a split with a trained model (vilio's ``bash/inference`` scripts, ``--loadfin``)."""

from __future__ import annotations

import os
from pathlib import Path

from memeguard.training.data import RegionSource


def predict(
    model_dir: str | os.PathLike[str],
    features: str | os.PathLike[str] | RegionSource,
    data_dir: str | os.PathLike[str],
    split: str,
    out_csv: str | os.PathLike[str],
    *,
    batch_size: int = 50,
    device: str = "auto",
    precision: str = "fp32",
    limit: int | None = None,
) -> Path:
    """Write ``out_csv`` (``id,proba,label``; proba = P(hateful) in [0, 1]) for every meme of ``split``.

    ``model_dir``: our model dir or a run dir (its ``model/``). Fails before predicting on a missing split,
    memes missing from the store, NaN/inf in their features, or a feature dimension the model was not
    trained on.
    """
    from memeguard.data.predictions import write_predictions
    from memeguard.errors import ConfigError
    from memeguard.training.build import load_model_dir
    from memeguard.training.data import (
        Collator,
        open_regions,
        read_memes,
        region_feature_dim,
        require_regions,
        verify_regions,
    )
    from memeguard.training.distributed import resolve_device
    from memeguard.training.loop import predict_memes

    model = load_model_dir(model_dir)
    source = open_regions(features)
    memes = read_memes(data_dir, split, limit)
    store_name = str(features) if isinstance(features, (str, os.PathLike)) else "the region source"
    require_regions(memes, source, split, store_name)
    verify_regions(source, memes)
    dim = region_feature_dim(source, memes)
    if dim != model.config.visual_feat_dim:
        raise ConfigError(
            f"{store_name}: {dim}-d region features, but {model_dir} was trained on "
            f"{model.config.visual_feat_dim}-d"
        )
    torch_device = resolve_device(device)
    model.to(torch_device)
    ids, proba = predict_memes(
        model,
        Collator(model.build_processor()),
        memes,
        source,
        batch_size=batch_size,
        device=torch_device,
        precision=precision,
    )
    write_predictions(out_csv, ids, proba)
    return Path(out_csv)
