"""Dataset statistics from the recipe alone (no rendering): alignment per factor and group counts."""
from __future__ import annotations

import numpy as np

from ..config import later_settings_set
from .factors import FACTOR_TABLE, FACTORS, NUM_CLASSES, aligned_mask, majority_mask
from .recipe import SPLITS, SplitRecipe


def group_counts(labels: np.ndarray, values: np.ndarray, num_values: int) -> np.ndarray:
    """(num_values, 10) int64: number of samples per (factor value, class) group (one bincount)."""
    flat = values.astype(np.int64) * NUM_CLASSES + labels.astype(np.int64)
    return np.bincount(flat, minlength=num_values * NUM_CLASSES).reshape(num_values, NUM_CLASSES)


def split_stats(r: SplitRecipe, mode: str) -> dict:
    """Per split: count, class counts, and per factor the aligned fraction (value = class-aligned
    value), the majority fraction (the mode's majority/minority labelling) and (value, class) groups."""
    aligned = aligned_mask(r.label, r.factors)
    majority = majority_mask(r.label, r.factors, mode)
    factors = {}
    for f, name in enumerate(FACTORS):
        counts = group_counts(r.label, r.factors[:, f], FACTOR_TABLE[name].num_values)
        factors[name] = {
            "aligned_fraction": float(aligned[:, f].mean()),
            "majority_fraction": float(majority[:, f].mean()),
            "groups_nonempty": int((counts > 0).sum()),
            "group_min": int(counts[counts > 0].min()) if counts.any() else 0,
            "group_counts": counts.tolist(),
        }
    return {
        "count": len(r),
        "class_counts": np.bincount(r.label, minlength=NUM_CLASSES).tolist(),
        "all_aligned_fraction": float(aligned.all(axis=1).mean()),
        "factors": factors,
    }


def dataset_stats(recipe: dict[str, SplitRecipe], manifest: dict) -> dict:
    mode = manifest["settings"]["mode"]
    return {
        "settings": manifest["settings"],
        "recipe_sha256": manifest["recipe_sha256"],
        "splits": {s: split_stats(recipe[s], mode) for s in SPLITS},
    }


def format_stats(stats: dict) -> str:
    """A terminal table: one row per factor, aligned fraction per split, then group counts."""
    s = stats["settings"]
    ps = sorted(set(s["p_bias"].values()))
    p_text = str(ps[0]) if len(ps) == 1 else ", ".join(f"{k}={v}" for k, v in s["p_bias"].items())
    lines = [f"Biased MNIST  p_bias={p_text}  seed={s['seed']}  cell={s['cell_size']} "
             f"({3 * s['cell_size']}x{3 * s['cell_size']})  mode={s['mode']}"
             + "".join(f"  {k}={v}" for k, v in later_settings_set(s).items()), ""]
    splits = stats["splits"]
    head = f"{'':18s}" + "".join(f"{sp:>14s}" for sp in splits)
    lines.append(head)
    lines.append(f"{'images':18s}" + "".join(f"{splits[sp]['count']:>14d}" for sp in splits))
    lines.append("fraction of images at the class-aligned value:")
    for name in FACTORS:
        lines.append(f"  {name:16s}" + "".join(f"{splits[sp]['factors'][name]['aligned_fraction']:>14.3f}"
                                               for sp in splits))
    lines.append(f"  {'all 7 aligned':16s}" + "".join(f"{splits[sp]['all_aligned_fraction']:>14.3f}"
                                                      for sp in splits))
    lines.append("(factor value, class) groups: non-empty / smallest:")
    for name in FACTORS:
        cells = "".join(f"{str(splits[sp]['factors'][name]['groups_nonempty']) + ' / ' + str(splits[sp]['factors'][name]['group_min']):>14s}"
                        for sp in splits)
        lines.append(f"  {name:16s}" + cells)
    return "\n".join(lines)
