import sys

from dasr_annotator.app.main import main

sys.exit(main())
