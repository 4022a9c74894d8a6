"""PyInstaller entry point: the same `main` as the console script."""
import sys

from dasr_annotator.app.main import main

if __name__ == "__main__":
    sys.exit(main())
