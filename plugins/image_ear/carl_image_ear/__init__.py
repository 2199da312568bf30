"""carl-image-ear: the image modality for carl (datasets, recipes; EAR's reference setup)."""

__version__ = "0.1.0"
