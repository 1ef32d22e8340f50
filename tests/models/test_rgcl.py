"""RGCL: faiss retrieval against brute force, leak-free mining, the contrastive loss against a hand
computation, the kNN vote, and a training run whose saved memory holds the training memes only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_memes import IMAGE_DIM, TEXT_DIM, write_clip_dataset

from memeguard.errors import CheckpointError, ConfigError
from memeguard.models.base import MemeModel
from memeguard.models.registry import create_model
from memeguard.models.rgcl import Memory, Mined, contrastive_loss, knn_vote, mine

pytest.importorskip("faiss")


def _brute_force(embeds, ids, queries, query_ids, k):
    """Nearest entries by cosine with numpy, own id skipped (ties broken by row, as a stable sort)."""
    e = embeds / np.linalg.norm(embeds, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ e.T
    rows = []
    for i in range(len(q)):
        order = [r for r in np.argsort(-sims[i], kind="stable") if ids[r] != query_ids[i]]
        rows.append(order[:k])
    return np.array(rows), np.take_along_axis(sims, np.array(rows), 1)


def test_faiss_search_matches_brute_force_and_skips_the_query_itself():
    rng = np.random.default_rng(0)
    embeds = rng.normal(size=(50, 12)).astype(np.float32)
    ids = np.arange(1000, 1050)
    memory = Memory(embeds, rng.integers(2, size=50), ids)
    queries = np.concatenate([embeds[:5] * 3.0, rng.normal(size=(5, 12)).astype(np.float32)])
    query_ids = np.concatenate([ids[:5], np.arange(5000, 5005)])  # 5 memory memes, 5 new ones
    scores, rows = memory.search(queries, 7, query_ids)
    expected_rows, expected_scores = _brute_force(embeds, ids, queries, query_ids, 7)
    assert np.array_equal(rows, expected_rows)
    assert np.allclose(scores, expected_scores, atol=1e-5)
    assert not (ids[rows[:5]] == query_ids[:5, None]).any()  # the memes themselves were the best match
    # asking for more than the memory holds: every other entry once, then -1 (score -inf)
    all_scores, all_rows = memory.search(queries[:1], 100, query_ids[:1])
    assert sorted(all_rows[0, :49].tolist()) == list(range(1, 50))
    assert all_rows[0, 49:].tolist() == [-1] and np.isneginf(all_scores[0, 49:]).all()


def test_mining_picks_the_nearest_other_label_and_same_label_entries():
    #            0: self   1: same, close  2: other, closest  3: other  4: same, far
    embeds = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.95, 0.05, 0], [0.5, 0.5, 0], [0, 0, 1]], np.float32)
    memory = Memory(embeds, np.array([1, 1, 0, 0, 1]), np.array([10, 11, 12, 13, 14]))
    query = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    mined = mine(
        memory, query, torch.tensor([1.0, 0.0]), torch.tensor([10, 99]), hard_negatives=2,
        pseudo_gold_positives=1, pool=5,
    )  # fmt: skip
    unit = embeds / np.linalg.norm(embeds, axis=1, keepdims=True)
    # query 0 (label 1, id 10): itself skipped; negatives 2 then 3; positive 1
    assert np.allclose(mined.negatives[0].numpy(), unit[[2, 3]])
    assert np.allclose(mined.positives[0].numpy(), unit[[1]])
    # query 1 (label 0, new id): nearest is 4 (label 1: a negative), then by similarity 3 (label 0: positive)
    assert np.allclose(mined.negatives[1, 0].numpy(), unit[4]) and mined.negative_mask[1].tolist()[0]
    assert np.allclose(mined.positives[1, 0].numpy(), unit[3])
    # a pool too small to find a second negative leaves a zero, masked slot
    small = mine(
        memory, query[:1], torch.tensor([1.0]), torch.tensor([10]), hard_negatives=2,
        pseudo_gold_positives=1, pool=2,
    )  # fmt: skip
    assert small.negative_mask.tolist() == [[True, False]] and small.negatives[0, 1].abs().sum() == 0


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_contrastive_loss_matches_a_hand_computation():
    feats = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.2]]
    labels = [1, 0, 1, 0]
    hard = [[[0.8, 0.6]], [[1.0, 1.0]], [[0.0, 0.0]], [[0.3, -1.0]]]  # meme 2 found no hard negative
    hard_mask = [[True], [True], [False], [True]]
    gold = [[[1.0, 0.1]], [[0.5, 0.9]], [[-0.2, 1.0]], [[-1.0, 0.0]]]
    margin = 0.1
    expected = 0.0
    for i in range(4):
        negatives = [_cos(feats[i], feats[j]) for j in range(4) if labels[j] != labels[i]]
        in_batch = sum(negatives) / len(negatives)
        hard_term = _cos(feats[i], hard[i][0]) if hard_mask[i][0] else 0.0
        gold_term = _cos(feats[i], gold[i][0])
        expected += max(0.0, in_batch + hard_term - gold_term + margin) / 4
    mined = Mined(
        torch.tensor(hard), torch.tensor(hard_mask), torch.tensor(gold), torch.ones(4, 1, dtype=torch.bool)
    )
    label_tensor = torch.tensor(labels, dtype=torch.float32)
    loss = contrastive_loss(torch.tensor(feats), label_tensor, mined, margin=margin)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # a batch of one label has no in-batch negatives: that term is 0, not NaN
    same = contrastive_loss(torch.tensor(feats), torch.ones(4), mined, margin=margin)
    assert torch.isfinite(same)


def test_knn_vote_is_the_rank_weighted_mean_of_the_labels():
    labels = np.array([1, 0, 1, 1, 0])
    rows = np.array([[0, 1, 2], [4, 3, -1]])
    # weights 3, 2, 1 over the neighbours found: (3*1 + 2*0 + 1*1) / 6 and (3*0 + 2*1) / 5
    assert np.allclose(knn_vote(labels, rows), [4 / 6, 2 / 5])


def _regions_config(tmp_path, **options):
    from memeguard.training.config import TrainConfig

    data, regions = write_clip_dataset(tmp_path, n_train=96, n_dev=40)
    shared = dict(
        model="rgcl-tiny", features="mem", data_dir=data, out_dir=tmp_path / "run", train_split="train",
        predict_splits=("dev_seen", "train"), lr=3e-3, batch_size=16, epochs=4, clip=0.1, warmup_ratio=0.0,
        sum_loss=False, eval_every=0, device="cpu", progress=False,
    )  # fmt: skip
    return TrainConfig(**{**shared, **options}), data, regions


def test_objective_loss_mixes_contrastive_and_bce(tmp_path):
    from clip_memes import make_clip_memes

    from memeguard.data.meme import Meme

    torch.manual_seed(0)
    model = create_model("rgcl-tiny", image_dim=IMAGE_DIM, text_dim=TEXT_DIM)
    lines, regions = make_clip_memes(12, seed=5, start_id=1)
    memes = [Meme(id=x["id"], img=x["img"], text=x["text"], label=x["label"]) for x in lines]
    batch = model.build_processor()(memes, [regions[m.id] for m in memes])
    objective = model.training_objective()
    objective.refresh([batch])
    assert sorted(model.current_memory().ids.tolist()) == [m.id for m in memes]
    assert not any(key.startswith("memory") for key in model.state_dict())  # nor in checkpoints
    model.train()
    torch.manual_seed(1)
    logits = model(batch)
    loss = objective.loss(batch, logits)
    feats = model.last_embedding
    cfg = model.config
    mined = mine(
        model.current_memory(), feats, batch["labels"], batch["ids"], hard_negatives=cfg.hard_negatives,
        pseudo_gold_positives=cfg.pseudo_gold_positives, pool=cfg.retrieval_pool,
    )  # fmt: skip
    expected = 0.5 * contrastive_loss(feats, batch["labels"], mined, margin=0.1) + 0.5 * (
        F.binary_cross_entropy_with_logits(logits, batch["labels"])
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert model.image_map[0].weight.grad.abs().sum() > 0


def test_knn_needs_a_memory():
    from clip_memes import make_clip_memes

    from memeguard.data.meme import Meme

    model = create_model("rgcl-tiny", image_dim=IMAGE_DIM, text_dim=TEXT_DIM, classifier="knn").eval()
    lines, regions = make_clip_memes(2, seed=5, start_id=1)
    memes = [Meme(id=x["id"], img=x["img"], text=x["text"], label=x["label"]) for x in lines]
    batch = model.build_processor()(memes, [regions[m.id] for m in memes])
    with pytest.raises(ConfigError, match="needs the training memory"):
        model(batch)


@pytest.mark.slow
def test_training_learns_and_saves_a_leak_free_memory(tmp_path):
    from memeguard.data.metrics import auroc
    from memeguard.data.predictions import read_predictions
    from memeguard.training.loop import finetune

    cfg, data, regions = _regions_config(tmp_path)
    result = finetune(cfg, regions=regions)
    assert result.metrics["auroc"] > 0.9
    model = MemeModel.from_pretrained(result.model_dir)
    train_ids = {int(line.split('"id": ')[1].split(",")[0]) for line in (data / "train.jsonl").open()}
    dev_ids = {int(line.split('"id": ')[1].split(",")[0]) for line in (data / "dev_seen.jsonl").open()}
    memory_ids = set(model.memory_ids.tolist())
    assert memory_ids == train_ids and not memory_ids & dev_ids and model.config.memory_size == len(train_ids)
    # the saved memory is the final weights' embeddings of the training memes
    train = read_predictions(result.predictions["train"])
    assert len(train) == len(train_ids)

    # the kNN classifier of the saved model: a training meme never votes for itself
    model.config.classifier = "knn"
    model.eval()
    from memeguard.training.data import Collator
    from memeguard.training.loop import predict_memes, read_memes

    memes = read_memes(data, "train")
    ids, proba = predict_memes(
        model, Collator(model.build_processor()), memes, regions, batch_size=32, device=torch.device("cpu")
    )
    batch = model.build_processor()(memes[:4], [regions[m.id] for m in memes[:4]])
    with torch.no_grad():
        embed = model.embedding(batch).numpy()
    _, rows = model.current_memory().search(embed, model.config.knn_top_k, batch["ids"].numpy())
    assert (rows >= 0).all()
    assert not (model.memory_ids.numpy()[rows] == batch["ids"].numpy()[:, None]).any()
    expected = knn_vote(model.current_memory().labels, rows)
    assert np.allclose(proba[:4], np.clip(expected, 1e-4, 1 - 1e-4), atol=1e-6)
    dev = read_memes(data, "dev_seen")
    _, dev_proba = predict_memes(
        model, Collator(model.build_processor()), dev, regions, batch_size=32, device=torch.device("cpu")
    )
    assert auroc(np.array([m.label for m in dev]), dev_proba) > 0.9


def test_a_query_is_only_its_own_entry_when_its_embedding_is_that_entry():
    """The scorer numbers memes 0, 1, ...: an unrelated meme with a training meme's id still retrieves it."""
    embeds = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    memory = Memory(embeds, np.array([1, 0, 1]), np.array([10, 11, 12]))
    queries = np.array([[2, 0], [1, 0.1], [0, 3]], np.float32)
    assert memory.own_ids(queries, np.array([10, 11, 99])).tolist() == [10, -1, -1]


