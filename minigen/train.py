"""The training loop every family shares: progress, evaluation, samples, metrics, checkpoints, resume.

A family provides a `Recipe` (see `minigen.models`): its modules and optimizers, a `step(batch, t) ->
metrics` for update t, an `evaluate(loader) -> metrics` reporting what its literature reports, and `sample(n)`.
`fit` runs the steps with a progress bar, appends metrics to `metrics.jsonl`, writes sample grids as PNG and
checkpoints, and resumes a stopped run exactly where it was:

- a checkpoint is `ckpt-<step>.npz` (every array: parameters, buffers, optimizer moments; loaded with
  allow_pickle=False, so reading one never runs code) plus `ckpt-<step>.json` (step, RNG and loader state,
  scalars), each written to a temporary file and renamed into place, and only then named by `latest.json`
  (itself replaced atomically): a run killed at any moment leaves the previous checkpoint intact;
- on the CPU, a run resumed from step k ends bit-identical to one never stopped (same parameters, same
  random draws, same batches);
- a NaN or inf in a step's metrics or parameters stops the run with a message naming the step and the
  quantity, and leaves the last good checkpoint in place;
- every checkpoint records the sha256 of its arrays: a corrupt one is passed over, with a warning, for the
  newest good one; Ctrl-C ends the current step, saves a checkpoint and stops (`Interrupted`).
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import backend


class NonFiniteError(FloatingPointError):
    """A training step produced NaN or inf."""


# --- checkpoints -----------------------------------------------------------------------------------------


def _split_arrays(obj, prefix: str, arrays: dict):
    """A JSON-able copy of a nested state (dicts, lists, scalars, arrays) with every array moved into
    `arrays` under a path-like key and replaced by {"__array__": key}."""
    if isinstance(obj, dict):
        return {str(k): _split_arrays(v, f"{prefix}/{k}", arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split_arrays(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        arrays[prefix] = backend.to_device(obj, "cpu")
        return {"__array__": prefix}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _join_arrays(obj, arrays):
    """The inverse of _split_arrays."""
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_arrays(v, arrays) for v in obj]
    return obj


def _atomic_write(path: Path, write) -> None:
    """Write a file through `write(file_object)` into a temporary file beside `path`, then rename it over
    `path`: readers see the old file or the new one, never half of one. The file gets the permissions
    `open` would give it (mkstemp makes it private to its owner). An error names `path`, not the temporary."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CheckpointError(ValueError):
    """No readable checkpoint in a run folder."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    """A JSON object from `path`; a missing, empty or truncated file is a one-line CheckpointError naming it."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return value


