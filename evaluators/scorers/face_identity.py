"""Face identity: does the generated person have the training subject's face? (dlib)

dlib's face-recognition ResNet maps a face to a 128-d descriptor in which two photos of the
same person lie closer than 0.6 (Euclidean) and different people farther (99.38% on LFW).
The models come from the ``face-recognition-models`` package and dlib from ``dlib-bin``
(the optional extra ``face``): ``pip install dlib-bin face-recognition-models``.

Per generated image, the largest detected face is compared with the face of every reference
image. ``similarity = max(0, 1 - distance)``, so dlib's same-person threshold 0.6 is a
similarity of 0.4. Metrics:

* ``face_identity``: mean over generated images of their mean similarity, 0 for an image where
  no face was found (so a LoRA that destroys faces is not rewarded); the objective uses this.
* ``face_similarity`` / ``face_distance``: means over the images where a face was found
  (``face_distance`` is absent when no face was found).
* ``face_match_rate``: share of generated images whose mean distance is below 0.6.
* ``faces_not_found``: how many generated images had no detectable face.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from evaluators.scorers.base import ScoreInputs, subject_images
from trainer.errors import BackendMissingError, DataError, ModelLoadError

SAME_PERSON_DISTANCE = 0.6
_SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def model_files() -> tuple[Path, Path]:
    """The landmark and recognition model files inside ``face_recognition_models``.

    Located with ``find_spec`` instead of importing the package: its ``__init__`` imports
    ``pkg_resources``, which current setuptools no longer ship.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendMissingError("the face identity metric", "face-recognition-models")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    files = (folder / _SHAPE_MODEL, folder / _RECOGNITION_MODEL)
    for file in files:
        if not file.is_file():
            raise ModelLoadError(f"face_recognition_models is installed but {file} is missing")
    return files


def _dlib():
    try:
        import dlib
    except ImportError as error:
        raise BackendMissingError("the face identity metric", "dlib-bin") from error
    return dlib


class FaceEncoder:
    """dlib's HOG face detector + 5-point landmarks + ResNet descriptor."""

    def __init__(self, upsample: int = 1):
        dlib = _dlib()
        shape_file, recognition_file = model_files()
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(shape_file))
        self.recognition = dlib.face_recognition_model_v1(str(recognition_file))

    def descriptor(self, image: Image.Image) -> np.ndarray | None:
        """The 128-d descriptor of the largest face in ``image``, or None if none is found."""
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        boxes = list(self.detector(pixels, self.upsample))
        if not boxes:
            return None
        box = max(boxes, key=lambda b: b.area())
        shape = self.landmarks(pixels, box)
        return np.asarray(self.recognition.compute_face_descriptor(pixels, shape))


def similarity(distance: np.ndarray | float) -> np.ndarray | float:
    return np.maximum(0.0, 1.0 - np.asarray(distance))


class FaceIdentityScorer:
    name = "face"
    needs_generation = True
    random_weights = False

    def __init__(self, references: Sequence[Image.Image], upsample: int = 1):
        self.encoder = FaceEncoder(upsample)
        found = [d for d in map(self.encoder.descriptor, references) if d is not None]
        if not found:
            raise DataError(
                f"face identity: no face found in any of the {len(references)} reference "
                "images; remove 'face' from eval.metrics for subjects that are not people"
            )
        self.references = np.stack(found)
        self.references_without_face = len(references) - len(found)

    def score(self, inputs: ScoreInputs) -> dict[str, float]:
        images = subject_images(inputs)
        distances, similarities = [], []
        for image in images:
            d = self.encoder.descriptor(image)
            if d is not None:
                dist = np.linalg.norm(self.references - d, axis=1)
                distances.append(float(dist.mean()))
                similarities.append(float(similarity(dist).mean()))
        n, found = max(len(images), 1), len(distances)
        matches = sum(d < SAME_PERSON_DISTANCE for d in distances)
        scores = {
            "face_identity": sum(similarities) / n,
            "face_similarity": float(np.mean(similarities)) if found else 0.0,
            "face_match_rate": matches / n,
            "faces_not_found": float(len(images) - found),
        }
        if found:  # no distance without a face (and no NaN in the metrics)
            scores["face_distance"] = float(np.mean(distances))
        return scores
