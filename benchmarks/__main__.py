"""python -m benchmarks NAME [NAME ...] [--quick] [--runs N]: run benchmark modules and write their results to
benchmarks/results/ (a --quick smoke run writes to benchmarks/results/quick/, which git ignores, so that it
never replaces the tracked figures); --runs N repeats each benchmark and reports each row's median over the runs
and every run's ratio to the peer (harness.pool_runs). The other benchmarks (flows_mnist, vae_mnist, gan_mnist,
...) are commands of their own: python -m benchmarks.vae_mnist --help."""
import argparse
import os
from pathlib import Path

from . import harness


def names() -> list[str]:
    """The modules of benchmarks/ that this command runs: those with a `run(quick)` function."""
    here = Path(__file__).parent
    return sorted(p.stem for p in here.glob("*.py") if "\ndef run(" in p.read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"one or more of: {', '.join(names())}")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    parser.add_argument("--suffix", default="", help="appended to the result name, e.g. _cpu")
    parser.add_argument("--runs", type=int, default=1, help="repeat each benchmark this many times (default 1)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in names()]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(map(repr, unknown))}; choose from: {', '.join(names())}")
    folder = os.path.join(harness.RESULTS, "quick") if args.quick else harness.RESULTS
    for name in args.names:
        module = __import__(f"{__package__}.{name}", fromlist=["run"])
        peers = getattr(module, "PEERS", ("torch",))
        runs = [module.run(args.quick) for _ in range(args.runs)]
        rows, extra = runs[-1]
        if args.runs > 1:
            rows, ratios = harness.pool_runs([r for r, _ in runs], peers[0])
            extra = {f"Ratio to {peers[0]} in each of {args.runs} runs": ratios,
                     **{f"{title} (run {args.runs})": table for title, table in extra.items()}}
        paths = harness.write_results(name + args.suffix, rows, harness.metadata(), extra, folder=folder,
                                      peers=peers)
        print(open(paths[1]).read())


if __name__ == "__main__":
    main()
