"""Background work in the status bar: what runs, a progress bar with ETA, the device, cancel."""
from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QToolButton, QWidget


def format_eta(seconds: float) -> str:
    if seconds < 0:
        return "estimating…"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s left"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s left"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min left"


INDEXING_CANCEL_TIP = "Stop indexing (it resumes where it stopped next time)"


class ProgressPanel(QWidget):
    cancelRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.task = QLabel()
        self.bar = QProgressBar()
        self.bar.setFixedWidth(180)
        self.bar.setTextVisible(True)
        self.eta = QLabel()
        self.device = QLabel("Device: —")
        self.device.setObjectName("deviceLabel")
        self.cancel = QToolButton()
        self.cancel.setText("Cancel")
        self.cancel.setToolTip(INDEXING_CANCEL_TIP)
        self.cancel.clicked.connect(self.cancelRequested)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.task, self.bar, self.eta, self.cancel, self.device):
            layout.addWidget(widget)
        for widget in (self.bar, self.cancel):  # the status bar never changes height (the photo would move)
            policy = widget.sizePolicy()
            policy.setRetainSizeWhenHidden(True)
            widget.setSizePolicy(policy)
        self.finish("")

    def start(self, text: str, cancellable: bool = True, cancel_tip: str = INDEXING_CANCEL_TIP) -> None:
        self.task.setText(text)
        self.cancel.setToolTip(cancel_tip)
        self.bar.setRange(0, 0)  # busy until the first progress report
        self.bar.show()
        self.eta.setText("")
        self.cancel.setVisible(cancellable)

    def set_progress(self, text: str, done: int, total: int, eta_s: float) -> None:
        self.task.setText(text)
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(done)
        self.bar.setFormat(f"{done} / {total}")
        self.bar.show()
        self.eta.setText(format_eta(eta_s) if done < total else "")

    def finish(self, text: str) -> None:
        self.task.setText(text)
        self.bar.hide()
        self.eta.setText("")
        self.cancel.hide()

    def set_device(self, name: str) -> None:
        self.device.setText(f"Device: {name}")
        self.device.setToolTip("Where the engine runs; choose it in File > Settings")
