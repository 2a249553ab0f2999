"""Reading the golden fixtures' JSON tensors and comparing against them (tests/fixtures/make_*_fixtures.py)."""
import torch


def decode(x):
    """JSON tensors ({"shape", "data"}) back to float64 tensors; lists stay lists, scalars stay scalars."""
    if isinstance(x, list):
        return [decode(t) for t in x]
    if isinstance(x, dict):
        return torch.tensor(x["data"], dtype=torch.float64).reshape(x["shape"])
    return x


def with_grad(x):
    """Leaf copies requiring grad of the tensors in x (nested lists kept; other values as they are)."""
    if isinstance(x, list):
        return [with_grad(t) for t in x]
    return x.clone().requires_grad_(True) if torch.is_tensor(x) else x


def assert_close(actual, expected):
    """Same nesting, shapes and values (rtol 1e-9, atol 1e-12: float64 against float64)."""
    if isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_close(a, e)
        return
    assert actual is not None and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)
