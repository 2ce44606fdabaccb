"""Likeness scores on real faces from packages: the signature, the 0-100 curve, ranking and the gate."""

import io
import math

import pytest
from PIL import Image

from engine.intake import Accepted, IntakeLimits, process_photo
from engine.likeness import (
    Score,
    Signature,
    distance_for_likeness,
    likeness_from_distance,
    rank,
    score,
    select,
)
from tests import faces_data


@pytest.fixture(scope="module")
def accepted() -> list[Accepted]:
    """The user's three photos through the real intake: face crops and fingerprints."""
    results: list[Accepted] = []
    for data in faces_data.same_person_photos():
        result = process_photo(data, IntakeLimits(), [a.fingerprint for a in results])
        assert isinstance(result, Accepted)
        results.append(result)
    return results


@pytest.fixture(scope="module")
def signature(accepted) -> Signature:
    """Signature of the first two photos; the third is the user's "new" picture."""
    return Signature.from_embeddings([a.fingerprint.embedding for a in accepted[:2]])


def test_the_curve_has_dlibs_threshold_at_50_and_is_monotonic():
    assert likeness_from_distance(0.6) == 50
    assert likeness_from_distance(0.0) == 100 and likeness_from_distance(5.0) == 0
    values = [likeness_from_distance(d / 100) for d in range(0, 120)]
    assert values == sorted(values, reverse=True)
    # The documented table (engine/likeness.py, docs/likeness.md).
    table = {0.35: 99, 0.45: 95, 0.5: 88, 0.55: 73, 0.65: 27, 0.7: 12, 0.8: 2}
    assert {d: likeness_from_distance(d) for d in table} == table
    for value in (10, 50, 73, 95):
        assert likeness_from_distance(distance_for_likeness(value)) == value
    assert distance_for_likeness(0) == math.inf and distance_for_likeness(100) == 0.0
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError):
            likeness_from_distance(bad)


def test_signature_round_trips_and_rejects_garbage(signature):
    assert len(signature.embedding) == 128 and signature.photos == 2
    assert Signature.from_bytes(signature.to_bytes()) == signature
    for bad in (b"", b"LKSG", b"not a signature at all", signature.to_bytes()[:-8]):
        with pytest.raises(ValueError):
            Signature.from_bytes(bad)
    with pytest.raises(ValueError):
        Signature.from_embeddings([])


def test_the_users_own_crop_outranks_another_person_a_pair_and_no_face(accepted, signature):
    own_crop = Image.open(io.BytesIO(accepted[2].image))
    candidates = {
        "no face": faces_data.coffee(),
        "another person": faces_data.grace_hopper(),
        "two people": faces_data.side_by_side(faces_data.astronaut(), faces_data.grace_hopper()),
        "own crop": own_crop,
        "noise": faces_data.noise(320, 240),
    }
    scores = {name: score(image, signature) for name, image in candidates.items()}
    own, other = scores["own crop"], scores["another person"]
    assert own.faces == 1 and other.faces == 1
    assert own.distance < 0.6 < other.distance  # dlib's operating point separates them
    assert own.likeness >= 85 and other.likeness < 50
    assert scores["two people"].faces == 2
    assert scores["no face"] == Score(0, None, None) and scores["noise"].faces == 0
    names = list(candidates)
    order = [names[i] for i in rank([scores[n] for n in names])]
    assert order == ["own crop", "another person", "two people", "no face", "noise"]
    # A several-faces candidate never beats a one-face one, even when its main face is the user's.
    assert scores["two people"].distance < other.distance


def test_gate_always_delivers_count_and_says_how_many_miss(accepted, signature):
    own = score(Image.open(io.BytesIO(accepted[2].image)), signature)
    other = score(faces_data.grace_hopper(), signature)
    none = Score(0, None, None)
    scores = [none, other, own, none]
    picked = select(scores, 2, min_likeness=50)
    assert picked.indices == [2, 1] and picked.below_minimum == 1 and picked.needs_note
    assert select(scores, 1, 50).below_minimum == 0 and not select(scores, 1, 50).needs_note
    everything = select(scores, 4, 50)
    assert len(everything.indices) == 4 and everything.below_minimum == 3
    assert select(scores, 2, min_likeness=0).below_minimum == 0  # 0 gates nothing but faces
    with pytest.raises(ValueError):
        select(scores, 5, 50)


def test_a_signature_is_closer_to_the_person_than_any_stranger(accepted, signature):
    """A strangers' sample: 100 LFW faces are too small for HOG, so the check uses Grace Hopper at
    several scales, and the user's photo at the same scales."""
    for factor in (0.5, 1.0):
        own = score(faces_data.upscaled(faces_data.astronaut(), factor * 1.5), signature)
        other = score(faces_data.upscaled(faces_data.grace_hopper(), factor * 1.5), signature)
        assert own.faces == other.faces == 1
        assert own.likeness > other.likeness
