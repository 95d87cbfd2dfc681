"""The package re-exports its public API."""

import knowloc.analysis as analysis


def test_public_api_exported():
    for name in analysis.__all__:
        value = getattr(analysis, name)
        assert callable(value) or name.isupper(), name  # functions, and constants such as MIN_N
    assert analysis.MIN_N == 5
    assert {"select_neurons", "cas_select", "otsu_threshold", "bootstrap_ci", "erase_success"} <= set(
        analysis.__all__
    )
