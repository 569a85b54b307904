"""The benchmark protocol (benchmarks/harness.py): engines in processes of their own, with their thread counts,
timed in interleaved bursts; and a training-step comparison end to end on a small workload."""
import os

import numpy as np
import pytest

from benchmarks import harness


def build(engine: str, fail: bool = False) -> dict:
    """A toy engine for EngineProcess: it reports its name and its process's thread settings."""
    if fail:
        raise ValueError("this engine cannot be built")
    import kernels
    return {"name": lambda: engine, "threads": lambda: {k: os.environ.get(k) for k in harness.THREAD_VARIABLES},
            "malloc tuned": lambda: kernels.MALLOC_TUNED, "work": lambda: sum(range(2000))}


def test_an_engine_process_serves_results_and_timed_bursts_with_its_threads():
    before = {k: os.environ.get(k) for k in harness.THREAD_VARIABLES}
    with harness.EngineProcess(build, "toy", 2) as proc:
        assert proc.names == ["malloc tuned", "name", "threads", "work"]
        assert proc.result("malloc tuned") is False          # a peer's process keeps the default malloc
        assert proc.result("name") == "toy"
        assert proc.result("threads") == {k: "2" for k in harness.THREAD_VARIABLES}
        times = proc.burst("work", 0.05)
        assert len(times) >= 3 and all(t > 0 for t in times)
        timings = harness.measure_processes({"a": (proc, "work"), "b": (proc, "name")}, rounds=2, burst_s=0.01)
    assert set(timings) == {"a", "b"} and all(s["calls"] >= 6 and s["seconds"] > 0 for s in timings.values())
    assert {k: os.environ.get(k) for k in harness.THREAD_VARIABLES} == before   # the parent's is restored


def test_results_record_the_cpu_time_the_hypervisor_stole_during_the_run(monkeypatch):
    key = "CPU time stolen by the hypervisor during the run (s)"
    if os.path.exists("/proc/stat"):
        assert harness.stolen_seconds() >= harness.STOLEN_AT_START >= 0
    monkeypatch.setattr(harness, "STOLEN_AT_START", 40.0)
    monkeypatch.setattr(harness, "stolen_seconds", lambda: 41.234)
    assert harness.metadata()[key] == 1.23
    monkeypatch.setattr(harness, "stolen_seconds", lambda: None)      # a system that does not tell
    assert harness.metadata()[key] is None


def test_an_engine_that_dies_while_building_is_reported():
    with pytest.raises(RuntimeError, match="an engine process died"):
        harness.EngineProcess(build, "toy", 1, True)


def test_training_steps_compare_minigen_and_torch_from_the_same_weights():
    pytest.importorskip("torch")
    from benchmarks import training_steps
    case = "made 784-500-784, batch 100"
    rows, check = harness.compare_training_steps(training_steps.build, case, "1 thread(s)", 1, True, case)
    assert [r["impl"] for r in rows] == ["minigen", "torch"]
    assert all(r["calls"] >= 6 and r["seconds"] > 0 and r["threads"] == 1 for r in rows)
    losses = {c["engine"]: (float(c["loss step 1"]), float(c["loss step 2"])) for c in check["check"]}
    assert losses["minigen"] == pytest.approx(losses["torch"], rel=2e-4)
    assert losses["minigen"][1] < losses["minigen"][0] and check["check"][0]["parameters"] == 785284


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_recurrent_steps_map_minigens_parameter_names_to_pytorchs(cell):
    """nn.LSTM and nn.GRU name layer 0's weights weight_ih_l0 where minigen has cells.0.weight_ih: the twin loads
    minigen's weights under PyTorch's names and reports its gradients under minigen's, equal to minigen's."""
    pytest.importorskip("torch")
    from benchmarks import training_steps
    assert training_steps.torch_name("rnn.cells.1.bias_hh") == "rnn.bias_hh_l1"
    case = f"row {cell} 28x28, 128 hidden, batch 64"
    ours = training_steps.build("minigen", case, None)
    theirs = training_steps.build("torch", case, ours["state"]())
    assert ours["step"]() == pytest.approx(theirs["step"](), rel=1e-5)
    g, h = ours["grads"](), theirs["grads"]()
    assert g.keys() == h.keys() and "rnn.cells.0.weight_hh" in g
    for name in g:
        np.testing.assert_allclose(h[name], g[name], rtol=0, atol=1e-4 * np.abs(g[name]).max(), err_msg=name)


