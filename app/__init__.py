"""Application layer: the CLI, the Qt application, the controller and the annotation document."""
