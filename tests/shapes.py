"""Generated images with known classes: bars, a diagonal and a ring, each with its own jitter."""

import numpy as np

CLASSES = ("horizontal", "vertical", "diagonal", "ring")


def pattern(kind: str, rng: np.random.Generator, side: int = 24) -> np.ndarray:
    img = rng.integers(0, 90, (side, side)).astype(np.uint8)
    oy, ox = (int(v) for v in rng.integers(-3, 4, 2))
    yy, xx = np.mgrid[:side, :side]
    c = side // 2
    mask = {"horizontal": (np.abs(yy - c - oy) < 2) & (np.abs(xx - c - ox) < 8),
            "vertical": (np.abs(xx - c - ox) < 2) & (np.abs(yy - c - oy) < 8),
            "diagonal": (np.abs(yy - xx - oy + ox) < 2) & (np.abs(yy - c) < 9),
            "ring": np.abs(np.hypot(yy - c - oy, xx - c - ox) - rng.uniform(5, 8)) < 1.5}[kind]
    img[mask] = rng.integers(170, 256)
    return img
