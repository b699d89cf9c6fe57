"""`predict --dask`: images, and the blocks of huge images, segmented on a Dask cluster.

The client (the `nucleiseg predict` process) plans the run as always
(nucleiseg.pipeline.run.predict_files: outputs, --resume, --overwrite, the lock on --out) and
writes the two CSV files; the workers run what a local run runs, with the same functions and
the run's Segmenter (its options bound once, sent without the engine):

* Many files: one task per image (`run_job`, as a local run calls it), a few times as many in
  flight as the cluster has threads. Each worker loads the model once (`worker_engine`, cached
  per process) and writes the image's outputs itself, atomically, into --out (which workers and
  client must share). Results come back in input order, so the CSV files are the same as a local
  run's. A task whose worker dies is given to another worker by the scheduler (up to
  `distributed.scheduler.allowed-failures` times, then the image is reported as failed); one
  that raises is retried (RETRIES); a dead worker leaves no output half-written (only whole
  files are renamed into place).
* A huge image (whole-slide TIFF, OME-Zarr): its blocks are segmented on the workers
  (`block_task`), each reading its own window from the file, and the client stitches them in
  raster order with the same orchestration as a local run (nucleiseg.inference.blockwise
  .segment_blocks, given the workers as its `segmented`), so the labels are the same, numbered
  the same.

Dask is imported only here, and only for --dask: `pip install 'nucleiseg[dask]'`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
from pathlib import Path

import numpy as np

from nucleiseg.errors import DataError, UsageError, file_error

RETRIES = 2  # an image whose task raises (not a DataError: a worker's disk or memory) is retried
MISSING = "--dask needs dask and distributed: pip install 'nucleiseg[dask]'"


def require_distributed():
    try:
        import distributed
    except ImportError:
        raise UsageError(MISSING) from None
    return distributed


def dask_versions() -> str:
    """'dask 2025.1.0, distributed 2025.1.0': for errors from inside them."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "missing"

    return ", ".join(f"{name} {installed(name)}" for name in ("dask", "distributed"))


# ---------------------------------------------------------------- on the workers


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """What `load_engine` is called with on each worker: a model file (None: the bundled
    model, as installed on the worker), the engine, and the threads ONNX Runtime and TFLite
    use (None: the worker's own thread count)."""

    model: str | None = None
    engine: str = "auto"
    threads: int | None = None

    def load(self):
        from nucleiseg.inference.engines import load_engine

        return load_engine(None if self.model is None else Path(self.model), self.engine,
                           self.threads)[0]


_engines: dict = {}
_loads: collections.Counter = collections.Counter()  # loads per spec in this process (tests)
_lock = threading.Lock()


def worker_threads() -> int | None:
    try:
        from distributed import get_worker

        worker = get_worker()
        return int(getattr(getattr(worker, "state", None), "nthreads", None) or worker.nthreads)
    except (ImportError, ValueError, AttributeError, TypeError):
        return None


def worker_engine(spec):
    """The engine of `spec` (EngineSpec, or any hashable object with `load()`), loaded once
    per worker process; ONNX Runtime and TFLite get the worker's threads (unless the spec
    names them), so N one-thread workers on a machine do not fight over its cores."""
    with _lock:
        if spec not in _engines:
            loading = spec
            if isinstance(spec, EngineSpec) and spec.threads is None:
                loading = dataclasses.replace(spec, threads=worker_threads())
            _engines[spec] = loading.load()
            _loads[spec] += 1
        return _engines[spec]


def loads() -> dict:
    """{spec: times loaded} in this worker (run with client.run: once each, at most)."""
    return dict(_loads)


def job_task(spec, segmenter, job, earlier: dict):
    """One image on a worker: pipeline.run.run_job with `segmenter` (its options, sent without
    an engine) on the worker's engine; rows as a list."""
    from nucleiseg.pipeline.run import run_job

    result, rows = run_job(segmenter.with_engine(worker_engine(spec)), job, earlier)
    return result, list(rows)


