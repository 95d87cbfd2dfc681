"""Executors run study units and stream results back to the single writer (the driver's store).

`LocalExecutor` runs them in-process. `RayExecutor` spreads them over Ray actors that each load the model once;
a worker that dies is replaced and its units retried. Results are identical to the local executor's when the
workers use the same number of threads and device (floating-point reductions depend on them).

Devices: a worker loads its models on :func:`worker_device`. With ``gpus_per_worker > 0`` Ray reserves GPUs for
each actor and sets its ``CUDA_VISIBLE_DEVICES`` to them, so ``cuda`` there is the worker's own GPU (never the
machine's first); without a reservation a worker takes ``--device`` (or ``$KNOWLOC_DEVICE``) as a local run does,
so workers of a machine with a GPU share its first. A study whose workers need more GPUs or CPUs than the Ray has is
refused before any actor is made (actors that cannot be placed would wait forever).

Store: the driver is the single writer of ``results.sqlite``; workers never open it. At the start of each
:meth:`RayExecutor.map` the driver takes a consistent snapshot of its store (:meth:`Store.snapshot
<knowloc.study.store.Store.snapshot>`; a new one only when it has written since the last), puts it once in Ray's
object store and sends its reference with every unit; a worker that has not loaded that snapshot yet (also one
that replaced a dead worker) fetches it, opens it as a private read-only store and rebuilds its study context (its
loaded model stays). A unit of one ``map`` call needs only what the driver stored before the call (the probe
before attributions, attributions and the experiments' ``prepare`` before trials), so no worker needs a
filesystem shared with the driver: on a cluster, every node reads the same store.
"""

from __future__ import annotations

import collections
import math
import os
import re
import signal
import tempfile
import threading
from typing import Iterable, Iterator

from pathlib import Path

import torch

from knowloc.errors import Interrupted, KnowlocError
from knowloc.models.loading import DEVICE_ENV, resolve_device
from knowloc.study.config import StudyConfig, one_gpu_of_a_machine
from knowloc.study.context import ModelPool, StudyContext
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


def worker_context(config: StudyConfig, device: str | None = None, store_path: Path | None = None,
                   models: ModelPool | None = None) -> StudyContext:
    """A read-only view of a study for a parallel worker.

    Args:
        config: the study's settings (``config.out`` is only informative unless `store_path` is None).
        device: where models load (default: ``config.device``); ignored with `models`.
        store_path: the store to read, opened read-only (the driver, its single writer, has checked it): a
            snapshot of the driver's store (the Ray workers'); default ``config.out/results.sqlite``, the driver's
            own file (a reader on the driver's machine).
        models: a model pool to keep (a worker that loads a newer snapshot keeps its loaded model).

    Returns:
        A context whose facts and probes are those of the models the store has probed.
    """
    out = Path(config.out)
    store = Store(store_path or out / "results.sqlite", readonly=True, verify=False)
    ctx = StudyContext(config=config, store=store, out=out, echo=lambda _: None,
                       models=models or ModelPool(device or config.device, config.compute_dtype))
    ctx.refresh()
    return ctx


def requested_device(config: StudyConfig) -> str | None:
    """The device the driver asks its workers for: ``--device``, else ``$KNOWLOC_DEVICE`` of the driver (a
    worker on another node does not inherit the driver's environment), else None (see :func:`worker_device`)."""
    device = config.device or os.environ.get(DEVICE_ENV) or None
    return None if device == "auto" else device


