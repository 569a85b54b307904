"""A small timing harness: median-of-repeats timings, machine metadata, JSON + markdown results."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from importlib import metadata as _pkg
from pathlib import Path

from kernels import gemm
from minigen.train import load_checkpoint, restore_training_state, save_checkpoint, training_state

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LOAD_AT_START = os.getloadavg()[0]     # on import, i.e. when `python -m benchmarks ...` starts


def stolen_seconds() -> float | None:
    """CPU time this virtual machine's processors waited while the hypervisor ran others ("steal" in /proc/stat,
    all processors together), in seconds since boot; None where the system does not tell. A run during which
    steps slowed together, as some two-thread halves of training_steps did, can be told from one with a busy host."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


STOLEN_AT_START = stolen_seconds()


def _summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    median = statistics.median(times)
    return {"seconds": median, "spread": (q[2] - q[0]) / median, "min": min(times)}


def measure_interleaved(fns: dict, repeat: int = 20, warmup: int = 2, syncs: dict | None = None) -> dict:
    """Time several implementations of the same thing in rounds: each round calls every fn once.

    On a machine shared with other jobs the load then hits every implementation alike, which keeps
    their ratios honest where back-to-back blocks would not. `syncs[name]` (e.g. a GPU synchronize)
    runs after each call, inside the timed region. Returns {name: summary} with summary =
    {"seconds": median, "spread": (q75 - q25) / median, "min": fastest}."""
    syncs = syncs or {}
    times = {name: [] for name in fns}
    for round_ in range(warmup + repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if syncs.get(name):
                syncs[name]()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: _summary(t) for name, t in times.items()}


def measure(fn, repeat: int = 20, warmup: int = 2, sync=None) -> dict:
    """Median (and spread, min) seconds of fn() over `repeat` calls after `warmup` calls."""
    return measure_interleaved({"fn": fn}, repeat, warmup, {"fn": sync})["fn"]


