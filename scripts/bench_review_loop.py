"""De-Confusion with a simulated reviewer: one iteration on the paper's MNIST corruption, and
review rounds in which each round's verdicts go into the next analysis.

    .venv/bin/python scripts/bench_review_loop.py --mnist ../shared/datasets/mnist --budget 200 500 2000
    .venv/bin/python scripts/bench_review_loop.py --rounds 2 --share 0.05 --cifar10n ../shared/datasets/cifar10n-dev \
        --fashion ../shared/datasets/fashion-mnist --mnist ../shared/datasets/mnist

The reviewer is an oracle that knows the true label of every image it looks at, and works
only from what the published tabs show, in their order, within a budget of images looked at:
1. the cell tabs flagged as class interpretation errors, in the overview's reading order:
   each lists the part of its cell the model is surest about (``together``); it looks at 20
   of them and gives each its true label; if at least 90% are truly the model's class it
   relabels the rest of the tab at once ("Create Annotations From Predictions"), else it
   moves on (the rest of the cell comes through the review queue);
2. the review queue, most likely errors first: each image is kept or relabeled to its truth;
3. the duplicates tab, closest copies first: one look per pair; it removes the second image
   of a true copy (pixel-identical or one of the planted copies) and keeps look-alikes.
Then a classifier is trained once on the corrected training split (removed images excluded)
and on the uncorrected one, and both are scored on the validation split's true labels.

With ``--rounds R``, the reviewer looks at ``--share`` of the images per round, in the order
the project shows (interpretation-error cells as in 1., then the unreviewed images by error
score), relabels wrong ones and confirms right ones; round r+1 is a new analysis given every
verdict so far (``reviews.apply_reviews``, as ``analyze --verdicts`` does). The static
baseline spends the same R x share budget on the first analysis' order. From round 2 on, each
analysis is ranked twice on the same retraining, without and with the verifier (its
``doubt_without_verifier`` column), and the rounds go on in the project's order (with it).
Printed: the share of wrong labels fixed after each round, and the time per round.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_detection import FASHION_SWAPS, MNIST_SWAPS, corrupt, load_cifar10n, load_set  # noqa: E402

from ml_backend.config import Settings  # noqa: E402
from ml_backend.dataset import ImageDataset  # noqa: E402
from ml_backend.detectors.overview import overview_cells  # noqa: E402
from ml_backend.model.fit import train_single  # noqa: E402
from ml_backend.pipeline import run_analysis  # noqa: E402
from ml_backend.publish import duplicate_groups  # noqa: E402
from ml_backend.reviews import Review, apply_reviews  # noqa: E402

CELL_SAMPLE = 20
CELL_AGREEMENT = 0.9


def dataset_from_arrays(x: np.ndarray, labels: np.ndarray, split: np.ndarray) -> ImageDataset:
    images = x[..., None] if x.ndim == 3 else x
    return ImageDataset(
        items=[f"{i:05d}" for i in range(len(x))], images=images, labels=labels.astype(np.int64),
        class_names=[str(k) for k in range(10)], splits=split.astype("<U5"),
        pixel_hashes=[hashlib.sha1(img.tobytes()).hexdigest() for img in images],
        task_ids=np.arange(len(x), dtype=np.int64), weights=np.ones(len(x), np.float32))


def review(analysis, labels: np.ndarray, truth: np.ndarray, copies: set[tuple[int, int]], budget: int,
           rng) -> tuple[np.ndarray, np.ndarray, dict]:
    """Returns corrected labels, a removed mask, and what the reviewer did."""
    fixed, removed = labels.copy(), np.zeros(len(labels), bool)
    seen = np.zeros(len(labels), bool)
    spent = 0
    log = {"cells_relabeled": 0, "bulk_relabeled": 0, "single_relabeled": 0, "kept": 0, "removed": 0}

    def decide(i: int) -> None:
        """One look: the reviewer gives the image its true label."""
        seen[i] = True
        relabel = fixed[i] != truth[i]
        fixed[i] = truth[i]
        log["single_relabeled" if relabel else "kept"] += 1

    for cell in analysis.cells:
        members = analysis.together_members(cell)  # the flagged cell's tab: its part to relabel together
        if len(members) == 0 or spent + CELL_SAMPLE > budget:
            continue
        sample = rng.choice(members, size=min(CELL_SAMPLE, len(members)), replace=False)
        spent += len(sample)
        if (truth[sample] == cell["predicted"]).mean() >= CELL_AGREEMENT:
            rest = np.setdiff1d(members, sample)
            fixed[rest] = cell["predicted"]
            seen[rest] = True
            log["cells_relabeled"] += 1
            log["bulk_relabeled"] += len(rest)
        for i in sample:  # looked at, whatever the cell's fate: the reviewer knows these
            decide(i)
    for i in np.argsort(-analysis.error_score, kind="stable"):
        if spent >= budget or not analysis.is_candidate[i]:
            break
        if not seen[i]:
            spent += 1
            decide(i)
    groups = duplicate_groups(analysis)
    for pair in sorted(analysis.duplicates, key=lambda p: groups[p["a"]][0]):
        if spent >= budget:
            break
        spent += 1
        if pair["kind"] == "exact" or (pair["a"], pair["b"]) in copies:
            removed[pair["b"]] = True
            log["removed"] += 1
    log["reviewed"] = spent
    return fixed, removed, log


def val_accuracy(x, labels, truth, split, keep) -> float:
    train = (split == "train") & keep
    model = train_single(x[train][..., None], labels[train], 10, seed=0)
    val = split == "val"
    return float((model.predict_proba(x[val][..., None]).argmax(1) == truth[val]).mean())


def look(analysis, reviewed: np.ndarray, truth: np.ndarray, budget: int, rng) -> dict[int, int]:
    """What an oracle reviewer decides within ``budget`` looks, in the project's order: the tabs
    of flagged interpretation cells (a sample of the part to relabel together, each image of it
    decided, then the rest of that part at once if it is truly the model's class), then
    unreviewed images by error score. Returns {image index: the label it now has}."""
    decided: dict[int, int] = {}
    for cell in analysis.cells:
        members = analysis.together_members(cell)
        members = members[~reviewed[members]]
        if len(members) == 0 or CELL_SAMPLE > budget:
            continue
        sample = rng.choice(members, size=min(CELL_SAMPLE, len(members)), replace=False)
        budget -= len(sample)
        if (truth[sample] == cell["predicted"]).mean() >= CELL_AGREEMENT:
            decided.update({int(i): int(cell["predicted"]) for i in members})
        decided.update({int(i): int(truth[i]) for i in sample})  # looked at, whatever the cell's fate
    for i in np.argsort(-analysis.error_score, kind="stable"):
        if budget <= 0:
            break
        if reviewed[i] or int(i) in decided:
            continue
        budget -= 1
        decided[int(i)] = int(truth[i])
    return decided


def review_rounds(title: str, x, noisy, truth, split, *, rounds: int, share: float) -> None:
    """Static ranking vs rounds whose verdicts feed the next analysis; prints one table."""
    data = dataset_from_arrays(x, noisy, split)
    errors = noisy != truth
    budget = int(round(share * len(x)))
    names = data.class_names

    def fixed_share(labels: np.ndarray) -> float:
        return float((errors & (labels == truth)).sum() / errors.sum())

    def analyse(reviews: dict[str, Review]):
        subset, outcome = apply_reviews(data, reviews, Settings.from_env({}).confirmed_weight)
        start = time.perf_counter()
        analysis, _ = run_analysis(subset, Settings.from_env({}), reviews=outcome)
        return analysis, outcome.reviewed, time.perf_counter() - start

    def fixed_after_looking(analysis, reviewed, labels, looks: int, seed: int) -> float:
        after = labels.copy()
        for i, label in look(analysis, reviewed, truth, looks, np.random.default_rng(seed)).items():
            after[i] = label
        return fixed_share(after)

    first, reviewed, seconds = analyse({})
    rows = [("static ranking", f"{rounds} x {share:.0%} on round 1's order",
             fixed_after_looking(first, reviewed, noisy, rounds * budget, 0), seconds)]
    labels, reviews, analysis = noisy.copy(), {}, first
    for r in range(1, rounds + 1):
        how = ""
        if r > 1:
            analysis, reviewed, seconds = analyse(reviews)
            # The same retraining ranked without the verifier: a paired comparison, free of
            # the run-to-run spread of the training itself.
            model_score = analysis.evidence.get("doubt_without_verifier", analysis.error_score)
            unverified = replace(analysis, error_score=model_score, cells=overview_cells(
                analysis.pred_probs, analysis.labels, mismatch=analysis.mismatch,
                duplicate_group=analysis.duplicate_group, error_score=model_score))
            rows.append((f"with verdicts, round {r}, retrained", f"{r} x {share:.0%}",
                         fixed_after_looking(unverified, reviewed, labels, budget, r), seconds))
            how = f", retrained + verifier (weight {analysis.summary['verifier_weight']:.2f})"
        for i, label in look(analysis, reviewed, truth, budget, np.random.default_rng(r)).items():
            reviews[data.items[i]] = Review("confirmed" if label == labels[i] else "relabeled", names[label])
            labels[i] = label
        rows.append((f"with verdicts, round {r}{how}", f"{r} x {share:.0%}", fixed_share(labels), seconds))
    print(f"\n{title}: {len(x)} images, {int(errors.sum())} wrong labels\n")
    print("| ranking | looked at | wrong labels fixed | analysis time |")
    print("|---|---|---|---|")
    for name, looked, fixed, secs in rows:
        print(f"| {name} | {looked} | {fixed:.1%} | {secs / 60:.1f} min |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path)
    parser.add_argument("--budget", type=int, nargs="+", default=[500, 2000], help="images the reviewer looks at")
    parser.add_argument("--limit", type=int, help="random subset for a quick run")
    parser.add_argument("--rounds", type=int, help="review rounds whose verdicts feed the next analysis")
    parser.add_argument("--share", type=float, default=0.05, help="share of the images looked at per round")
    parser.add_argument("--cifar10n", type=Path, help="folder with cifar10n_dev.npz (rounds: majority-vote labels)")
    parser.add_argument("--fashion", type=Path, help="Fashion-MNIST idx folder (rounds: our corruption)")
    args = parser.parse_args()
    if args.rounds:
        sets = [("CIFAR-10N aggre", args.cifar10n, lambda f: load_cifar10n(f, "aggre", seed=0)),
                ("CIFAR-10N random1", args.cifar10n, lambda f: load_cifar10n(f, "random1", seed=0)),
                ("Fashion-MNIST (our corruption)", args.fashion,
                 lambda f: corrupt(*load_set(f), FASHION_SWAPS, seed=0, limit=args.limit)),
                ("MNIST (the paper's corruption)", args.mnist,
                 lambda f: corrupt(*load_set(f), MNIST_SWAPS, seed=0, limit=args.limit))]
        for title, folder, load in sets:
            if folder:
                x, noisy, truth, split = load(folder)[:4]
                review_rounds(title, x, noisy, truth, split, rounds=args.rounds, share=args.share)
        return
    if not args.mnist:
        parser.error("--mnist is needed (or --rounds with at least one data set)")

    x, y, split = load_set(args.mnist)
    x, noisy, truth, split, _, exact, near = corrupt(x, y, split, MNIST_SWAPS, seed=0, limit=args.limit)
    copies = {tuple(sorted(p)) for p in [*exact, *near]}
    start = time.perf_counter()
    analysis, _ = run_analysis(dataset_from_arrays(x, noisy, split), Settings.from_env({}))
    analysis_s = time.perf_counter() - start
    errors_before = int((noisy != truth).sum())
    acc_before = val_accuracy(x, noisy, truth, split, np.ones(len(x), bool))
    print(f"\n{len(x)} images, {errors_before} wrong labels; analysis {analysis_s / 60:.1f} min; "
          f"validation accuracy before review {acc_before:.2%}\n")
    print("| reviewed images | cells relabeled at once | images relabeled in bulk | single relabels | kept "
          "| removed copies | wrong labels left | reduction | val. accuracy before → after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for budget in args.budget:
        fixed, removed, log = review(analysis, noisy, truth, copies, budget, np.random.default_rng(0))
        left = int(((fixed != truth) & ~removed).sum())
        acc_after = val_accuracy(x, fixed, truth, split, ~removed)
        print(f"| {log['reviewed']} | {log['cells_relabeled']} | {log['bulk_relabeled']} | {log['single_relabeled']} "
              f"| {log['kept']} | {log['removed']} | {left} | {1 - left / errors_before:.2%} "
              f"| {acc_before:.2%} → {acc_after:.2%} |", flush=True)


if __name__ == "__main__":
    main()