def block_task(spec, path: str, block, config: dict, options, instance_options, intensity):
    """One block of a huge image on a worker: (core pixels, window labels), read from the
    file and segmented as label_blocks does it locally; labels in the smallest unsigned type
    that holds them (less to send)."""
    from nucleiseg.inference.blockwise import segment_block
    from nucleiseg.io.wholeslide import open_large

    model = worker_engine(spec)
    image = open_large(Path(path))
    try:
        window = image.read(*block.window)
    finally:
        image.close()
    try:
        labels = segment_block(window, model, config, options, instance_options, intensity)
    except MemoryError:
        raise file_error(path, "not enough memory to segment a block; try a smaller --tile "
                         "or workers with more memory") from None
    top = int(labels.max()) if labels.size else 0
    small = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    return np.ascontiguousarray(window[block.core_in_window]), labels.astype(small)


# ---------------------------------------------------------------- on the client


def parse_dask(text: str) -> str:
    """--dask: 'local:N' or a scheduler address (tcp://host:8786, host:8786)."""
    text = text.strip()
    if text.startswith("local:"):
        count = text.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise UsageError(f"--dask local:N needs a number of workers N >= 1; got {text!r}")
    elif not text:
        raise UsageError("--dask needs a scheduler address (tcp://host:8786) or local:N")
    return text


