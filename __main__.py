import sys

from dasr_annotator.app.cli import main

sys.exit(main())
