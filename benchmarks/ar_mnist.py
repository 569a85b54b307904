"""The autoregressive families on the fixed binarized MNIST (Larochelle & Murray) for a budget of CPU minutes,
scored by the exact NLL on the whole test set; also PixelCNN on MNIST with 256 grey levels in bits/dim.

    MINIGEN_DATA=/work/shared/data python -m benchmarks.ar_mnist gated-pixelcnn --minutes 45
    MINIGEN_DATA=/work/shared/data python -m benchmarks.ar_mnist made --opt hidden=500 --opt masks=8 --minutes 10
    MINIGEN_DATA=/work/shared/data python -m benchmarks.ar_mnist pixelcnn --dataset mnist --minutes 15

The models are the `minigen train FAMILY` recipes with --opt overriding their declared options. Training:
Adam, batches of --batch-size, until --minutes of this process's CPU time are spent (one thread for BLAS
and Numba, so that CPU minutes compare across runs on a shared machine). Evaluation: the exact negative
log-likelihood, nats per image, on all 10,000 test images (the binarized file is ordered, so a prefix
would not do) and bits/dim. Paper anchors (nats, binarized MNIST): NADE 88.86, MADE 88.04 (32 masks),
PixelCNN 81.30, PixelRNN (Row LSTM / Diagonal BiLSTM) 80.54 / 79.20. The PixelCNN papers give no 256-level
MNIST figure; the flows' published 1.05 (Glow) and 0.99 (FFJORD) bits/dim bound the same discrete NLL.
Appends a row to benchmarks/results/ar_mnist.jsonl and writes a 64-sample grid to benchmarks/results/ar/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import minigen as mg
from minigen import data
from minigen.cli import parse_options, check_options
from minigen.models import recipe_class
from minigen.train import save_samples

from .harness import append_row, timed, train_and_evaluate

RESULTS = Path(__file__).parent / "results"
FAMILIES = ("nade", "made", "pixelcnn", "gated-pixelcnn", "pixelrnn", "rnn", "fvsbn", "markov-mlp")
PAPER = {"nade": 88.86, "made": 88.04, "pixelcnn": 81.30, "gated-pixelcnn": 81.30, "pixelrnn": 80.54}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ar_mnist", description=__doc__.split("\n\n")[0])
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("--dataset", default="binarized-mnist", choices=["binarized-mnist", "mnist"])
    p.add_argument("--minutes", type=float, default=10, help="training budget in process CPU minutes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="a declared recipe option")
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits
    import numba
    threadpool_limits(1)
    numba.set_num_threads(1)
    mg.manual_seed(args.seed)
    spec, (train_x, _), (test_x, _) = data.load_dataset(args.dataset)
    cls = recipe_class(args.family)
    options = parse_options(args.opt)
    check_options(cls, options)
    recipe = cls(spec, **options)
    loader = data.DataLoader(train_x, batch_size=args.batch_size, seed=args.seed)
    test_loader = data.DataLoader(test_x[:args.test_images], batch_size=500, shuffle=False)
    steps, last, metrics, seconds = train_and_evaluate(recipe, loader, test_loader, float("inf"), args.minutes)
    with mg.backend.fork_rng(args.seed):
        samples, sample_cpu, _ = timed(recipe.sample, 64)
    tag = "".join(f"_{k}{v}" for k, v in options.items())
    save_samples(samples, RESULTS / "ar" / f"{args.family}{tag}_{args.dataset}.png")
    append_row("ar_mnist", sys.argv[1:] if argv is None else argv, {
        "family": args.family, "dataset": args.dataset, **options, "batch_size": args.batch_size,
        "steps": steps, "epochs": round(steps / len(loader), 2), "last_train_nll": round(last["nll"], 3),
        "test_images": min(args.test_images, len(test_x)), "test_nll": round(metrics["nll"], 3),
        "test_bits_per_dim": round(metrics["bits_per_dim"], 4), **seconds, "sample_64_cpu_s": round(sample_cpu),
        "parameters": sum(q.size for q in recipe.model.parameters()),
        "paper_nll": PAPER.get(args.family) if args.dataset == "binarized-mnist" else None})


if __name__ == "__main__":
    main()