def _cpu_model() -> str:
    """The CPU's name, with its family and model numbers where /proc/cpuinfo gives them (VMs give plain names such
    as 'AMD EPYC' for several generations)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not key.strip():         # the first processor's block ends
                    break
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    numbers = ", ".join(f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields)
    return f"{fields['model name']} ({numbers})" if numbers else fields["model name"]


def _version(package: str) -> str | None:
    try:
        return _pkg.version(package)
    except _pkg.PackageNotFoundError:
        return None


def metadata() -> dict:
    """Machine and library versions for a results file, the 1-minute load average when the command started (this
    module's import) and now, at the end of the run (the runner calls this after it), and the CPU time stolen by
    the hypervisor in between."""
    stolen = stolen_seconds()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load average (1 min, at start)": round(LOAD_AT_START, 2),
        "load average (1 min, at end)": round(os.getloadavg()[0], 2),
        "CPU time stolen by the hypervisor during the run (s)":
            None if stolen is None or STOLEN_AT_START is None else round(stolen - STOLEN_AT_START, 2),
        "python": platform.python_version(),
        **{p: _version(p) for p in ("numpy", "numba", "scipy", "mkl", "torch", "cupy-cuda12x", "cupy-cuda13x")},
        "minigen's BLAS": gemm.blas(),      # MKL where installed (pip install -e ".[mkl]"), else OpenBLAS
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}"


def markdown_table(rows: list[dict], peers=("torch",)) -> str:
    """One line per (case, variant): each implementation's median in ms, then impl/peer ratios."""
    groups = defaultdict(dict)
    for r in rows:
        groups[r["case"], r["variant"]][r["impl"]] = r["seconds"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    peers = [p for p in peers if p in impls]
    ratio_cols = [(i, p) for p in peers for i in impls if i != p]
    head = ["case", "variant", *(f"{i} ms" for i in impls), *(f"{i} / {p}" for i, p in ratio_cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (case, variant), t in groups.items():
        cells = [case, variant, *(_ms(t[i]) if i in t else "" for i in impls)]
        cells += [f"{t[i] / t[p]:.2f}" if i in t and p in t else "" for i, p in ratio_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pool_runs(runs: list[list[dict]], peer: str = "torch") -> tuple[list[dict], list[dict]]:
    """Whole runs of one benchmark, repeated (`python -m benchmarks NAME --runs N`): each row's median over the
    runs of its per-run median, and a table of each run's ratio to `peer` with their range, the spread the
    figures are read with (a single run's interleaving evens out the load within it, not between runs)."""
    seconds = defaultdict(list)
    for rows in runs:
        for r in rows:
            seconds[r["case"], r["variant"], r["impl"]].append(r["seconds"])
    pooled, table = [], []
    for r in runs[0]:
        ours, theirs = seconds[r["case"], r["variant"], r["impl"]], seconds.get((r["case"], r["variant"], peer))
        pooled.append({**{k: r[k] for k in ("case", "variant", "threads", "impl") if k in r},
                       "seconds": statistics.median(ours), "runs": len(runs)})
        if r["impl"] == peer or theirs is None or len(ours) != len(theirs):
            continue
        ratios = [a / b for a, b in zip(ours, theirs)]
        table.append({"case": r["case"], "variant": r["variant"], "impl": r["impl"],
                      **{f"run {i + 1}": f"{q:.2f}" for i, q in enumerate(ratios)},
                      "median": f"{statistics.median(ratios):.2f}", "range": f"{min(ratios):.2f}-{max(ratios):.2f}"})
    return pooled, table


def _plain_table(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, rows: list[dict], meta: dict, extra_tables: dict | None = None,
                  peers=("torch",), folder: str = RESULTS) -> tuple[str, str]:
    """Write <folder>/<name>.json and <name>.md (folder: benchmarks/results); return their paths."""
    os.makedirs(folder, exist_ok=True)
    extra_tables = extra_tables or {}
    json_path, md_path = (os.path.join(folder, f"{name}.{ext}") for ext in ("json", "md"))
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": rows, "extra": extra_tables}, f, indent=1)
    parts = [f"# {name}", "", ", ".join(f"{k}: {v}" for k, v in meta.items() if v is not None), "",
             "Median of repeats in ms; ratio < 1 means faster than the peer.", "", markdown_table(rows, peers)]
    for title, table in extra_tables.items():
        parts += ["", f"## {title}", "", _plain_table(table)]
    with open(md_path, "w") as f:
        f.write("\n".join(parts) + "\n")
    return json_path, md_path


def train_for(recipe, loader, steps: float, minutes: float) -> tuple[int, dict]:
    """Run `recipe.step` on batches from `loader` (epoch after epoch) for `steps` updates, or stop after the
    update that takes this process's CPU time past `minutes`; returns (updates done, last step's metrics)."""
    start = time.process_time()
    step, batches = 0, iter(())
    while True:
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            continue
        step += 1
        metrics = recipe.step(batch, step)
        if step >= steps or time.process_time() - start >= 60 * minutes:
            return step, metrics


def timed(f, *args):
    """(f(*args), process CPU seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.time()
    out = f(*args)
    return out, time.process_time() - cpu, time.time() - wall


def train_and_evaluate(recipe, loader, test_loader, steps: float, minutes: float,
                       run_dir=None) -> tuple[int, dict, dict, dict]:
    """`train_for`, then `recipe.evaluate(test_loader)`; returns (updates done, last step's metrics, evaluation
    metrics, the process CPU and wall seconds of each phase). With `run_dir` the trained state is checkpointed
    there before the (long) evaluation, and a run_dir that already holds one is evaluated without training."""
    if run_dir is not None and (Path(run_dir) / "latest.json").exists():
        state = load_checkpoint(run_dir)
        done, last, train_cpu, train_wall = restore_training_state(recipe, loader, state), state["last"], 0, 0
    else:
        (done, last), train_cpu, train_wall = timed(train_for, recipe, loader, steps, minutes)
        if run_dir is not None:
            save_checkpoint(run_dir, {**training_state(recipe, loader, done), "last": last})
    metrics, eval_cpu, eval_wall = timed(recipe.evaluate, test_loader)
    seconds = {"train_cpu_s": train_cpu, "train_wall_s": train_wall, "eval_cpu_s": eval_cpu, "eval_wall_s": eval_wall}
    return done, last, metrics, {k: round(v) for k, v in seconds.items()}


def append_row(name: str, argv: list[str], row: dict) -> None:
    """Print one run's row and append it to results/<name>.jsonl, with the command that repeats it and the
    machine it ran on."""
    row = {"command": f"MINIGEN_DATA=/work/shared/data python -m benchmarks.{name} " + " ".join(argv), **row,
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip()}
    print(json.dumps(row, indent=1))
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def set_threads(n: int, with_torch: bool = True) -> None:
    """The same thread count for NumPy's BLAS, Numba and (unless with_torch=False) PyTorch."""
    import numba
    from threadpoolctl import threadpool_limits
    threadpool_limits(n)
    numba.set_num_threads(n)
    if with_torch:
        import torch
        torch.set_num_threads(n)


def training_step(loss, optimizer):
    """A closure doing one update, in minigen or PyTorch alike: loss(), zero_grad, backward, step; it returns
    the loss as a float."""
    def step() -> float:
        value = loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        return value.item()
    return step


def grads_of(net):
    """The "grads" call of compare_training_steps for a minigen or PyTorch module: {name: the gradient the last
    step left}."""
    return lambda: {k: p.grad.numpy().copy() for k, p in net.named_parameters() if p.grad is not None}


# --- one engine per process ---------------------------------------------------------------------------------
# Two engines in one process share two cores between their thread pools (NumPy's BLAS, Numba's, PyTorch's
# OpenMP), whose threads spin-wait after each parallel region and starve the other engine's threads: measured
# here, PyTorch's own steps ran 10-15 times slower at 2 threads than at 1 in such a process. So each engine
# runs in a process of its own, started with its thread counts in the environment, and the parent asks the
# processes in turn for a burst of timed calls, back to back as in training, while the other waits in a
# blocking read. Before each burst the parent pauses (OpenBLAS's idle threads spin for ~0.1 s before they
# sleep), and the first calls of a burst, which wake threads and caches, are not counted.

SETTLE_S, BURST_S, BURST_SKIP = 0.15, 0.3, 1


def _serve(conn, build, engine: str, threads: int, args: tuple) -> None:
    """The loop of an engine process: build(engine, *args) -> {name: callable}; then for each request
    (name, seconds) reply with the call's result (seconds None) or the seconds of each call in a burst of
    back-to-back calls lasting `seconds` (at least BURST_SKIP + 3 calls); None ends the loop."""
    set_threads(threads, with_torch=engine == "torch")
    fns = build(engine, *args)
    conn.send(sorted(fns))
    while (request := conn.recv()) is not None:
        name, seconds = request
        if seconds is None:
            conn.send(fns[name]())
            continue
        times, start = [], time.perf_counter()
        while len(times) < BURST_SKIP + 3 or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            fns[name]()
            times.append(time.perf_counter() - t0)
        conn.send(times[BURST_SKIP:])


class EngineProcess:
    """An engine in a process of its own (spawned, so that no thread pool is inherited), serving the calls
    that `build(engine, *args)` names: `result(name)` returns a call's result, `burst(name)` times calls
    back to back inside the process. `build` must be a module-level function (it is pickled by name)."""

    def __init__(self, build, engine: str, threads: int, *args):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # a peer's process imports minigen too (the benchmark modules do), so that the peer runs as it would on
        # its own: MINIGEN_MALLOC=default keeps minigen from tuning its malloc (kernels._keep_freed_memory), and
        # the workqueue layer keeps Numba from loading the system's libgomp, which PyTorch then takes for its own
        # (same soname): with Numba's OpenMP pool started beside it, PyTorch's 2-thread MLP step took 4-6x as long
        env = {k: str(threads) for k in THREAD_VARIABLES}
        if engine != "minigen":
            env.update(MINIGEN_MALLOC="default", NUMBA_THREADING_LAYER="workqueue")
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.process = ctx.Process(target=_serve, args=(child, build, engine, threads, args), daemon=True)
            self.process.start()
            child.close()          # the child's end lives in the child: its death then reads as EOF here
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.names = self._receive()

    def _receive(self):
        if not self.conn.poll(600):
            raise TimeoutError("an engine process gave no answer in 10 minutes")
        try:
            return self.conn.recv()
        except EOFError:
            raise RuntimeError(f"an engine process died (exit code {self.process.exitcode})") from None

    def result(self, name: str):
        self.conn.send((name, None))
        return self._receive()

    def burst(self, name: str, seconds: float = BURST_S) -> list[float]:
        self.conn.send((name, seconds))
        return self._receive()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:            # the process died; its death was reported where it was seen
            pass
        self.process.join(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def measure_processes(calls: dict, rounds: int = 5, burst_s: float = BURST_S) -> dict:
    """Interleaved timing across engine processes: calls = {label: (EngineProcess, call name)}; each round
    gives every label in turn a pause of SETTLE_S and then a burst of its call. Returns {label: summary}
    over all counted calls."""
    times = {label: [] for label in calls}
    for _ in range(rounds):
        for label, (proc, name) in calls.items():
            time.sleep(SETTLE_S)
            times[label] += proc.burst(name, burst_s)
    return {label: {**_summary(t), "calls": len(t)} for label, t in times.items()}


def compare_training_steps(build, case: str, variant: str, threads: int, quick: bool, *args,
                           tolerance: float = 5e-3) -> tuple[list, dict]:
    """The protocol of the step benchmarks, each engine in its own process with `threads` threads:
    build("minigen", *args, None) names "step" (one training step, returning the loss), "state" (the initial
    weights as {name: ndarray}), "size" (e.g. {"parameters": n}) and "grads" (the gradients the last step
    left, {name: ndarray}); build("torch", *args, state) is the twin loaded with those weights. The check: the
    first step's gradients agree (to `tolerance` of each tensor's largest entry, plus 1e-6 for the gradients that
    are rounding noise around 0, such as a bias before BatchNorm), and so do the losses of two steps
    from the same weights (Adam's first update is about lr * sign(g), so the losses alone say little of the
    gradients' sizes). Then the steps are timed in interleaved bursts (measure_processes). Returns the rows and
    the check table."""
    import numpy as np
    with EngineProcess(build, "minigen", threads, *args, None) as ours:
        state, size = ours.result("state"), ours.result("size")
        with EngineProcess(build, "torch", threads, *args, state) as peer:
            procs = {"minigen": ours, "torch": peer}
            losses, grads = {}, {}
            for engine, p in procs.items():
                losses[engine] = [p.result("step")]
                grads[engine] = p.result("grads")
                losses[engine].append(p.result("step"))
            assert grads["minigen"].keys() == grads["torch"].keys(), "the engines' parameters differ in name"
            for name, g in grads["minigen"].items():
                np.testing.assert_allclose(g, grads["torch"][name], rtol=0, atol=tolerance * np.abs(g).max() + 1e-6,
                                           err_msg=f"the first step's gradient of {name}")
            np.testing.assert_allclose(losses["minigen"], losses["torch"], rtol=2e-4)
            timings = measure_processes({e: (p, "step") for e, p in procs.items()}, rounds=2 if quick else 6)
    rows = [{"case": case, "variant": variant, "threads": threads, "impl": engine, **summary}
            for engine, summary in timings.items()]
    return rows, {"check": [{"engine": k, "loss step 1": f"{v[0]:.6f}", "loss step 2": f"{v[1]:.6f}", **size}
                            for k, v in losses.items()]}
