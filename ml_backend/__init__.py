"""De-Confusion: find label errors and duplicates in Label Studio image-classification projects."""

__version__ = "0.1.0"
