"""Module-level job functions an RQ worker can import in tests."""


def analyze(project_id, settings, progress):
    progress("train", 1, 1)
    return f"deconfusion-rq-{project_id}"
