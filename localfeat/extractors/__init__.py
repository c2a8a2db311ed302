"""Keypoint detectors and descriptors, one file per model; each module's `Extractor` subclasses
with a `name` are registered automatically (see `localfeat.registry`)."""
