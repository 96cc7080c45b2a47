import pytest
import torch


@pytest.fixture
def float64():
    """float64 throughout (rounding differences stay near 1e-16), on one thread: these tiny
    steps only contend for a shared machine's cores. Stacked replicas are proven equal to their
    separate runs under it."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
