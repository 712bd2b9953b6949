import sys

from mugpt.cli import main

sys.exit(main())
