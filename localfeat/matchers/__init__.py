"""Matchers, one file per family; `Matcher` subclasses with a `name` are registered automatically."""
