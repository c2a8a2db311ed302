"""Training of dense detectors/descriptors: pairs, losses (one family per module), trainer, CLI.

    from localfeat.train import train, resume
    train("smoke", "runs/smoke")                      # a preset (see `localfeat train --list`) or a YAML file
    resume("runs/smoke")
    import localfeat
    extractor = localfeat.load_extractor("r2d2", weights="runs/smoke/weights.pt")
"""
from .trainer import DEFAULT_CONFIG, Trainer, TrainError, list_presets, resolve_config, resume, train

__all__ = ["train", "resume", "Trainer", "TrainError", "list_presets", "resolve_config", "DEFAULT_CONFIG"]
