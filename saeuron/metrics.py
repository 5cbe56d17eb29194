"""Unlearning metrics: the one definition that the sweep, the evaluation, the report and the
benchmarks use.

For target concept(s) C of one domain (style or object), over pictures prompted with (object,
style) cells and judged by a classifier, each metric is the share of a population of pictures
that passes a check, counted as the SAeUron reference evaluation counts them on UnlearnCanvas:

- UA, unlearning accuracy: the targets' pictures NOT judged as the concept they were prompted
  with;
- IRA, in-domain retain accuracy: the domain's accuracy on the pictures of its other concepts
  (for styles the other styles; the unstyled row is not a style to retain);
- CRA, cross-domain retain accuracy: the other domain's accuracy where the target's domain is
  absent from the prompt: for style targets the objects of the unstyled row ("An image of
  {object}.", sampled with the edit on); for object targets the styles of every styled picture;
- kept, own content kept: the other domain's accuracy on the targets' own pictures (a style
  target's row keeps its objects, an object target's column its styles): what "remove the
  style, keep my subject" asks first, and what UA cannot see: a target row turned to noise has
  UA 1 and kept near 0;
- CRA_grid: the other domain's accuracy on every picture, the targets' own included.

A population can be empty (the sweep's few validation cells may hold no unstyled picture): its
metric is then NaN and its count (0, 0). Counts pool judgements by addition; intervals are
percentile bootstraps over pictures.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from saeuron.names import DOMAINS, NO_STYLE

METRICS = ("UA", "IRA", "CRA", "kept", "CRA_grid")
"""What `outcomes` counts, in table order."""
BOOTSTRAP = 10_000
"""Resamples of the bootstrap intervals."""


@dataclass
class Judged:
    """Pictures with what they were prompted with and what the judge saw, per picture: indices
    into `styles` and `objects` (a prediction of -1: a label the judge knows and they do not)."""

    style_true: np.ndarray
    object_true: np.ndarray
    style_pred: np.ndarray
    object_pred: np.ndarray
    styles: tuple[str, ...]
    """Style labels, the unstyled 'none' among them."""
    objects: tuple[str, ...]
    features: np.ndarray | None = None
    """float (N, d): the judge's features of each picture, for the Frechet distances."""

    def labels(self, domain: str) -> tuple[str, ...]:
        return self.styles if domain == "style" else self.objects

    def truth(self, domain: str) -> np.ndarray:
        return self.style_true if domain == "style" else self.object_true

    def pred(self, domain: str) -> np.ndarray:
        return self.style_pred if domain == "style" else self.object_pred


def other(domain: str) -> str:
    return "object" if domain == "style" else "style"


def check_targets(labels: tuple[str, ...], domain: str, concepts: list[str]) -> list[int]:
    """Indices of the targets in `labels`, or a ValueError naming the known concepts."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; use 'style' or 'object'")
    unknown = [c for c in concepts if c not in labels or (domain == "style" and c == NO_STYLE)]
    if unknown or not concepts:
        known = [c for c in labels if c != NO_STYLE]
        raise ValueError(f"unknown {domain} target(s) {unknown or concepts}; known: "
                         f"{', '.join(known)}")
    return [labels.index(c) for c in concepts]


def target_mask(judged: Judged, domain: str, concepts: list[str]) -> np.ndarray:
    """bool per picture: prompted with one of the target concepts (checked: check_targets)."""
    return np.isin(judged.truth(domain), check_targets(judged.labels(domain), domain, concepts))


def outcomes(judged: Judged, domain: str, concepts: list[str]) -> dict[str, np.ndarray]:
    """Per metric, the pass (True) or fail of each picture of its population."""
    target = target_mask(judged, domain, concepts)
    correct = judged.pred(domain) == judged.truth(domain)
    other_correct = judged.pred(other(domain)) == judged.truth(other(domain))
    unstyled = judged.style_true == judged.styles.index(NO_STYLE)
    return {"UA": ~correct[target],
            "IRA": correct[~target & ~unstyled if domain == "style" else ~target],
            "CRA": other_correct[unstyled if domain == "style" else ~unstyled],
            "kept": other_correct[target],
            "CRA_grid": other_correct}


def counts(judged: Judged, domain: str, concepts: list[str]) -> dict[str, list[int]]:
    """Per metric, [pictures that pass, pictures counted]: what pools across judgements."""
    return {m: [int(v.sum()), int(v.size)] for m, v in outcomes(judged, domain, concepts).items()}


def pooled(*many: dict[str, list[int]]) -> dict[str, list[int]]:
    """The counts of several judgements together."""
    return {m: [sum(c[m][0] for c in many), sum(c[m][1] for c in many)] for m in many[0]}


def rates(counted: dict[str, list[int]]) -> dict[str, float]:
    """Each metric's share in [0, 1] (NaN where nothing is counted)."""
    return {m: hits / n if n else float("nan") for m, (hits, n) in counted.items()}


