"""Per-item failure isolation for batched model calls (Ray-free, so it is unit-tested on its own)."""

from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

from .errors import ApiError, InternalError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class ItemFailure:
    """Stands in for one item's result when that item, and only that item, failed."""

    def __init__(self, error: Exception):
        self.error = error


def run_isolated(run_batch: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R | ItemFailure]:
    """``run_batch(items)``; if the batch fails, each item alone, so one bad item fails only its own request."""
    if len(items) == 1:
        return [_alone(run_batch, items[0])]
    try:
        return list(run_batch(items))
    except Exception:  # noqa: BLE001 - the batch failed: find the culprit(s)
        log.warning("A batch of %d failed; retrying its items one by one", len(items), exc_info=True)
    return [_alone(run_batch, item) for item in items]


def _alone(run_batch: Callable[[Sequence[T]], list[R]], item: T) -> R | ItemFailure:
    try:
        return run_batch([item])[0]
    except ApiError as exc:
        return ItemFailure(exc)
    except Exception:  # noqa: BLE001 - never show internals to the client; the log has them
        log.exception("An item failed on its own")
        return ItemFailure(InternalError("The model failed on this audio segment."))
