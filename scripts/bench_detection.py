"""Label-error detection benchmark: real crowd noise on CIFAR-10N photos, the paper's MNIST
corruption (Sect. 7) and a Fashion-MNIST corruption of our own. Prints one markdown table per
dataset, and an ablation table (each evidence source alone and combined, from ``ours``).

    .venv/bin/python scripts/bench_detection.py --cifar10n ../shared/datasets/cifar10n-dev \
        --mnist ../shared/datasets/mnist --fashion ../shared/datasets/fashion-mnist --workdir /tmp/bench

Methods, each run in its own process (wall time and peak memory are that process's):
- ``ours``: ``python -m ml_backend analyze`` on the image folder (the product path);
- ``paper``: one small CNN trained on the training split, everything classified once,
  candidates = misclassified, ranked by the mismatch score (eq. 1);
- ``cnn+cleanlab``: ``cleanlab.filter.find_label_issues`` on 4-fold out-of-sample probabilities
  of the same small CNN, ranked by self-confidence;
- ``pretrained+lr+cleanlab`` (colour sets): EfficientNet-Lite0 features (as ours computes them),
  4-fold cross-validated scikit-learn logistic regression, cleanlab, ranked by self-confidence.

Every set gets 5 planted exact copies (one across train/val: leakage) and 3 near copies a user
means as duplicates: one re-saved with noise (Gaussian, sigma 3 grey levels), one shifted by a
pixel, one rescaled (to 90% and back).
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
NEAR_COPIES = ("noise", "shift", "rescale")
CIFAR_LABEL_SETS = {"aggre": "aggre_label", "random1": "random_label1"}


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
    return plant_copies(x, noisy, y, split, kind, seed=seed)


def near_copy(img: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    if how == "noise":
        return np.clip(img.astype(np.float32) + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    if how == "shift":
        return np.concatenate([img[:, :1], img[:, :-1]], axis=1)
    small = Image.fromarray(img).resize((round(img.shape[1] * 0.9), round(img.shape[0] * 0.9)), Image.BILINEAR)
    return np.asarray(small.resize((img.shape[1], img.shape[0]), Image.BILINEAR))


def plant_copies(x, noisy, y, split, kind, *, seed: int):
    """Append DUPLICATES exact copies (the first in the other split: leakage) and the NEAR_COPIES
    variants of clean images; returns the arrays and the (source, copy) pairs of each kind."""
    rng = np.random.default_rng(seed + 1)
    sources = rng.choice(np.flatnonzero(kind == ""), size=DUPLICATES + len(NEAR_COPIES), replace=False)
    exact, near = sources[:DUPLICATES], sources[DUPLICATES:]
    copies = np.concatenate([x[exact], np.stack([near_copy(x[s], how, rng) for s, how in zip(near, NEAR_COPIES)])])
    copy_split = np.array(["val" if split[s] == "train" else "train" if k == 0 else split[s]
                           for k, s in enumerate(exact)] + [split[s] for s in near])
    n = len(y)
    pairs = [(int(s), n + k) for k, s in enumerate(sources)]
    x = np.concatenate([x, copies])
    noisy, y = np.concatenate([noisy, noisy[sources]]), np.concatenate([y, y[sources]])
    split = np.concatenate([split, copy_split])
    kind = np.concatenate([kind, np.array([""] * len(sources))])
    return x, noisy, y, split, kind, pairs[:DUPLICATES], pairs[DUPLICATES:]


def load_cifar10n(folder: Path, label_set: str, *, seed: int, side: int = 0):
    """CIFAR-10N photos with one set of human labels; every label that differs from CIFAR-10's
    is a (real) error. One image in seven is put in val. ``side``: photos (copies planted) resized
    to side x side px, as a project of larger photos holds them (0: as they are, 32 px)."""
    with np.load(folder / "cifar10n_dev.npz") as npz:
        x, clean, noisy = npz["x"], npz["clean_label"].astype(np.int64), npz[CIFAR_LABEL_SETS[label_set]].astype(np.int64)
    split = np.where(np.random.default_rng(seed).random(len(x)) < 1 / 7, "val", "train")
    kind = np.where(noisy != clean, "instance", "")
    x, *rest = plant_copies(x, noisy, clean, split, kind, seed=seed)
    if side:
        x = np.stack([np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR)) for img in x])
    return (x, *rest)


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
    with open(out / "scores.csv", newline="") as fh:
        by_item = {row["item"]: row for row in csv.DictReader(fh)}
    items = json.loads((out / "items.json").read_text())
    rows = [by_item[it] for it in items]
    evidence = {name: np.array([float(r[name]) for r in rows])
                for name in ("error_score", "knn_disagreement", "consensus", *sorted(rows[0]))
                if name in ("error_score", "knn_disagreement", "consensus") or name.startswith("doubt_")}
    np.savez(out / "evidence.npz", **evidence)
    dup_items = set()
    with open(out / "duplicates.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            dup_items.add(frozenset((row["item_a"], row["item_b"])))
    found = [sum(frozenset((items[a], items[b])) in dup_items for a, b in data[key]) for key in ("pairs", "near_pairs")]
    return {"scores": evidence["error_score"], "flagged": np.array([r["is_candidate"] == "1" for r in rows]),
            "duplicates": found}


def _images(data) -> np.ndarray:
    return data["x"] if data["x"].ndim == 4 else data["x"][..., None]


def run_paper(data, out: Path, folder: Path) -> dict:
    from ml_backend.detectors.overview import mismatch_score
    from ml_backend.model.fit import train_single

    x, labels, split = _images(data), data["noisy"], data["split"]
    model = train_single(x[split == "train"], labels[split == "train"], 10, seed=0, backbone="small_cnn")
    probs = model.predict_proba(x)
    flagged = probs.argmax(1) != labels
    scores = np.where(flagged, mismatch_score(probs, labels), 0.0)
    return {"scores": scores, "flagged": flagged, "duplicates": None}


def _cleanlab(labels: np.ndarray, probs: np.ndarray) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    flagged = find_label_issues(labels, probs, n_jobs=1)
    scores = 1.0 - get_label_quality_scores(labels, probs, method="self_confidence")
    return {"scores": scores, "flagged": flagged, "duplicates": None}


def run_cnn_cleanlab(data, out: Path, folder: Path) -> dict:
    from ml_backend.model.fit import cross_fit

    fit, _ = cross_fit(_images(data), data["noisy"], 10, folds=4, seed=0, backbone="small_cnn")
    return _cleanlab(data["noisy"], fit.pred_probs)


def run_pretrained_lr_cleanlab(data, out: Path, folder: Path) -> dict:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ml_backend.model.ensemble import to_tensor
    from ml_backend.model.nets import PretrainedFeatures, input_side

    x = _images(data)
    net = PretrainedFeatures("efficientnet_lite0", side=input_side(x.shape[1:]))
    with torch.inference_mode():
        features = np.concatenate([net(to_tensor(x[i:i + 64], torch.device("cpu"))).numpy()
                                   for i in range(0, len(x), 64)])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probs = cross_val_predict(model, features, data["noisy"], method="predict_proba",
                              cv=StratifiedKFold(4, shuffle=True, random_state=0))
    return _cleanlab(data["noisy"], probs)


METHODS = {"ours": run_ours, "paper": run_paper, "cnn+cleanlab": run_cnn_cleanlab,
           "pretrained+lr+cleanlab": run_pretrained_lr_cleanlab}
COLOUR_ONLY = {"pretrained+lr+cleanlab"}  # on 70,000 grey digits its features alone take ~10 minutes


def child(method: str, data_path: Path, out: Path, folder: Path) -> None:
    with np.load(data_path) as npz:
        data = {k: npz[k] for k in npz.files}
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


def evaluate(name: str, slug: str, make_data, args) -> list[dict]:
    """``make_data()`` -> images, noisy labels, true labels, splits, error kind per image, exact and near pairs."""
    work = Path(args.workdir) / slug
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "images"
    if not (work / "data.npz").exists():
        x, noisy, truth, split, kind, pairs, near_pairs = make_data()
        items = write_folder(x, noisy, split, folder)
        np.savez(work / "data.npz", x=x, noisy=noisy, truth=truth, split=split, kind=kind, pairs=np.array(pairs),
                 near_pairs=np.array(near_pairs))
        (work / "items.json").write_text(json.dumps(items))
    with np.load(work / "data.npz") as npz:
        kind, n_pairs, n_near, colour = npz["kind"], len(npz["pairs"]), len(npz["near_pairs"]), npz["x"].ndim == 4
    is_error = kind != ""
    rows = []
    for method in args.methods:
        if method in COLOUR_ONLY and not colour:
            continue
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
            "recall_at_10pct": recall_at(scores, is_error, 0.10),
            "duplicates": "—" if dups is None else f"{dups[0]}/{n_pairs} + {dups[1]}/{n_near}",
            "seconds": seconds, "peak_gb": peak_gb,
        })
        print(f"[{name}] {method}: {rows[-1]}", file=sys.stderr, flush=True)
    print_table(name, len(kind), int(is_error.sum()), rows)
    if (work / "ours" / "evidence.npz").exists() and "ours" in args.methods:
        print_ablation(name, work / "ours" / "evidence.npz", is_error)
    return rows


def recall_at(scores: np.ndarray, truth: np.ndarray, share: float) -> float:
    """Share of the errors among the top ``share`` of images: what a reviewer who looks at that much finds."""
    top = np.argsort(-scores, kind="stable")[:round(share * len(scores))]
    return float(truth[top].sum() / max(1, truth.sum()))


def print_ablation(name: str, path: Path, is_error: np.ndarray) -> None:
    with np.load(path) as npz:
        evidence = {k: npz[k] for k in npz.files}
    print(f"\n#### {name}: each evidence source alone (ours)\n")
    print("| evidence | AP | errors in the top 10% |")
    print("|---|---|---|")
    for key in sorted(evidence, key=lambda k: (k == "error_score", k)):
        label = "combined (error_score)" if key == "error_score" else key
        print(f"| {label} | {average_precision(evidence[key], is_error):.4f} "
              f"| {recall_at(evidence[key], is_error, 0.10):.4f} |")
    sys.stdout.flush()


def print_table(name: str, n: int, injected: int, rows: list[dict]) -> None:
    print(f"\n### {name}: {n} images, {injected} label errors\n")
    print("| method | flagged | flagged / errors | recall | recall class | recall instance | precision | AP "
          "| errors in top 10% | duplicates exact + near | wall time | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['flagged_share']:.2%} | {r['flagged_x_injected']:.3f} | {r['recall']:.4f} "
              f"| {r['recall_class']:.4f} | {r['recall_instance']:.4f} | {r['precision']:.4f} | {r['ap']:.4f} "
              f"| {r['recall_at_10pct']:.4f} | {r['duplicates']} | {r['seconds'] / 60:.1f} min | {r['peak_gb']:.2f} GB |")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar10n", type=Path, help="folder with cifar10n_dev.npz")
    parser.add_argument("--cifar-labels", nargs="+", default=list(CIFAR_LABEL_SETS), choices=list(CIFAR_LABEL_SETS))
    parser.add_argument("--cifar-side", type=int, default=0,
                        help="resize the photos to this side first, as larger photos (> 64 px) are analysed")
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
    if not (args.mnist or args.fashion or args.cifar10n):
        parser.error("give --cifar10n, --mnist and/or --fashion")
    if args.cifar10n:
        resized = f", resized to {args.cifar_side} px" if args.cifar_side else ""
        for label_set in args.cifar_labels:
            evaluate(f"CIFAR-10N ({label_set} labels{resized})",
                     f"cifar10n-{label_set}" + (f"-{args.cifar_side}px" if args.cifar_side else ""),
                     lambda: load_cifar10n(args.cifar10n, label_set, seed=args.seed, side=args.cifar_side), args)
    for folder, title, slug, swaps in ((args.mnist, "MNIST (paper's corruption)", "mnist", MNIST_SWAPS),
                                       (args.fashion, "Fashion-MNIST (our corruption)", "fashion", FASHION_SWAPS)):
        if folder:
            evaluate(title, slug, lambda: corrupt(*load_set(folder), swaps, seed=args.seed, limit=args.limit), args)


if __name__ == "__main__":
    main()
