"""An RBM with 500 hidden units on the fixed binarized MNIST (Larochelle & Murray), trained by CD-k or PCD,
its test log-likelihood estimated by AIS on all 10,000 test images, beside Salakhutdinov & Murray (2008).

    MINIGEN_DATA=/work/shared/data python -m benchmarks.rbm_mnist --k 25 --minutes 30 --ais-betas 14500
    MINIGEN_DATA=/work/shared/data python -m benchmarks.rbm_mnist --dbm 1000 --lr 0.005 --minutes 20

With --dbm H2 the model is a two-layer DBM (--hidden, H2 units; `DBMRecipe`: mean-field positive phase,
persistent chains, no pretraining) scored by its mean-field lower bound with log Z by AIS over h1.

Training: SGD (lr 0.01, momentum 0.5, weight decay 2e-4 on W) on the CD-k statistics
(`minigen.models.boltzmann.RBMRecipe`), batches of 100, visible biases started at the first batch's
log-odds, for --epochs or until --minutes of this process's CPU time are spent (the update that crosses the
budget is the last). Evaluation: log Z by AIS (--ais-betas inverse temperatures spaced as the
paper's 14,500, --ais-runs runs, base rate from the test images' pixel means), NLL = mean free energy + log Z,
reported ± the standard error of log Z. AIS under-estimates log Z on average when the schedule is short, so a
short schedule flatters the NLL. Paper anchors: RBM(500) CD25 -86.34 nats; a two-layer DBM -84.62 (S&H 2009).
Appends a row to benchmarks/results/rbm_mnist.jsonl and writes filters, reconstructions and samples beside it.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import minigen as mg
from minigen import data
from minigen.models.boltzmann import DBMRecipe, RBMRecipe, save_filters, save_reconstructions
from minigen.train import save_samples

from .harness import append_row, train_and_evaluate

RESULTS = Path(__file__).parent / "results"
PAPER = {"rbm(500) cd25, Salakhutdinov & Murray 2008": -86.34, "dbm, Salakhutdinov & Hinton 2009": -84.62}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rbm_mnist", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=float, help="default: 1 without --minutes, else no limit")
    p.add_argument("--minutes", type=float, default=math.inf, help="training budget in process CPU minutes")
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--dbm", type=int, metavar="H2", help="a two-layer DBM with H2 units on top of --hidden")
    p.add_argument("--k", type=int, default=1, help="Gibbs steps of the negative phase per update")
    p.add_argument("--persistent", action="store_true", help="PCD: chains kept across updates")
    p.add_argument("--lr", type=float, default=0.01, help="0.05 peaks after one epoch (CD-1), then decays")
    p.add_argument("--momentum", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=2e-4)
    p.add_argument("--ais-betas", type=int, default=14500)
    p.add_argument("--ais-runs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    mg.manual_seed(args.seed)
    spec, (train_x, _), (test_x, _) = data.load_dataset("binarized-mnist")
    shared = dict(k=args.k, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                  ais_betas=args.ais_betas, ais_runs=args.ais_runs, sample_steps=1000)
    if args.dbm:
        recipe = DBMRecipe(spec, hidden=(args.hidden, args.dbm), **shared)
    else:
        recipe = RBMRecipe(spec, hidden=args.hidden, persistent=args.persistent, **shared)
    loader = data.DataLoader(train_x, batch_size=100, seed=args.seed)
    test_loader = data.DataLoader(test_x, batch_size=1000, shuffle=False)
    epochs = args.epochs if args.epochs is not None else (1 if math.isinf(args.minutes) else math.inf)
    done, last, metrics, seconds = train_and_evaluate(recipe, loader, test_loader, epochs * len(loader),
                                                      args.minutes)

    if args.dbm:
        name = f"dbm{args.hidden}-{args.dbm}_pcd{args.k}"
    else:
        name = f"rbm{args.hidden}_{'pcd' if args.persistent else 'cd'}{args.k}"
        v = test_x[::len(test_x) // 32][:32].reshape(32, -1)    # spread over the file (its first are all 0s)
        save_filters(recipe.model, spec.shape, RESULTS / f"{name}_filters.png", count=100)
        save_reconstructions(recipe.model, v, spec.shape, RESULTS / f"{name}_reconstructions.png")
    with mg.backend.fork_rng(args.seed):
        save_samples(recipe.sample(64), RESULTS / f"{name}_samples.png")
    append_row("rbm_mnist", argv, {
        "model": name, "updates": done, "epochs": round(done / len(loader), 2),
        **{k: round(v, 3) for k, v in last.items()},
        "test_log_likelihood": round(-metrics["nll"], 2), "se": round(metrics["nll_se"], 3),
        "log_Z": round(metrics["log_Z"], 3), "log_Z_se": round(metrics["log_Z_se"], 3),
        "ais": f"{args.ais_betas} betas x {args.ais_runs} runs", "test_images": len(test_x),
        "paper": PAPER, **seconds})


if __name__ == "__main__":
    main()
