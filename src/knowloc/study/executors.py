"""Executors run study units and stream results back to the single writer (the driver's store).

`LocalExecutor` runs them in-process. `RayExecutor` spreads them over Ray actors that each load the model once;
a worker that dies is replaced and its units retried. Results are identical to the local executor's when the
workers use the same number of threads (floating-point reductions depend on it).
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from typing import Iterable, Iterator

from pathlib import Path

import torch

from knowloc.errors import Interrupted, KnowlocError
from knowloc.study.config import StudyConfig
from knowloc.study.context import StudyContext
from knowloc.study.store import Store
from knowloc.study.units import Unit, execute

MAX_RETRIES = 3


def unwrap_interrupt(call, *args, **kwargs):
    """``call(*args, **kwargs)``, re-raising an :class:`Interrupted` that a signal handler raised inside it as
    itself: inside a Cython call of Ray (``ray.wait``, ``ray.get``) it arrives as a ``SystemError`` "returned a
    result with an exception set" whose cause is the interrupt, which would end the run with a traceback."""
    try:
        return call(*args, **kwargs)
    except SystemError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, Interrupted):
            raise cause from None
        raise


class LocalExecutor:
    def __init__(self, ctx: StudyContext):
        self.ctx = ctx

    def map(self, units: Iterable[Unit]) -> Iterator[tuple[Unit, object]]:
        for unit in units:
            yield unit, execute(self.ctx, unit)

    def close(self) -> None:
        pass


def worker_context(config: StudyConfig) -> StudyContext:
    """A read-only view of a study for a parallel worker."""
    out = Path(config.out)
    store = Store(out / "results.sqlite", readonly=True, verify=False)  # the driver has checked it
    ctx = StudyContext(config=config, store=store, out=out, echo=lambda _: None)
    ctx.refresh()
    return ctx


class StudyWorker:
    """A Ray actor: opens the store read-only, loads each model once, runs units."""

    def __init__(self, config: dict, threads: int):
        torch.set_num_threads(threads)
        self.ctx = worker_context(StudyConfig(**config))

    def pid(self) -> int:
        return os.getpid()

    def run(self, unit: Unit):
        self.ctx.refresh()
        return execute(self.ctx, unit)


class RayExecutor:
    def __init__(self, ctx: StudyContext, address: str | None = None, workers: int = 2, gpus_per_worker: float = 0,
                 threads: int = 1, inflight: int = 2):
        try:
            import ray  # optional dependency (knowloc[ray]): imported only when a Ray executor is made
        except ImportError:
            raise KnowlocError("--executor ray needs Ray: pip install 'knowloc[ray]'") from None
        self.ray = ray
        self.actors: list = []
        self.owns_ray = False
        if not ray.is_initialized():
            sigterm = _sigterm_handler()
            try:
                ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
                self.owns_ray = address is None
            except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; the user needs one line
                raise KnowlocError(f"cannot start or reach Ray ({address or 'local'}): {exc}") from None
            finally:  # ray.init installs its own SIGTERM handler (sys.exit); keep the caller's (the CLI's)
                if sigterm is not None:
                    signal.signal(signal.SIGTERM, sigterm)
        try:
            self.actor_class = ray.remote(num_cpus=threads, num_gpus=gpus_per_worker, max_restarts=0)(StudyWorker)
            self.config = ctx.config.as_dict()
            self.threads = threads
            self.per_actor = inflight
            for _ in range(workers):
                self.actors.append(self._spawn())
        except BaseException:  # an interrupt or a failure while starting: leave no Ray behind
            self.close()
            raise

    def _spawn(self):
        return self.actor_class.remote(self.config, self.threads)

    def worker_pids(self) -> list[int]:
        return self.ray.get([actor.pid.remote() for actor in self.actors])

    def map(self, units: Iterable[Unit]) -> Iterator[tuple[Unit, object]]:
        ray = self.ray
        pending = collections.deque(units)
        retries: collections.Counter = collections.Counter()
        inflight: dict = {}  # object ref -> (actor, unit)
        while pending or inflight:
            for actor in self.actors:
                while pending and sum(a is actor for a, _ in inflight.values()) < self.per_actor:
                    unit = pending.popleft()
                    inflight[actor.run.remote(unit)] = (actor, unit)
            (ref,), _ = unwrap_interrupt(ray.wait, list(inflight), num_returns=1)
            actor, unit = inflight.pop(ref)
            try:
                result = unwrap_interrupt(ray.get, ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
                retries[unit] += 1
                if retries[unit] > MAX_RETRIES:
                    raise KnowlocError(f"{unit.describe()} failed on {MAX_RETRIES + 1} workers") from None
                if actor in self.actors:  # replace the dead worker once; its other units fail and come back too
                    self.actors[self.actors.index(actor)] = self._spawn()
                pending.appendleft(unit)
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = exc.as_instanceof_cause()
                if isinstance(cause, KnowlocError):
                    raise KnowlocError(str(cause).split("\n")[-1]) from None
                raise
            yield unit, result

    def close(self) -> None:
        """Kill the actors and shut down the Ray this executor started (also on the way out of an interrupt)."""
        try:
            for actor in self.actors:
                try:
                    self.ray.kill(actor)
                except Exception:  # noqa: BLE001 - an actor that is already gone
                    pass
            self.actors = []
        finally:
            if self.owns_ray:
                self.owns_ray = False
                self.ray.shutdown()


def _sigterm_handler():
    """The current SIGTERM handler (None off the main thread, where it cannot be set back)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGTERM)


def make_executor(ctx: StudyContext):
    """The study's executor: local, or Ray actors (--executor ray)."""
    if ctx.config.executor == "ray":
        return RayExecutor(ctx, address=ctx.config.ray_address, workers=ctx.config.workers,
                           gpus_per_worker=ctx.config.gpus_per_worker)
    return LocalExecutor(ctx)
