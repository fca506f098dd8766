"""Label-error detection benchmark on the paper's MNIST corruption (Sect. 7), and a
Fashion-MNIST corruption of our own. Prints one markdown table per dataset.

    .venv/bin/python scripts/bench_detection.py --mnist ../shared/datasets/mnist \
        --fashion ../shared/datasets/fashion-mnist --workdir /tmp/bench

Methods, each run in its own process (wall time and peak memory are that process's):
- ``ours``: ``python -m ml_backend analyze`` on the image folder (the product path);
- ``paper``: one small CNN trained on the training split, everything classified once,
  candidates = misclassified, ranked by the mismatch score (eq. 1);
- ``cleanlab``: ``cleanlab.filter.find_label_issues`` on 5-fold out-of-sample
  probabilities of the same small CNN (cleanlab's default cv_n_folds), ranked by self-confidence.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (true class, labeled as, how many): the paper's user study corruption, 6:1 train/val.
MNIST_SWAPS = [(9, 6, 1400), (1, 4, 700), (3, 1, 700), (8, 2, 350), (7, 3, 175)]
# Our Fashion-MNIST design: confusions a hurried labeler makes (0 T-shirt, 1 trouser, 2 pullover,
# 3 dress, 4 coat, 5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot).
FASHION_SWAPS = [(6, 0, 1400), (2, 4, 700), (7, 5, 700), (9, 7, 350), (3, 6, 175)]
INSTANCE_ERRORS = 5
DUPLICATES = 5


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_set(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 70,000 images with the original 60k train / 10k test as train / val (6:1)."""
    x = np.concatenate([read_idx(folder / "train-images-idx3-ubyte.gz"), read_idx(folder / "t10k-images-idx3-ubyte.gz")])
    y = np.concatenate([read_idx(folder / "train-labels-idx1-ubyte.gz"), read_idx(folder / "t10k-labels-idx1-ubyte.gz")])
    split = np.array(["train"] * 60000 + ["val"] * 10000)
    return x, y.astype(np.int64), split


