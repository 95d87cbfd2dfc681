"""Studies: the runner, the results store, the experiments (registered on import) and the executors."""

from knowloc.study import experiments  # noqa: F401  (registers the built-in experiments)
