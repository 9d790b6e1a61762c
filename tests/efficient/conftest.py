"""One intra-op torch thread for the efficient-backend tests: their models are tiny, and on a shared 2-core
machine OpenMP spinning with two threads makes each forward ~50x slower. (The native LUT kernels' own thread
pool takes its thread count per call and is not affected.)"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