def save_checkpoint(run_dir: Path, state: dict, keep: int = 2) -> Path:
    """Save `state` (nested dicts of arrays and scalars, with an int "step") as ckpt-<step>.{npz,json}, the
    JSON recording the npz's sha256, then point latest.json at it. latest.json lists the checkpoints this run
    wrote; those beyond the newest `keep` are removed (never a file the run did not write)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    arrays: dict = {}
    meta = _split_arrays(state, "state", arrays)
    stem = f"ckpt-{step:08d}"
    _atomic_write(run_dir / f"{stem}.npz", lambda f: np.savez(f, **arrays))
    record = {"npz_sha256": _sha256(run_dir / f"{stem}.npz"), "state": meta}
    _atomic_write(run_dir / f"{stem}.json", lambda f: f.write(json.dumps(record).encode()))
    try:
        written = [s for s in _read_json(run_dir / "latest.json").get("written", []) if s != stem]
    except CheckpointError:
        written = []
    written.append(stem)
    _atomic_write(run_dir / "latest.json",
                  lambda f: f.write(json.dumps({"checkpoint": stem, "step": step, "written": written[-keep:]}).encode()))
    for old in written[:-keep]:
        (run_dir / f"{old}.json").unlink(missing_ok=True)
        (run_dir / f"{old}.npz").unlink(missing_ok=True)
    return run_dir / stem


def _load_one(run_dir: Path, stem: str) -> dict:
    """The state in checkpoint `stem`, verified against its recorded checksum."""
    record = _read_json(run_dir / f"{stem}.json")
    npz = run_dir / f"{stem}.npz"
    if not npz.exists():
        raise CheckpointError(f"{npz} is missing")
    if _sha256(npz) != record.get("npz_sha256"):
        raise CheckpointError(f"{npz} does not match the checksum recorded in {stem}.json (corrupt or truncated)")
    with np.load(npz, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return _join_arrays(record["state"], arrays)


def checkpoint_stems(run_dir: Path) -> list[str]:
    """The checkpoints in `run_dir`, newest first: the one latest.json names, then the others by step."""
    run_dir = Path(run_dir)
    stems = sorted((p.stem for p in run_dir.glob("ckpt-*.json")), reverse=True)
    try:
        named = _read_json(run_dir / "latest.json")["checkpoint"]
    except (CheckpointError, KeyError):
        return stems
    return [named] + [s for s in stems if s != named]


def load_checkpoint(run_dir: Path) -> dict:
    """The state of the newest good checkpoint in `run_dir`. A corrupt one (checksum mismatch, truncated,
    unreadable JSON) is passed over with a one-line warning naming it; none good is a CheckpointError."""
    run_dir = Path(run_dir)
    stems = checkpoint_stems(run_dir)
    if not stems:
        raise CheckpointError(f"{run_dir} holds no checkpoint: is it a minigen run folder?")
    problems = []
    for stem in stems:
        try:
            state = _load_one(run_dir, stem)
        except (CheckpointError, OSError, ValueError, KeyError) as e:     # np.load: BadZipFile is an OSError
            problems.append(str(e) if isinstance(e, CheckpointError) else f"{run_dir / stem}.npz: {e}")
            print(f"warning: skipping checkpoint {stem}: {problems[-1]}", file=sys.stderr)
            continue
        return state
    raise CheckpointError(f"no readable checkpoint in {run_dir} ({'; '.join(problems)})")


# --- pictures --------------------------------------------------------------------------------------------


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Images (n, H, W) or (n, C, H, W) with values in [0, 1] tiled into one uint8 picture (H', W', C)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = np.ones((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.float32)
    for i, im in enumerate(np.clip(images, 0, 1)):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = \
            im.transpose(1, 2, 0)
    return (grid * 255).round().astype(np.uint8)


def scatter_plot(points: np.ndarray, size: int = 256, reference: np.ndarray | None = None,
                 extent: float | None = None) -> np.ndarray:
    """2-D points drawn as dark dots (over light grey reference points, e.g. the data) on a white square."""
    points = np.asarray(points, dtype=np.float64)
    both = points if reference is None else np.concatenate([points, reference])
    extent = extent or float(np.abs(both).max()) * 1.05 + 1e-9
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    for pts, color in ((reference, (200, 200, 200)), (points, (20, 60, 160))):
        if pts is None:
            continue
        cols = ((pts[:, 0] + extent) / (2 * extent) * (size - 1)).round().astype(int)
        rows = ((extent - pts[:, 1]) / (2 * extent) * (size - 1)).round().astype(int)
        keep = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
        image[rows[keep], cols[keep]] = color
    return image


def save_picture(picture: np.ndarray, path: Path, zoom: int | None = None) -> None:
    """A uint8 picture (H, W, C) written atomically as a PNG, each pixel drawn zoom x zoom (default: small
    pictures, such as grids of 8x8 digits, drawn at least 256 pixels wide)."""
    zoom = zoom or max(1, 256 // picture.shape[1])
    picture = picture.repeat(zoom, axis=0).repeat(zoom, axis=1)
    if picture.shape[-1] == 1:
        picture = picture[..., 0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(Path(path), lambda f: Image.fromarray(picture).save(f, format="PNG"))


def save_samples(samples: np.ndarray, path: Path, reference: np.ndarray | None = None, nrow: int | None = None,
                 zoom: int | None = None) -> None:
    """A PNG of samples: an image grid (`nrow` images a row) for (n, [C,] H, W) arrays in [0, 1], a scatter
    plot for (n, 2) points."""
    samples = np.asarray(samples)
    save_picture(scatter_plot(samples, reference=reference) if samples.ndim == 2 else image_grid(samples, nrow),
                 path, zoom)


# --- what a family provides -------------------------------------------------------------------------------


class Recipe:
    """What a family gives the loop.

    A recipe is built as `Cls(spec, **options)`: `spec` is the `DataSpec` of its data (shape, kind, grey
    levels, classes, device) and the options are its own keyword arguments, each with a default: declared,
    never swallowed (`options()` lists them for `minigen list`, and the command refuses any other name).
    `__init__` builds the modules and optimizers (the loop moves the modules to spec.device); `step(batch,
    t)` does update t = 1, 2, ... and returns float metrics; `evaluate(loader)` reports the family's
    literature metric on held-out batches (likelihoods through `metrics.likelihood_metrics`); `sample(n)`
    returns n samples as a NumPy array ((n, C, H, W) in [0, 1] for images, (n, D) for vectors). Arrays a
    step makes (noise, masks) are made on spec.device.
    """

    name = "recipe"
    default_dataset = "digits"      # what `minigen train FAMILY` uses without --dataset
    default_epochs = 1.0            # ... and without --steps / --epochs
    needs_labels = False            # True: batches are (x, labels) (class-conditional models)
    kinds = ("binary", "levels", "continuous")   # the data kinds the family models (see DataSpec)

    @classmethod
    def options(cls) -> dict:
        """{name: default} of every option the family declares: the keyword arguments with defaults of its
        __init__ and, where it passes **options on, of its parents'."""
        found: dict = {}
        for klass in cls.__mro__:
            if "__init__" not in vars(klass) or klass is Recipe:
                continue
            params = list(inspect.signature(klass.__init__).parameters.values())[2:]    # self, spec
            for p in params:
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty:
                    found.setdefault(p.name, p.default)
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return found

    @classmethod
    def check_data(cls, spec) -> None:
        """A one-line error when the family cannot model this data."""
        if spec.kind not in cls.kinds:
            raise ValueError(f"family {cls.name!r} models {' or '.join(cls.kinds)} data; dataset {spec.name!r} "
                             f"is {spec.kind}")
        if cls.needs_labels and not spec.has_labels:
            raise ValueError(f"family {cls.name!r} needs labels, which dataset {spec.name!r} has not")

    def modules(self) -> dict:
        raise NotImplementedError

    def optimizers(self) -> dict:
        return {}

    def step(self, batch, t: int) -> dict:
        raise NotImplementedError

    def evaluate(self, loader) -> dict:
        return {}

    def sample(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def extra_state(self) -> dict:
        """State outside modules and optimizers that a resumed run needs (persistent chains, a replay buffer;
        JSON-able, arrays allowed)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


# --- the loop --------------------------------------------------------------------------------------------


def _check_finite(step: int, metrics: dict, recipe, saved: int) -> None:
    kept = f"the last good checkpoint, step {saved}, is kept" if saved else "no checkpoint had been written yet"
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteError(f"step {step}: {name} is {value}; stopping ({kept})")
    for mname, module in recipe.modules().items():
        for pname, p in module.named_parameters():
            if not bool(backend.get_array_module(p.data).isfinite(p.data).all()):
                raise NonFiniteError(f"step {step}: parameter {mname}.{pname} holds NaN or inf; stopping ({kept})")


def training_state(recipe, loader, step: int) -> dict:
    """Everything a resumed run needs: parameters, optimizer state, RNG and loader positions."""
    return {"step": step,
            "modules": {k: m.state_dict() for k, m in recipe.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in recipe.optimizers().items()},
            "rng": backend.get_rng_state(),
            "loader": loader.state_dict(),
            "extra": recipe.extra_state()}


def restore_training_state(recipe, loader, state: dict) -> int:
    for k, m in recipe.modules().items():
        m.load_state_dict(state["modules"][k])
    for k, o in recipe.optimizers().items():
        o.load_state_dict(state["optimizers"][k])
    backend.set_rng_state(state["rng"])
    loader.load_state_dict(state["loader"])
    recipe.load_extra_state(state.get("extra", {}))
    return int(state["step"])


def _batches(loader):
    """Batches forever, epoch after epoch (the loader reshuffles itself each epoch)."""
    while True:
        yield from loader


class Interrupted(Exception):
    """Ctrl-C stopped training between two steps; a checkpoint of the last finished step was saved."""

    def __init__(self, step: int, run_dir: Path):
        super().__init__(f"interrupted after step {step}; checkpoint saved in {run_dir}")
        self.step, self.run_dir = step, run_dir


@contextlib.contextmanager
def _deferred_interrupt():
    """Ctrl-C sets a flag that the loop reads between steps (a checkpoint taken inside an update would hold
    half of it); a second Ctrl-C stops at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _format(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


class Progress:
    """A tqdm bar on a terminal; where stderr is not one (a log file, CI), a plain line every `every`
    seconds instead of thousands of bar updates. `note` prints a line that stays (an evaluation)."""

    def __init__(self, name: str, steps: int, start: int, enabled: bool = True, every: float = 30.0):
        self.name, self.steps, self.enabled, self.every = name, steps, enabled, every
        self.bar = tqdm(total=steps, initial=start, desc=f"train {name}", unit="step", dynamic_ncols=True) \
            if enabled and sys.stderr.isatty() else None
        self.started = self.printed = time.monotonic()

    def update(self, step: int, metrics: dict) -> None:
        shown = dict(list(metrics.items())[:3])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
        elif self.enabled and (time.monotonic() - self.printed >= self.every or step == self.steps):
            self.printed = time.monotonic()
            print(f"train {self.name}: step {step}/{self.steps} ({100 * step / self.steps:.0f}%, "
                  f"{self.printed - self.started:.0f} s) {_format(shown)}", file=sys.stderr, flush=True)

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif self.enabled:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _keep_rows_up_to(path: Path, step: int) -> None:
    """Drop the metrics rows past `step` (written after the checkpoint a resumed run starts from)."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
        if len(kept) < len(rows):
            _atomic_write(path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))


def fit(recipe, loader, steps: int, run_dir: Path, eval_loader=None, eval_every: int | None = None,
        sample_every: int = 500, checkpoint_every: int = 500, resume: bool = False, n_samples: int = 64,
        reference: np.ndarray | None = None, progress: bool = True) -> dict:
    """Train `recipe` for `steps` updates on batches from `loader`; returns the last evaluation metrics.

    Writes to run_dir: metrics.jsonl (one JSON record per evaluation), samples/step-<k>.png, checkpoints
    (see the module docstring). With resume=True it continues from run_dir's last good checkpoint. The
    held-out evaluation runs every `eval_every` steps and after the last; eval_every=None: at every tenth
    of the run while evaluating has taken at most a tenth of the training time so far, so that a costly
    evaluation never dominates a short run. Ctrl-C finishes the current step, saves a checkpoint and
    raises `Interrupted`.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for holder in [*recipe.modules().values(), *recipe.optimizers().values()]:    # the device is the loop's
        holder.to(loader.device)
    start = restore_training_state(recipe, loader, load_checkpoint(run_dir)) if resume else 0
    if resume:
        _keep_rows_up_to(run_dir / "metrics.jsonl", start)
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    nominal = eval_every or max(steps // 10, 1)
    last_eval: dict = {}
    saved, train_seconds, eval_seconds = start, 0.0, 0.0
    batches = _batches(loader)
    bar = Progress(recipe.name, steps, start, progress)
    with open(run_dir / "metrics.jsonl", "a") as log, _deferred_interrupt() as interrupted:
        try:
            for step in range(start + 1, steps + 1):
                began = time.monotonic()
                metrics = recipe.step(next(batches), step)
                train_seconds += time.monotonic() - began
                _check_finite(step, metrics, recipe, saved)
                bar.update(step, metrics)
                done = step == steps
                due = step % nominal == 0 and (eval_every is not None or eval_seconds <= 0.1 * train_seconds)
                with backend.fork_rng(seed=0):      # evaluation and samples leave the training stream alone
                    if eval_loader is not None and (due or done):
                        began = time.monotonic()
                        evaluated = recipe.evaluate(eval_loader)
                        eval_seconds += time.monotonic() - began
                        last_eval = {"step": step, **{f"train_{k}": v for k, v in metrics.items()}, **evaluated}
                        log.write(json.dumps(last_eval) + "\n")
                        log.flush()
                        bar.note(f"step {step}: held-out {_format(evaluated)}")
                    if step % sample_every == 0 or done:
                        save_samples(recipe.sample(n_samples), run_dir / "samples" / f"step-{step:08d}.png",
                                     reference)
                if step % checkpoint_every == 0 or done or interrupted.is_set():
                    save_checkpoint(run_dir, training_state(recipe, loader, step))
                    saved = step
                if interrupted.is_set() and not done:
                    raise Interrupted(step, run_dir)
        finally:
            bar.close()
    return last_eval
