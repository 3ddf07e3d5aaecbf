import sys

from ortforge.cli import main

sys.exit(main())
