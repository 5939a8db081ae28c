"""Leases on samples, so that two processes computing the same run at once do not both do all the work.

Before inverting a sample, a worker takes its lease (one document per (run, sample) in a collection of
its own, taken atomically by inserting it); a sample another live worker holds is left to that worker.
A lease expires after ``LEASE_SECONDS``, and at once when its holder was a process of this machine
that no longer runs (a killed worker's samples are taken over by the next run); it is returned as soon
as the sample is written.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Iterable, List

import fiftyone.core.odm as foo
from pymongo.errors import DuplicateKeyError

LEASE_SECONDS = 600.0
COLLECTION = "maskinversion_leases"


def _collection():
    return foo.get_db_conn()[COLLECTION]


def _key(run_doc_id, sample_id: str) -> str:
    return f"{run_doc_id}:{sample_id}"


def take(run_doc_id, sample_ids: Iterable[str]) -> List[str]:
    """The sample ids whose lease this process now holds (free ones, or expired ones taken over)."""
    holder, now = _holder(os.getpid()), time.time()
    taken = []
    for sample_id in sample_ids:
        key = _key(run_doc_id, sample_id)
        try:
            _collection().insert_one({"_id": key, "holder": holder, "expires": now + LEASE_SECONDS})
        except DuplicateKeyError:
            current = _collection().find_one({"_id": key}) or {}
            if current.get("expires", 0) >= now and _alive(current.get("holder", "")):
                continue  # a live worker holds it
            took = _collection().find_one_and_update({"_id": key, "holder": current.get("holder")},
                                                     {"$set": {"holder": holder, "expires": now + LEASE_SECONDS}})
            if took is None:
                continue  # another process took it over first
        taken.append(sample_id)
    return taken


def _holder(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def _alive(holder: str) -> bool:
    """Whether a lease holder may still run: on another machine we cannot tell (True); here, its pid lives."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def give_back(run_doc_id, sample_ids: Iterable[str]) -> None:
    """Return the leases of samples this process has written (or will not write)."""
    _collection().delete_many({"_id": {"$in": [_key(run_doc_id, s) for s in sample_ids]}})
