"""Independent pieces of work run in a few processes, with progress a person can follow.

A full-size grid (``stages.grid``) is hundreds of stage runs on small models;
one process per core, one torch thread each, keeps a 2-core machine busy
without the threads spin-waiting on each other. Each job names an importable
function and its arguments (workers are spawned, so nothing is inherited but
what the arguments carry), seeds itself inside that function, and prints to
its own log, so the numbers do not depend on how many run at once.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Job:
    """``module:function(*args)``, its printing appended to ``log``; ``cost`` a guess at its seconds (for the
    estimate of the time left, and to start the longest chain first); ``after`` names jobs it needs finished."""

    name: str
    function: str  # "package.module:function"
    args: tuple[Any, ...]
    log: str
    cost: float = 1.0
    after: tuple[str, ...] = ()


def run_job(job: Job, threads: int = 1) -> float:
    """Run one job in this process with ``threads`` torch threads; its seconds."""
    import torch

    torch.set_num_threads(threads)
    module, _, name = job.function.partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    buffer = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            function(*job.args)
    finally:
        Path(job.log).parent.mkdir(parents=True, exist_ok=True)
        with open(job.log, "a") as f:
            f.write(buffer.getvalue())
    return time.perf_counter() - start


def longest_chains(jobs: Sequence[Job]) -> dict[str, float]:
    """Per job, its cost plus the costliest chain of jobs that wait on it (list scheduling's "bottom level"):
    starting the longest chains first keeps a cheap job that others wait for from queueing behind long ones."""
    waiting_on: dict[str, list[str]] = {job.name: [] for job in jobs}
    blockers = {job.name: len(set(job.after)) for job in jobs}
    for job in jobs:
        for name in set(job.after):
            waiting_on.setdefault(name, []).append(job.name)
    order = [job.name for job in jobs if not blockers[job.name]]  # Kahn's order: each after what it waits for
    for name in order:
        for other in waiting_on[name]:
            blockers[other] -= 1
            if not blockers[other]:
                order.append(other)
    if len(order) < len(jobs):
        raise ValueError(f"jobs {sorted(n for n, k in blockers.items() if k)} wait for each other")
    cost = {job.name: job.cost for job in jobs}
    chain: dict[str, float] = {}
    for name in reversed(order):
        chain[name] = cost[name] + max((chain[other] for other in waiting_on[name]), default=0.0)
    return chain


def run_jobs(jobs: Sequence[Job], workers: int, threads: int = 1,
             say: Callable[[str], None] = print) -> dict[str, float]:
    """Run ``jobs`` (each once its ``after`` jobs are done), ``workers`` at a time; seconds per job name.

    Jobs start longest chain first (:func:`longest_chains`). Prints a line
    per finished job: how many are done, which are running, the minutes so
    far and an estimate of those left (the cost guesses, scaled by how long
    the finished jobs took against theirs). The first failure stops
    the rest and is raised.
    """
    names = {job.name for job in jobs}
    for job in jobs:
        missing = [name for name in job.after if name not in names]
        if missing:
            raise ValueError(f"job {job.name} waits for {missing}, which are not in the list")
    chain = longest_chains(jobs)
    waiting = sorted(jobs, key=lambda j: -chain[j.name])
    done: dict[str, float] = {}
    running: dict[Future[float], Job] = {}
    start = time.perf_counter()
    guessed = spent = 0.0
    total_cost = sum(job.cost for job in jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, workers), mp_context=context) as pool:
        while waiting or running:
            ready = [job for job in waiting if all(name in done for name in job.after)]
            for job in ready[: max(0, workers - len(running))]:
                waiting.remove(job)
                running[pool.submit(run_job, job, threads)] = job
            if not running:
                raise ValueError(f"jobs {[j.name for j in waiting]} wait for each other")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    done[job.name] = future.result()
                except BaseException:
                    for other in running:
                        other.cancel()
                    say(f"[{len(done)}/{len(jobs)}] {job.name} failed; its log: {job.log}")
                    raise
                guessed += job.cost
                spent += done[job.name]
                elapsed = (time.perf_counter() - start) / 60
                # work left at the pace seen so far, shared among the workers; by job count while every
                # finished job was guessed to cost nothing
                left_work = ((total_cost - guessed) * spent / guessed if guessed > 0
                             else (len(jobs) - len(done)) * spent / len(done))
                left = left_work / max(1, workers) / 60
                now = ", ".join(j.name for j in running.values()) or "nothing"
                say(f"[{len(done)}/{len(jobs)} done] {job.name} in {done[job.name]:.0f} s; running {now}; "
                    f"{elapsed:.1f} min so far, about {left:.0f} min left")
    return done