def worker_device(request: str | None, gpu_ids: list) -> torch.device:
    """The device a Ray worker loads its models on.

    Args:
        request: :func:`requested_device`; None: ``cuda`` when Ray reserved GPUs for the worker, else the default
            device of :func:`~knowloc.models.loading.resolve_device` (cuda where a GPU is visible: workers without
            a reservation share the first visible GPU, as before Ray knew of GPUs).
        gpu_ids: ``ray.get_gpu_ids()`` inside the worker (machine-wide ids).

    Returns:
        The resolved device; with GPUs from Ray and a ``cuda`` request, the worker's first own GPU as an index
        among the devices the worker sees (Ray's ``CUDA_VISIBLE_DEVICES`` holds only its own: ``cuda:0``), made
        the current cuda device.

    Raises:
        KnowlocError: ``cuda:N`` with GPUs from Ray, or GPUs from Ray that torch cannot see (one line).
    """
    if request is None and gpu_ids:
        if not torch.cuda.is_available():
            raise KnowlocError(f"Ray gave a worker GPU {gpu_ids[0]}, but torch there sees no CUDA GPU (declared GPUs, "
                               "or a torch without CUDA); pass --device cpu, or install torch with CUDA")
        request = "cuda"
    device = resolve_device(request)
    if device.type == "cuda" and gpu_ids:
        if device.index is not None:
            raise one_gpu_of_a_machine(str(device))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: the process sees every GPU
            index = int(gpu_ids[0])
        else:
            seen = [v.strip() for v in visible.split(",")]
            if str(gpu_ids[0]) not in seen:
                raise KnowlocError(f"Ray gave this worker GPU {gpu_ids[0]}, which CUDA_VISIBLE_DEVICES={visible} "
                                   "hides")
            index = seen.index(str(gpu_ids[0]))
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)  # code that uses "the current device" uses the worker's own GPU too
    return device


def snapshot_context(data: bytes, config: StudyConfig, models: ModelPool) -> StudyContext:
    """A worker's study context reading a snapshot of the driver's store.

    Args:
        data: :meth:`Store.snapshot <knowloc.study.store.Store.snapshot>`'s bytes.
        config, models: the study's settings and the worker's model pool (kept from snapshot to snapshot).

    Returns:
        :func:`worker_context` on a private read-only copy of `data`: a temporary file that is removed as soon as
        it is open (the connection keeps reading it), so a killed worker leaves no copy behind.

    Raises:
        KnowlocError: the copy cannot be written (one line).
    """
    name = None
    try:
        handle, name = tempfile.mkstemp(prefix="knowloc-snapshot-", suffix=".sqlite")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        ctx = worker_context(config, store_path=Path(name), models=models)
        ctx.store.probed_models()  # a first read: the file is open before it is removed
        return ctx
    except OSError as exc:
        raise KnowlocError(f"cannot write a snapshot of the study's store to {tempfile.gettempdir()}: "
                           f"{exc.strerror or exc}") from None
    finally:
        if name is not None:
            os.unlink(name)


class StoreSnapshots:
    """The snapshots of the driver's store that the Ray workers read (module docstring).

    Args:
        store: the driver's store (this process is its single writer).
        put: where a snapshot's bytes go, returning a reference (``ray.put``).
    """

    def __init__(self, store: Store, put):
        self.store, self.put = store, put
        self.latest: tuple | None = None  # (number, [reference]) of the last snapshot
        self.changes: int | None = None  # the store connection's total_changes when it was taken

    def current(self) -> tuple:
        """(number, [reference]) of a snapshot of the store as it is now: a new one (taken and put once) only
        when the store has been written since the last (its connection's ``total_changes``: every write of the
        single writer goes through it; a rolled-back one counts too, which only costs a snapshot). The reference
        travels inside a list, so Ray hands a worker the reference, not the bytes, with each unit."""
        changes = self.store.db.total_changes
        if self.latest is None or changes != self.changes:
            number = 0 if self.latest is None else self.latest[0] + 1
            self.latest, self.changes = (number, [self.put(self.store.snapshot())]), changes
        return self.latest


class StudyWorker:
    """A Ray actor: reads the driver's store from the snapshots it is sent, loads each model once on its own
    device, runs units.

    A :class:`KnowlocError` while starting (e.g. ``--device cuda`` where the worker has no GPU) is kept and
    raised by every call, so the driver reports it in one line instead of retrying a dead worker."""

    def __init__(self, config: dict, threads: int, device: str | None):
        import ray  # only ever run inside a Ray actor

        self.ray = ray
        torch.set_num_threads(threads)
        self.gpu_ids = list(ray.get_gpu_ids())
        self.node = ray.util.get_node_ip_address()
        self.error: KnowlocError | None = None
        self.ctx: StudyContext | None = None  # made from the first snapshot (:meth:`load`)
        self.snapshot: int | None = None  # the number of the snapshot self.ctx reads
        try:
            self.config = StudyConfig(**config)
            self.device = worker_device(device, self.gpu_ids)
            self.models = ModelPool(str(self.device), self.config.compute_dtype)
        except KnowlocError as exc:
            self.error = exc

    def load(self, snapshot: tuple) -> None:
        """Read the store from ``snapshot`` (:meth:`StoreSnapshots.current`) unless it is the one read already:
        a new study context (:func:`snapshot_context`; derived views are recomputed from it, the loaded model
        stays)."""
        number, (ref,) = snapshot
        if number == self.snapshot:
            return
        ctx = snapshot_context(self.ray.get(ref), self.config, self.models)
        if self.ctx is not None:
            self.ctx.store.close()
        self.ctx, self.snapshot = ctx, number

    def _check(self) -> None:
        if self.error is not None:
            raise KnowlocError(str(self.error))

    def placement(self) -> dict:
        """Where this worker runs: ``pid``, ``node`` (IP address), ``gpu_ids`` (Ray's, machine-wide) and
        ``device`` (where its models load)."""
        self._check()
        return {"pid": os.getpid(), "node": self.node, "gpu_ids": self.gpu_ids, "device": str(self.device)}

    def run(self, unit: Unit, snapshot: tuple):
        """Run `unit` on the store as of `snapshot` (see :meth:`load`)."""
        self._check()
        self.load(snapshot)
        return execute(self.ctx, unit)


