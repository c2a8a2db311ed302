"""localfeat: one toolkit for local image features.

    import localfeat
    extractor = localfeat.load_extractor("sift", max_keypoints=2048)
    f0, f1 = extractor.extract("a.jpg"), extractor.extract("b.jpg")
    matches = localfeat.load_matcher("nearest_neighbor", ratio=0.8).match(f0, f1)

    localfeat.extract("images/", "features.h5", model="sift")          # files in, files out
    localfeat.match("features.h5", "matches.h5", pairs=[("a.jpg", "b.jpg")])

    pm = localfeat.load_matcher("loftr").match_images("a.jpg", "b.jpg")   # detector-free: PairMatches

    extractor = localfeat.presets.load_extractor("aliked-n16")            # named settings (hloc's confs)
"""
from . import presets
from .pipeline import extract, match
from .registry import ConfigError, load_extractor, load_matcher
from .types import ContractError, Features, Matches, PairMatches

__all__ = ["extract", "match", "load_extractor", "load_matcher", "Features", "Matches", "PairMatches",
           "ConfigError", "ContractError", "presets"]
__version__ = "0.1.0"
