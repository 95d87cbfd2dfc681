"""Statistics over facts (knowloc.analysis.fact_stats): intervals over facts, paired contrasts, the minimum n."""

import numpy as np
import pytest

from knowloc.analysis import MIN_N
from knowloc.analysis.fact_stats import fact_level_ci, paired_contrast


def test_small_samples_get_no_interval():
    rows = [[{"m": float(k), "x": "a"}, {"m": float(k) + 1, "x": "b"}] for k in range(MIN_N + 2)]
    e = fact_level_ci(rows, "m", 200, 0, x="a")
    assert e.n == MIN_N + 2 and e.low <= e.value <= e.high
    e = fact_level_ci(rows[: MIN_N - 1], "m", 200, 0, x="a")
    assert e.n == MIN_N - 1 and not np.isnan(e.value) and np.isnan(e.low) and np.isnan(e.high) and e.withheld
    big = paired_contrast(rows, "m", {"x": "b"}, {"x": "a"}, 200, 0).contrast()
    assert big["n"] == MIN_N + 2 and big["diff"] == pytest.approx(1.0) and big["beyond_ci"]
    small = paired_contrast(rows[:2], "m", {"x": "b"}, {"x": "a"}, 200, 0).contrast()
    assert small["n"] == 2 and np.isnan(small["ci_low"]) and not small["beyond_ci"]  # no star below MIN_N
