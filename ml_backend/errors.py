"""Exceptions named for the condition they report. Standard library only."""


class DeConfusionError(Exception):
    """Base class: every message names the thing at fault and what to do."""


class UnreadableImage(DeConfusionError):
    """An image could not be decoded or is unusable (too small, empty, too large)."""


class DatasetError(DeConfusionError):
    """The labeled set cannot be analysed as a whole (no images, one class, bad layout)."""


class LabelConfigError(DeConfusionError):
    """The project's labeling config has no single Image + single-choice Choices pair."""


class LabelStudioUnavailable(DeConfusionError):
    """Label Studio did not answer after retries, or rejected the token."""


class ArtefactError(DeConfusionError):
    """An analysis folder is missing, incomplete or of an unknown schema version."""


class UnknownProject(DeConfusionError):
    """Label Studio has no project with this id (answered 404; nothing is written for it)."""
