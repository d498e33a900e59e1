"""Run an experiment's independent trainings in parallel worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp

from tqdm.auto import tqdm


def run_parallel(fn, calls: list[tuple], jobs: int, desc: str):
    """Yield ``(i, fn(*calls[i]))`` as the calls finish, in ``jobs`` spawned processes (spawn:
    no forked torch state; ``fn`` sets its own thread count).  An exception in a call is raised
    here, when its result is reached."""
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
        futs = {ex.submit(fn, *c): i for i, c in enumerate(calls)}
        for f in tqdm(cf.as_completed(futs), total=len(futs), desc=desc):
            yield futs[f], f.result()
