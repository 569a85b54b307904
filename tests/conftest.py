import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from threadpoolctl import threadpool_limits

# A modest number of examples per property keeps the suite within minutes on 2 cores, drawn the same way on
# every run (derandomize) so that CI never depends on luck; HYPOTHESIS_PROFILE=random draws fresh examples
# each run, HYPOTHESIS_PROFILE=thorough many more, for a deeper search.
settings.register_profile("default", max_examples=10, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("random", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One thread for BLAS, OpenMP and Numba's parallel loops in the whole suite: the test arrays are small,
    and on 2 cores their thread pools only oversubscribe each other (a 512x64 @ 64x64 product measured 7 ms
    with threads against well under 1 ms without). Timing never decides a test; this keeps the suite short."""
    import numba
    numba.set_num_threads(1)
    with threadpool_limits(1):
        yield


@pytest.fixture(autouse=True)
def _seed():
    import minigen
    minigen.manual_seed(0)
    np.random.seed(0)


# ------------------------------------------------------------------------ the CUDA simulator's check, alongside

_CUDASIM_CHECK = Path(__file__).with_name("cudasim_check.py")
_CUDASIM_TEST = "test_numba_cuda_kernels_under_simulator"
_cudasim = pytest.StashKey[subprocess.Popen]()


def _start_cudasim_check() -> subprocess.Popen:
    """The check as a process writing to two temporary files (a pipe nobody reads would stall it once full)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out, err = (tempfile.TemporaryFile("w+") for _ in range(2))
    process = subprocess.Popen([sys.executable, str(_CUDASIM_CHECK)], cwd=_CUDASIM_CHECK.parents[1], env=env,
                               stdout=out, stderr=err)
    process.outputs = out, err
    return process


def pytest_collection_finish(session):
    """Where its test is selected, start the simulator's check (tests/cudasim_check.py: 2-3 minutes of pure Python
    on one core) as soon as the suite is collected, so that it runs on the core the one-thread suite leaves idle;
    its test then only collects the outcome (the fixture `cudasim_outcome`)."""
    if any(item.name == _CUDASIM_TEST for item in session.items):
        session.config.stash[_cudasim] = _start_cudasim_check()


def pytest_sessionfinish(session):
    process = session.config.stash.get(_cudasim, None)
    if process is not None and process.poll() is None:      # its test did not run (-x stopped the suite, say)
        process.kill()
        process.wait()


@pytest.fixture
def cudasim_outcome(request) -> subprocess.CompletedProcess:
    """The finished run of tests/cudasim_check.py: the one started at collection, else one started now."""
    process = request.config.stash.get(_cudasim, None) or _start_cudasim_check()
    process.wait(timeout=900)
    for file in process.outputs:
        file.seek(0)
    stdout, stderr = (file.read() for file in process.outputs)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
