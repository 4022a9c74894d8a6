"""Thread counts of the numeric libraries, set for a while and put back."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def thread_count(get: Callable[[], int], set_: Callable[[int], None], count: int) -> Iterator[None]:
    """Run the body with the library's thread count (`get`/`set_`, e.g. torch's or faiss's
    OpenMP) at `count`, and restore it afterwards whatever happens."""
    before = get()
    set_(count)
    try:
        yield
    finally:
        set_(before)
