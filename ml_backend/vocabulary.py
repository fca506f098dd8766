"""The names the backend shares with Label Studio and its users, written once: task-field and tab
names, model-version tags, reviewers' verdicts, webhook actions, data splits.

The labeling configs (``views.configs``, ``label_studio_config/review.xml``), the publisher, the
verdict handler and the report all read them from here; a test ties ``review.xml`` to
:class:`Verdict`. Standard library only.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable

FIELD_PREFIX = "dc_"
"""The backend's task fields and review controls are named with it."""
VERSION_FIELD = f"{FIELD_PREFIX}version"
"""Every task the backend gives fields carries this one, its model version."""
TASK_FIELDS = frozenset({
    "dc_error_score", "dc_suggested", "dc_p_suggested", "dc_cell", "dc_candidate", "dc_unreviewed",
    "dc_duplicate", "dc_duplicate_group", "dc_similarity", "dc_leakage", "dc_reviewed", "dc_excluded",
    "dc_evidence", "dc_consensus", "dc_consensus_quality", "dc_disagreement_rank", "dc_together", VERSION_FIELD,
})
"""Every task-data key the backend writes into a project's tasks, by name: only these are ever
changed or removed (unpublish), so a user's own key stays even when it starts with ``dc_``."""
VERSION_PREFIX = "deconfusion"
"""Every model version the backend publishes starts with it; other models' predictions stay."""
UNTRAINED_VERSION = f"{VERSION_PREFIX}-untrained"
"""The model version /setup reports before a project's first finished analysis."""
TAB_PREFIX = "De-Confusion"
"""Every Data Manager tab the backend makes is titled ``"<TAB_PREFIX>: ..."``."""
OUR_TABS = f"{TAB_PREFIX}: "
"""The start of our tabs' titles: only tabs titled so are ever deleted (a user's own
"De-Confusion notes" tab is not ours)."""
REVIEW_QUEUE_TAB = f"{TAB_PREFIX}: review queue"

VERDICT_CONTROL = f"{FIELD_PREFIX}verdict"
"""The review panel's Choices: the reviewer's intent, next to the project's own label."""
EVIDENCE_FIELD = f"{FIELD_PREFIX}evidence"
"""Task field with the HTML the review panel shows."""
REVIEW_PANEL_ID = f"{FIELD_PREFIX}review_panel"

SPLITS = ("train", "val")
"""Data splits an image may belong to (a task's ``split`` field, a folder's subfolders)."""

START_TRAINING = "START_TRAINING"
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
"""Label Studio webhook actions that carry reviewers' verdicts."""

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): long work reports how far a stage has come."""


class Verdict(str, Enum):
    """What a reviewer decided about a flagged label (stored per task, shown in the report)."""

    KEPT = "kept"
    RELABELED_TO_MODEL = "relabeled_to_model"
    RELABELED_OTHER = "relabeled_other"
    REMOVED = "removed"
    AMBIGUOUS = "ambiguous"

    @property
    def choice(self) -> str:
        """The review panel's choice text for this verdict."""
        return _CHOICES[self]

    @property
    def description(self) -> str:
        """How the report names this verdict."""
        return _DESCRIPTIONS[self]

    @property
    def judges_label(self) -> bool:
        """Whether the verdict says if the given label was right: kept or relabeled. A removal (a
        duplicate, an unusable image) and an ambiguity do not, as in ``reviews.apply_reviews``."""
        return self not in (Verdict.REMOVED, Verdict.AMBIGUOUS)

    @property
    def found_wrong(self) -> bool:
        """Whether the reviewer found the given label wrong: relabeled it (see :attr:`judges_label`)."""
        return self in (Verdict.RELABELED_TO_MODEL, Verdict.RELABELED_OTHER)

    @classmethod
    def from_choice(cls, text: str | None) -> "Verdict | None":
        return next((v for v in cls if v.choice == text), None)


_CHOICES = {
    Verdict.KEPT: "Keep human label",
    Verdict.RELABELED_TO_MODEL: "Take model label",
    Verdict.RELABELED_OTHER: "Other label",
    Verdict.REMOVED: "Remove (duplicate/unusable)",
    Verdict.AMBIGUOUS: "Ambiguous",
}
_DESCRIPTIONS = {
    Verdict.KEPT: "kept the human label",
    Verdict.RELABELED_TO_MODEL: "took the model's label",
    Verdict.RELABELED_OTHER: "chose another label",
    Verdict.REMOVED: "removed",
    Verdict.AMBIGUOUS: "ambiguous",
}
