"""Classifiers that map generated images to attribute cells."""

from mist_debias.measure.classifiers.base import CellClassifier, CellPredictions
from mist_debias.measure.classifiers.clip import DEFAULT_CLIP_MODEL, ClassifierError, CLIPCellClassifier

__all__ = ["DEFAULT_CLIP_MODEL", "CLIPCellClassifier", "CellClassifier", "CellPredictions", "ClassifierError"]
