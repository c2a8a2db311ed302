"""`python -m localfeat.cli ...` runs the `localfeat` command."""
import sys

from .main import main

sys.exit(main())
