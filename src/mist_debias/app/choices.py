"""Choices shared by the ``mist`` commands (typer turns each enum into a validated option)."""

from enum import Enum


class DtypeChoice(str, Enum):
    """Weight and generation precision."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
