"""The package re-exports its public API."""

import knowloc.analysis as analysis


def test_public_api_exported():
    for name in analysis.__all__:
        assert callable(getattr(analysis, name)), name
    assert {"select_neurons", "cas_select", "otsu_threshold", "bootstrap_ci", "erase_success"} <= set(
        analysis.__all__
    )
