import os

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
