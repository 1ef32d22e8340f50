"""Issue #11's fault-injection catalogue: every attack as data, run against the real commands.

Each row builds a bad (or legitimate) input in its own sandbox folder, runs the real command in a
subprocess (``python -m memeguard ...``) or the Python API, and judges the outcome:

* a bad input must exit non-zero with ONE ``error: ...`` line on stderr that matches the row's regex
  (the regex asks for the culprit: file, line or id), and no ``Traceback``;
* a legitimate input must exit 0;
* nothing outside the row's target folders may change (the sandbox is snapshotted before the command and
  compared after, so a path that escapes ``--out`` by ``..`` lands in the sandbox and is caught).

The rows reconstruct the 83 attempts of the issue: the 26 that failed (most FAIL until the fixes land)
and the 57 that held (nothing may regress there). It prints one table ``area | input | expected |
actual | verdict`` and exits 0 only when every row passes.

    python benchmarks/fault_injection.py              # the whole catalogue (a few minutes on 2 cores)
    python benchmarks/fault_injection.py --only data,recipe --json table.json
    python benchmarks/fault_injection.py --list
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PYTHON = sys.executable
SRC = Path(__file__).resolve().parents[1] / "src"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SYNTH_N = 60
# One tiny training setup shared by the reference run and the kill -9 row (same options, same bytes).
TRAIN_ARGS = (
    "--model", "visualbert-tiny", "--epochs", "2", "--batch-size", "8", "--checkpoint-every", "2",
    "--eval-every", "0", "--no-progress", "--predict", "dev_seen", "--predict", "test_seen",
)  # fmt: skip
TINY_RECIPE = """\
name: tiny
clean: true
features:
  grid:
    extractor: grid
models:
  - name: V
    model: visualbert-tiny
    features: grid
    seeds: [43]
    train: {lr: 0.001, epochs: 1, batch_size: 16, eval_every: 0}
ensemble:
  method: mean
"""


# -- running commands --------------------------------------------------------------------------------
@dataclass
class Proc:
    """What a command did: exit status and both streams (ANSI colours removed)."""

    rc: int
    stdout: str
    stderr: str
    seconds: float


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200", NO_COLOR="1")
    env["PYTHONPATH"] = f"{SRC}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(SRC)
    return env


def run_process(argv: Sequence[str], cwd: Path, timeout: float = 300) -> Proc:
    """Run ``argv`` to completion; a timeout counts as rc 124 (the row then fails, it never hangs)."""
    start = time.monotonic()
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return Proc(124, out, f"timed out after {timeout:.0f} s", time.monotonic() - start)
    return Proc(
        done.returncode, ANSI.sub("", done.stdout), ANSI.sub("", done.stderr), time.monotonic() - start
    )


def memeguard_argv(*args: object) -> list[str]:
    return [PYTHON, "-m", "memeguard", *map(str, args)]


def kill_when(argv: Sequence[str], cwd: Path, ready: Callable[[], bool], timeout: float = 300) -> bool:
    """Start ``argv``, SIGKILL it as soon as ``ready()`` holds; True when it was killed mid-run."""
    child = subprocess.Popen(
        list(argv), cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if ready():
                child.send_signal(signal.SIGKILL)
                child.wait()
                return True
            time.sleep(0.01)
        return False
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# -- snapshots: nothing outside the target folders changes ---------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """relative path -> content digest (or 'dir' / 'link -> target') of everything under ``root``."""
    state: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[rel] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def changes_outside(before: dict[str, str], after: dict[str, str], targets: Sequence[str]) -> list[str]:
    """Paths created, changed or deleted that are not inside one of ``targets`` (relative paths)."""

    def inside(rel: str) -> bool:
        return any(rel == t or rel.startswith(t.rstrip("/") + "/") for t in targets)

    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    return sorted(p for p in changed if not inside(p))


# -- the shared, read-only inputs every row copies from ----------------------------------------------
@dataclass
class Base:
    """Built once per session: a synthetic set, its clean copy, a grid store, a tiny run, prediction CSVs."""

    root: Path
    ds: Path = field(init=False)
    clean: Path = field(init=False)
    store: Path = field(init=False)
    run: Path = field(init=False)
    preds: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ds, self.clean, self.store = self.root / "ds", self.root / "clean", self.root / "store"
        self.run, self.preds = self.root / "run", self.root / "preds"

    def build(self, need_run: bool) -> None:
        steps = [
            memeguard_argv("data", "synth", self.ds, "--n", SYNTH_N),
            memeguard_argv("data", "clean", self.ds, "--out", self.clean),
            memeguard_argv("features", "extract", self.clean, self.store, "--extractor", "grid"),
        ]
        if need_run:
            steps.append(
                memeguard_argv(
                    "train", *TRAIN_ARGS, "--features", self.store, "--data", self.clean, "--out", self.run
                )
            )
        for argv in steps:
            proc = run_process(argv, self.root, timeout=600)
            if proc.rc != 0:
                raise SystemExit(f"building the base inputs failed: {' '.join(argv[2:])}\n{proc.stderr}")
        write_prediction_folder(self.preds, self.clean)


def split_ids(data_dir: Path, split: str) -> list[int]:
    lines = (data_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["id"] for line in lines if line.strip()]


def write_prediction_folder(folder: Path, data_dir: Path) -> None:
    """Models A and B for every predicted split, with random but fixed probabilities."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    for model in ("A", "B"):
        for split in ("dev_seen", "test_seen", "test_unseen"):
            rows = [
                f"{meme_id},{p:.6f},{int(p >= 0.5)}"
                for meme_id, p in zip(split_ids(data_dir, split), rng.random(1000), strict=False)
            ]
            (folder / f"{model}_{split}.csv").write_text("id,proba,label\n" + "\n".join(rows) + "\n")


# -- one row's context: its sandbox, its commands, its verdict -----------------------------------------
@dataclass
class Outcome:
    actual: str
    passed: bool


class Ctx:
    """A row's sandbox. Inputs are built under ``work`` (three folders deep, so an escape by ``../..``
    still lands inside the snapshotted ``sandbox``)."""

    def __init__(self, sandbox: Path, base: Base) -> None:
        self.sandbox, self.base = sandbox, base
        self.work = sandbox / "w" / "x" / "y"
        self.work.mkdir(parents=True)
        self.escapes: list[str] = []

    def copy(self, source: Path, name: str | None = None, follow_links: bool = False) -> Path:
        """A copy of ``source`` in ``work``; ``follow_links`` copies what a link points to (a clean set's
        ``img`` link points into the shared base, which a row that damages images must not reach)."""
        target = self.work / (name or source.name)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=not follow_links)
        else:
            shutil.copy2(source, target)
        return target

    def rel(self, path: Path) -> str:
        return path.relative_to(self.sandbox).as_posix()

    @contextlib.contextmanager
    def watching(self, targets: Sequence[Path]) -> Iterator[None]:
        """Record every change outside ``targets`` made inside the block."""
        before = snapshot(self.sandbox)
        yield
        rels = [self.rel(t) for t in targets]
        self.escapes += changes_outside(before, snapshot(self.sandbox), rels)

    def cli(self, *args: object, targets: Sequence[Path] = (), timeout: float = 300) -> Proc:
        """Run ``memeguard ARGS`` in ``work``; only ``targets`` may change."""
        with self.watching(targets):
            return run_process(memeguard_argv(*args), self.work, timeout)

    def python(self, code: str, targets: Sequence[Path] = (), timeout: float = 300) -> Proc:
        with self.watching(targets):
            return run_process([PYTHON, "-c", code], self.work, timeout)


def first_line(text: str, width: int = 400) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "")[:width]


def describe(proc: Proc) -> str:
    """The 'actual' cell: the traceback's last line, the first stderr line, or rc 0."""
    both = proc.stdout + proc.stderr
    if "Traceback" in both:
        last = [line for line in both.splitlines() if line.strip()][-1]
        return f"rc {proc.rc}, Traceback: {last.strip()[:90]}"
    if proc.rc == 0:
        return "rc 0" + (f"; {first_line(proc.stderr, 80)}" if proc.stderr.strip() else "")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return f"rc {proc.rc}: {first_line(proc.stderr)}{more}"


