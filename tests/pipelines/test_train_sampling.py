"""The seeded row sample (train's baseline sample, the drift snapshot): all rows up to the cap,
a seeded sorted sample beyond it."""
from __future__ import annotations

import numpy as np

from campaignops.pipelines.drift import sample_indices as _sample_rows


def test_sample_rows_caps_and_is_reproducible():
    np.testing.assert_array_equal(_sample_rows(5, None, 0), np.arange(5))
    np.testing.assert_array_equal(_sample_rows(5, 10, 0), np.arange(5))
    a, b = _sample_rows(1000, 100, 7), _sample_rows(1000, 100, 7)
    assert len(a) == 100 and len(np.unique(a)) == 100 and (np.diff(a) > 0).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _sample_rows(1000, 100, 8))
