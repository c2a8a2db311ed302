"""LighterGlue (verlab/accelerated_features `modules/lighterglue.py`, Apache-2.0): a small LightGlue trained on
XFeat's 64-D sparse features, with its official weights `xfeat-lighterglue.pt`.

The original is kornia's `LightGlue(None, input_dim=64, descriptor_dim=96, n_layers=6, num_heads=1,
depth_confidence=-1, width_confidence=0.95, filter_threshold=0.1)`: the network of `localfeat.matchers.lightglue`
with other sizes, no early stopping, point pruning on. Its file holds 291 entries: 169 `matcher.*` (the
LightGlue, already under `transformers.{i}` names) and 122 `extractor.*` (a copy of the XFeat network,
which the original ignores through strict=False). Here the `extractor.*` entries are dropped explicitly
(after checking that every other key is a `matcher.*` one) and the rest is loaded strictly.

Inputs: XFeat features (`load_extractor('xfeat')`, sparse mode), keypoints in pixels with the image size, as
`match_lighterglue` passes them. Scores of the matches are match probabilities in [0, 1].
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from .. import hub
from ..checkpoints import state_dict_from_file
from ..hub import CheckpointError
from ..registry import ConfigError
from .lightglue import GlueMatcher, LightGlueNet, convert_state_dict, load_state_dict_checked

logger = logging.getLogger(__name__)

# verlab/accelerated_features weights/xfeat-lighterglue.pt at commit e92685f; sha256 of the official file
# (shared/data/weights_xfeat_official/SOURCE.txt: git blob 061e168b).
WEIGHTS = {
    "xfeat": hub.WeightSpec(
        "xfeat-lighterglue.pt",
        ("https://github.com/verlab/accelerated_features/raw/main/weights/xfeat-lighterglue.pt",),
        "766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8", "Apache-2.0"),
}
INPUT_DIM, DESCRIPTOR_DIM, NUM_HEADS, N_LAYERS = 64, 96, 1, 6


def matcher_state_dict(state: dict, n_layers: int, where: str) -> dict:
    """xfeat-lighterglue.pt's entries -> the keys of `LightGlueNet(64, n_layers, descriptor_dim=96, num_heads=1)`:
    `matcher.` stripped, `extractor.*` (the XFeat network copy) dropped, then LightGlue's conversion
    (renames, layers >= n_layers dropped). Anything else is a `CheckpointError`."""
    other = sorted(k for k in state if not k.startswith(("matcher.", "extractor.")))
    if other or not any(k.startswith("matcher.") for k in state):
        raise CheckpointError(f"{where}: not a LighterGlue file (expected 'matcher.*' and 'extractor.*' keys as in "
                              f"xfeat-lighterglue.pt; found {other[:5] or sorted(state)[:5]})")
    dropped = sum(k.startswith("extractor.") for k in state)
    logger.debug("%s: ignoring %d extractor.* entries (a copy of the XFeat network)", where, dropped)
    matcher = {k[len("matcher."):]: v for k, v in state.items() if k.startswith("matcher.")}
    return convert_state_dict(matcher, n_layers, where)


class LighterGlue(GlueMatcher):
    """LighterGlue for XFeat features (64-D), official weights xfeat-lighterglue.pt.

    Config (the original's values by default):
      n_layers:         transformer layers to run (6 in the release).
      depth_confidence: early stopping (None = off, as the original's -1; a number in (0, 1] turns it on).
      width_confidence: point pruning (0.95 as the original; None = off).
      filter_threshold: minimum match probability (0.1, the original's `min_conf`; None = every mutual pair).
      weights:          path of a compatible file (default: the official xfeat-lighterglue.pt).
      precision:        'fp32' (default) or 'bf16' (torch.autocast bfloat16, as LightGlue's option).
    """

    name = "lighterglue"
    default_conf = {"n_layers": N_LAYERS, "depth_confidence": None, "width_confidence": 0.95,
                    "filter_threshold": 0.1, "weights": None, "precision": "fp32"}

    def __init__(self, **conf):
        super().__init__(**conf)
        c = self.conf
        self.check_confidences()
        self.input_dim = INPUT_DIM
        self.net = LightGlueNet(INPUT_DIM, c["n_layers"], c["depth_confidence"], c["width_confidence"],
                                c["filter_threshold"], descriptor_dim=DESCRIPTOR_DIM, num_heads=NUM_HEADS)
        self.weights_path: Path = hub.find_weights(WEIGHTS["xfeat"], override=c["weights"])
        where = f"lighterglue weights {self.weights_path}"
        state = matcher_state_dict(state_dict_from_file(self.weights_path), c["n_layers"], where)
        load_state_dict_checked(self.net, state, where)
        self.net.eval().to(self.device)
        logger.debug("lighterglue: loaded %s", self.weights_path)

    @classmethod
    def weight_specs(cls, conf: dict) -> list:
        return [] if conf.get("weights") is not None else [WEIGHTS["xfeat"]]

    @classmethod
    def conf_for_features(cls, conf: dict, extractor: Optional[str]) -> dict:
        """LighterGlue was trained on XFeat features only: other extractors are a `ConfigError`."""
        if extractor is not None and extractor != "xfeat":
            raise ConfigError(f"lighterglue matches XFeat features only, not {extractor}; use --matcher lightglue "
                              "(SuperPoint, DISK, ALIKED) or nearest_neighbor")
        return dict(conf)

    def expects(self) -> str:
        return f"LighterGlue expects XFeat's {INPUT_DIM}-D descriptors (extractor 'xfeat', sparse mode)"
