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
from pathlib import Path

import numpy as np

from . import backend, data
from .models import FAMILIES, recipe_class
from .train import fit, load_checkpoint, restore_training_state, save_samples

IMAGE_DATASETS = ("digits", "mnist", "fashion-mnist", "binarized-mnist")


def load_dataset(name: str, seed: int, data_dir: str | None = None):
    """(train_x, train_y, test_x, test_y): images float32 (n, 1, H, W) in [0, 1] with int64 labels, or 2-D
    points (n, 2); labels are None where a dataset has none."""
    if name == "digits":
        x, y = data.load_digits()
        order = np.random.default_rng(0).permutation(len(x))     # a fixed split: 1497 train, 300 test
        x, y = x[order][:, None], y[order]
        return x[300:], y[300:], x[:300], y[:300]
    if name in ("mnist", "fashion-mnist"):
        load = data.load_mnist if name == "mnist" else data.load_fashion_mnist
        (train_x, train_y), (test_x, test_y) = (load(split, data_dir=data_dir) for split in ("train", "test"))
        return train_x[:, None] / np.float32(255), train_y, test_x[:, None] / np.float32(255), test_y
    if name == "binarized-mnist":
        train_x, test_x = (data.load_binarized_mnist(split, data_dir=data_dir)[:, None].astype(np.float32)
                           for split in ("train", "test"))
        return train_x, None, test_x, None
    if name in data.TOY_DATASETS:
        rng = np.random.default_rng(seed)
        return data.sample_toy(name, 20000, rng), None, data.sample_toy(name, 5000, rng), None
    raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}")


def dataset_names() -> list[str]:
    return list(IMAGE_DATASETS) + list(data.TOY_DATASETS)


def _parse_options(pairs: list[str]) -> dict:
    """--opt key=value pairs; values parsed as JSON where they can be (numbers, true/false), else strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--opt expects key=value, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def build(config: dict):
    """The recipe and the train / test loaders a config describes (seeded, so a rerun is the same run)."""
    backend.manual_seed(config["seed"])
    train_x, train_y, test_x, test_y = load_dataset(config["dataset"], config["seed"], config.get("data_dir"))
    cls = recipe_class(config["family"])
    if cls.needs_labels and train_y is None:
        raise ValueError(f"family {config['family']!r} needs labels, which dataset {config['dataset']!r} has not")
    options = dict(config["options"])
    if config.get("lr") is not None:
        options["lr"] = config["lr"]
    recipe = cls(train_x.shape[1:], **options)
    train_arrays, test_arrays = ((train_x, train_y), (test_x, test_y)) if cls.needs_labels else ((train_x,), (test_x,))
    loader = data.DataLoader(*train_arrays, batch_size=config["batch_size"], seed=config["seed"],
                             device=config["device"])
    test_loader = data.DataLoader(*test_arrays, batch_size=500, shuffle=False, device=config["device"])
    return recipe, loader, test_loader, train_x


def _train(args) -> int:
    out = Path(args.out or f"runs/{args.family}-{args.dataset or 'default'}")
    if args.resume:
        config = _read_config(out)
        config["steps"] = args.steps or config["steps"]
    else:
        cls = recipe_class(args.family)
        dataset = args.dataset or cls.default_dataset
        config = {"family": args.family, "dataset": dataset, "batch_size": args.batch_size, "lr": args.lr,
                  "device": backend.check_device(args.device), "seed": args.seed, "data_dir": args.data_dir,
                  "options": _parse_options(args.opt), "steps": None}
        if dataset not in dataset_names():
            raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(dataset_names())}")
    recipe, loader, test_loader, train_x = build(config)
    if config["steps"] is None:
        epochs = args.epochs or recipe.default_epochs
        config["steps"] = args.steps or math.ceil(epochs * len(loader))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    reference = train_x[:2000] if train_x.ndim == 2 else None
    metrics = fit(recipe, loader, config["steps"], out, eval_loader=test_loader, resume=args.resume,
                  eval_every=max(config["steps"] // 10, 1), sample_every=max(config["steps"] // 5, 1),
                  checkpoint_every=max(config["steps"] // 5, 1), reference=reference)
    print(json.dumps(metrics))
    print(f"run folder: {out} (metrics.jsonl, samples/, checkpoints)")
    return 0


def _read_config(run: Path) -> dict:
    path = Path(run) / "config.json"
    if not path.exists():
        raise ValueError(f"{run} is not a minigen run folder (no config.json); make one with `minigen train`")
    return json.loads(path.read_text())


def _restored(run: Path):
    config = _read_config(run)
    recipe, loader, test_loader, train_x = build(config)
    restore_training_state(recipe, loader, load_checkpoint(run))
    return recipe, test_loader, train_x


def _sample(args) -> int:
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
    print("families:")
    for name, (_, _, description) in FAMILIES.items():
        print(f"  {name:12s} {description}")
    print("datasets:")
    print("  images:  " + ", ".join(IMAGE_DATASETS) + "   (digits needs no download)")
    print("  2-D:     " + ", ".join(data.TOY_DATASETS))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minigen", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a family on a dataset")
    t.add_argument("family", help=f"one of: {', '.join(FAMILIES)}")
    t.add_argument("--dataset", help="see `minigen list` (default: the family's own)")
    length = t.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="number of updates")
    length.add_argument("--epochs", type=float, help="number of passes over the training set")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, help="learning rate (default: the family's)")
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    t.add_argument("--out", help="run folder (default runs/FAMILY-DATASET)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--data-dir", help="where the datasets are (default $MINIGEN_DATA, else ~/.cache/minigen)")
    t.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a family option, e.g. --opt latent=8 (repeatable)")
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
        return args.run_command(args)
    except (ValueError, FileNotFoundError, data.DataUnavailableError) as e:
        print(f"minigen {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
