"""Feedback controllers for the debias loop, and a simulated plant to test them against."""

from mist_debias.loop.control.adaptive import AdaptiveController
from mist_debias.loop.control.base import (
    MODES,
    ConceptStatus,
    ConceptTarget,
    Controller,
    Observation,
    Proposal,
)
from mist_debias.loop.control.official import OfficialController
from mist_debias.loop.control.panel import PanelController

CONTROLLERS: dict[str, type[Controller]] = {
    OfficialController.name: OfficialController,
    AdaptiveController.name: AdaptiveController,
    PanelController.name: PanelController,
}


def controller_from_dict(config: dict) -> Controller:
    """Rebuild any controller from its :meth:`Controller.to_dict` configuration."""
    return CONTROLLERS[config["controller"]].from_dict(config)


__all__ = [
    "CONTROLLERS",
    "MODES",
    "AdaptiveController",
    "ConceptStatus",
    "ConceptTarget",
    "Controller",
    "Observation",
    "OfficialController",
    "PanelController",
    "Proposal",
    "controller_from_dict",
]
