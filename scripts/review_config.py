"""Install or remove De-Confusion's review panel in an existing project's labeling config.

    .venv/bin/python scripts/review_config.py install --project 12
    .venv/bin/python scripts/review_config.py remove --project 12

Uses LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY. The project's own tags, labels, annotations
and settings are kept; "remove" takes out exactly what "install" added.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml_backend.config import Settings  # noqa: E402
from ml_backend.ls.admin import update_label_config  # noqa: E402
from ml_backend.ls.client import LabelStudioClient  # noqa: E402
from ml_backend.views.configs import remove_review_config, review_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install", "remove"])
    parser.add_argument("--project", type=int, required=True)
    args = parser.parse_args(argv)
    with LabelStudioClient(Settings.from_env()) as client:
        current = client.get_project(args.project)["label_config"]
        updated = review_config(current) if args.action == "install" else remove_review_config(current)
        if updated == current:
            print(f"project {args.project}: nothing to {args.action}")
            return 0
        update_label_config(client, args.project, updated)
    print(f"project {args.project}: review panel {'installed' if args.action == 'install' else 'removed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
