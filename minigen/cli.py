"""The `minigen` command: train a family on a dataset, sample from or evaluate a finished run, list what
there is.

    minigen train ae --dataset digits --steps 3000 --out runs/ae-digits
    minigen train ae --out runs/ae-digits --steps 6000 --resume      # continue a run
    minigen sample runs/ae-digits -n 64 -o samples.png
    minigen eval runs/ae-digits
    minigen list

A run folder holds config.json (everything needed to rerun it), metrics.jsonl, samples/ and checkpoints.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np


from . import backend, data
from .models import FAMILIES, recipe_class
from .train import (Interrupted, NonFiniteError, checkpoint_stems, fit, load_checkpoint, restore_training_state,
                    save_samples)


def parse_options(pairs: list[str]) -> dict:
    """--opt key=value pairs; values parsed as JSON where they can be (numbers, true/false), else strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--opt expects NAME=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _matches(value, default) -> bool:
    """Whether an option's value has the kind of its default (None: anything)."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (list, tuple, int))
    return isinstance(value, type(default))


def check_options(cls, options: dict) -> None:
    """A one-line error for an option the family does not declare (listing those it does), or whose value
    is not of its default's kind."""
    declared = cls.options()
    unknown = [k for k in options if k not in declared]
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in declared.items()) or "none"
        raise ValueError(f"family {cls.name!r} has no option {', '.join(map(repr, unknown))}; its options "
                         f"(with defaults): {listing}")
    for k, v in options.items():
        if not _matches(v, declared[k]):
            raise ValueError(f"option {k}={v!r} of family {cls.name!r}: expected a value like its default "
                             f"{declared[k]!r}")


def build(config: dict):
    """The recipe and the train / test loaders a config describes (seeded, so a rerun is the same run); the
    recipe's modules are on the run's device."""
    backend.manual_seed(config["seed"])
    device = backend.check_device(config["device"])
    spec, (train_x, train_y), (test_x, test_y) = data.load_dataset(config["dataset"], config["seed"],
                                                                   config.get("data_dir"), device)
    cls = recipe_class(config["family"])
    cls.check_data(spec)
    options = dict(config["options"])
    if config.get("lr") is not None:
        options["lr"] = config["lr"]
    check_options(cls, options)
    try:
        recipe = cls(spec, **options)
    except (ArithmeticError, TypeError, ValueError, IndexError) as e:
        shown = " ".join(f"--opt {k}={json.dumps(v)}" for k, v in config["options"].items()) or "its defaults"
        raise ValueError(f"family {cls.name!r} cannot be built with {shown}: {type(e).__name__}: {e}") from None
    for module in recipe.modules().values():
        module.to(device)
    train_arrays, test_arrays = ((train_x, train_y), (test_x, test_y)) if cls.needs_labels else ((train_x,), (test_x,))
    loader = data.DataLoader(*train_arrays, batch_size=config["batch_size"], seed=config["seed"], device=device)
    test_loader = data.DataLoader(*test_arrays, batch_size=500, shuffle=False, device=device)
    return recipe, loader, test_loader, train_x


# --- run folders -------------------------------------------------------------------------------------------

RUN_FILES = ("config.json", "latest.json", "metrics.jsonl")


def _holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES) or any(folder.glob("ckpt-*.json"))


def _fresh_folder(family: str, dataset: str) -> Path:
    """runs/FAMILY-DATASET, or the first of runs/FAMILY-DATASET-2, -3, ... that holds no run yet."""
    base = Path("runs") / f"{family}-{dataset}"
    folder, k = base, 1
    while _holds_run(folder):
        k += 1
        folder = base.with_name(f"{base.name}-{k}")
    return folder


def _clear_run(folder: Path) -> None:
    """Remove what a run writes (--overwrite): its checkpoints, config, metrics and samples, nothing else."""
    for path in [*(folder / n for n in RUN_FILES), *folder.glob("ckpt-*.json"), *folder.glob("ckpt-*.npz")]:
        path.unlink(missing_ok=True)
    for png in (folder / "samples").glob("*.png"):
        png.unlink()


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise ValueError(f"cannot write the run folder {folder}: {e.strerror}") from None