def test_the_final_memory_is_saved_and_a_new_training_run_keeps_it_out_of_checkpoints(tmp_path):
    from clip_memes import make_clip_memes

    from memeguard.data.meme import Meme

    torch.manual_seed(0)
    model = create_model("rgcl-tiny", image_dim=IMAGE_DIM, text_dim=TEXT_DIM)
    lines, regions = make_clip_memes(8, seed=5, start_id=1)
    memes = [Meme(id=x["id"], img=x["img"], text=x["text"], label=x["label"]) for x in lines]
    batch = model.build_processor()(memes, [regions[m.id] for m in memes])
    model.training_objective().finish([batch])
    assert model.config.memory_size == 8 and "memory_ids" in model.state_dict()
    model.save_pretrained(tmp_path / "m")
    loaded = MemeModel.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(loaded.memory_embeds, model.memory_embeds)
    loaded.config.classifier = "knn"
    with torch.no_grad():
        proba = loaded.predict_proba(batch).numpy()
        embed = loaded.embedding(batch).numpy()
    # each meme IS its memory entry here, so it votes with the other 5 nearest (itself skipped)
    _, rows = loaded.current_memory().search(embed, 5, batch["ids"].numpy())
    assert np.allclose(
        proba, np.clip(knn_vote(loaded.current_memory().labels, rows), 1e-4, 1 - 1e-4), atol=1e-6
    )
    loaded.training_objective()  # a run started from it (--init): the memory is rebuilt, not checkpointed
    assert loaded.config.memory_size == 0 and "memory_ids" not in loaded.state_dict()


