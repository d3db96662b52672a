"""Face identity with the real dlib models on real photos (needs the ``face`` extra).

``skimage.data.astronaut()`` (Eileen Collins) and ``camera()`` (the cameraman) are two
different people; crops, rescaling and colour changes of one photo are the same person.
"""

from __future__ import annotations

import pytest
from PIL import Image, ImageEnhance, ImageOps
from skimage import data

pytest.importorskip("dlib", reason="face identity needs the `face` extra (dlib-bin)")

from evaluators.scorers import ScoreInputs  # noqa: E402
from evaluators.scorers.face_identity import (  # noqa: E402
    SAME_PERSON_DISTANCE,
    FaceIdentityScorer,
    model_files,
)
from trainer.errors import DataError  # noqa: E402


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut()).convert("RGB")


@pytest.fixture(scope="module")
def cameraman() -> Image.Image:
    # The cameraman's face is small in the full frame: a 3x enlarged crop around it.
    full = Image.fromarray(data.camera()).convert("RGB")
    return full.crop((150, 0, 400, 250)).resize((750, 750), Image.Resampling.BICUBIC)


def _variants(image: Image.Image) -> list[Image.Image]:
    return [
        image.crop((50, 0, 450, 400)),
        image.resize((300, 300)),
        ImageEnhance.Color(image).enhance(0.3),
        ImageOps.grayscale(image).convert("RGB"),
        ImageEnhance.Brightness(image).enhance(1.3),
    ]


def test_model_files_are_found_without_importing_the_package():
    for file in model_files():
        assert file.is_file() and file.stat().st_size > 1_000_000


def test_same_face_scores_higher_than_a_different_person(astronaut, cameraman):
    scorer = FaceIdentityScorer([astronaut])
    same = scorer.score(ScoreInputs(images=_variants(astronaut)))
    other = scorer.score(ScoreInputs(images=[cameraman]))
    assert same["faces_not_found"] == 0 and other["faces_not_found"] == 0
    assert same["face_distance"] < SAME_PERSON_DISTANCE < other["face_distance"]
    assert same["face_identity"] > other["face_identity"] + 0.3
    assert same["face_match_rate"] == 1.0 and other["face_match_rate"] == 0.0
    # And the other way round: the cameraman as the reference.
    reverse = FaceIdentityScorer([cameraman])
    assert (
        reverse.score(ScoreInputs(images=[cameraman]))["face_identity"]
        > reverse.score(ScoreInputs(images=[astronaut]))["face_identity"]
    )


def test_images_without_a_face_are_counted_and_score_zero(astronaut):
    scorer = FaceIdentityScorer([astronaut])
    rocket = Image.fromarray(data.rocket()).convert("RGB")
    scores = scorer.score(ScoreInputs(images=[astronaut, rocket]))
    assert scores["faces_not_found"] == 1.0
    assert scores["face_identity"] == pytest.approx(scores["face_similarity"] / 2)
    assert scores["face_match_rate"] == 0.5


def test_references_without_any_face_are_a_clear_error():
    with pytest.raises(DataError, match="no face found in any of the 1 reference images"):
        FaceIdentityScorer([Image.fromarray(data.coffee()).convert("RGB")])
