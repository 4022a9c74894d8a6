"""Application layer: `main` (the `dasr-annotator` entry point), `cli` (the headless subcommands,
no Qt) and `gui` (the Qt application, loaded only to open a window)."""
