"""dasr-annotator: label object instances across a photo collection by example."""

__version__ = "0.1.0"
