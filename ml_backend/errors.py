"""Exceptions named for the condition they report. Standard library only."""


class DeConfusionError(Exception):
    """Base class: every message names the thing at fault and what to do."""


class UnreadableImage(DeConfusionError):
    """An image could not be decoded or is unusable (too small, empty, too large)."""


class DatasetError(DeConfusionError):
    """The labeled set cannot be analysed as a whole (no images, one class, bad layout)."""


class LabelConfigError(DeConfusionError):
    """The project's labeling config has no single Image + single-choice Choices pair."""


class LabelStudioError(DeConfusionError):
    """Label Studio could not be used for a request; the subclasses say why."""


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio did not answer after retries (connection errors, 5xx), or what answers at
    LABEL_STUDIO_URL is not its API."""


class LabelStudioTokenRejected(LabelStudioError):
    """LABEL_STUDIO_API_KEY is empty, or Label Studio refused it (401/403, an expired personal
    access token): a configuration error."""


class LabelStudioRejected(LabelStudioError):
    """Label Studio answered a request with a 4xx other than 401/403 (bad id, invalid payload) or
    with a redirect; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ArtefactError(DeConfusionError):
    """An analysis folder is missing, incomplete or of an unknown schema version."""


class UnknownProject(DeConfusionError):
    """Label Studio has no project with this id (answered 404; nothing is written for it)."""
