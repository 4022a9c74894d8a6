"""The Qt binding the project installs must not corrupt Python's reference counts.

PySide6 6.12.0 drops one reference to `True` on every `Signal.emit`; on Python 3.11, where
`True` is not immortal, the interpreter aborts ("Fatal Python error: bool_dealloc") once enough
signals were emitted: a long session (a progress signal per photo, a thumbnail per row) would
crash and lose what was not yet saved. pyproject.toml excludes that release; this test catches
a release with the same fault."""
from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    number = Signal(int)
    flag = Signal(bool)
    text = Signal(str)


def test_emitting_signals_keeps_reference_counts(qtbot):
    emitter = _Emitter()
    received = []  # the values' types: keeping the values would hold references to True itself

    def receive(value):
        received.append(type(value))

    emitter.number.connect(receive)
    emitter.flag.connect(receive)
    emitter.text.connect(receive)
    before = (sys.getrefcount(True), sys.getrefcount(False), sys.getrefcount(None))
    for i in range(500):
        emitter.number.emit(i)
        emitter.flag.emit(i % 2 == 0)
        emitter.text.emit("x")
    after = (sys.getrefcount(True), sys.getrefcount(False), sys.getrefcount(None))
    assert len(received) == 1500
    # a few references may come and go meanwhile; a leak or a drop per emit is hundreds
    assert all(abs(a - b) < 50 for a, b in zip(after, before)), (before, after)
