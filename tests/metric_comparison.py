"""`assert_same`: two metric records (nested dicts / lists) equal, floats to float rounding; shared by the tests."""

import pytest


def assert_same(a, b, where="metrics"):
    """Equal structures: counts, classes and None exactly; floats to 1e-6 relative, because the float32 logits of a
    sample differ in the last bits with the batch it is computed in and the thread count (a sample counted twice or
    missed would change a 13-sample ACC, AUC or ECE by more than 1e-3). On an AVX-512 / AMX CPU two processes may
    round the same model's scores differently too (train.py's and evaluate.py's ECE once differed in the 10th digit)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