def unlearning_metrics(judged: Judged, domain: str, concepts: list[str]) -> dict[str, float]:
    """UA, IRA, CRA, kept and CRA_grid of judged pictures for targets of one domain."""
    return rates(counts(judged, domain, concepts))


def judged_instead(judged: Judged, domain: str, concepts: list[str]) -> dict[str, int]:
    """What the targets' pictures were judged as in their domain, most frequent first
    ('?': a label outside the grid's)."""
    target = target_mask(judged, domain, concepts)
    labels = judged.labels(domain)
    seen = Counter(labels[i] if i >= 0 else "?" for i in judged.pred(domain)[target])
    return dict(sorted(seen.items(), key=lambda kv: (-kv[1], kv[0])))


def describe(instead: dict[str, int], top: int = 4) -> str:
    """'none 7, ember 2, sketch 1' (the `top` most frequent, then the rest summed)."""
    items = list(instead.items())
    text = ", ".join(f"{label} {n}" for label, n in items[:top])
    rest = sum(n for _, n in items[top:])
    return text + (f", other {rest}" if rest else "")


def interval(counted: list[list[int]], level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval, over pictures, of the mean of several targets' shares
    (one [hits, n] each; a single share with one). Resampling n pictures with replacement
    makes a share Binomial(n, p) / n, so the resamples are drawn as that directly."""
    counted = [(h, n) for h, n in counted if n]
    if not counted:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = np.mean([rng.binomial(n, h / n, BOOTSTRAP) / n for h, n in counted], axis=0)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of feature vectors (N, d), as FID
    computes it: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2). With fewer
    pictures than dimensions the covariances are singular and the figure is biased upward:
    compare it only with distances of sets of the same sizes."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Frechet distance needs >= 2 pictures per set, got {len(a)} and "
                         f"{len(b)}")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(0))) @ vectors.T
    cross = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(0)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * cross)


def own_reference(judged: Judged, domain: str, concepts: list[str]) -> np.ndarray:
    """bool per picture: the unedited pictures that show what the targets' own pictures should
    become: for styles the unstyled row (the same objects with the style left out of the
    prompt), for objects the other objects of the same rows (MiniCanvas has no prompt without
    an object)."""
    target = target_mask(judged, domain, concepts)
    if domain == "style":
        return judged.style_true == judged.styles.index(NO_STYLE)
    return np.isin(judged.style_true, np.unique(judged.style_true[target])) & ~target


DISTANCES = ("FD_own", "FD_own_base", "FD_rest", "FD_rest_base")
"""What `distances` measures: Frechet distances in the judge's feature space."""


def distances(edited: Judged, base: np.ndarray, reference: np.ndarray, domain: str,
              concepts: list[str]) -> dict[str, float]:
    """Frechet distances of edited pictures (with features) in the judge's feature space:

    - FD_own: the targets' own edited pictures against `own_reference` of the unedited grid
      (`base`: its features, in the same picture order): low when the target's pictures became
      what the prompt without the target draws, high when they became noise;
    - FD_own_base: the same for the unedited pictures, the distance the edit starts from (the
      concept still present);
    - FD_rest: every other picture of the grid (what the edit should leave alone) against
      `reference`, features of renders of the same cells (or of the unedited grid's pictures
      where the world cannot render them); the targets' own cells are left out, since their
      renders show the concept the edit removes;
    - FD_rest_base: the same for the unedited pictures, FD_rest's floor.
    """
    if edited.features is None:
        raise ValueError("distances need the judge's features of the edited pictures")
    target = target_mask(edited, domain, concepts)
    own = base[own_reference(edited, domain, concepts)]

    def fd(a: np.ndarray, b: np.ndarray) -> float:  # NaN where a grid is too small to tell
        return frechet_distance(a, b) if min(len(a), len(b)) >= 2 else float("nan")

    return {"FD_own": fd(edited.features[target], own), "FD_own_base": fd(base[target], own),
            "FD_rest": fd(edited.features[~target], reference[~target]),
            "FD_rest_base": fd(base[~target], reference[~target])}


def assess(edited: Judged, base: np.ndarray, reference: np.ndarray, domain: str,
           concepts: list[str]) -> dict:
    """Every figure of one target: the shares of METRICS, DISTANCES, what its pictures were
    judged as instead (`instead`, a count per label) and the counts (`counts`)."""
    counted = counts(edited, domain, concepts)
    return {**rates(counted), **distances(edited, base, reference, domain, concepts),
            "instead": judged_instead(edited, domain, concepts), "counts": counted}