def corrupt(x, y, split, swaps, *, seed: int, limit: int | None):
    """Returns images, noisy labels, splits, truth kind per image ('' | 'class' | 'instance'), dup pairs."""
    rng = np.random.default_rng(seed)
    if limit:
        keep = np.sort(rng.choice(len(y), size=limit, replace=False))
        x, y, split = x[keep], y[keep], split[keep]
        swaps = [(a, b, max(1, n * limit // 70000)) for a, b, n in swaps]
    noisy, kind = y.copy(), np.array([""] * len(y), dtype="<U8")
    for true, wrong, count in swaps:
        for part, share in (("train", 6), ("val", 1)):
            pool = np.flatnonzero((y == true) & (split == part) & (kind == ""))
            take = rng.choice(pool, size=round(count * share / 7), replace=False)
            noisy[take], kind[take] = wrong, "class"
    used = {a for a, _, _ in MNIST_SWAPS + FASHION_SWAPS}
    spare = [c for c in range(10) if c not in used] or list(range(10))
    for k in range(INSTANCE_ERRORS):
        cls = spare[k % len(spare)] if k < len(spare) else k
        part = "val" if k == 0 else "train"
        i = rng.choice(np.flatnonzero((y == cls) & (split == part) & (kind == "")))
        noisy[i] = (cls + 1 + rng.integers(9)) % 10
        kind[i] = "instance"
    # Duplicates: copy five clean images; the first copy lands in the other split (leakage).
    sources = rng.choice(np.flatnonzero(kind == ""), size=DUPLICATES, replace=False)
    copy_split = np.array(["val" if split[s] == "train" else "train" if k == 0 else split[s]
                           for k, s in enumerate(sources)])
    pairs = [(int(s), len(y) + k) for k, s in enumerate(sources)]
    x = np.concatenate([x, x[sources]])
    noisy = np.concatenate([noisy, noisy[sources]])
    y = np.concatenate([y, y[sources]])
    split = np.concatenate([split, copy_split])
    kind = np.concatenate([kind, np.array([""] * DUPLICATES)])
    return x, noisy, y, split, kind, pairs


def write_folder(x, labels, split, root: Path) -> list[str]:
    items = []
    for i, (img, lab, part) in enumerate(zip(x, labels, split)):
        rel = f"{part}/{lab}/{i:05d}.png"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, optimize=False, compress_level=1)
        items.append(rel)
    return items


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = truth[order]
    if not hits.any():
        return float("nan")
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


# --- methods (each runs in a child process: `bench_detection.py --run METHOD --data NPZ --out DIR`)

def run_ours(data, out: Path, folder: Path) -> dict:
    subprocess.run([sys.executable, "-m", "ml_backend", "analyze", str(folder), "--out", str(out)],
                   check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    by_item = {}
    with open(out / "scores.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            by_item[row["item"]] = (float(row["error_score"]), row["is_candidate"] == "1")
    items = json.loads((out / "items.json").read_text())
    scores = np.array([by_item.get(it, (0.0, False))[0] for it in items])
    flagged = np.array([by_item.get(it, (0.0, False))[1] for it in items])
    dup_items = set()
    with open(out / "duplicates.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            dup_items.add(frozenset((row["item_a"], row["item_b"])))
    found = sum(frozenset((items[a], items[b])) in dup_items for a, b in data["pairs"])
    return {"scores": scores, "flagged": flagged, "duplicates": found}


def run_paper(data, out: Path, folder: Path) -> dict:
    from ml_backend.detectors.overview import mismatch_score
    from ml_backend.model.fit import train_single

    x, labels, split = data["x"][..., None], data["noisy"], data["split"]
    model = train_single(x[split == "train"], labels[split == "train"], 10, seed=0)
    probs = model.predict_proba(x)
    flagged = probs.argmax(1) != labels
    scores = np.where(flagged, mismatch_score(probs, labels), 0.0)
    return {"scores": scores, "flagged": flagged, "duplicates": None}


def run_cleanlab(data, out: Path, folder: Path) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from ml_backend.model.fit import cross_fit

    x, labels = data["x"][..., None], data["noisy"]
    fit, _ = cross_fit(x, labels, 10, folds=5, seed=0, backbone="small_cnn")
    flagged = find_label_issues(labels, fit.pred_probs, n_jobs=1)
    scores = 1.0 - get_label_quality_scores(labels, fit.pred_probs, method="self_confidence")
    return {"scores": scores, "flagged": flagged, "duplicates": None}


METHODS = {"ours": run_ours, "paper": run_paper, "cleanlab": run_cleanlab}


def child(method: str, data_path: Path, out: Path, folder: Path) -> None:
    with np.load(data_path) as npz:
        data = {k: npz[k] for k in npz.files}
    data["pairs"] = [tuple(p) for p in data["pairs"]]
    result = METHODS[method](data, out, folder)
    np.savez(out / "result.npz", scores=result["scores"], flagged=result["flagged"])
    (out / "result.json").write_text(json.dumps({"duplicates": result["duplicates"]}))


def run_child(method: str, data_path: Path, out: Path, folder: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one method in a fresh process."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--run", method, "--data", str(data_path),
                             "--out", str(out), "--folder", str(folder)], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{method} failed with status {status}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024 / 1024


def evaluate(name: str, slug: str, folder_src: Path, swaps, args) -> list[dict]:
    x, y, split = load_set(folder_src)
    x, noisy, truth, split, kind, pairs = corrupt(x, y, split, swaps, seed=args.seed, limit=args.limit)
    work = Path(args.workdir) / slug
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "images"
    if not (work / "data.npz").exists():
        items = write_folder(x, noisy, split, folder)
        np.savez(work / "data.npz", x=x, noisy=noisy, truth=truth, split=split, kind=kind, pairs=np.array(pairs))
        (work / "items.json").write_text(json.dumps(items))
    is_error = kind != ""
    rows = []
    for method in args.methods:
        out = work / method
        if method == "ours":
            out.mkdir(parents=True, exist_ok=True)
            (out / "items.json").write_text((work / "items.json").read_text())
        seconds, peak_gb = run_child(method, work / "data.npz", out, folder)
        with np.load(out / "result.npz") as res:
            scores, flagged = res["scores"], res["flagged"].astype(bool)
        dups = json.loads((out / "result.json").read_text())["duplicates"]
        tp = flagged & is_error
        rows.append({
            "method": method, "flagged_share": flagged.mean(), "flagged_x_injected": flagged.sum() / is_error.sum(),
            "recall": tp.sum() / is_error.sum(),
            "recall_class": tp[kind == "class"].sum() / max(1, (kind == "class").sum()),
            "recall_instance": tp[kind == "instance"].sum() / max(1, (kind == "instance").sum()),
            "precision": tp.sum() / max(1, flagged.sum()), "ap": average_precision(scores, is_error),
            "duplicates": "—" if dups is None else f"{dups}/{len(pairs)}", "seconds": seconds, "peak_gb": peak_gb,
        })
        print(f"[{name}] {method}: {rows[-1]}", file=sys.stderr, flush=True)
    print_table(name, len(noisy), int(is_error.sum()), rows)
    return rows


def print_table(name: str, n: int, injected: int, rows: list[dict]) -> None:
    print(f"\n### {name}: {n} images, {injected} injected label errors\n")
    print("| method | flagged | flagged / injected | recall | recall class | recall instance | precision | AP "
          "| duplicates | wall time | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['flagged_share']:.2%} | {r['flagged_x_injected']:.3f} | {r['recall']:.4f} "
              f"| {r['recall_class']:.4f} | {r['recall_instance']:.2f} | {r['precision']:.4f} | {r['ap']:.4f} "
              f"| {r['duplicates']} | {r['seconds'] / 60:.1f} min | {r['peak_gb']:.2f} GB |")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, help="folder with MNIST idx .gz files")
    parser.add_argument("--fashion", type=Path, help="folder with Fashion-MNIST idx .gz files")
    parser.add_argument("--workdir", default="/tmp/deconfusion-bench")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--limit", type=int, help="use a random subset of this many images (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return child(args.run, args.data, args.out, args.folder)
    if not (args.mnist or args.fashion):
        parser.error("give --mnist and/or --fashion")
    if args.mnist:
        evaluate("MNIST (paper's corruption)", "mnist", args.mnist, MNIST_SWAPS, args)
    if args.fashion:
        evaluate("Fashion-MNIST (our corruption)", "fashion", args.fashion, FASHION_SWAPS, args)


if __name__ == "__main__":
    main()