@contextlib.contextmanager
def connect(where: str, spec, progress=print):
    """A DaskRunner on the cluster `where` ('local:N': a LocalCluster of N one-thread worker
    processes on this machine, closed afterwards; else a running scheduler's address)."""
    distributed = require_distributed()
    where = parse_dask(where)
    with contextlib.ExitStack() as stack:
        if where.startswith("local:"):
            count = int(where.split(":", 1)[1])
            try:
                cluster = stack.enter_context(distributed.LocalCluster(
                    n_workers=count, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"}))
                client = stack.enter_context(distributed.Client(cluster))
            except Exception as exc:  # a port, a process or a library version that fails
                raise UsageError(f"--dask {where}: no local Dask cluster started "
                                 f"({dask_versions()}): {type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:500]}") from exc
        else:
            try:
                client = stack.enter_context(distributed.Client(where, timeout="20s"))
            except (OSError, TimeoutError, ValueError) as exc:
                raise UsageError(f"--dask {where}: no Dask scheduler answers there ({exc}); "
                                 "start one with `dask scheduler`") from None
        if not client.scheduler_info(n_workers=-1).get("workers"):
            progress(f"dask: no workers at {where} yet; waiting (start them with: "
                     f"dask worker {client.scheduler.address})")
            client.wait_for_workers(1)
        check_workers(client)
        threads = sum(client.nthreads().values())
        progress(f"dask: {len(client.nthreads())} workers, {threads} threads at "
                 f"{client.scheduler.address}")
        yield DaskRunner(client, spec)


def check_workers(client) -> None:
    """Every worker can import nucleiseg (and numpy, ...): else one line saying which."""
    try:
        versions = client.run(worker_version)
    except Exception as exc:  # unpickling on a worker without nucleiseg fails there
        raise UsageError(f"--dask: a worker cannot run nucleiseg ({type(exc).__name__}: "
                         f"{exc}); install nucleiseg on every worker") from None
    from nucleiseg import __version__

    other = {address: v for address, v in versions.items() if v != __version__}
    if other:
        address, version = next(iter(other.items()))
        raise UsageError(f"--dask: worker {address} runs nucleiseg {version}, this is "
                         f"{__version__}; install the same version everywhere")


def worker_version() -> str:
    from nucleiseg import __version__

    return __version__


class DaskRunner:
    """predict_files' `runner` on a Dask client: see the module docstring."""

    def __init__(self, client, spec):
        self.client, self.spec = client, spec

    def ahead(self, per_thread: int = 4, least: int = 8) -> int:
        """How many tasks to keep submitted beyond the one whose result is awaited."""
        return max(least, per_thread * sum(self.client.nthreads().values()))

    def in_order(self, calls, ahead: int):
        """Futures of `calls` ((function, args) or None), in order; up to `ahead` submitted
        beyond the one given out. None stays None (done by the caller, in its turn)."""
        pending = collections.deque()
        running = 0
        try:
            for call in calls:
                future = None if call is None else self.client.submit(
                    call[0], *call[1], retries=RETRIES, pure=False)
                pending.append(future)
                running += future is not None
                while pending and (pending[0] is None or running > ahead):
                    head = pending.popleft()
                    running -= head is not None
                    yield head
            while pending:
                yield pending.popleft()
        finally:
            leftover = [future for future in pending if future is not None]
            if leftover:
                self.client.cancel(leftover)

    def outcomes(self, segmenter, jobs, earlier: dict, block_progress=None):
        """predict_files' (PredictionResult, rows) per job, in order: ordinary images on the
        workers, huge ones block by block (their blocks on the workers) from here, showing
        their progress on `block_progress` (a text stream, or None)."""
        from nucleiseg.io.wholeslide import is_large_input
        from nucleiseg.pipeline.outputs import display_name
        from nucleiseg.pipeline.run import run_job

        # options only: no engine, and not the whole record, in every task
        there_segmenter = dataclasses.replace(segmenter, engine=None,
                                              record={"config": segmenter.config})

        def calls():
            for job in jobs:
                if is_large_input(job.path, segmenter.blockwise_pixels):
                    yield None
                    continue
                there = dataclasses.replace(job, path=absolute(job.path), paths={
                    key: absolute(p) for key, p in job.paths.items()})
                mine = {display_name(job.path): earlier[display_name(job.path)]} if \
                    display_name(job.path) in earlier else {}
                yield job_task, (self.spec, there_segmenter, there, mine)

        for job, future in zip(jobs, self.in_order(calls(), self.ahead())):
            if future is None:
                yield run_job(segmenter, job, earlier, segmented=self.blocks_of(
                    job.path, segmenter.config), block_progress=block_progress)
                continue
            try:
                result, rows = future.result()
            except OSError as exc:  # a worker's disk full: name the file as given here
                given = {str(absolute(p)): str(p) for p in job.paths.values()}
                if exc.filename not in given:
                    raise
                raise OSError(exc.errno, exc.strerror, given[exc.filename]) from exc
            except Exception as exc:
                if not is_killed_worker(exc):
                    raise
                result, rows = job_result(job, f"{job.path}: the Dask workers segmenting it "
                                          "died, again and again (out of memory?); skipped"), []
            del future
            result = as_given(result, job.path)
            if not result.error and not job.done:
                missing = [p for p in job.paths.values() if not Path(p).exists()]
                if missing:
                    raise UsageError(f"{missing[0]}: a Dask worker wrote it, but it is not here: "
                                     "--out must be a folder that the workers and this machine "
                                     "share")
            yield result, rows

    def blocks_of(self, path: Path, config: dict):
        """segment_blocks' `segmented` for one huge image: its blocks on the workers, with the
        scale and post-processing it fixed for the image."""
        there = str(absolute(path))

        def segmented(blocks, options, instance_options, intensity):
            calls = ((block_task, (self.spec, there, block, config, options, instance_options,
                                   intensity)) for block in blocks)
            for future in self.in_order(calls, self.ahead(per_thread=2, least=2)):
                try:
                    pixels, labels = future.result()
                except DataError as error:
                    raise DataError(str(error).replace(there, str(path))) from None
                except Exception as exc:
                    if not is_killed_worker(exc):
                        raise
                    raise file_error(path, "the Dask workers segmenting one of its blocks "
                                     "died, again and again (out of memory?)") from None
                del future
                yield pixels, labels.astype(np.int32)

        return segmented


def absolute(path) -> Path:
    """Workers run elsewhere, from another folder: they get absolute paths."""
    return Path(os.path.abspath(path))


def as_given(result, path: Path):
    """A worker's result with the image path (and in its error) as the client was given it."""
    error = result.error
    if error:
        error = error.replace(str(absolute(path)), str(path))
    return dataclasses.replace(result, image=path, error=error)


def job_result(job, error: str):
    from nucleiseg.pipeline.outputs import PredictionResult

    return PredictionResult(job.path, error=error)


def is_killed_worker(exc: BaseException) -> bool:
    try:
        from distributed.scheduler import KilledWorker
    except ImportError:
        return False
    return isinstance(exc, KilledWorker)
