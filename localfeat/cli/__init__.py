"""The `localfeat` command, one module per verb group.

    args       argument helpers: sub-commands with examples, one model-spec syntax, pairs
    core       extract, match, view, models
    exchange   export / import (npz, COLMAP)
    evaluate   eval hpatches, eval pose, eval invariance
    dataset    dataset from-colmap / merge, hpatches synth / download
    sfm        sfm
    train      train
    retrieve   retrieve index / query / fit-pca
    demo       demo
    main       the parser and `main` (the console entry point)
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