class RayExecutor:
    """Ray actors running study units: each loads the model once, on its own GPU with ``gpus_per_worker > 0``.

    Args:
        ctx: the driver's study: its config goes to the workers (their ``out`` only informative: they read
            snapshots of ``ctx.store``, see the module docstring).
        address: a running Ray's address (``auto``: the cluster of this node); None starts a local Ray of
            `workers` CPUs (an already initialized Ray, e.g. a test's, is used as it is).
        workers, gpus_per_worker, threads: actors, GPUs Ray reserves for each (a fraction shares a GPU) and torch
            threads (= Ray CPUs) of each.
        inflight: units queued on each actor at once.

    Raises:
        KnowlocError: no Ray, a Ray that cannot be started or reached, fewer CPUs or GPUs than the workers need at
            once (before any actor is made: they would wait forever), a worker that cannot start (one line).
    """

    def __init__(self, ctx: StudyContext, address: str | None = None, workers: int = 2, gpus_per_worker: float = 0,
                 threads: int = 1, inflight: int = 2):
        try:
            import ray  # optional dependency (knowloc[ray]): imported only when a Ray executor is made
        except ImportError:
            raise KnowlocError("--executor ray needs Ray: pip install 'knowloc[ray]'") from None
        self.ray = ray
        self.ctx = ctx
        self.actors: list = []
        self.owns_ray = False
        self.snapshots: StoreSnapshots | None = None  # made by the first map (ctx.store: the driver's store)
        device = requested_device(ctx.config)
        if gpus_per_worker > 0 and device is not None and device.startswith("cuda:"):
            raise one_gpu_of_a_machine(device)
        local = address is None and not os.environ.get("RAY_ADDRESS")  # ray.init(None) joins $RAY_ADDRESS
        if gpus_per_worker > 0 and local and not ray.is_initialized():  # fail before a local Ray starts
            _check_room(workers, threads, gpus_per_worker, [{"CPU": workers, "GPU": torch.cuda.device_count()}],
                        "this machine")
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
            nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
            _check_room(workers, threads, gpus_per_worker, nodes, f"the Ray at {address}" if address else "the Ray")
            self.actor_class = ray.remote(num_cpus=threads, num_gpus=gpus_per_worker, max_restarts=0)(StudyWorker)
            # workers read snapshots of the store, never --out itself: out is only informative there
            self.config = {**ctx.config.as_dict(), "out": str(Path(ctx.config.out).resolve())}
            self.device = device
            self.threads = threads
            self.per_actor = inflight
            for _ in range(workers):
                self.actors.append(self._spawn())
            ctx.echo(describe_placements(self._started()))  # waits for the workers: a failed start is one line
            if not gpus_per_worker and torch.cuda.device_count() > 1 and address is None and device is None:
                ctx.echo("note: the Ray workers share the first GPU; --gpus-per-worker 1 gives each its own")
        except BaseException:  # an interrupt or a failure while starting: leave no Ray behind
            self.close()
            raise

    def _spawn(self):
        return self.actor_class.remote(self.config, self.threads, self.device)

    def _started(self) -> list[dict]:
        """:meth:`placements` once every worker has started; a worker that dies while starting is replaced (as
        in :meth:`map`), at most MAX_RETRIES times."""
        ray = self.ray
        for _ in range(MAX_RETRIES + 1):
            refs = [actor.placement.remote() for actor in self.actors]
            found, dead = [], []
            for index, ref in enumerate(refs):
                try:
                    found.append(unwrap_interrupt(ray.get, ref))
                except ray.exceptions.RayTaskError as exc:
                    raise _one_line(exc) from None
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                    dead.append(index)
                    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            if not dead:
                return found
            for index in dead:
                self.actors[index] = self._spawn()
        raise KnowlocError(f"Ray workers died while starting, {MAX_RETRIES + 1} times: {reason}")

    def map(self, units: Iterable[Unit]) -> Iterator[tuple[Unit, object]]:
        """Run `units` on the workers, yielding (unit, result) as results arrive; every unit (a retried one too)
        reads the store as it is when the first result is asked for (:meth:`StoreSnapshots.current`)."""
        ray = self.ray
        pending = collections.deque(units)
        if not pending:
            return
        if self.snapshots is None:
            self.snapshots = StoreSnapshots(self.ctx.store, ray.put)
        snapshot = self.snapshots.current()
        retries: collections.Counter = collections.Counter()
        inflight: dict = {}  # object ref -> (actor, unit)
        while pending or inflight:
            for actor in self.actors:
                while pending and sum(a is actor for a, _ in inflight.values()) < self.per_actor:
                    unit = pending.popleft()
                    inflight[actor.run.remote(unit, snapshot)] = (actor, unit)
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
                raise _one_line(exc) from None
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
            self.snapshots = None  # frees the last snapshot in Ray's object store
        finally:
            if self.owns_ray:
                self.owns_ray = False
                self.ray.shutdown()


