import sys

from quicgw.backends.cli import main

sys.exit(main())
