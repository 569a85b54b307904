"""Benchmarks: ``python -m benchmarks NAME [NAME ...] [--quick]``.

Each NAME is a module ``benchmarks/NAME.py`` exposing

    run(quick: bool) -> (rows, extra_tables)

where ``rows`` is a list of dicts ``{"case": str, "variant": str, "impl": str, "seconds": float,
"spread": float}`` (one timing of one implementation; ``harness.measure`` or ``measure_interleaved`` give seconds and spread) and
``extra_tables`` maps a title to a list of dicts printed as additional markdown tables (e.g. compile
costs). ``harness.write_results(NAME, rows, meta, extra_tables)`` then writes
``benchmarks/results/NAME.json`` and ``NAME.md``, whose table puts the implementations of one
(case, variant) side by side with their ratio to each peer measured in the same run (PyTorch CPU by
default: ratio < 1 means faster than the peer).
"""
