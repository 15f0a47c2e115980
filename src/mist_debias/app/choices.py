"""The ``mist`` commands' option enums, built from the library's choice lists (:mod:`mist_debias.core.choices`)
so that each list is defined once (typer turns each enum into a validated option), and the sampler options that
several commands share."""

from collections.abc import Sequence
from enum import Enum
from typing import Annotated

import typer

from mist_debias.core import choices


def choice_enum(name: str, values: Sequence[str]) -> type[Enum]:
    """A ``str`` enum with one member per value (``eos+pad`` → member ``eos_pad``, value ``"eos+pad"``)."""
    return Enum(name, [(value.replace("+", "_").replace("-", "_"), value) for value in values], type=str)


DtypeChoice = choice_enum("DtypeChoice", choices.DTYPE_NAMES)
MethodChoice = choice_enum("MethodChoice", choices.METHODS)
KeysChoice = choice_enum("KeysChoice", choices.KEY_SETS)
ControllerChoice = choice_enum("ControllerChoice", choices.CONTROLLER_NAMES)
PreserveChoice = choice_enum("PreserveChoice", choices.PRESERVE_MODES)
ClassifyModeChoice = choice_enum("ClassifyModeChoice", choices.CLASSIFY_MODES)

StepsOption = Annotated[int | None, typer.Option("--steps", help="Default: the model's sampler, else 20.")]
GuidanceOption = Annotated[float | None, typer.Option("--guidance", help="Default: the model's sampler, else 7.5.")]
EtaOption = Annotated[
    float | None, typer.Option("--eta", help="DDIM η (0: deterministic DDIM). Default: the model's, else 0.")
]
HeightOption = Annotated[int | None, typer.Option("--height")]
WidthOption = Annotated[int | None, typer.Option("--width")]
NegativePromptOption = Annotated[str | None, typer.Option("--negative-prompt")]
BatchSizeOption = Annotated[int | None, typer.Option("--batch-size", help="Default: the model's, else 8.")]
