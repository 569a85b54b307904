"""python -m benchmarks NAME [NAME ...] [--quick]: run benchmark modules and write their results."""
import argparse
import importlib

from . import harness


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="+", help="benchmark modules in benchmarks/, e.g. kernels")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    parser.add_argument("--suffix", default="", help="appended to the result name, e.g. _cpu")
    args = parser.parse_args(argv)
    for name in args.names:
        module = importlib.import_module(f"{__package__}.{name}")
        rows, extra = module.run(args.quick)
        paths = harness.write_results(name + args.suffix, rows, harness.metadata(), extra,
                                      peers=getattr(module, "PEERS", ("torch",)))
        print(open(paths[1]).read())


if __name__ == "__main__":
    main()
