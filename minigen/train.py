"""The training loop every family shares: progress, evaluation, samples, metrics, checkpoints, resume.

A family provides a `Recipe` (see `minigen.models`): its modules and optimizers, a `step(batch, t) ->
metrics` for update t, an `evaluate(loader) -> metrics` reporting what its literature reports, and `sample(n)`.
`fit` runs the steps with a tqdm bar, appends metrics to `metrics.jsonl`, writes sample grids as PNG and
checkpoints, and resumes a stopped run exactly where it was:

- a checkpoint is `ckpt-<step>.npz` (every array: parameters, buffers, optimizer moments; loaded with
  allow_pickle=False, so reading one never runs code) plus `ckpt-<step>.json` (step, RNG and loader state,
  scalars), each written to a temporary file and renamed into place, and only then named by `latest.json`
  (itself replaced atomically): a run killed at any moment leaves the previous checkpoint intact;
- on the CPU, a run resumed from step k ends bit-identical to one never stopped (same parameters, same
  random draws, same batches);
- a NaN or inf in a step's metrics or parameters stops the run with a message naming the step and the
  quantity, and leaves the last good checkpoint in place.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import tempfile
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
    `open` would give it (mkstemp makes it private to its owner)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def save_checkpoint(run_dir: Path, state: dict, keep: int = 2) -> Path:
    """Save `state` (nested dicts of arrays and scalars, with an int "step") as ckpt-<step>.{npz,json}, then
    point latest.json at it; older checkpoints beyond the newest `keep` are removed."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    arrays: dict = {}
    meta = _split_arrays(state, "state", arrays)
    stem = f"ckpt-{step:08d}"
    _atomic_write(run_dir / f"{stem}.npz", lambda f: np.savez(f, **arrays))
    _atomic_write(run_dir / f"{stem}.json", lambda f: f.write(json.dumps(meta).encode()))
    _atomic_write(run_dir / "latest.json", lambda f: f.write(json.dumps({"checkpoint": stem, "step": step}).encode()))
    for old in sorted(run_dir.glob("ckpt-*.json"))[:-keep]:
        old.unlink()
        old.with_suffix(".npz").unlink(missing_ok=True)
    return run_dir / stem


def load_checkpoint(run_dir: Path) -> dict:
    """The state saved by the last completed save_checkpoint in `run_dir`."""
    run_dir = Path(run_dir)
    latest = run_dir / "latest.json"
    if not latest.exists():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (no latest.json): is it a minigen run folder?")
    stem = json.loads(latest.read_text())["checkpoint"]
    meta = json.loads((run_dir / f"{stem}.json").read_text())
    with np.load(run_dir / f"{stem}.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return _join_arrays(meta, arrays)


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


def save_samples(samples: np.ndarray, path: Path, reference: np.ndarray | None = None) -> None:
    """A PNG of samples: an image grid for (n, [C,] H, W) arrays, a scatter plot for (n, 2) points."""
    samples = np.asarray(samples)
    picture = scatter_plot(samples, reference=reference) if samples.ndim == 2 else image_grid(samples)
    zoom = max(1, 256 // picture.shape[1])            # small images (8x8 digits) drawn bigger
    picture = picture.repeat(zoom, axis=0).repeat(zoom, axis=1)
    if picture.shape[-1] == 1:
        picture = picture[..., 0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(Path(path), lambda f: Image.fromarray(picture).save(f, format="PNG"))


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


def _check_finite(step: int, metrics: dict, recipe) -> None:
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteError(f"step {step}: {name} is {value}; stopping (the last good checkpoint is kept)")
    for mname, module in recipe.modules().items():
        for pname, p in module.named_parameters():
            if not bool(backend.get_array_module(p.data).isfinite(p.data).all()):
                raise NonFiniteError(f"step {step}: parameter {mname}.{pname} holds NaN or inf; stopping "
                                     "(the last good checkpoint is kept)")


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


def fit(recipe, loader, steps: int, run_dir: Path, eval_loader=None, eval_every: int = 500,
        sample_every: int = 500, checkpoint_every: int = 500, resume: bool = False, n_samples: int = 64,
        reference: np.ndarray | None = None, progress: bool = True) -> dict:
    """Train `recipe` for `steps` updates on batches from `loader`; returns the last evaluation metrics.

    Writes to run_dir: metrics.jsonl (one JSON record per evaluation), samples/step-<k>.png,
    checkpoints (see the module docstring). With resume=True it continues from run_dir's last checkpoint.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = restore_training_state(recipe, loader, load_checkpoint(run_dir)) if resume else 0
    if not resume:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    last_eval: dict = {}
    batches = _batches(loader)
    with open(run_dir / "metrics.jsonl", "a") as log, \
            tqdm(total=steps, initial=start, desc=f"train {recipe.name}", unit="step", disable=not progress,
                 dynamic_ncols=True) as bar:
        for step in range(start + 1, steps + 1):
            metrics = recipe.step(next(batches), step)
            _check_finite(step, metrics, recipe)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:3]})
            done = step == steps
            with backend.fork_rng(seed=0):      # evaluation and samples leave the training stream alone
                if step % eval_every == 0 or done:
                    evaluated = recipe.evaluate(eval_loader) if eval_loader is not None else {}
                    last_eval = {"step": step, **{f"train_{k}": v for k, v in metrics.items()}, **evaluated}
                    log.write(json.dumps(last_eval) + "\n")
                    log.flush()
                if step % sample_every == 0 or done:
                    save_samples(recipe.sample(n_samples), run_dir / "samples" / f"step-{step:08d}.png", reference)
            if step % checkpoint_every == 0 or done:
                save_checkpoint(run_dir, training_state(recipe, loader, step))
    return last_eval
