"""User-facing errors: each carries one line that the CLI prints as it is."""


def one_line(error: BaseException) -> str:
    """The text of ``error`` with all whitespace, newlines included, collapsed to single spaces."""
    return " ".join(str(error).split())


class MistError(ValueError):
    """Base class of every error caused by the user's input (bad model, file, flag or prompt)."""


class ModelLoadError(MistError):
    """The model could not be found or is not a supported diffusers text-to-image pipeline."""


class PromptError(MistError):
    """A prompt is empty or too long for its EOS token to fit in the tokenizer's window."""


class EditFileError(MistError):
    """An edit file is unreadable, truncated, not safetensors, or made for another base model."""


class OutputPathError(MistError):
    """An output file or folder exists (without ``--force``) or cannot be written."""
