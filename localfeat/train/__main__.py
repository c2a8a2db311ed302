"""`python -m localfeat.train ARGS` = `localfeat train ARGS`; the entry point for several processes:

    torchrun --nproc_per_node N -m localfeat.train --config CONFIG -o RUN_DIR [KEY=VALUE ...]

(see localfeat/train/distributed.py)."""
import sys

from ..cli.main import main
from .distributed import shutdown

try:
    code = main(["train", *sys.argv[1:]])
finally:
    shutdown()
sys.exit(code)