def gpu_slots(gpus_per_worker: float, node_gpus: list[float]) -> int:
    """How many workers of `gpus_per_worker` GPUs nodes with `node_gpus` GPUs hold at once: a worker lives on one
    node, and a fraction of a GPU on one GPU (0.5: two workers share each GPU)."""
    if gpus_per_worker >= 1:
        return sum(int(n // gpus_per_worker) for n in node_gpus)
    per_gpu = math.floor(1 / gpus_per_worker + 1e-9)
    return sum(int(n) * per_gpu for n in node_gpus)


def _one_line(exc) -> BaseException:
    """A worker's KnowlocError (inside Ray's RayTaskError) as the one line it was; any other error as it is."""
    cause = exc.as_instanceof_cause()
    if not isinstance(cause, KnowlocError):
        return exc
    # Ray's text of a task error ends with "<module>.KnowlocError: <message>", once per actor hop
    return KnowlocError(re.sub(r"^(?:[\w.]*KnowlocError: )+", "", str(cause).strip().split("\n")[-1]))


def _check_room(workers: int, threads: int, gpus_per_worker: float, nodes: list[dict], where: str) -> None:
    """KnowlocError unless `nodes` (each node's Ray resources) hold `workers` actors of `threads` CPUs and
    `gpus_per_worker` GPUs at once (Ray's total resources: busy ones free up, missing ones never come)."""
    room = 0
    for node in nodes:
        slots = int(node.get("CPU", 0) // threads)
        if gpus_per_worker > 0:
            slots = min(slots, gpu_slots(gpus_per_worker, [node.get("GPU", 0)]))
        room += slots
    if room < workers:
        cpus, gpus = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)
        need = f"--gpus-per-worker {gpus_per_worker:g} and {threads} CPU" if gpus_per_worker > 0 else f"{threads} CPU"
        raise KnowlocError(f"--workers {workers} with {need} each do not fit on {where} ({cpus:g} CPUs, {gpus:g} "
                           f"GPUs on {len(nodes)} node{'' if len(nodes) == 1 else 's'}): Ray would wait for them "
                           "forever; lower --workers or --gpus-per-worker")


def describe_placements(placements: list[dict]) -> str:
    """One line: where each Ray worker runs (node, pid, Ray's GPU ids, device)."""
    nodes = {p["node"] for p in placements}
    parts = [f"pid {p['pid']}" + (f" on {p['node']}" if len(nodes) > 1 else "")
             + (f" GPU {','.join(map(str, p['gpu_ids']))}" if p["gpu_ids"] else "") + f" {p['device']}"
             for p in placements]
    return (f"ray: {len(placements)} worker{'' if len(placements) == 1 else 's'} on {len(nodes)} "
            f"node{'' if len(nodes) == 1 else 's'}: " + "; ".join(parts))


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
