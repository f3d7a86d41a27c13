"""A fixture that runs torch single-threaded: on the 2-core CI machine one thread is faster and steadier."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
