"""Which images show the same physical part, so that a split keeps every view of a part on one side.

A data set may photograph one part several times: the magnetic-tile set shoots each tile under up to six
lightings (``expK_num_N``, K = 1 darkest … 6 brightest, N a running frame number), so one part's files are a run
of rising numbers within its class folder. A split by file puts a part's other exposures in training and measures
"a known part under another light", not a new part.

:func:`part_ids` groups in two ways and joins what either says (joining too much only costs the split some
freedom; joining too little leaks):

1. **names**: within one class, files whose running numbers lie at most ``max_gap`` apart are one run;
2. **images**: two images of one class of nearly the same size whose high-passed thumbnails correlate at least
   ``min_similarity`` show the same surface, whatever their names say (exposure changes gain and offset, which
   the standardised, high-passed thumbnail ignores; the surface's own texture is what makes it one part).

:func:`grouping_report` says how well the two agree, so a user can check the grouping instead of trusting names.
Files whose names carry no running number are grouped by their images alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_NUMBERED = re.compile(r"(?:^|/)exp(?P<exposure>\d+)_num_(?P<number>\d+)\.[^/]+$")
THUMB = 96


def exposure_of(name: str) -> int | None:
    """The exposure index K of a magnetic-tile style name ``…/expK_num_N.jpg`` (``None`` when absent)."""
    match = _NUMBERED.search(name)
    return int(match["exposure"]) if match else None


def _number(name: str) -> int | None:
    match = _NUMBERED.search(name)
    return int(match["number"]) if match else None


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """The standardised high-pass of a ``THUMB``² thumbnail: the surface's texture, blind to gain and offset."""
    import cv2

    small = cv2.resize(image.astype(np.float32), (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    high = small - cv2.GaussianBlur(small, (0, 0), 6)
    return (high - high.mean()) / (high.std() + 1e-6)


class _Union:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> bool:
        a, b = self.find(i), self.find(j)
        if a == b:
            return False
        self.parent[max(a, b)] = min(a, b)
        return True


@dataclass(frozen=True)
class Grouping:
    """``ids[i]``: the part of sample i (equal ids = one part); ``by_name`` and ``by_image``: how many joins each
    rule made that the other had not; ``similar_within`` / ``similar_across``: the median image similarity of
    pairs inside one name run and the 99th percentile of pairs across runs (same class, similar size)."""

    ids: list[str]
    by_name: int
    by_image: int
    similar_within: float
    similar_across: float

    @property
    def parts(self) -> int:
        return len(set(self.ids))


def part_ids(samples, max_gap: int = 300, min_similarity: float = 0.75, size_tolerance: float = 0.1) -> Grouping:
    """Group ``samples`` (objects with ``name``, ``image`` and ``category``) into physical parts (module doc)."""
    n = len(samples)
    union = _Union(n)
    by_class: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        by_class.setdefault(str(sample.category), []).append(i)
    by_name = by_image = 0
    run_of = list(range(n))
    for members in by_class.values():
        numbered = sorted((i for i in members if _number(samples[i].name) is not None),
                          key=lambda i: _number(samples[i].name))
        for a, b in zip(numbered, numbered[1:]):
            if _number(samples[b].name) - _number(samples[a].name) <= max_gap:
                by_name += union.join(a, b)
                run_of[b] = run_of[a]
    within, across = [], []
    for members in by_class.values():
        thumbs = np.stack([_thumbnail(samples[i].image).ravel() for i in members])
        similarity = thumbs @ thumbs.T / thumbs.shape[1]
        shapes = np.array([samples[i].image.shape[:2] for i in members], np.float64)
        big = np.maximum(shapes[:, None, :], shapes[None, :, :])
        alike = (np.abs(shapes[:, None, :] - shapes[None, :, :]) <= size_tolerance * big).all(axis=2)
        for x, y in zip(*np.nonzero(np.triu(alike, 1))):
            i, j = members[x], members[y]
            (within if run_of[i] == run_of[j] else across).append(float(similarity[x, y]))
            if similarity[x, y] >= min_similarity and union.join(i, j):
                by_image += 1
    roots = [union.find(i) for i in range(n)]
    first_name = {}
    for i, root in enumerate(roots):
        first_name.setdefault(root, samples[i].name)
    ids = [first_name[root] for root in roots]
    return Grouping(ids, by_name, by_image,
                    float(np.median(within)) if within else float("nan"),
                    float(np.percentile(across, 99)) if across else float("nan"))
