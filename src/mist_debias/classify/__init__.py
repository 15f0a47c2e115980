"""Classifiers that map generated images to attribute cells."""

from mist_debias.classify.base import CellClassifier, CellPredictions

__all__ = ["CellClassifier", "CellPredictions"]