def error_problems(proc: Proc, pattern: str, many: bool = False, forbid: str | None = None) -> list[str]:
    """Why ``proc`` is not a clean refusal: rc, traceback, line count, no line matching ``pattern``.

    ``many`` allows several ``error:`` lines (``data check`` reports every error); ``forbid`` is a regex
    that must not appear (a typo, a wrong culprit)."""
    problems = []
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    if proc.rc == 0:
        problems.append("exit 0")
    if "Traceback" in proc.stdout + proc.stderr:
        problems.append("traceback")
    if many:
        if any(not line.startswith(("error:", "warning:")) for line in lines):
            problems.append("stderr lines that are not error:/warning:")
    elif len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    if not any(line.startswith("error:") and re.search(pattern, line) for line in lines):
        problems.append("no error line matches")
    if forbid and re.search(forbid, proc.stderr):
        problems.append(f"has /{forbid}/")
    return problems


def refused(proc: Proc, pattern: str, many: bool = False, forbid: str | None = None) -> Outcome:
    problems = error_problems(proc, pattern, many, forbid)
    return Outcome(describe(proc) + (f"  [{'; '.join(problems)}]" if problems else ""), not problems)


def succeeded(proc: Proc, *checks: tuple[bool, str]) -> Outcome:
    """rc 0, no traceback, and every ``(ok, what)`` check holds."""
    problems = [what for ok, what in checks if not ok]
    if proc.rc != 0 or "Traceback" in proc.stdout + proc.stderr:
        problems.insert(0, "failed")
    return Outcome(describe(proc) + (f"  [{'; '.join(problems)}]" if problems else ""), not problems)


# -- the catalogue ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    area: str
    input: str
    expected: str
    run: Callable[[Ctx], Outcome]
    needs_run: bool = False  # needs the base train run (the slow part of the base)


ROWS: list[Row] = []


def row(area: str, input: str, expected: str, needs_run: bool = False) -> Callable:
    def register(fn: Callable[[Ctx], Outcome]) -> Callable[[Ctx], Outcome]:
        ROWS.append(Row(area, input, expected, fn, needs_run))
        return fn

    return register


def jsonl_line(**fields: object) -> str:
    return json.dumps(fields, ensure_ascii=False)


def add_lines(path: Path, *lines: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)