class _AuthorsHead(torch.nn.Module):
    """RGCL's ``classifier_hateClipper`` (align fusion, no batch norm), rebuilt from its code's layer list
    with the authors' attribute names; its forward is theirs (normalise, multiply, mlp, output_layer)."""

    def __init__(self, image_dim: int, text_dim: int, map_dim: int, proj_dim: int, layers: int) -> None:
        super().__init__()
        nn = torch.nn
        self.img_proj = nn.Sequential(nn.Linear(image_dim, map_dim), nn.Dropout(0.2))
        self.text_proj = nn.Sequential(nn.Linear(text_dim, map_dim), nn.Dropout(0.2))
        mlp: list[nn.Module] = [nn.Dropout(0.4)]
        width = map_dim
        for _ in range(layers):
            mlp += [nn.Linear(width, proj_dim), nn.ReLU(), nn.Dropout(0.1)]
            width = proj_dim
        self.mlp = nn.Sequential(*mlp)
        self.output_layer = nn.Linear(proj_dim, 1)

    def forward(self, img_feats, text_feats):
        img = F.normalize(self.img_proj(img_feats), p=2, dim=1)
        text = F.normalize(self.text_proj(text_feats), p=2, dim=1)
        x = torch.mul(img, text)
        return self.output_layer(self.mlp(x)), self.mlp[:-2](x)


