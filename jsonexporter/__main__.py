import sys

from jsonexporter.cli import main

sys.exit(main())