def first_meme(data_dir: Path, split: str = "train") -> dict:
    return json.loads((data_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[0])


def check_with_line(ctx: Ctx, split: str, line: str, pattern: str, forbid: str | None = None) -> Outcome:
    """Append ``line`` to a copy of the synthetic set's ``split`` and run ``data check``."""
    ds = ctx.copy(ctx.base.ds)
    add_lines(ds / f"{split}.jsonl", line)
    return refused(ctx.cli("data", "check", ds), pattern, many=True, forbid=forbid)


# -- data: dataset lines, images, paths -------------------------------------------------------------
LINE_CULPRIT = r"{split}\.jsonl:\d+"


@row("data", "jsonl line with malformed JSON", "error file:line malformed JSON, no 'at at'")
def _malformed_json(ctx: Ctx) -> Outcome:
    return check_with_line(
        ctx,
        "train",
        '{"id": 5, "img": "img/1.png", "text": "x"',
        r"train\.jsonl:\d+.*malformed JSON",
        r"at at",
    )


@row("data", "jsonl line without 'img'", "error file:line missing field")
def _missing_img(ctx: Ctx) -> Outcome:
    return check_with_line(
        ctx, "train", jsonl_line(id=5, text="x", label=0), r"train\.jsonl:\d+.*missing field 'img'"
    )


@row("data", "label 2", "error file:line label must be 0 or 1")
def _label_two(ctx: Ctx) -> Outcome:
    line = jsonl_line(id=5, img="img/5.png", text="x", label=2)
    return check_with_line(ctx, "train", line, r"train\.jsonl:\d+.*'label' must be 0 or 1")


@row("data", "label 'yes' in dev_seen", "error file:line (id) label must be 0 or 1")
def _label_yes(ctx: Ctx) -> Outcome:
    line = jsonl_line(id=5, img="img/5.png", text="x", label="yes")
    return check_with_line(ctx, "dev_seen", line, r"dev_seen\.jsonl:\d+ \(id 5\).*'label'")


@row("data", "id 'abc'", "error file:line id must be an integer")
def _id_string(ctx: Ctx) -> Outcome:
    line = jsonl_line(id="abc", img="img/5.png", text="x", label=0)
    return check_with_line(ctx, "train", line, r"train\.jsonl:\d+.*'id' must be an integer")


@row("data", "a JSON array as a line", "error file:line expected a JSON object")
def _array_line(ctx: Ctx) -> Outcome:
    return check_with_line(ctx, "train", "[1, 2]", r"train\.jsonl:\d+.*expected a JSON object")


@row("data", "the same id twice in one split", "error file:line duplicate id (first line)")
def _duplicate_id(ctx: Ctx) -> Outcome:
    meme = first_meme(ctx.base.ds)
    return check_with_line(ctx, "train", json.dumps(meme), r"train\.jsonl:\d+: duplicate id \d+ \(first seen")


def _image_attack(ctx: Ctx, damage: Callable[[Path], None], pattern: str) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    damage(ds / first_meme(ds)["img"])
    return refused(ctx.cli("data", "check", ds), pattern, many=True)


@row("data", "an image file deleted", "error (id) image does not exist")
def _image_missing(ctx: Ctx) -> Outcome:
    return _image_attack(ctx, Path.unlink, r"train\.jsonl.*\(id \d+\).*does not exist")


@row("data", "an image truncated to half", "error (id) truncated")
def _image_truncated(ctx: Ctx) -> Outcome:
    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return _image_attack(ctx, truncate, r"\(id \d+\).*truncated")


@row("data", "a decompression bomb (tiny PNG, huge canvas)", "error (id) decompression bomb")
def _image_bomb(ctx: Ctx) -> Outcome:
    from PIL import Image

    def bomb(path: Path) -> None:
        Image.new("1", (20000, 20000)).save(path, format="PNG")

    return _image_attack(ctx, bomb, r"\(id \d+\).*(decompression bomb|too large)")


@row("data", "text bytes in place of an image", "error (id) not an image")
def _image_garbage(ctx: Ctx) -> Outcome:
    return _image_attack(
        ctx, lambda p: p.write_bytes(b"not an image at all"), r"\(id \d+\).*(cannot|not|unidentified)"
    )


@row("data", "data check on a folder that does not exist", "error names the folder")
def _no_dataset(ctx: Ctx) -> Outcome:
    return refused(ctx.cli("data", "check", ctx.work / "absent"), r"absent")


@row("data", "img: ../../outside.png (exists)", "error file:line img outside the dataset")
def _img_dotdot(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    shutil.copy(ds / first_meme(ds)["img"], ctx.work.parent / "outside.png")
    line = jsonl_line(id=1, img="../../outside.png", text="x", label=0)
    add_lines(ds / "train.jsonl", line)
    return refused(ctx.cli("data", "check", ds), r"train\.jsonl:\d+.*outside", many=True)


@row("data", "img: an absolute path", "error file:line img outside the dataset")
def _img_absolute(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    outside = ctx.work / "abs.png"
    shutil.copy(ds / first_meme(ds)["img"], outside)
    add_lines(ds / "train.jsonl", jsonl_line(id=1, img=str(outside), text="x", label=0))
    return refused(ctx.cli("data", "check", ds), r"train\.jsonl:\d+.*(outside|absolute)", many=True)


@row("data", "img: ../../../../etc/passwd", "error file:line img outside the dataset")
def _img_passwd(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    add_lines(ds / "train.jsonl", jsonl_line(id=1, img="../../../../etc/passwd", text="x", label=0))
    return refused(ctx.cli("data", "check", ds), r"train\.jsonl:\d+.*outside", many=True)


@row("data", "img/ is a symlink to another folder (as clean makes)", "rc 0 (allowed)")
def _img_symlink(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    shutil.move(ds / "img", ctx.work / "images")
    (ds / "img").symlink_to(ctx.work / "images")
    return succeeded(ctx.cli("data", "check", ds))


@row("data", "text with a lone surrogate '\\ud800'", "error file:line, or replaced and clean rc 0")
def _lone_surrogate(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    meme = first_meme(ds)
    add_lines(ds / "train.jsonl", json.dumps({**meme, "id": 1, "text": "a\ud800b"}))  # ASCII-escaped
    check = ctx.cli("data", "check", ds)
    if check.rc != 0:
        return refused(check, r"train\.jsonl:\d+.*(surrogate|encod|unicode|text)", many=True)
    out = ctx.work / "clean"
    return succeeded(ctx.cli("data", "clean", ds, "--out", out, targets=[out]))


@row("data", "one id in train and dev_seen with different images", "error names the id and both files")
def _id_two_images(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    dev = first_meme(ds, "dev_seen")
    other = next(m for m in map(json.loads, (ds / "train.jsonl").read_text().splitlines())
                 if m["img"] != dev["img"])  # fmt: skip
    add_lines(ds / "train.jsonl", json.dumps({**other, "id": dev["id"]}))
    return refused(ctx.cli("data", "check", ds), rf"\b{dev['id']}\b.*(image|img)", many=True)


@row("data", "id 2**64 (above int64)", "error file:line id out of range")
def _id_huge(ctx: Ctx) -> Outcome:
    line = json.dumps({**first_meme(ctx.base.ds), "id": 2**64})
    return check_with_line(ctx, "train", line, r"train\.jsonl:\d+.*(range|int64|too large|large|2\*\*63)")


@row("data", "text null on one line and 12345 on another", "both lines reported")
def _two_bad_texts(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    meme = first_meme(ds)
    add_lines(ds / "train.jsonl", json.dumps({**meme, "id": 1, "text": None}))
    add_lines(ds / "train.jsonl", json.dumps({**meme, "id": 2, "text": 12345}))
    proc = ctx.cli("data", "check", ds)
    outcome = refused(proc, r"train\.jsonl:\d+.*text", many=True)
    reported = len(re.findall(r"train\.jsonl:\d+[^\n]*text", proc.stderr))
    if reported < 2:
        return Outcome(outcome.actual + f"  [{reported} of 2 bad lines reported]", False)
    return outcome


@row("data", "an empty train.jsonl", "error: train is empty")
def _empty_train(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    (ds / "train.jsonl").write_text("")
    return refused(ctx.cli("data", "check", ds), r"train.*(empty|no memes|0 rows)", many=True)


@row("data", "an empty test_unseen.jsonl", "rc 0 with a warning naming the split")
def _empty_test(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    (ds / "test_unseen.jsonl").write_text("")
    proc = ctx.cli("data", "check", ds)
    warned = re.search(r"test_unseen.*(empty|no memes|0 rows)", proc.stdout + proc.stderr) is not None
    return succeeded(proc, (warned, "no warning about the empty split"))


@row("data", "clean --out INPUT", "error: never the input folder, input untouched")
def _clean_into_input(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    return refused(ctx.cli("data", "clean", ds, "--out", ds), r"(input|same)")


@row("data", "clean --out a non-empty folder it did not write", "error, the folder's train.jsonl untouched")
def _clean_foreign_out(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    out = ctx.work / "mine"
    out.mkdir()
    (out / "train.jsonl").write_text("my own precious file\n")
    (out / "notes.txt").write_text("keep\n")
    return refused(ctx.cli("data", "clean", ds, "--out", out), r"mine.*(not empty|non-empty|not written)")


def clean_outputs(folder: Path) -> dict[str, object]:
    """What ``data clean`` decides: its split files and its report (less the input path it was given)."""
    if not (folder / "cleaning_report.json").exists():
        return {}
    report = json.loads((folder / "cleaning_report.json").read_text())
    report.pop("data_dir", None)
    splits = {p.name: p.read_bytes() for p in sorted(folder.glob("*.jsonl"))}
    return {"report": report, **splits}


@row("data", "clean re-run into its own output", "rc 0 (allowed), same outputs")
def _clean_rerun(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    out = ctx.copy(ctx.base.clean)
    proc = ctx.cli("data", "clean", ds, "--out", out, targets=[out])
    return succeeded(proc, (clean_outputs(out) == clean_outputs(ctx.base.clean), "outputs changed"))


@row("data", "kill -9 during clean, then rerun", "no partial outputs; rerun gives the same files")
def _clean_killed(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    out = ctx.work / "clean"
    outputs = ("train_clean.jsonl", "traindev.jsonl", "pretrain.jsonl", "cleaning_report.json")

    def any_output() -> bool:
        return any((out / name).exists() for name in outputs)

    killed = kill_when(memeguard_argv("data", "clean", ds, "--out", out), ctx.work, any_output)
    present = [name for name in outputs if (out / name).exists()]
    partial = 0 < len(present) < len(outputs)
    proc = ctx.cli("data", "clean", ds, "--out", out, targets=[out])
    same = clean_outputs(out) == clean_outputs(ctx.base.clean)
    note = f"killed {'mid-run' if killed else 'after the end'}; left {present or 'nothing'}"
    outcome = succeeded(proc, (not partial, "partial outputs after the kill"), (same, "rerun differs"))
    return Outcome(f"{note}; rerun {outcome.actual}", outcome.passed)


FULL_AT_REPORT = """
import builtins, errno, os, sys
from memeguard.cli import main

def refuse(name):
    if "cleaning_report" in os.path.basename(str(name)):
        raise OSError(errno.ENOSPC, "No space left on device", str(name))

real_open, real_os_open = builtins.open, os.open
def fake_open(file, mode="r", *args, **kwargs):
    if any(flag in mode for flag in "wax+"):
        refuse(file)
    return real_open(file, mode, *args, **kwargs)
def fake_os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        refuse(path)
    return real_os_open(path, flags, *args, **kwargs)
builtins.open, os.open = fake_open, fake_os_open
main(["data", "clean", sys.argv[1], "--out", sys.argv[2]])
"""


@row("data", "disk full while clean writes its report", "fails; OUT holds no partial outputs")
def _clean_crash(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.ds)
    out = ctx.work / "clean"
    with ctx.watching([out]):
        proc = run_process([PYTHON, "-c", FULL_AT_REPORT, str(ds), str(out)], ctx.work)
    outputs = ("train_clean.jsonl", "traindev.jsonl", "pretrain.jsonl", "cleaning_report.json")
    present = [name for name in outputs if (out / name).exists()]
    partial = 0 < len(present) < len(outputs)
    ok = proc.rc != 0 and not partial
    return Outcome(f"{describe(proc)}; OUT holds {present or 'no outputs'}", ok)


@row("data", "synth --n 60 twice with one seed", "rc 0, byte-identical sets")
def _synth_deterministic(ctx: Ctx) -> Outcome:
    out = ctx.work / "again"
    proc = ctx.cli("data", "synth", out, "--n", SYNTH_N, targets=[out])
    same = snapshot(out) == snapshot(ctx.base.ds)
    return succeeded(proc, (same, "not byte-identical"))


# -- features: stores, imports, pickles ---------------------------------------------------------------
def same_store(a: Path, b: Path) -> bool:
    """The same memes with bit-identical values (and the same meta.json apart from its two timestamps).

    Compared record by record through the store's reader, not file by file: a resumed store may hold
    the same records in a different byte layout (a recovered tail, another batch order)."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from memeguard.features.store import FeatureStore

    def meta(store: Path) -> dict:
        data = json.loads((store / "meta.json").read_text())
        data.pop("created", None)
        data.get("store", {}).pop("finalized", None)
        return data

    def same_record(x: object, y: object) -> bool:
        return all(
            np.array_equal(np.asarray(getattr(x, f.name)), np.asarray(getattr(y, f.name)))
            for f in dataclasses.fields(x)
        )

    left, right = FeatureStore.open(a), FeatureStore.open(b)
    same_ids = sorted(left.ids()) == sorted(right.ids())
    return same_ids and meta(a) == meta(b) and all(same_record(left[i], right[i]) for i in right.ids())


def all_of(*patterns: str) -> str:
    """A regex that matches a line holding every pattern, in any order (messages may name the id first)."""
    return "".join(f"(?=.*{pattern})" for pattern in patterns)


def store_attack(ctx: Ctx, damage: Callable[[Path], None], pattern: str, *args: str) -> Outcome:
    store = ctx.copy(ctx.base.store)
    damage(store)
    return refused(ctx.cli("features", "info", store, *args), pattern)


def edit_meta(**changes: object) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        meta = json.loads((store / "meta.json").read_text())
        meta["store"].update(changes)  # the store's own record; top-level keys are the user's meta
        (store / "meta.json").write_text(json.dumps(meta))

    return damage


def write_nan(store: Path) -> None:
    """A NaN at the first value of the first meme (float16 or float32, whichever the layout says)."""
    dtype = json.loads((store / "meta.json").read_text()).get("dtype", "float16")
    data = np.memmap(store / "features.bin", dtype=np.dtype(dtype), mode="r+")
    data[3] = np.nan
    data.flush()
    del data


@row("features", "features info on a folder that is not a store", "error: not a feature store")
def _info_not_store(ctx: Ctx) -> Outcome:
    return refused(ctx.cli("features", "info", ctx.copy(ctx.base.ds)), r"ds.*not a feature store")


@row("features", "features.bin truncated", "error names the store file")
def _store_truncated(ctx: Ctx) -> Outcome:
    def truncate(store: Path) -> None:
        path = store / "features.bin"
        path.write_bytes(path.read_bytes()[:100])

    return store_attack(ctx, truncate, r"(features\.bin|store).*(truncat|short|size|smaller|expected)")


@row("features", "boxes.bin deleted", "error names the missing file")
def _store_missing_file(ctx: Ctx) -> Outcome:
    return store_attack(ctx, lambda s: (s / "boxes.bin").unlink(), r"boxes\.bin")


@row("features", "meta.json is not JSON", "error names meta.json, no 'at at'")
def _meta_corrupt(ctx: Ctx) -> Outcome:
    def corrupt(store: Path) -> None:
        (store / "meta.json").write_text('{"extractor": ')

    store = ctx.copy(ctx.base.store)
    corrupt(store)
    return refused(ctx.cli("features", "info", store), r"meta\.json", forbid=r"at at")


@row("features", "index.bin with garbage bytes", "error names the store")
def _index_garbage(ctx: Ctx) -> Outcome:
    def scramble(store: Path) -> None:
        path = store / "index.bin"
        path.write_bytes(path.read_bytes()[:-5])

    return store_attack(ctx, scramble, r"(index\.bin|store)")


@row("features", "meta.json num_rows: 'lots'", "error names meta.json and the field")
def _meta_num_rows(ctx: Ctx) -> Outcome:
    return store_attack(ctx, edit_meta(num_rows="lots"), r"meta\.json.*num_rows")


@row("features", "meta.json files: [1, 2]", "error names meta.json and the field")
def _meta_files(ctx: Ctx) -> Outcome:
    return store_attack(ctx, edit_meta(files=[1, 2]), r"meta\.json.*files")


@row("features", "NaN written into features.bin, features info --verify", "error names store and meme id")
def _nan_verify(ctx: Ctx) -> Outcome:
    return store_attack(
        ctx, write_nan, all_of(r"(store|features\.bin)", r"(NaN|non-finite)", r"id \d+"), "--verify"
    )


@row("features", "extract --extractor sift", "error lists the extractors")
def _unknown_extractor(ctx: Ctx) -> Outcome:
    out = ctx.work / "st"
    return refused(ctx.cli("features", "extract", ctx.base.clean, out, "--extractor", "sift", targets=[out]),
                   r"sift")  # fmt: skip


@row("features", "extract into a non-empty folder that is not a store", "error, folder untouched")
def _extract_foreign(ctx: Ctx) -> Outcome:
    out = ctx.work / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("keep me\n")
    return refused(ctx.cli("features", "extract", ctx.base.clean, out, "--extractor", "grid"), r"mine")


@row("features", "extract from a dataset with a missing image", "error names the id")
def _extract_missing_image(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.clean, follow_links=True)
    meme = first_meme(ds, "dev_seen")
    (ds / meme["img"]).unlink()
    out = ctx.work / "st"
    proc = ctx.cli("features", "extract", ds, out, "--extractor", "grid", targets=[out])
    return refused(proc, rf"{meme['id']}|{Path(meme['img']).name}")


@row("features", "import-tsv of a line with too few fields", "error names the TSV line")
def _tsv_bad_line(ctx: Ctx) -> Outcome:
    tsv = ctx.work / "bad.tsv"
    tsv.write_text("1\t10\t10\t2\tAAAA\n")
    out = ctx.work / "st"
    proc = ctx.cli("features", "import-tsv", tsv, out, targets=[out])
    return refused(proc, r"bad\.tsv(:| line )\d+")


def _lmdb_with(ctx: Ctx, values: dict[bytes, bytes]) -> Path:
    import lmdb

    path = ctx.work / "detectron.lmdb"
    env = lmdb.open(str(path), map_size=1 << 24, subdir=True)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key, value)
    env.close()
    return path


PWNED = "pwned.txt"
# A pickle whose loading would create ``pwned.txt`` (builtins.open(name, 'w')), written by hand so no
# object with a __reduce__ is needed here.
EVIL_PICKLE = (
    b"\x80\x02cbuiltins\nopen\n"
    + b"X" + len(PWNED).to_bytes(4, "little") + PWNED.encode()
    + b"X\x01\x00\x00\x00w\x86R."
)  # fmt: skip


@row("pickle", "LMDB value that calls builtins.open", "error names the key; nothing ran")
def _lmdb_evil_value(ctx: Ctx) -> Outcome:
    import pickle

    keys = pickle.dumps([b"00001"], protocol=2)
    path = _lmdb_with(ctx, {b"keys": keys, b"00001": EVIL_PICKLE})
    out = ctx.work / "st"
    proc = ctx.cli("features", "import-lmdb", path, out, targets=[out])
    outcome = refused(proc, r"00001.*refused.*builtins\.open")
    ran = (ctx.work / PWNED).exists()
    return Outcome(outcome.actual + ("  [CODE RAN]" if ran else ""), outcome.passed and not ran)


@row("pickle", "LMDB key list that calls builtins.open", "error names the key list; nothing ran")
def _lmdb_evil_keys(ctx: Ctx) -> Outcome:
    path = _lmdb_with(ctx, {b"keys": EVIL_PICKLE})
    out = ctx.work / "st"
    proc = ctx.cli("features", "import-lmdb", path, out, targets=[out])
    outcome = refused(proc, r"keys.*refused")
    ran = (ctx.work / PWNED).exists()
    return Outcome(outcome.actual + ("  [CODE RAN]" if ran else ""), outcome.passed and not ran)


@row("pickle", "LMDB value that is not a pickle", "error names the key")
def _lmdb_garbage(ctx: Ctx) -> Outcome:
    import pickle

    path = _lmdb_with(ctx, {b"keys": pickle.dumps([b"00001"], protocol=2), b"00001": b"garbage"})
    out = ctx.work / "st"
    return refused(ctx.cli("features", "import-lmdb", path, out, targets=[out]), r"00001")


BYTEARRAY_BOMB = b"\x80\x02cbuiltins\nbytearray\nJ\x00\xca\x9a;\x85R."  # bytearray(10**9)
BOMB_CODE = """
import sys, tracemalloc
from memeguard.errors import MemeguardError
from memeguard.features.safe_pickle import safe_loads
tracemalloc.start()
try:
    safe_loads(%r, "bomb.pkl")
    rc = 0
except MemeguardError as exc:
    print(f"error: {exc}", file=sys.stderr)
    rc = 1
print(tracemalloc.get_traced_memory()[1])
sys.exit(rc)
"""


@row(
    "pickle",
    f"{len(BYTEARRAY_BOMB)}-byte pickle of bytearray(10**9)",
    "refused before allocating (peak < 64 MB)",
)
def _bytearray_bomb(ctx: Ctx) -> Outcome:
    proc = ctx.python(BOMB_CODE % BYTEARRAY_BOMB)
    outcome = refused(proc, r"bomb\.pkl")
    peak = int(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else -1
    small = 0 <= peak < 64 << 20
    return Outcome(f"{outcome.actual}; peak {peak / 2**20:.0f} MB", outcome.passed and small)


@row("features", "kill -9 during features extract, then rerun", "resumes to the same records, bit for bit")
def _extract_killed(ctx: Ctx) -> Outcome:
    out = ctx.work / "st"

    def writing() -> bool:
        index = out / "index.bin"
        return index.exists() and index.stat().st_size > 0

    argv = memeguard_argv(
        "features", "extract", ctx.base.clean, out, "--extractor", "grid", "--batch-size", 4
    )
    killed = kill_when(argv, ctx.work, writing)
    proc = ctx.cli("features", "extract", ctx.base.clean, out, "--extractor", "grid", targets=[out])
    outcome = succeeded(proc, (proc.rc == 0 and same_store(out, ctx.base.store), "store differs"))
    return Outcome(f"killed {'mid-run' if killed else 'after the end'}; {outcome.actual}", outcome.passed)


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` at ``folder`` (root only); yields False where mounting is not allowed."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, check=False
    )
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(folder)], capture_output=True, check=False)


@row("features", "disk full (ENOSPC) during extract, then more room", "one line; store resumes identical")
def _extract_enospc(ctx: Ctx) -> Outcome:
    disk = ctx.work / "disk"
    with small_disk(disk, "64k") as mounted:
        if not mounted:
            return Outcome("skipped: cannot mount a small tmpfs (needs root)", False)
        proc = ctx.cli(
            "features", "extract", ctx.base.clean, disk / "st", "--extractor", "grid", targets=[disk]
        )
        outcome = refused(proc, r"(space|ENOSPC|disk full|full)")
        shutil.copytree(disk / "st", ctx.work / "st") if (disk / "st").exists() else None
    if not (ctx.work / "st").exists():
        return outcome
    rerun = ctx.cli("features", "extract", ctx.base.clean, ctx.work / "st", targets=[ctx.work / "st"])
    same = rerun.rc == 0 and same_store(ctx.work / "st", ctx.base.store)
    actual = f"{outcome.actual}; resume rc {rerun.rc}{'' if same else ' [store differs]'}"
    return Outcome(actual, outcome.passed and same)


# -- training: options, checkpoints given to --init, run folders ---------------------------------------
def train(
    ctx: Ctx, out: Path, *extra: object, store: Path | None = None, targets: Sequence[Path] = ()
) -> Proc:
    """``memeguard train`` with the reference options on the base clean set."""
    store = store or ctx.base.store
    args = ("train", *TRAIN_ARGS, "--features", store, "--data", ctx.base.clean, "--out", out, *extra)
    return ctx.cli(*args, targets=[out, *targets])


EXPLOIT_CODE = """
import builtins, torch
class Exploit:
    def __reduce__(self):
        return (builtins.open, ("pwned.txt", "w"))
torch.save({"layer.weight": torch.zeros(2), "payload": Exploit()}, %r)
"""


def no_code_ran(ctx: Ctx, outcome: Outcome) -> Outcome:
    ran = any(ctx.sandbox.rglob(PWNED))
    return Outcome(outcome.actual + ("  [CODE RAN]" if ran else ""), outcome.passed and not ran)


@row(
    "checkpoint", "train --init a torch file whose pickle calls builtins.open", "error names it; nothing ran"
)
def _init_evil(ctx: Ctx) -> Outcome:
    evil = ctx.work / "evil.pth"
    ctx.python(EXPLOIT_CODE % str(evil), targets=[evil])
    proc = train(ctx, ctx.work / "run", "--init", evil)
    return no_code_ran(ctx, refused(proc, r"evil\.pth"))


@row("checkpoint", "train --init bytes that are not safetensors", "error: not a readable safetensors file")
def _init_garbage(ctx: Ctx) -> Outcome:
    bad = ctx.work / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    return refused(train(ctx, ctx.work / "run", "--init", bad), r"bad\.safetensors.*not a readable")


@row("checkpoint", "train --init a torch file without tensors", "error: contains no tensors")
def _init_no_tensors(ctx: Ctx) -> Outcome:
    empty = ctx.work / "empty.pth"
    ctx.python(f"import torch; torch.save({{'step': 3}}, {str(empty)!r})", targets=[empty])
    return refused(train(ctx, ctx.work / "run", "--init", empty), r"empty\.pth.*no tensors")


@row("checkpoint", "train --init a folder with two weight files", "error lists both files")
def _init_ambiguous(ctx: Ctx) -> Outcome:
    folder = ctx.work / "weights"
    folder.mkdir()
    code = "import torch; [torch.save({'w': torch.zeros(1)}, f'weights/{n}.pt') for n in 'ab']"
    ctx.python(code, targets=[folder])
    return refused(train(ctx, ctx.work / "run", "--init", folder), r"a\.pt.*b\.pt")


@row("checkpoint", "train --init a path that does not exist", "error: no such checkpoint")
def _init_absent(ctx: Ctx) -> Outcome:
    return refused(train(ctx, ctx.work / "run", "--init", ctx.work / "nope.pth"), r"nope\.pth")


@row("train", "train --model visualbert-huge", "error names the model")
def _unknown_model(ctx: Ctx) -> Outcome:
    out = ctx.work / "run"
    proc = ctx.cli("train", "--model", "visualbert-huge", "--features", ctx.base.store, "--data",
                   ctx.base.clean, "--out", out, targets=[out])  # fmt: skip
    return refused(proc, r"visualbert-huge")


@row("train", "train --train-split nope", "error names the split file")
def _unknown_split(ctx: Ctx) -> Outcome:
    return refused(train(ctx, ctx.work / "run", "--train-split", "nope"), r"nope")


@row("train", "train --features a folder that is not a store", "error names the folder")
def _features_not_store(ctx: Ctx) -> Outcome:
    return refused(train(ctx, ctx.work / "run", store=ctx.copy(ctx.base.ds)), r"ds.*not a feature store")


@row("train", "train on a store with a NaN in features.bin", "error names store and id before any update")
def _train_nan_store(ctx: Ctx) -> Outcome:
    store = ctx.copy(ctx.base.store)
    write_nan(store)
    out = ctx.work / "run"
    outcome = refused(train(ctx, out, store=store), all_of(r"store", r"(NaN|non-finite)", r"id \d+"))
    updated = (out / "checkpoints").exists() or (out / "metrics.jsonl").exists()
    return Outcome(outcome.actual + ("  [trained first]" if updated else ""), outcome.passed and not updated)


@row("train", "train --lr 1e30 (loss turns non-finite)", "stops at that update, names the batch ids")
def _train_nonfinite_loss(ctx: Ctx) -> Outcome:
    proc = train(ctx, ctx.work / "run", "--lr", "1e30", "--clip", "0")
    return refused(proc, all_of(r"(non-finite|NaN|nan|inf)", r"loss", r"ids? \d+"))


@row("train", "train --out an existing feature store", "error: another kind of memeguard folder")
def _train_into_store(ctx: Ctx) -> Outcome:
    store = ctx.copy(ctx.base.store)
    return refused(train(ctx, store, store=ctx.base.store), r"store.*(feature store|memeguard)")


@row("train", "train again into a finished run", "rc 0 'already finished', nothing rewritten", needs_run=True)
def _train_finished(ctx: Ctx) -> Outcome:
    run = ctx.copy(ctx.base.run)
    before = snapshot(run)
    proc = train(ctx, run)
    untouched = snapshot(run) == before
    said = "finished" in proc.stdout + proc.stderr
    return succeeded(proc, (said, "no 'already finished'"), (untouched, "the finished run was rewritten"))


@row("train", "finished run whose dev_seen.csv was deleted", "redone (file back) or error naming it",
     needs_run=True)  # fmt: skip
def _train_done_missing_csv(ctx: Ctx) -> Outcome:
    run = ctx.copy(ctx.base.run)
    (run / "dev_seen.csv").unlink()
    proc = train(ctx, run)
    if proc.rc != 0:
        return refused(proc, r"dev_seen\.csv")
    back = (run / "dev_seen.csv").exists()
    same = back and (run / "dev_seen.csv").read_bytes() == (ctx.base.run / "dev_seen.csv").read_bytes()
    return succeeded(proc, (back, "dev_seen.csv still missing"), (same or not back, "redone csv differs"))


@row("train", "finished run with a corrupt DONE file", "error naming DONE, or redone", needs_run=True)
def _train_corrupt_done(ctx: Ctx) -> Outcome:
    run = ctx.copy(ctx.base.run)
    (run / "DONE").write_text('{"metrics": ')
    proc = train(ctx, run)
    if proc.rc != 0:
        return refused(proc, r"DONE")
    return succeeded(proc, (json.loads((run / "DONE").read_text()) is not None, "DONE still corrupt"))


@row("checkpoint", "interrupted run whose checkpoints/last.pt calls builtins.open", "error names last.pt",
     needs_run=True)  # fmt: skip
def _resume_evil_checkpoint(ctx: Ctx) -> Outcome:
    run = ctx.copy(ctx.base.run)
    (run / "DONE").unlink()
    ctx.python(EXPLOIT_CODE % str(run / "checkpoints" / "last.pt"), targets=[run])
    return no_code_ran(ctx, refused(train(ctx, run), r"last\.pt"))


@row("train", "kill -9 during train, then rerun", "resumes to byte-identical outputs", needs_run=True)
def _train_killed(ctx: Ctx) -> Outcome:
    run = ctx.work / "run"
    last = run / "checkpoints" / "last.pt"
    args = ("train", *TRAIN_ARGS, "--features", ctx.base.store, "--data", ctx.base.clean, "--out", run)
    killed = kill_when(memeguard_argv(*args), ctx.work, last.exists)
    proc = train(ctx, run)
    files = ("dev_seen.csv", "test_seen.csv", "model/model.safetensors")
    same = all(
        (run / f).exists() and (run / f).read_bytes() == (ctx.base.run / f).read_bytes() for f in files
    )
    outcome = succeeded(proc, (same, "outputs differ from the uninterrupted run"))
    return Outcome(f"killed {'mid-run' if killed else 'after the end'}; {outcome.actual}", outcome.passed)


@row("train", "file modes of a run's model folder", "model.safetensors follows the umask", needs_run=True)
def _weights_mode(ctx: Ctx) -> Outcome:
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (ctx.base.run / "model").iterdir()}
    same = len(set(modes.values())) == 1
    return Outcome(", ".join(f"{k} {v}" for k, v in sorted(modes.items())), same)


# -- model folders given to predict / score / serve ----------------------------------------------------
def _set_config(value: object) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        (model / "config.json").write_text(json.dumps(value))

    return damage


def _edit_config(**changes: object) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        config = json.loads((model / "config.json").read_text())
        config.update(changes)
        (model / "config.json").write_text(json.dumps(config))

    return damage


def _truncate_weights(model: Path) -> None:
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _reshape_first_tensor(model: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))
    name = next(n for n, t in tensors.items() if t.ndim == 2)
    tensors[name] = np.zeros((tensors[name].shape[0] + 1, tensors[name].shape[1]), tensors[name].dtype)
    save_file(tensors, str(model / "model.safetensors"))


def _int32_weights(model: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))
    save_file({n: t.astype(np.int32) for n, t in tensors.items()}, str(model / "model.safetensors"))


MODEL_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "config.json that is not JSON": (lambda m: (m / "config.json").write_text("{oops"), r"config\.json"),
    "model.safetensors deleted": (lambda m: (m / "model.safetensors").unlink(), r"model\.safetensors"),
    "model.safetensors truncated": (_truncate_weights, r"model\.safetensors"),
    "a tensor of the wrong shape": (_reshape_first_tensor, r"(shape|size).*model\.safetensors|model\.safet"),
    "config hidden_size: 'sixty-four'": (
        _edit_config(hidden_size="sixty-four"),
        r"config\.json.*hidden_size",
    ),
    "config.json holding a list": (_set_config([1, 2]), r"config\.json"),
    "int32 tensors in model.safetensors": (_int32_weights, r"(int32|dtype).*model\.safetensors|model\.s"),
}
SCORE_DAMAGE = (
    "config.json that is not JSON",
    "model.safetensors truncated",
    "config hidden_size: 'sixty-four'",
)
SERVE_DAMAGE = ("config.json holding a list", "a tensor of the wrong shape")


def damaged_run(ctx: Ctx, damage: Callable[[Path], None]) -> Path:
    run = ctx.copy(ctx.base.run)
    damage(run / "model")
    return run


def _predict_row(how: str) -> Callable[[Ctx], Outcome]:
    damage, pattern = MODEL_DAMAGE[how]

    def attack(ctx: Ctx) -> Outcome:
        run, out = damaged_run(ctx, damage), ctx.work / "pred.csv"
        proc = ctx.cli("predict", "--checkpoint", run, "--features", ctx.base.store, "--data", ctx.base.clean,
                       "--split", "dev_seen", "--out", out, "--device", "cpu", targets=[out])  # fmt: skip
        return refused(proc, pattern)

    return attack


def _score_row(how: str) -> Callable[[Ctx], Outcome]:
    damage, pattern = MODEL_DAMAGE[how]

    def attack(ctx: Ctx) -> Outcome:
        run = damaged_run(ctx, damage)
        image = ctx.base.clean / first_meme(ctx.base.clean, "dev_seen")["img"]
        return refused(ctx.cli("score", image, "-m", run, "-t", "hello", "--device", "cpu"), pattern)

    return attack


def _serve_row(how: str) -> Callable[[Ctx], Outcome]:
    damage, pattern = MODEL_DAMAGE[how]

    def attack(ctx: Ctx) -> Outcome:
        run = damaged_run(ctx, damage)
        port = 20000 + os.getpid() % 20000
        return refused(ctx.cli("serve", "-m", run, "--port", port, "--device", "cpu", timeout=60), pattern)

    return attack


for _how in MODEL_DAMAGE:
    row("predict", f"model folder: {_how}", "one error line naming the file", needs_run=True)(
        _predict_row(_how)
    )
for _how in SCORE_DAMAGE:
    row("score", f"model folder: {_how}", "one error line naming the file", needs_run=True)(_score_row(_how))
for _how in SERVE_DAMAGE:
    row("serve", f"model folder: {_how}", "one error line at startup", needs_run=True)(_serve_row(_how))


@row("checkpoint", "train --init a model folder whose config.json is not JSON", "one error line",
     needs_run=True)  # fmt: skip
def _init_bad_config(ctx: Ctx) -> Outcome:
    run = damaged_run(ctx, MODEL_DAMAGE["config.json that is not JSON"][0])
    return refused(train(ctx, ctx.work / "run2", "--init", run / "model"), r"config\.json")


@row("checkpoint", "train --init int32 model.safetensors", "error names tensor and file", needs_run=True)
def _init_int32(ctx: Ctx) -> Outcome:
    run = damaged_run(ctx, _int32_weights)
    return refused(
        train(ctx, ctx.work / "run2", "--init", run / "model"),
        r"(int32|I32|dtype).*safetensors|safetensors.*(int32|I32|dtype)",
    )


@row("score", "score an image file that does not exist", "error names the image", needs_run=True)
def _score_missing_image(ctx: Ctx) -> Outcome:
    return refused(ctx.cli("score", ctx.work / "nope.png", "-m", ctx.base.run, "-t", "x", "--device", "cpu"),
                   r"nope\.png")  # fmt: skip


@row("score", "score a text file posing as an image", "error names the image", needs_run=True)
def _score_not_image(ctx: Ctx) -> Outcome:
    fake = ctx.work / "fake.png"
    fake.write_text("hello")
    return refused(ctx.cli("score", fake, "-m", ctx.base.run, "-t", "x", "--device", "cpu"), r"fake\.png")


@row("score", "score --jsonl with a malformed line", "error file:line", needs_run=True)
def _score_bad_jsonl(ctx: Ctx) -> Outcome:
    ds = ctx.copy(ctx.base.clean)
    add_lines(ds / "dev_seen.jsonl", '{"id": 5, "img": ')
    out = ctx.work / "sub.csv"
    proc = ctx.cli("score", "--jsonl", ds / "dev_seen.jsonl", "-m", ctx.base.run, "--out", out,
                   "--device", "cpu", targets=[out])  # fmt: skip
    return refused(proc, r"dev_seen\.jsonl:\d+")


# -- ensemble: bad prediction CSVs (inputs must stay untouched) -----------------------------------------
def ensemble(ctx: Ctx, preds: Path, *extra: object, gt: Path | None = None) -> Proc:
    out = ctx.work / "ens"
    gt = gt or ctx.base.clean / "dev_seen.jsonl"
    return ctx.cli("ensemble", preds, "--gt", gt, "--out", out, *extra, targets=[out])


def edit_csv(name: str, edit: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """Rewrite one CSV of the prediction folder line by line (line 0 is the header)."""

    def damage(preds: Path) -> None:
        path = preds / name
        path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")

    return damage


def set_field(line_no: int, column: int, value: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        cells = lines[line_no].split(",")
        cells[column] = value
        return [*lines[:line_no], ",".join(cells), *lines[line_no + 1 :]]

    return edit


CSV_ATTACKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "a duplicated row": (
        edit_csv("B_test_seen.csv", lambda ls: [*ls, ls[1]]),
        r"B_test_seen\.csv.*duplicate",
    ),
    "proba nan": (edit_csv("B_dev_seen.csv", set_field(2, 1, "nan")), r"B_dev_seen\.csv:3"),
    "proba inf": (edit_csv("B_test_seen.csv", set_field(1, 1, "inf")), r"B_test_seen\.csv:2"),
    "proba 1.5": (
        edit_csv("A_test_seen.csv", set_field(1, 1, "1.5")),
        r"A_test_seen\.csv.*not a probability",
    ),
    "proba -0.1": (edit_csv("A_test_seen.csv", set_field(1, 1, "-0.1")), r"A_test_seen\.csv"),
    "label 3": (edit_csv("A_dev_seen.csv", set_field(1, 2, "3")), r"A_dev_seen\.csv.*not 0 or 1"),
    "proba 'abc'": (edit_csv("A_dev_seen.csv", set_field(1, 1, "abc")), r"A_dev_seen\.csv.*cannot parse"),
    "id 'x7'": (edit_csv("A_test_unseen.csv", set_field(1, 0, "x7")), r"A_test_unseen\.csv"),
    "a row without its label": (edit_csv("B_test_unseen.csv", set_field(1, 2, "")), r"B_test_unseen\.csv"),
    "an empty proba": (edit_csv("B_test_unseen.csv", set_field(1, 1, "")), r"B_test_unseen\.csv:2"),
    "header id,score,label": (
        edit_csv("A_test_seen.csv", lambda ls: ["id,score,label", *ls[1:]]),
        r"A_test_seen\.csv",
    ),  # fmt: skip
    "a 0-byte file": (lambda p: (p / "A_test_seen.csv").write_text(""), r"A_test_seen\.csv"),
    "one split file deleted": (lambda p: (p / "B_test_unseen.csv").unlink(), r"B_test_unseen\.csv: missing"),
    "an id replaced by 999999": (
        edit_csv("B_test_seen.csv", set_field(1, 0, "999999")),
        r"^error: \S*B_test_seen\.csv.*999999",
    ),  # fmt: skip
    "no CSV at all": (lambda p: [f.unlink() for f in p.glob("*.csv")], r"preds"),
}


def _csv_row(kind: str) -> Callable[[Ctx], Outcome]:
    damage, pattern = CSV_ATTACKS[kind]

    def attack(ctx: Ctx) -> Outcome:
        preds = ctx.copy(ctx.base.preds)
        damage(preds)
        return refused(ensemble(ctx, preds), pattern)

    return attack


for _kind in CSV_ATTACKS:
    row("ensemble", f"prediction CSV: {_kind}", "error names the CSV; inputs untouched")(_csv_row(_kind))


@row("ensemble", "good prediction folder", "rc 0, FIN CSVs and weights.json written")
def _ensemble_ok(ctx: Ctx) -> Outcome:
    proc = ensemble(ctx, ctx.copy(ctx.base.preds))
    written = sorted(p.name for p in (ctx.work / "ens").glob("*")) if (ctx.work / "ens").exists() else []
    expected = ["FIN_dev_seen.csv", "FIN_test_seen.csv", "FIN_test_unseen.csv", "weights.json"]
    return succeeded(proc, (written == expected, f"wrote {written}"))


@row("ensemble", "--gt dev_seen.jsonl lacking a predicted id", "error: ids not in the ground truth")
def _ensemble_gt_short(ctx: Ctx) -> Outcome:
    gt = ctx.copy(ctx.base.clean / "dev_seen.jsonl")
    gt.write_text("\n".join(gt.read_text().splitlines()[1:]) + "\n")
    return refused(ensemble(ctx, ctx.copy(ctx.base.preds), gt=gt), r"ids not in .*dev_seen\.jsonl")


@row("ensemble", "--families a file that is not JSON", "error names the families file")
def _ensemble_bad_families(ctx: Ctx) -> Outcome:
    families = ctx.work / "fam.json"
    families.write_text("{nope")
    return refused(ensemble(ctx, ctx.copy(ctx.base.preds), "--families", families), r"fam\.json")


@row("ensemble", "a CSV starting with a UTF-16 BOM", "error names the CSV (encoding)")
def _ensemble_utf16(ctx: Ctx) -> Outcome:
    preds = ctx.copy(ctx.base.preds)
    path = preds / "A_dev_seen.csv"
    path.write_bytes(path.read_text().encode("utf-16"))
    return refused(ensemble(ctx, preds), r"A_dev_seen\.csv")


@row("ensemble", "a header-only CSV", "error blames that CSV, not another file")
def _ensemble_header_only(ctx: Ctx) -> Outcome:
    preds = ctx.copy(ctx.base.preds)
    (preds / "A_test_seen.csv").write_text("id,proba,label\n")
    return refused(ensemble(ctx, preds), r"^error: \S*A_test_seen\.csv")


# -- recipes: validated whole at load time, before any stage runs ------------------------------------
def run_recipe(ctx: Ctx, text: str, *overrides: str) -> tuple[Proc, Path]:
    recipe = ctx.work / "r.yaml"
    recipe.write_text(text)
    out = ctx.work / "out"
    proc = ctx.cli("run", recipe, *overrides, "--data", ctx.base.ds, "--out", out, "--device", "cpu",
                   targets=[out])  # fmt: skip
    return proc, out


def recipe_refused(ctx: Ctx, text: str, pattern: str, *overrides: str) -> Outcome:
    """Refused with ``pattern`` and before any stage wrote anything into --out."""
    proc, out = run_recipe(ctx, text, *overrides)
    outcome = refused(proc, pattern)
    stages_ran = out.exists() and any(p.is_file() for p in out.rglob("*"))
    return Outcome(outcome.actual + ("  [stages ran first]" if stages_ran else ""),
                   outcome.passed and not stages_ran)  # fmt: skip


RECIPE_ATTACKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "unknown key 'colour' in a model": (
        TINY_RECIPE.replace("    seeds: [43]\n", "    seeds: [43]\n    colour: blue\n"),
        r"r\.yaml:\d+.*colour", ()),
    "YAML tag !!python/object/apply:os.system": (
        TINY_RECIPE.replace("name: tiny", "name: !!python/object/apply:os.system ['touch pwned.txt']"),
        r"r\.yaml:\d+", ()),
    "invalid YAML": (TINY_RECIPE.replace("features:\n  grid", "features:\n grid:\n  - ]"),
                     r"r\.yaml.*YAML", ()),
    "unknown architecture": (TINY_RECIPE.replace("visualbert-tiny", "visualbert-huge"),
                             r"r\.yaml:\d+.*visualbert-huge", ()),
    "undefined feature set": (TINY_RECIPE.replace("features: grid", "features: butd36"), r"butd36", ()),
    "unknown extractor 'sift'": (TINY_RECIPE.replace("extractor: grid", "extractor: sift"),
                                 r"r\.yaml:\d+.*extractor", ()),
    "unknown ensemble method": (TINY_RECIPE.replace("method: mean", "method: median"),
                                r"r\.yaml:\d+.*median", ()),
    "override of a model that does not exist": (TINY_RECIPE, r"command line.*models\.W",
                                                ("models.W.seeds=[1]",)),
    "epochs: two": (TINY_RECIPE.replace("epochs: 1", "epochs: two"), r"r\.yaml:\d+.*epochs", ()),
    "lr: [1, 2]": (TINY_RECIPE.replace("lr: 0.001", "lr: [1, 2]"), r"r\.yaml:\d+.*lr", ()),
    "epochs: -3": (TINY_RECIPE.replace("epochs: 1", "epochs: -3"), r"r\.yaml:\d+.*epochs", ()),
    "override models.0.train.epochs=two": (TINY_RECIPE, r"epochs", ("models.0.train.epochs=two",)),
    "extractor param that does not exist": (
        TINY_RECIPE.replace("extractor: grid", "extractor: grid\n    params: {bogus: 1}"),
        r"r\.yaml:\d+.*bogus", ()),
    "run name: ../../../escaped": (
        TINY_RECIPE.replace("    seeds: [43]\n", "    runs: [{seed: 43, name: ../../../escaped}]\n"),
        r"r\.yaml:\d+.*name", ()),
    "feature set named ../fs": (TINY_RECIPE.replace("  grid:", "  ../fs:").replace("features: grid",
                                                                                    "features: ../fs"),
                                r"r\.yaml:\d+.*fs", ()),
}  # fmt: skip


def _recipe_row(kind: str) -> Callable[[Ctx], Outcome]:
    text, pattern, overrides = RECIPE_ATTACKS[kind]

    def attack(ctx: Ctx) -> Outcome:
        return no_code_ran(ctx, recipe_refused(ctx, text, pattern, *overrides))

    return attack


for _kind in RECIPE_ATTACKS:
    row("recipe", f"recipe: {_kind}", "error file:line before any stage ran")(_recipe_row(_kind))


@row("recipe", "run a recipe file that does not exist", "error names the file")
def _recipe_missing(ctx: Ctx) -> Outcome:
    out = ctx.work / "out"
    proc = ctx.cli("run", ctx.work / "nope.yaml", "--data", ctx.base.ds, "--out", out, targets=[out])
    return refused(proc, r"nope\.yaml")


@row("recipe", "kill -9 during memeguard run, then rerun", "resumes to byte-identical outputs")
def _run_killed(ctx: Ctx) -> Outcome:
    recipe = ctx.work / "r.yaml"
    recipe.write_text(TINY_RECIPE)
    reference, out = ctx.work / "reference", ctx.work / "out"
    args = ("run", recipe, "--data", ctx.base.ds, "--device", "cpu", "--out")
    first = ctx.cli(*args, reference, targets=[reference], timeout=600)
    if first.rc != 0:
        return Outcome(f"uninterrupted run: {describe(first)}", False)

    def training() -> bool:
        return any(out.rglob("last.pt"))

    killed = kill_when(memeguard_argv(*args, out), ctx.work, training, timeout=600)
    proc = ctx.cli(*args, out, targets=[out], timeout=600)
    names = sorted(p.relative_to(reference).as_posix() for p in reference.rglob("*")
                   if p.suffix in (".csv", ".safetensors"))  # fmt: skip
    same = bool(names) and all((out / n).exists() and (out / n).read_bytes() == (reference / n).read_bytes()
                               for n in names)  # fmt: skip
    outcome = succeeded(proc, (same, "outputs differ from the uninterrupted run"))
    note = f"killed {'mid-run' if killed else 'after the end'}; {len(names)} csv/safetensors compared"
    return Outcome(f"{note}; {outcome.actual}", outcome.passed)


# -- running the catalogue -------------------------------------------------------------------------------
@dataclass
class Result:
    area: str
    input: str
    expected: str
    actual: str
    verdict: str
    seconds: float


def run_row(entry: Row, index: int, base: Base, rows_root: Path) -> Result:
    sandbox = rows_root / f"{index:02d}"
    ctx = Ctx(sandbox, base)
    start = time.monotonic()
    try:
        outcome = entry.run(ctx)
    except Exception as exc:  # the harness itself must report, never stop the table
        outcome = Outcome(f"harness error: {type(exc).__name__}: {exc}"[:160], False)
    passed = outcome.passed and not ctx.escapes
    actual = outcome.actual.replace(f"{ctx.work}/", "").replace(f"{base.root}/", "BASE/") + (
        f"  [changed outside target: {ctx.escapes[:3]}]" if ctx.escapes else ""
    )
    shutil.rmtree(sandbox, ignore_errors=True)
    verdict = "PASS" if passed else "FAIL"
    return Result(entry.area, entry.input, entry.expected, actual, verdict, time.monotonic() - start)


def cell(text: str, width: int) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(results: Sequence[Result]) -> None:
    print("| # | area | input | expected | actual | verdict |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(results, 1):
        cells = (cell(r.input, 60), cell(r.expected, 55), cell(r.actual, 150))
        print(f"| {i} | {r.area} | {' | '.join(cells)} | {r.verdict} |", flush=True)


def select(only: str | None, match: str | None) -> list[Row]:
    """The rows of the ``only`` areas (comma-separated) whose input contains one of ``match``'s parts."""
    rows = list(ROWS)
    if only:
        areas = {a.strip() for a in only.split(",")}
        unknown = areas - {r.area for r in ROWS}
        if unknown:
            known = sorted({r.area for r in ROWS})
            raise SystemExit(f"error: unknown area(s) {sorted(unknown)}; areas: {known}")
        rows = [r for r in rows if r.area in areas]
    if match:
        parts = [p.strip() for p in match.split(",") if p.strip()]
        rows = [r for r in rows if any(p in r.input for p in parts)]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated areas: " + ", ".join(sorted({r.area for r in ROWS})))
    parser.add_argument("--match", help="comma-separated substrings: only rows whose input contains one")
    parser.add_argument("--list", action="store_true", help="list the rows without running them")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    rows = select(args.only, args.match)
    if args.list:
        for i, r in enumerate(rows, 1):
            print(f"{i:3d}  {r.area:10s}  {r.input}  ->  {r.expected}")
        return 0
    root = Path(tempfile.mkdtemp(prefix="memeguard-faults-"))
    try:
        base = Base(root / "base")
        base.root.mkdir()
        start = time.monotonic()
        base.build(need_run=any(r.needs_run for r in rows))
        print(f"base inputs built in {time.monotonic() - start:.0f} s under {root}", file=sys.stderr)
        results = []
        for i, entry in enumerate(rows, 1):
            results.append(run_row(entry, i, base, root / "rows"))
            r = results[-1]
            print(f"[{i}/{len(rows)}] {r.verdict} {r.area}: {r.input} ({r.seconds:.1f} s): {r.actual}",
                  file=sys.stderr)  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    passed = sum(r.verdict == "PASS" for r in results)
    print(f"\n{passed}/{len(results)} passed in {time.monotonic() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
