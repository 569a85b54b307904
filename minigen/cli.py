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


from . import backend, data
from .models import FAMILIES, recipe_class
from .train import fit, load_checkpoint, restore_training_state, save_samples

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
    recipe = cls(spec, **options)
    for module in recipe.modules().values():
        module.to(device)
    train_arrays, test_arrays = ((train_x, train_y), (test_x, test_y)) if cls.needs_labels else ((train_x,), (test_x,))
    loader = data.DataLoader(*train_arrays, batch_size=config["batch_size"], seed=config["seed"], device=device)
    test_loader = data.DataLoader(*test_arrays, batch_size=500, shuffle=False, device=device)
    return recipe, loader, test_loader, train_x


def check_options(cls, options: dict) -> None:
    """A one-line error for an option the family does not declare, listing those it does."""
    declared = cls.options()
    unknown = [k for k in options if k not in declared]
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in declared.items()) or "none"
        raise ValueError(f"family {cls.name!r} has no option {', '.join(map(repr, unknown))}; its options "
                         f"(with defaults): {listing}")


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
        if dataset not in data.dataset_names():
            raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(data.dataset_names())}")
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
