"""The Qt application: main window, controller and its engine thread, the undoable document, review.
May import `engine` and `widgets`; nothing in `engine`, `widgets` or `app.cli` imports it."""
