"""``lrpath audit --engine ray``: the same audit, its batches explained by Ray actors.

Each actor opens the session once (model, onnxruntime session, compiled kernels), then takes
batches of image paths and returns their records; the driver merges them into the same
audit.json/junit.xml as a local run, in input order, rewritten after every finished batch.
A worker that dies mid-batch (a killed process, a lost node) is restarted by Ray
(``max_restarts``); the driver sees the failed call, gives the batch to the next free worker
and counts the retry, so no image is lost or counted twice. Image and model paths must be
readable from every node (a shared filesystem), as Ray clusters usually have.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import InputError

#: a batch is given up after this many failed attempts (the error names the images)
MAX_ATTEMPTS = 4
#: how often to ask a restarting actor whether it is back, and for how long before giving up on it
PROBE_WAIT_S = 0.2
RESTART_TIMEOUT_S = 300.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'lrpath-onnx[ray]'") from None
    return ray


class _Worker:
    """The actor body: one session, many batches."""

    def __init__(self, session_args: list, session_opts: dict, cfg, checks, expected, regions) -> None:
        import numba
        import ray

        # as many threads as CPUs Ray gave this actor: N actors on N cores must not each spin up N
        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        os.environ["LRPATH_THREADS"] = str(cpus)
        numba.set_num_threads(min(cpus, numba.config.NUMBA_NUM_THREADS))
        from ..cli.session import open_session
        from .evaluate import Evaluator

        ses = open_session(session_args, Path.cwd(), **session_opts)  # nothing is written by a worker
        self.evaluator = Evaluator(ses, cfg, checks, expected, regions)

    def where(self) -> tuple[str, str]:
        """(relevance device, what runs the forward: onnxruntime's provider or the native kernels) of this worker (making its session now)."""
        an = self.evaluator.ses.an
        return an.device, an.provider

    def audit(self, batch: list[tuple[str, str]]) -> list[dict]:
        samples = self.evaluator.read([Path(p) for p, _ in batch], [n for _, n in batch])
        return self.evaluator.records(samples)


class RayEngine:
    """Actors on a Ray cluster (a local one when no address is given)."""

    def __init__(self, workers: int, gpus_per_worker: float, address: str | None, session_args: list,
                 session_opts: dict, run) -> None:
        ray = self.ray = import_ray()
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": max(workers, 1), "include_dashboard": False}
            try:
                ray.init(logging_level="ERROR", log_to_driver=False, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise InputError(f"--engine ray: cannot reach Ray at {address or 'a new local cluster'} ({e})") from None
        actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=-1, max_task_retries=0)(_Worker)
        opts = dict(session_opts)
        if gpus_per_worker > 0:
            opts["device"] = "cuda"
        t = time.perf_counter()
        self.actors = [actor.remote(session_args, opts, run.cfg, run.checks, run.expected, run.regions)
                       for _ in range(workers)]
        try:  # every actor has its session (model loaded, onnxruntime session made) before timing starts
            where = ray.get([a.where.remote() for a in self.actors])
        except ray.exceptions.RayActorError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else None
            raise cause if cause is not None else InputError(f"--engine ray: the workers did not start ({e})") from None
        self.startup_s = time.perf_counter() - t
        self.retries = 0
        self.lost: set[int] = set()  # actors given up on: down for longer than RESTART_TIMEOUT_S
        run.engine.update({"engine": "ray", "workers": workers, "gpus_per_worker": gpus_per_worker, "retries": 0,
                           "device": where[0][0], "provider": where[0][1], "worker_startup_s": self.startup_s})

    def run(self, run, paths: list[Path], records: list[dict], bar) -> dict:
        """Audit every batch ``run.batches`` leaves to do, merging results as they finish."""
        ray = self.ray
        queue = [(i, [(str(p), n) for p, n in b]) for i, b in enumerate(run.batches(paths, records))]
        records = list(records)
        bar.update(len(paths) - sum(len(b) for _, b in queue))
        attempts = {i: 0 for i, _ in queue}
        idle = list(range(len(self.actors)))
        in_flight: dict = {}  # object ref -> (actor index, batch index, batch); a probe has no batch
        down: dict[int, float] = {}  # actor index -> when it died; it gets work once a probe finds it back
        probe_at: dict[int, float] = {}  # actor index -> when to ask it again
        t0, fresh = time.perf_counter(), 0
        run.checkpoint(records, 0.0, 0, final=True)
        while queue or any(i is not None for _, i, _ in in_flight.values()):
            while queue and idle:
                a = idle.pop(0)
                i, batch = queue.pop(0)
                attempts[i] += 1
                in_flight[self.actors[a].audit.remote(batch)] = (a, i, batch)
            self._probe(in_flight, down, probe_at)
            if not in_flight:  # every actor is down, the next probe not yet due
                time.sleep(PROBE_WAIT_S)
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=PROBE_WAIT_S if down else None)
            if not ready:
                continue
            a, i, batch = in_flight.pop(ready[0])
            try:
                got = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError) as e:
                # down or restarting: given a batch at once, it would fail it at once (attempts used up)
                down.setdefault(a, time.perf_counter())
                probe_at[a] = time.perf_counter() + (PROBE_WAIT_S if i is None else 0.0)
                if i is None:
                    continue
                if attempts[i] >= MAX_ATTEMPTS:
                    raise InputError(f"--engine ray: the batch starting at {batch[0][0]} failed {attempts[i]} "
                                     f"times ({type(e).__name__})") from None
                self.retries += 1
                queue.insert(0, (i, batch))
                continue
            except ray.exceptions.RayTaskError as e:  # an error inside the audit: re-raise it as itself
                raise e.as_instanceof_cause() from None
            if i is None:  # a probe came back: the actor takes batches again
                if down.pop(a, None) is not None:
                    idle.append(a)
                continue
            idle.append(a)
            records.extend(got)
            fresh += len(batch)
            run.engine["retries"] = self.retries
            run.checkpoint(records, time.perf_counter() - t0, fresh)
            bar.update(len(batch))
        run.engine["retries"] = self.retries
        return run.checkpoint(records, time.perf_counter() - t0, fresh, final=True)

    def _probe(self, in_flight: dict, down: dict, probe_at: dict) -> None:
        """Ask the actors that are down and due whether they are back; give up on one down for
        longer than ``RESTART_TIMEOUT_S``, and on the run once none is left."""
        now = time.perf_counter()
        for a in [a for a, since in down.items() if now - since > RESTART_TIMEOUT_S]:
            del down[a]
            probe_at.pop(a, None)
            self.lost.add(a)
        alive = len(self.actors) - len(self.lost)
        if alive == 0:
            raise InputError(f"--engine ray: no worker came back within {RESTART_TIMEOUT_S:.0f} s of dying")
        for a, due in list(probe_at.items()):
            if due <= now:
                del probe_at[a]
                in_flight[self.actors[a].where.remote()] = (a, None, None)

    def shutdown(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
