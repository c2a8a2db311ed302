"""Base class of every matcher: two `Features` in, `Matches` out."""
from __future__ import annotations

from ..ops import resolve_device
from ..registry import Model
from ..types import Features, Matches


class Matcher(Model):
    """Subclasses set `name`, `default_conf` and implement `_match`."""

    default_conf = {"device": None}

    def __init__(self, **conf):
        super().__init__(**conf)
        self.device = resolve_device(self.conf["device"])

    def match(self, features0: Features, features1: Features) -> Matches:
        """Matches between `features0` and `features1`, index ranges checked."""
        return self._match(features0, features1).check_against(features0, features1)

    def _match(self, features0: Features, features1: Features) -> Matches:
        raise NotImplementedError
