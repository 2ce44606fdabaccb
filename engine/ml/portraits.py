"""One portrait request: best-of-N candidates, scored against the owner's signature, refined and upscaled.

1. ``count * candidates`` images are generated (image ``i`` with seed ``seed + i``).
2. Each is scored (``engine.likeness``): faces found, distance to the signature, 0-100 likeness.
3. The ``count`` best are kept: one-face candidates always first, then by distance. Always ``count``,
   even when fewer reach ``min_likeness``; ``below_minimum`` says how many did not (the honest gate).
4. Presets with ``refine_face`` get the face regenerated; a refinement is kept only when it does not
   lower the likeness (or lose the face).
5. Presets with ``upscale = 2`` get the high-resolution pass; the delivered images are scored again, so
   the likeness shown is that of the image the user receives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import PIL.Image

from engine.likeness import Score, Signature, rank, score, select
from engine.ml.generate import REFINE_STRENGTH, UPSCALE_STRENGTH, Generator, Progress
from engine.presets import Preset

REFINE_SEED = 1_000_000  # seed offsets of the follow-up passes, so they never repeat a candidate's noise
UPSCALE_SEED = 2_000_000


@dataclass(frozen=True)
class Portraits:
    """The delivered images (best first), their final scores, and the gate's outcome."""

    images: list[PIL.Image.Image]
    scores: list[Score]
    below_minimum: int  # delivered portraits under the minimum likeness or without exactly one face
    # (0 without a signature: nothing to measure against)
    candidates: list[Score]  # every candidate's score, in generation order
    chosen: list[int]  # the delivered candidates' indices, best first
    refined: int  # how many refinements were kept
    measured: bool  # False without a signature: faces were counted, likeness was not measured

    def metadata(self) -> dict:
        """What the job keeps (no logs): raw distances and face counts of every candidate, which were
        delivered, the delivered ones' final distances, how many missed the minimum and were refined."""

        def distance(s: Score) -> float | None:
            return None if s.distance is None else round(s.distance, 4)

        return {
            "candidates": [{"faces": s.faces, "distance": distance(s)} for s in self.candidates],
            "delivered": self.chosen,
            "final": [{"faces": s.faces, "distance": distance(s)} for s in self.scores],
            "below_minimum": self.below_minimum,
            "refined": self.refined,
            "measured": self.measured,
        }


def make_portraits(
    generator: Generator,
    owner: str | None,
    preset: Preset,
    token: str,
    count: int,
    candidates: int,
    seed: int,
    signature: Signature | None,
    min_likeness: int,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Portraits:
    """``count`` portraits of ``preset``, the best of ``count * candidates`` (see the module docstring).

    Without a ``signature`` (a model trained before signatures existed) faces are still counted and
    one-face candidates preferred, but there is no likeness.
    """
    if count < 1 or candidates < 1:
        raise ValueError("count and candidates must be at least 1")
    total = count * candidates
    steps = preset.steps
    work = {
        "generate": total * steps,
        "refine": count * steps * REFINE_STRENGTH if preset.refine_face else 0.0,
        "upscale": count * steps * UPSCALE_STRENGTH * preset.upscale**2 if preset.upscale > 1 else 0.0,
    }
    whole = sum(work.values())
    offsets = {"generate": 0.0, "refine": work["generate"] / whole}
    offsets["upscale"] = offsets["refine"] + work["refine"] / whole

    def stage(name: str, done: int = 0, of: int = 1) -> Progress | None:
        if progress is None:
            return None
        share = work[name] / whole

        def report(fraction: float, message: str) -> None:
            progress(min(1.0, offsets[name] + share * (done + fraction) / of), message)

        return report

    images = generator.generate(
        owner, preset, token, total, seed, progress=stage("generate"), should_stop=should_stop
    )
    scores = [score(image, signature) for image in images]
    chosen = select(scores, count, min_likeness).indices if signature else rank(scores)[:count]
    picked = [images[i] for i in chosen]
    picked_scores = [scores[i] for i in chosen]

    refined = 0
    if preset.refine_face:
        for n, (image, before) in enumerate(zip(picked, picked_scores, strict=True)):
            if before.box is None:
                continue
            box = (before.box.left, before.box.top, before.box.right, before.box.bottom)
            candidate = generator.refine_face(
                owner,
                preset,
                token,
                image,
                box,
                seed + REFINE_SEED + chosen[n],
                stage("refine", n, count),
                should_stop,
            )
            after = score(candidate, signature)
            if _not_worse(after, before):
                picked[n], picked_scores[n] = candidate, after
                refined += 1

    if preset.upscale > 1:
        for n, image in enumerate(picked):
            picked[n] = generator.upscale(
                owner,
                preset,
                token,
                image,
                seed + UPSCALE_SEED + chosen[n],
                preset.upscale,
                stage("upscale", n, count),
                should_stop,
            )
        picked_scores = [score(image, signature) for image in picked]

    below = sum(1 for s in picked_scores if not s.reaches(min_likeness)) if signature else 0
    if progress:
        progress(1.0, "done")
    return Portraits(picked, picked_scores, below, scores, chosen, refined, signature is not None)


def _not_worse(after: Score, before: Score) -> bool:
    """A refinement is kept when it still shows one face and (with a signature) is no further from it."""
    if after.faces != 1 and before.faces == 1:
        return False
    if after.distance is None or before.distance is None:
        return after.faces >= 1
    return after.distance <= before.distance