def test_the_authors_rgcl_checkpoint_loads_and_scores_as_their_head(tmp_path):
    torch.manual_seed(3)
    authors = _AuthorsHead(IMAGE_DIM, TEXT_DIM, 16, 16, 3).eval()
    path = tmp_path / "best_model_7_0.78.pt"
    torch.save(authors.state_dict(), path)
    model = create_model("rgcl-tiny", image_dim=IMAGE_DIM, text_dim=TEXT_DIM).eval()
    missing, unexpected = model.load_original(path)
    assert missing == [] and unexpected == []
    image, text = torch.randn(5, IMAGE_DIM), torch.randn(5, TEXT_DIM)
    batch = {"image_feats": image, "text_feats": text, "ids": torch.arange(5)}
    with torch.no_grad():
        logits, embed = authors(image, text)
        assert torch.allclose(model(batch), logits.squeeze(1), atol=1e-6)
        assert torch.allclose(model.embedding(batch), embed, atol=1e-6)
    wrong = create_model("rgcl-tiny", image_dim=IMAGE_DIM, text_dim=TEXT_DIM, map_dim=8)
    with pytest.raises(CheckpointError, match="shape"):
        wrong.load_original(path)


@pytest.mark.slow
def test_a_killed_run_resumes_from_an_epoch_checkpoint_to_identical_weights_and_memory(tmp_path):
    """The memory is rebuilt at each epoch's start, so resuming from an epoch checkpoint rebuilds the one the
    uninterrupted run used: same weights, same saved memory, same predictions."""
    from safetensors.torch import load_file

    from memeguard.training.loop import finetune

    data, regions = write_clip_dataset(tmp_path, n_train=48, n_dev=16)

    def config(out: str):
        from memeguard.training.config import TrainConfig

        return TrainConfig(
            model="rgcl-tiny", features="mem", data_dir=data, out_dir=tmp_path / out, train_split="train",
            predict_splits=("dev_seen",), lr=3e-3, batch_size=16, epochs=3, eval_every=0, device="cpu",
            progress=False, sum_loss=False,
        )  # fmt: skip

    reference = finetune(config("ref"), regions=regions)

    def kill(update: int) -> None:
        if update == 4:  # one batch into the second epoch (3 batches an epoch)
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        finetune(config("killed"), regions=regions, on_update=kill)
    resumed = finetune(config("killed"), regions=regions)
    assert resumed.resumed
    ref_state = load_file(str(reference.model_dir / "model.safetensors"))
    new_state = load_file(str(resumed.model_dir / "model.safetensors"))
    assert ref_state.keys() == new_state.keys() and "memory_embeds" in ref_state
    for key in ref_state:
        assert torch.equal(ref_state[key], new_state[key]), key
    assert (reference.run_dir / "dev_seen.csv").read_text() == (resumed.run_dir / "dev_seen.csv").read_text()


def _ddp_worker(rank: int, port: int, cfg, regions: dict, out: str) -> None:
    import os

    from memeguard.training.loop import finetune

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    result = finetune(cfg, regions=regions)
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()}, f"{out}/rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights_and_memory(tmp_path):
    """Under DDP the objective reads the embedding of the DDP forward, and every rank builds the memory."""
    import socket

    import torch.multiprocessing as mp

    from memeguard.training.config import TrainConfig

    data, regions = write_clip_dataset(tmp_path, n_train=32, n_dev=8)
    cfg = TrainConfig(
        model="rgcl-tiny", features="mem", data_dir=data, out_dir=tmp_path / "run", train_split="train",
        predict_splits=("dev_seen",), epochs=2, batch_size=8, lr=1e-3, eval_every=2, device="cpu",
        progress=False,
    )  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, cfg, regions, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and "memory_embeds" in rank0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert (tmp_path / "run" / "DONE").is_file()
