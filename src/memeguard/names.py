"""memeguard's on-disk vocabulary: split names and the files of every folder it writes.

Every stage reads and writes these folders, often one stage writing what another reads (a run dir is
written by ``training`` and read by ``serving``; a store by ``features`` and read by ``training``), so
the names live here once and every module imports them (torchtune keeps its checkpoint keys the same
way). A name that is written to disk is a contract with users' existing folders: never rename one.
"""

from __future__ import annotations

# -- splits ------------------------------------------------------------------------------------------
TRAIN = "train"
DEV_SEEN = "dev_seen"
DEV_UNSEEN = "dev_unseen"
TEST_SEEN = "test_seen"
TEST_UNSEEN = "test_unseen"
# The official phase-2 release, in the order the challenge lists them.
OFFICIAL_SPLITS: tuple[str, ...] = (TRAIN, DEV_SEEN, DEV_UNSEEN, TEST_SEEN, TEST_UNSEEN)
# Phase-1 file names accepted in place of the phase-2 ones.
PHASE1_ALIASES: dict[str, str] = {DEV_SEEN: "dev", TEST_SEEN: "test"}
# Splits derived by ``data clean`` (vilio's cleaning): run (a) trains on TRAIN_CLEAN, run (b) on TRAINDEV.
TRAIN_CLEAN = "train_clean"
TRAINDEV = "traindev"
PRETRAIN = "pretrain"
# What runs predict and ensembles blend: dev_seen picks weights and thresholds, the test splits are scored.
TEST_SPLITS: tuple[str, ...] = (TEST_SEEN, TEST_UNSEEN)
PREDICTED_SPLITS: tuple[str, ...] = (DEV_SEEN, *TEST_SPLITS)
# Splits a report shows, in reading order.
REPORT_SPLITS: tuple[str, ...] = (DEV_SEEN, DEV_UNSEEN, TEST_SEEN, TEST_UNSEEN)
# vilio's two fine-tuning runs per model: (train split, splits it predicts).
RUN_A: tuple[str, tuple[str, ...]] = (TRAIN_CLEAN, (DEV_SEEN,))
RUN_B: tuple[str, tuple[str, ...]] = (TRAINDEV, TEST_SPLITS)


def split_file(split: str) -> str:
    """A dataset split's file name: ``dev_seen`` -> ``dev_seen.jsonl``."""
    return f"{split}.jsonl"


# -- dataset folder (``data clean`` / ``data synth`` outputs) ----------------------------------------------
IMAGE_DIR = "img"
CLEANING_REPORT_FILE = "cleaning_report.json"
HASH_CACHE_FILE = ".hash_cache.json"
SYNTH_META_FILE = "synth_meta.json"

# -- feature store -------------------------------------------------------------------------------------
STORE_META_FILE = "meta.json"
STORE_LAYOUT_FILE = "layout.json"
STORE_INDEX_FILE = "index.bin"
STORE_LOCK_FILE = ".lock"
STORE_FEATURES_FILE = "features.bin"
STORE_BOXES_FILE = "boxes.bin"

# -- model dir (``MemeModel.save_pretrained``) -----------------------------------------------------------
MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.safetensors"
ONNX_MODEL_FILE = (
    "model.onnx"  # ``export --optimize onnx``: the forward as an ONNX graph, next to the weights
)

# -- run dir (``train`` / ``pretrain``) ------------------------------------------------------------------
DONE_FILE = "DONE"  # written last: a folder with it is finished (run dirs and pipeline stages alike)
METRICS_FILE = "metrics.jsonl"
TRAIN_CONFIG_FILE = "train_config.json"
PRETRAIN_CONFIG_FILE = "pretrain_config.json"
PRETRAIN_HEADS_FILE = "pretrain_heads.safetensors"
FEATURES_META_FILE = "features_meta.json"  # a copy of the store's meta.json: serving needs only the run dir
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT_FILE = "last.pt"
BEST_CHECKPOINT_FILE = "best.pt"


def soft_targets_file(digest: str) -> str:
    """A distilled run's teacher probabilities, named by their sha256 so that a new teacher is a new
    configuration: ``soft_targets.<12 hex>.csv``."""
    return f"soft_targets.{digest[:12]}.csv"


def prediction_file(split: str) -> str:
    """A run's (or a family's) predictions of one split: ``dev_seen`` -> ``dev_seen.csv``."""
    return f"{split}.csv"


# -- ensemble folder ---------------------------------------------------------------------------------
ENSEMBLE_WEIGHTS_FILE = "weights.json"
FAMILIES_FILE = "families.json"
# The pipeline's record of the run dirs behind each family (`memeguard distill --teacher OUT` reads it).
ENSEMBLE_MEMBERS_FILE = "members.json"


def fin_file(split: str) -> str:
    """The blended submission of one split: ``test_unseen`` -> ``FIN_test_unseen.csv``."""
    return f"FIN_{split}.csv"


def family_file(family: str, split: str) -> str:
    """A family's seed-averaged predictions, the ensemble's input: ``V``, ``dev_seen`` ->
    ``V_dev_seen.csv``."""
    return f"{family}_{split}.csv"


# -- pipeline output folder ----------------------------------------------------------------------------
STAGES_DIR = "stages"
STAGE_RECORD_FILE = "stage.json"
STORE_DIR = "store"
PREDICTIONS_DIR = "predictions"
REPORT_FILE = "report.html"
TIMINGS_FILE = "timings.json"


# -- explanations (``memeguard explain --out DIR``) ------------------------------------------------------
def explanation_files(stem: str) -> tuple[str, str]:
    """One meme's explanation files: ``img/01235.png`` -> (``01235.explain.json``, ``01235.explain.png``)."""
    return f"{stem}.explain.json", f"{stem}.explain.png"
