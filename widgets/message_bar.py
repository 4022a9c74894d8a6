"""A dismissible strip above the photo for errors and notes: visible, never blocking.

It floats over the top of its parent instead of taking room in a layout, so showing or hiding a
message never resizes the photo under it (which would re-fit it under the mouse)."""
from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, QTimer
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton

LEVELS = ("info", "warning", "error")


class MessageBar(QFrame):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("messageBar")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.setAutoRaise(True)
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(close)
        self._timer = QTimer(self, singleShot=True)
        self._timer.timeout.connect(self.hide)
        self.level = "info"
        if parent is not None:
            parent.installEventFilter(self)
        self.hide()

    def eventFilter(self, watched, event) -> bool:
        if watched is self.parentWidget() and event.type() == QEvent.Resize and self.isVisible():
            self.place()
        return False

    def place(self) -> None:
        """Span the top of the parent, as tall as the text needs."""
        parent = self.parentWidget()
        if parent is None:
            return
        width = parent.width()
        height = self.layout().totalHeightForWidth(width) if self.layout().hasHeightForWidth() else -1
        self.setGeometry(0, 0, width, max(height, self.sizeHint().height()))
        self.raise_()

    def show_message(self, text: str, level: str = "info", timeout_ms: int = 0) -> None:
        """Show `text`; info messages may time out, errors stay until dismissed."""
        self.level = level if level in LEVELS else "info"
        self.setProperty("level", self.level)
        self.style().unpolish(self)
        self.style().polish(self)
        self.label.setText(text)
        self.show()
        self.place()
        if timeout_ms:
            self._timer.start(timeout_ms)
        else:
            self._timer.stop()

    def text(self) -> str:
        return self.label.text()
