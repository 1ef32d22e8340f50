"""The recipe runner: clean -> features -> pretrain -> fine-tune (both runs) -> seed average -> ensemble
-> (optional) distill -> report.

Every stage is cached under ``OUT/stages/<kind>/<label>-<key>/`` where ``key`` hashes the stage's
config and the keys of the stages it reads, so

* a rerun skips every finished stage (its folder holds a ``DONE`` marker, written last);
* a killed run resumes: an unfinished stage runs again in its own folder (training and feature extraction
  resume from what they had written);
* changing one model's hyper-parameters reruns that model's stages and the ensemble, nothing else.

Final outputs: ``OUT/predictions/<family>_<split>.csv`` (seed-averaged), ``OUT/FIN_<split>.csv``,
``OUT/weights.json``, ``OUT/members.json`` (the run dirs behind each family), ``OUT/report.html`` and
``OUT/timings.json``; with a ``distill:`` stage, the student's run dir under ``OUT/stages/distill/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from rich.console import Console

from memeguard import __version__
from memeguard.errors import ConfigError, DataError
from memeguard.io import write_json_atomic
from memeguard.names import (
    DONE_FILE,
    ENSEMBLE_MEMBERS_FILE,
    IMAGE_DIR,
    PREDICTIONS_DIR,
    RUN_A,
    RUN_B,
    STAGE_RECORD_FILE,
    STAGES_DIR,
    TIMINGS_FILE,
    prediction_file,
)
from memeguard.pipeline.distill import student_predictions
from memeguard.pipeline.recipe import FeatureSetSpec, ModelSpec, Recipe, RunSpec
from memeguard.pipeline.stages import run_settings, traindev_start, warm_traindev_settings
from memeguard.records import DoneRecord, load_json, read_record

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11


# vilio's two fine-tunes of every run, by the label their stages carry: (a) and (b).
FINETUNES: tuple[tuple[str, tuple[str, tuple[str, ...]]], ...] = (("train", RUN_A), ("traindev", RUN_B))


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Cheap identity of a file or folder tree: names, sizes and mtimes (not contents)."""
    if path.is_file():
        stat = path.stat()
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    entries = []
    for child in sorted(path.rglob("*")):
        if child.is_file():
            stat = child.stat()
            entries.append((str(child.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return {"path": str(path.resolve()), "tree": fingerprint(entries)}


def dataset_fingerprint(data_dir: Path) -> str:
    """Split files by content, images by name/size/mtime."""
    digest = hashlib.sha256()
    for jsonl in sorted(data_dir.glob("*.jsonl")):
        digest.update(jsonl.name.encode())
        digest.update(hashlib.sha256(jsonl.read_bytes()).digest())
    image_dir = data_dir / IMAGE_DIR
    if image_dir.is_dir():
        for entry in sorted(os.scandir(image_dir), key=lambda e: e.name):
            stat = entry.stat()
            digest.update(f"{entry.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


@dataclass
class Stage:
    kind: str
    label: str
    config: dict[str, Any]
    deps: list[Stage]
    action: Callable[[Path], Any]
    key: str = ""
    directory: Path = field(default_factory=Path)

    def finalize(self, root: Path) -> None:
        # The package version is part of the key: a new release may compute a stage differently.
        self.key = fingerprint(
            {
                "kind": self.kind,
                "config": self.config,
                "deps": [d.key for d in self.deps],
                "version": __version__,
            }
        )
        self.directory = root / STAGES_DIR / self.kind / f"{self.label}-{self.key[:12]}"

    @property
    def done(self) -> bool:
        return (self.directory / DONE_FILE).is_file()


@dataclass
class RunReport:
    out_dir: Path
    timings: dict[str, dict[str, Any]]
    fin_files: dict[str, Path]
    family_files: dict[str, dict[str, Path]]
    data_dir: Path  # the cleaned dataset the runs used (labels for summaries)
    student_dir: Path | None = None  # the distill stage's run dir, when the recipe has one


class RecipeRunner:
    """Builds the stage graph of a recipe and executes it with caching."""

    def __init__(
        self,
        recipe: Recipe,
        data_dir: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        *,
        inference_only: bool = False,
        device: str = "auto",
        limit: int | None = None,
        console: Console | None = None,
        workers: int = 1,
    ) -> None:
        self.recipe = recipe
        self.workers = max(1, workers)
        self.data_dir = Path(data_dir)
        self.out_dir = Path(out_dir)
        self.inference_only = inference_only
        self.device = device
        self.limit = limit
        self.console = console or Console()
        if not self.data_dir.is_dir():
            raise DataError(f"{self.data_dir}: dataset directory not found")
        self.stages: list[Stage] = []
        self.clean_stage: Stage | None = None
        self.feature_stages: dict[str, tuple[Stage, str | None]] = {}
        self.run_predictions: dict[str, dict[str, dict[str, Path]]] = {}  # family -> run -> split -> csv

    # -- graph ------------------------------------------------------------------------------------
    def _add(self, stage: Stage) -> Stage:
        stage.finalize(self.out_dir)
        self.stages.append(stage)
        return stage

    def build(self) -> list[Stage]:
        self.clean_stage = self._add(
            Stage(
                "clean",
                "data",
                {"data": dataset_fingerprint(self.data_dir), "clean": self.recipe.clean},
                [],
                self._do_clean,
            )
        )
        self._build_features()
        for model in self.recipe.enabled_models:
            self.run_predictions[model.name] = {}
            for run in model.runs or []:
                self._build_run(model, run)
        return self.stages

    def _build_features(self) -> None:
        from memeguard.features.factory import extractor_class

        # Feature sets whose extractor makes all their variants in one pass (BUTD's box counts of one
        # detector) become one stage; every other feature set is a stage of its own.
        shared: dict[str, list[tuple[str, FeatureSetSpec]]] = {}
        for name, spec in self.recipe.features.items():
            if spec.extractor and extractor_class(spec.extractor).variants_share_pass:
                group = fingerprint(
                    {
                        "extractor": spec.extractor,
                        "weights": spec.weights,
                        "params": spec.params,
                        "dtype": spec.dtype,
                    }
                )
                shared.setdefault(group, []).append((name, spec))
                continue
            if spec.source == "extract":
                config = {
                    "extractor": spec.extractor,
                    "weights": spec.weights,
                    "params": spec.params,
                    "dtype": spec.dtype,
                    "data": self.clean_stage.config["data"],
                }
                if spec.weights:
                    config["weights_id"] = file_fingerprint(Path(spec.weights))
                stage = self._add(Stage("features", name, config, [], self._extract_action([spec], None)))
                self.feature_stages[name] = (stage, None)
            else:
                source = spec.import_tsv or spec.import_lmdb or spec.store
                config = {"source": spec.source, "file": file_fingerprint(Path(source)), "dtype": spec.dtype}
                stage = self._add(Stage("features", name, config, [], self._import_action(spec)))
                self.feature_stages[name] = (stage, None)
        for members in shared.values():
            self._add_shared_pass_stage(members)

    def _add_shared_pass_stage(self, members: list[tuple[str, FeatureSetSpec]]) -> None:
        """One extraction stage for feature sets that differ only in their variant (one store per variant)."""
        from memeguard.features.factory import extractor_class

        first = members[0][1]
        assert first.extractor is not None
        default = extractor_class(first.extractor).default_variant
        variants = sorted({spec.boxes or default for _, spec in members})
        config = {
            "extractor": first.extractor,
            "weights": first.weights,
            "params": first.params,
            "dtype": first.dtype,
            "variants": variants,
            "data": self.clean_stage.config["data"],
        }
        if first.weights:
            config["weights_id"] = file_fingerprint(Path(first.weights))
        label = f"{first.extractor}-" + "_".join(variants)
        action = self._extract_action([s for _, s in members], variants)
        stage = self._add(Stage("features", label, config, [], action))
        for name, spec in members:
            self.feature_stages[name] = (stage, (spec.boxes or default) if len(variants) > 1 else None)

    def store_path(self, feature_set: str) -> Path:
        stage, variant = self.feature_stages[feature_set]
        if stage.config.get("source") == "store":
            return Path(self.recipe.features[feature_set].store)  # type: ignore[arg-type]
        return stage.directory / "store" / variant if variant else stage.directory / "store"

    def _build_run(self, model: ModelSpec, run: RunSpec) -> None:
        feature_stage, _ = self.feature_stages[run.features]  # type: ignore[index]
        deps = [self.clean_stage, feature_stage]
        store_key = f"{feature_stage.key}:{self.feature_stages[run.features][1]}"  # type: ignore[index]
        base = {
            "model": model.model,
            "overrides": model.overrides,
            "seed": run.seed,
            "store": store_key,
            "limit": self.limit,
        }
        outputs: dict[str, Path] = {}
        if self.inference_only:
            assert run.checkpoints is not None
            for which, (_, splits) in FINETUNES:
                checkpoint = getattr(run.checkpoints, which)
                config = {**base, "checkpoint": file_fingerprint(Path(checkpoint)), "splits": list(splits)}
                stage = self._add(
                    Stage(
                        "predict",
                        f"{run.name}-{which}",
                        config,
                        deps,
                        self._predict_action(model, run, checkpoint, splits),
                    )
                )
                outputs.update({split: stage.directory / prediction_file(split) for split in splits})
        else:
            init = model.init
            init_deps = list(deps)
            init_key: Any = file_fingerprint(Path(init)) if init else None
            if model.pretrain is not None:
                pre_config = {**base, "init": init_key, "pretrain": model.pretrain}
                pre_stage = self._add(
                    Stage("pretrain", run.name, pre_config, deps, self._pretrain_action(model, run))
                )
                init_deps.append(pre_stage)
                init_key = pre_stage.key
            train_stage: Stage | None = None
            for which, (train_split, splits) in FINETUNES:
                config = {
                    **base,
                    "init": init_key,
                    "train": run_settings(model.train),
                    "train_split": train_split,
                    "splits": list(splits),
                }
                # traindev_init: train -> the traindev run starts from its train run's weights (the train
                # stage's key is in this stage's key, as a dependency); else an early-stopped train run
                # tells its traindev run how long to train. Either way it waits for the train run.
                start_from = length_from = None
                if which == "traindev" and traindev_start(model.train) == "train":
                    start_from = train_stage
                    config["traindev"] = warm_traindev_settings(model.train)
                elif which == "traindev" and early_stops(model):
                    length_from = train_stage
                after = start_from or length_from
                stage = self._add(
                    Stage(
                        "finetune",
                        f"{run.name}-{which}",
                        config,
                        [*init_deps, after] if after else init_deps,
                        self._finetune_action(
                            model, run, train_split, splits, init_deps, length_from, start_from
                        ),
                    )
                )
                train_stage = stage
                outputs.update({split: stage.directory / prediction_file(split) for split in splits})
        self.run_predictions[model.name][run.name or str(run.seed)] = outputs

    # -- stage actions ----------------------------------------------------------------------------
    @property
    def clean_dir(self) -> Path:
        assert self.clean_stage is not None
        return self.clean_stage.directory / "data"

    def _do_clean(self, directory: Path) -> None:
        from memeguard.pipeline.stages import prepare_data

        prepare_data(self.data_dir, directory / "data", clean=self.recipe.clean)

    def _extract_action(
        self, specs: list[FeatureSetSpec], variants: list[str] | None
    ) -> Callable[[Path], Any]:
        def action(directory: Path) -> None:
            from memeguard.pipeline.stages import extract_store

            extract_store(specs[0], self.data_dir, directory / "store", variants=variants, device=self.device)

        return action

    def _import_action(self, spec: FeatureSetSpec) -> Callable[[Path], Any]:
        def action(directory: Path) -> None:
            from memeguard.pipeline.stages import import_store

            import_store(spec, directory / "store")

        return action

    def _pretrain_action(self, model: ModelSpec, run: RunSpec) -> Callable[[Path], Any]:
        def action(directory: Path) -> None:
            from memeguard.pipeline.stages import run_pretrain

            run_pretrain(
                model,
                run,
                self.store_path(run.features),
                self.clean_dir,
                directory / "run",  # type: ignore[arg-type]
                device=self.device,
                limit=self.limit,
            )

        return action

    def _finetune_action(
        self,
        model: ModelSpec,
        run: RunSpec,
        train_split: str,
        splits: tuple[str, ...],
        deps: list[Stage],
        length_from: Stage | None = None,
        start_from: Stage | None = None,
    ) -> Callable[[Path], Any]:
        """``length_from``: the early-stopped train run whose update count this (traindev) run trains for;
        ``start_from``: the train run whose final weights this (traindev) run starts from."""

        def action(directory: Path) -> None:
            from memeguard.pipeline.stages import run_finetune

            pre = next((d for d in deps if d.kind == "pretrain"), None)
            init = str(pre.directory / "run") if pre else model.init
            run_finetune(
                model,
                run,
                self.store_path(run.features),
                self.clean_dir,
                directory,  # type: ignore[arg-type]
                train_split=train_split,
                splits=splits,
                init=init,
                device=self.device,
                limit=self.limit,
                length_from=length_from.directory if length_from else None,
                start_from=start_from.directory if start_from else None,
            )

        return action

    def _predict_action(
        self, model: ModelSpec, run: RunSpec, checkpoint: str, splits: tuple[str, ...]
    ) -> Callable[[Path], Any]:
        def action(directory: Path) -> None:
            from memeguard.pipeline.stages import predict_from_checkpoint

            predict_from_checkpoint(
                model,
                checkpoint,
                self.store_path(run.features),
                self.clean_dir,  # type: ignore[arg-type]
                directory,
                splits=splits,
                device=self.device,
                limit=self.limit,
            )

        return action

    # -- execution --------------------------------------------------------------------------------
    def _announce_cached(self, stage: Stage, number: int, timings: dict[str, dict[str, Any]]) -> None:
        name = f"{stage.kind} {stage.label}"
        self.console.print(f"[{number}/{len(self.stages)}] {name}: cached")
        previous = read_record(stage.directory / DONE_FILE, DoneRecord)
        timings[name] = {"seconds": previous.seconds or 0.0, "cached": True}

    def _execute_sequential(self, timings: dict[str, dict[str, Any]]) -> None:
        for number, stage in enumerate(self.stages, start=1):
            if stage.done:
                self._announce_cached(stage, number, timings)
                continue
            name = f"{stage.kind} {stage.label}"
            self.console.print(f"[{number}/{len(self.stages)}] {name} ...")
            seconds = run_stage(stage)
            timings[name] = {"seconds": seconds, "cached": False}
            self.console.print(f"[{number}/{len(self.stages)}] {name}: done in {seconds:.1f}s")

    def _execute_parallel(self, timings: dict[str, dict[str, Any]]) -> None:
        """Run independent stages (the fine-tunes of different runs) in ``workers`` spawned processes.

        Each child rebuilds the runner from the recipe file and runs one stage by key; torch threads are
        split between the workers (tiny models run fastest single-threaded).
        """
        import concurrent.futures as futures
        import multiprocessing

        if self.recipe.source is None:
            raise ConfigError("parallel execution needs a recipe loaded from a file")
        numbers = {id(stage): number for number, stage in enumerate(self.stages, start=1)}
        pending = []
        for stage in self.stages:
            if stage.done:
                self._announce_cached(stage, numbers[id(stage)], timings)
            else:
                pending.append(stage)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        spec = {
            "recipe": self.recipe.source,
            "overrides": self.recipe.command_line,
            "data": str(self.data_dir),
            "out": str(self.out_dir),
            "inference_only": self.inference_only,
            "device": self.device,
            "limit": self.limit,
            "threads": threads,
        }
        running: dict[futures.Future[float], Stage] = {}
        finished: set[str] = {stage.key for stage in self.stages if stage.done}
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(max_workers=self.workers, mp_context=context) as pool:
            while pending or running:
                ready = [s for s in pending if all(d.key in finished for d in s.deps)]
                for stage in ready[: max(0, self.workers - len(running))]:
                    pending.remove(stage)
                    self.console.print(
                        f"[{numbers[id(stage)]}/{len(self.stages)}] {stage.kind} {stage.label} ..."
                    )
                    running[pool.submit(_run_stage_in_child, spec, stage.key)] = stage
                if not running:
                    raise ConfigError("stage graph is stuck: unfinished dependencies")
                done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    stage = running.pop(future)
                    seconds = future.result()  # re-raises a stage's error here
                    finished.add(stage.key)
                    name = f"{stage.kind} {stage.label}"
                    timings[name] = {"seconds": seconds, "cached": False}
                    self.console.print(
                        f"[{numbers[id(stage)]}/{len(self.stages)}] {name}: done in {seconds:.1f}s"
                    )

    def execute(self) -> RunReport:
        if not self.stages:
            self.build()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        timings: dict[str, dict[str, Any]] = {}
        if self.workers > 1:
            self._execute_parallel(timings)
        else:
            self._execute_sequential(timings)

        from memeguard.pipeline.stages import average_seeds, run_ensemble, write_run_report

        pred_dir = self.out_dir / PREDICTIONS_DIR
        start = time.perf_counter()
        family_files = average_seeds(self.run_predictions, pred_dir)
        timings["seed average"] = {"seconds": time.perf_counter() - start, "cached": False}
        start = time.perf_counter()
        fin_files = run_ensemble(pred_dir, self.clean_dir, self.out_dir, self.recipe.ensemble)
        timings["ensemble"] = {"seconds": time.perf_counter() - start, "cached": False}
        write_json_atomic(self.out_dir / ENSEMBLE_MEMBERS_FILE, self.members_record())
        student = self._execute_distill(timings)
        write_json_atomic(self.out_dir / TIMINGS_FILE, timings)
        shown = dict(family_files)
        if student is not None:  # the report shows the student beside the families and the ensemble
            shown[f"{student.label} (distilled)"] = student_predictions(student.directory)
        write_run_report(
            self.out_dir,
            shown,
            fin_files,
            self.clean_dir,
            timings,
            self.recipe.name,
            self.run_predictions,
            explain=self.gallery_explainer(),
        )
        student_dir = student.directory if student is not None else None
        return RunReport(self.out_dir, timings, fin_files, family_files, self.clean_dir, student_dir)

    # -- the report's gallery explanations (after the ensemble, whose weights they use) ------------
    def gallery_explainer(self) -> Any:
        """The report gallery's attributions by the runs that predicted dev_seen, each from its store
        (:mod:`memeguard.pipeline.explain`); None when no run did."""
        from memeguard.names import DEV_SEEN
        from memeguard.pipeline.explain import GalleryMember, gallery_explainer
        from memeguard.training.distributed import resolve_device

        members = []
        for model in self.recipe.enabled_models:
            for run in model.runs or []:
                csv = (
                    self.run_predictions.get(model.name, {}).get(run.name or str(run.seed), {}).get(DEV_SEEN)
                )
                if csv is not None and run.features is not None:
                    name = run.name or str(run.seed)
                    members.append(GalleryMember(model.name, name, csv.parent, self.store_path(run.features)))
        return gallery_explainer(
            members, self.out_dir, self.clean_dir, device=str(resolve_device(self.device))
        )

    # -- distillation (after the ensemble, whose weights it reads) ---------------------------------
    def members_record(self) -> dict[str, dict[str, dict[str, str]]]:
        """family -> run -> split -> prediction CSV (relative to OUT): the run dirs behind the ensemble,
        which ``memeguard distill --teacher OUT`` and the distill stage score new memes with."""
        return {
            family: {
                run: {split: os.path.relpath(path, self.out_dir) for split, path in outputs.items()}
                for run, outputs in runs.items()
            }
            for family, runs in self.run_predictions.items()
        }

    def distill_stage(self) -> Stage | None:
        """The recipe's ``distill:`` stage, keyed by its spec, the ensemble's, the student's store and every
        teacher run; None when the recipe has none. It is not in ``self.stages``: it runs after the
        ensemble, outside the parallel stage graph."""
        spec = self.recipe.distill
        if spec is None or not spec.enabled:
            return None
        if not self.stages:
            self.build()
        feature_stage, variant = self.feature_stages[spec.features]
        teachers = [stage for stage in self.stages if stage.kind in ("finetune", "predict")]
        config = {
            "distill": spec.model_dump(),
            "ensemble": self.recipe.ensemble.model_dump(),
            "store": f"{feature_stage.key}:{variant}",
            "extra": [file_fingerprint(Path(extra)) for extra in spec.extra],
            "limit": self.limit,
        }
        deps = [self.clean_stage, feature_stage, *teachers]
        stage = Stage("distill", spec.name, config, deps, self._distill_action())  # type: ignore[list-item]
        stage.finalize(self.out_dir)
        return stage

    def _distill_action(self) -> Callable[[Path], Any]:
        def action(directory: Path) -> None:
            from memeguard.pipeline.stages import run_distill

            spec = self.recipe.distill
            assert spec is not None
            store = self.store_path(spec.features)
            run_distill(
                spec, store, self.clean_dir, self.out_dir, directory, device=self.device, limit=self.limit
            )

        return action

    def _execute_distill(self, timings: dict[str, dict[str, Any]]) -> Stage | None:
        stage = self.distill_stage()
        if stage is None:
            return None
        name = f"{stage.kind} {stage.label}"
        if stage.done:
            self.console.print(f"{name}: cached")
            timings[name] = {"seconds": read_record(stage.directory / DONE_FILE, DoneRecord).seconds or 0.0}
            timings[name]["cached"] = True
            return stage
        self.console.print(f"{name} ...")
        seconds = run_stage(stage)
        timings[name] = {"seconds": seconds, "cached": False}
        self.console.print(f"{name}: done in {seconds:.1f}s")
        return stage


def early_stops(model: ModelSpec) -> bool:
    """Whether the model's train runs stop early (``train: {early_stop_patience: N}``)."""
    return bool(model.train.get("early_stop_patience"))


def run_stage(stage: Stage) -> float:
    """Run one stage in its folder; ``DONE`` (with the time taken) is written only after it succeeds."""
    stage.directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        stage.directory / STAGE_RECORD_FILE,
        {"kind": stage.kind, "label": stage.label, "key": stage.key, "config": stage.config},
    )
    start = time.perf_counter()
    stage.action(stage.directory)
    seconds = time.perf_counter() - start
    done = stage.directory / DONE_FILE
    # A training stage's folder is its run dir: keep the run's own record (its outputs' hashes).
    record = load_json(done) if done.is_file() else {}
    write_json_atomic(done, {**record, "seconds": seconds})
    return seconds


def _run_stage_in_child(spec: dict[str, Any], key: str) -> float:
    """Entry point of a worker process: rebuild the runner from the recipe file, run the stage ``key``."""
    import torch

    from memeguard.pipeline.recipe import load_recipe

    torch.set_num_threads(int(spec["threads"]))
    os.environ["MEMEGUARD_NO_PROGRESS"] = "1"  # several workers' progress bars would garble the terminal
    recipe = load_recipe(spec["recipe"], inference_only=spec["inference_only"], overrides=spec["overrides"])
    runner = RecipeRunner(
        recipe,
        spec["data"],
        spec["out"],
        inference_only=spec["inference_only"],
        device=spec["device"],
        limit=spec["limit"],
        console=Console(quiet=True),
    )
    runner.build()
    stage = next((s for s in runner.stages if s.key == key), None)
    if stage is None:
        raise ConfigError(f"stage {key[:12]} not found when rebuilding the recipe in a worker")
    return run_stage(stage)


class RunnerOptions(TypedDict, total=False):
    """:class:`RecipeRunner`'s keyword options, which ``run_recipe`` passes on as they are.

    Declared once here so that ``run_recipe`` does not repeat the runner's signature; the defaults are
    the runner's (``inference_only=False``, ``device="auto"``, ``limit=None``, ``console=None``,
    ``workers=1``).
    """

    inference_only: bool
    device: str
    limit: int | None
    console: Console | None
    workers: int


def run_recipe(
    recipe_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    **options: Unpack[RunnerOptions],
) -> RunReport:
    """Load, validate and run a recipe (the ``memeguard run`` command); ``overrides`` are key.path=value,
    ``options`` the :class:`RecipeRunner` keywords."""
    from memeguard.pipeline.recipe import load_recipe

    inference_only = options.get("inference_only", False)
    recipe = load_recipe(recipe_path, inference_only=inference_only, overrides=overrides)
    if Path(out_dir).resolve() == Path(data_dir).resolve():
        raise ConfigError("--out must differ from --data (inputs are never overwritten)")
    return RecipeRunner(recipe, data_dir, out_dir, **options).execute()
