"""The ``mist`` commands' option enums, built from the library's choice lists (:mod:`mist_debias.core.choices`)
so that each list is defined once; typer turns each enum into a validated option."""

from collections.abc import Sequence
from enum import Enum

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