def test_blas_calls_each_library_as_gemm_does_on_row_major_blocks():
    from benchmarks import blas
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7), dtype=np.float32), rng.standard_normal((7, 3), dtype=np.float32)
    sgemms = blas.sgemms()
    assert "openblas" in sgemms
    for name, sgemm in sgemms.items():
        c = np.full((5, 3), np.nan, np.float32)
        blas.product(sgemm, a, b, c)()
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_activations_check_both_engines_gradients_then_time_them():
    pytest.importorskip("torch")
    from benchmarks import activations
    rows = activations.timings(1, True, ["gelu"])
    case = "gelu (32, 64, 32, 32) float32"
    assert [(r["case"], r["impl"]) for r in rows] == [(case, e) for e in ("minigen", "torch")]
    assert all(r["calls"] >= 6 and r["seconds"] > 0 and r["threads"] == 1 for r in rows)


def test_activations_check_fails_when_the_gradients_differ():
    from benchmarks import activations

    class Proc:
        names = ["silu"]

        def __init__(self, scale):
            self.scale = scale

        def result(self, name):
            return np.ones(4) * self.scale
    activations._check({"minigen": Proc(1.0), "torch": Proc(1.0)})
    with pytest.raises(AssertionError, match="silu: the gradients of torch and minigen"):
        activations._check({"minigen": Proc(1.0), "torch": Proc(1.001)})


def test_engine_overhead_checks_and_times_each_engine_in_its_own_process():
    pytest.importorskip("torch")
    from benchmarks import engine_overhead
    status = {}
    engines = ("minigen", "torch", "floor")
    rows = engine_overhead._timings(1, True, status, engines)
    assert {(r["case"], r["impl"]) for r in rows} == {(case, engine) for case in (
        *map(engine_overhead._chain_case, engine_overhead.CHAIN_SHAPES), engine_overhead.MLP_CASE)
        for engine in engines}
    assert all(r["calls"] >= 6 and r["seconds"] > 0 and r["threads"] == 1 for r in rows)
    assert status["torch"]["status"] == "ok" and "torch.get_num_threads() = 1" in status["torch"]["notes"]
    for engine in ("minigen", "floor"):     # their chain gradients and losses checked against torch's in _check
        assert "MLP losses of steps 1, 2: 2.31" in status[engine]["notes"]


@pytest.mark.parametrize("module", ["training_steps", "unet_step", "pixelcnn_step"])
def test_every_step_benchmark_serves_the_calls_the_comparison_asks_for(module):
    """compare_training_steps asks minigen's process for step, grads, state and size, and PyTorch's for step
    and grads: each step benchmark's build serves them (built here without running a step)."""
    pytest.importorskip("torch")
    import importlib
    bench = importlib.import_module(f"benchmarks.{module}")
    case = ("made 784-500-784, batch 100",) if module == "training_steps" else ()
    ours = bench.build("minigen", *case, None)
    assert {"step", "grads", "state", "size"} <= ours.keys()
    assert {"step", "grads"} <= bench.build("torch", *case, ours["state"]()).keys()


def test_repeated_runs_pool_to_medians_and_report_every_runs_ratio():
    def run(ours, theirs):
        return [{"case": "c", "variant": "v", "threads": 1, "impl": "minigen", "seconds": ours, "spread": 0.1},
                {"case": "c", "variant": "v", "threads": 1, "impl": "torch", "seconds": theirs, "spread": 0.2}]
    rows, ratios = harness.pool_runs([run(1.0, 2.0), run(3.0, 2.0), run(2.0, 4.0)])
    assert rows == [{"case": "c", "variant": "v", "threads": 1, "impl": "minigen", "seconds": 2.0, "runs": 3},
                    {"case": "c", "variant": "v", "threads": 1, "impl": "torch", "seconds": 2.0, "runs": 3}]
    assert ratios == [{"case": "c", "variant": "v", "impl": "minigen", "run 1": "0.50", "run 2": "1.50",
                       "run 3": "0.50", "median": "0.50", "range": "0.50-1.50"}]


def test_gpu_benchmark_reports_each_test_and_keeps_the_report_of_a_run_it_stops(tmp_path):
    """benchmarks/gpu.py runs pytest (the gpu tier) within a time share: each test's outcome comes back, and a run
    that outlasts its share is stopped by Ctrl-C with the tests run by then still reported."""
    from benchmarks import gpu
    tests = tmp_path / "test_timed.py"
    tests.write_text("import time\n\nimport pytest\n\n\n@pytest.mark.parametrize('i', range(3))\n"
                     "def test_quick(i):\n    assert i < 3\n\n\n@pytest.mark.parametrize('i', range(60))\n"
                     "def test_slow(i):\n    time.sleep(0.5)\n")
    rows, summary = gpu._pytest((str(tests), "-k", "quick"), seconds=120)
    assert summary.startswith("3 passed") and "stopped" not in summary
    assert [r["outcome"] for r in rows] == ["passed"] * 3
    rows, summary = gpu._pytest((str(tests),), seconds=6)
    assert "stopped after 6 s" in summary
    assert 3 < len(rows) < 63 and {r["outcome"] for r in rows} == {"passed"}
    assert all("test_timed::test_" in r["test"] for r in rows)