def _read_config(run: Path) -> dict:
    path = Path(run) / "config.json"
    if not path.exists():
        raise ValueError(f"{run} is not a minigen run folder (no config.json); make one with `minigen train`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def _check_device(device: str) -> str:
    device = backend.check_device(device)
    if device == "cuda" and not backend.cuda_available():
        raise ValueError("--device cuda: no usable CUDA GPU here (CuPy is missing or sees no device); "
                         "use --device cpu")
    return device


def _resumed_config(args, out: Path) -> dict:
    """The run's saved config with this command's changes: a longer run, another device or data folder;
    anything else that differs is refused rather than silently dropped."""
    config = _read_config(out)
    given = {"family": args.family, "dataset": args.dataset, "batch_size": args.batch_size, "lr": args.lr,
             "seed": args.seed, "options": parse_options(args.opt) or None}
    shown = lambda v: "the family's default" if v is None else repr(v)     # noqa: E731
    changed = [f"{k} {shown(config.get(k))} -> {v!r}" for k, v in given.items() if v is not None and v != config.get(k)]
    if changed:
        raise ValueError(f"--resume continues the run in {out} as it was configured; this command changes "
                         f"{'; '.join(changed)}. Start a new run (another --out) to change them")
    if args.device is not None:
        config["device"] = args.device
    if args.data_dir is not None:
        config["data_dir"] = args.data_dir
    return config


def _steps(args, config: dict, loader, recipe) -> int:
    if args.steps is not None:
        return args.steps
    if args.epochs is not None or config["steps"] is None:
        return math.ceil((args.epochs or recipe.default_epochs) * len(loader))
    return config["steps"]


def _train(args) -> int:
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if args.epochs is not None and args.epochs <= 0:
        raise ValueError(f"--epochs must be positive, got {args.epochs}")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: choose one")
    cls = recipe_class(args.family)
    dataset = args.dataset or cls.default_dataset
    if dataset not in data.dataset_names():
        raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(data.dataset_names())}")
    if args.resume and not args.out:
        raise ValueError("--resume needs the run folder: --out RUN")
    out = Path(args.out) if args.out else _fresh_folder(args.family, dataset)
    if args.resume:
        config = _resumed_config(args, out)
    else:
        if _holds_run(out) and not args.overwrite:
            raise ValueError(f"{out} already holds a run; continue it with --resume, choose another --out, "
                             "or replace it with --overwrite")
        config = {"family": args.family, "dataset": dataset, "batch_size": args.batch_size or 128,
                  "lr": args.lr, "device": args.device or "cpu", "seed": args.seed or 0, "data_dir": args.data_dir,
                  "options": parse_options(args.opt), "steps": None, "eval_every": args.eval_every,
                  "eval_images": args.eval_images}
    config["device"] = _check_device(config["device"])
    for k in ("eval_every", "eval_images"):
        if getattr(args, k) is not None:
            config[k] = getattr(args, k)
    _check_writable(out)
    recipe, loader, test_loader, train_x = build(config)
    stems = checkpoint_stems(out) if args.resume else []
    start = int(stems[0].removeprefix("ckpt-")) if stems else 0
    config["steps"] = _steps(args, config, loader, recipe)
    if config["steps"] <= start:
        raise ValueError(f"the run in {out} is already at step {start}, past --steps {config['steps']}; "
                         f"give a larger --steps to extend it")
    if args.overwrite:
        _clear_run(out)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if config.get("eval_images"):
        test_loader = data.DataLoader(*(a[:config["eval_images"]] for a in test_loader.arrays), batch_size=500,
                                      shuffle=False, device=test_loader.device)
    reference = train_x[:2000] if train_x.ndim == 2 else None
    steps = config["steps"]
    try:
        metrics = fit(recipe, loader, steps, out, eval_loader=test_loader, resume=args.resume,
                      eval_every=config.get("eval_every"), sample_every=max(steps // 5, 1),
                      checkpoint_every=max(steps // 5, 1), reference=reference)
    except Interrupted as e:
        print(f"minigen train: interrupted after step {e.step}; checkpoint saved in {out}. Continue with: "
              f"minigen train {args.family} --out {out} --resume", file=sys.stderr)
        return 130
    print(json.dumps(metrics))
    print(f"run folder: {out} (metrics.jsonl, samples/, checkpoints)")
    return 0


def _restored(run: Path):
    config = _read_config(run)
    config["device"] = _check_device(config["device"])
    recipe, loader, test_loader, train_x = build(config)
    restore_training_state(recipe, loader, load_checkpoint(run))
    return recipe, test_loader, train_x


def _sample(args) -> int:
    if args.n < 1:
        raise ValueError(f"-n must be at least 1, got {args.n}")
    recipe, _, train_x = _restored(Path(args.run))
    path = Path(args.o or Path(args.run) / "samples" / "sample.png")
    save_samples(recipe.sample(args.n), path, train_x[:2000] if train_x.ndim == 2 else None)
    print(f"wrote {path}")
    return 0


def _eval(args) -> int:
    recipe, test_loader, _ = _restored(Path(args.run))
    print(json.dumps(recipe.evaluate(test_loader)))
    return 0


def _list(args) -> int:
    print("families (options with defaults; set them with --opt NAME=VALUE):")
    for name, (_, _, description) in FAMILIES.items():
        cls = recipe_class(name)
        print(f"  {name:12s} {description}  [default dataset: {cls.default_dataset}]")
        print("               " + (", ".join(f"{k}={v!r}" for k, v in cls.options().items()) or "(no options)"))
    print("datasets:")
    for name, description in data.IMAGE_DATASETS.items():
        print(f"  {name:18s} {description}")
    print("  2-D:               " + ", ".join(data.TOY_DATASETS))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minigen", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a family on a dataset",
                       description="Train a family. `minigen list` shows every family's options (set them with "
                                   "--opt NAME=VALUE), their defaults and the datasets.")
    t.add_argument("family", help=f"one of: {', '.join(FAMILIES)}")
    t.add_argument("--dataset", help="see `minigen list` (default: the family's own)")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="number of updates (with --resume: extends the run to this)")
    length.add_argument("--epochs", type=float, help="number of passes over the training set")
    t.add_argument("--batch-size", type=int, help="examples per update (default 128)")
    t.add_argument("--lr", type=float, help="learning rate (default: the family's)")
    t.add_argument("--device", choices=["cpu", "cuda"], help="default cpu")
    t.add_argument("--out", help="run folder (default runs/FAMILY-DATASET, numbered -2, -3, ... when taken)")
    t.add_argument("--seed", type=int, help="default 0")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")
    t.add_argument("--eval-every", type=int, metavar="STEPS",
                   help="held-out evaluation every STEPS steps (default: every tenth of the run while it takes "
                        "under a tenth of the time)")
    t.add_argument("--eval-images", type=int, metavar="N",
                   help="evaluate during training on the first N test examples (default all; `minigen eval` "
                        "always uses all)")
    t.add_argument("--data-dir", help="where the datasets are (default $MINIGEN_DATA, else ~/.cache/minigen)")
    t.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE",
                   help="a family option, e.g. --opt latent=8 (repeatable; `minigen list` shows them)")
    t.set_defaults(run_command=_train)
    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run", help="a run folder")
    s.add_argument("-n", type=int, default=64)
    s.add_argument("-o", help="output PNG (default RUN/samples/sample.png)")
    s.set_defaults(run_command=_sample)
    e = sub.add_parser("eval", help="evaluate a trained run on its test set")
    e.add_argument("run", help="a run folder")
    e.set_defaults(run_command=_eval)
    ls = sub.add_parser("list", help="list the families and datasets")
    ls.set_defaults(run_command=_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):    # the NaN guard says what went wrong
            return args.run_command(args)
    except (ValueError, OSError, NonFiniteError) as e:      # bad input, missing data, a run stopped by NaN
        print(f"minigen {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
