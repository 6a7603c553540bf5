"""One exception family, so the CLI can turn every expected failure into one line + exit 2."""

from __future__ import annotations


class LrpathError(Exception):
    """Base of every error the analyzer raises on purpose (bad model, bad input, bad option)."""

    exit_code = 2


class ModelError(LrpathError):
    """The file is not a usable ONNX model (unreadable, malformed, unsafe, non-finite weights)."""


class UnsupportedOpError(ModelError):
    """The graph holds an op (or an op attribute) whose relevance the analyzer cannot explain."""

    def __init__(self, op_type: str, node: str, detail: str = "") -> None:
        self.op_type, self.node, self.detail = op_type, node, detail
        msg = f"unsupported op {op_type} at node '{node}'"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class InputError(LrpathError):
    """An input (image, tensor, target, option value) does not fit the model or is unreadable."""


class RuleError(LrpathError):
    """An unknown preset or rule, or a rule parameter outside its domain."""


class OutputError(LrpathError):
    """The output folder cannot be created or written."""


class NumericalError(LrpathError):
    """Relevance became NaN or infinite; names the layer where it first appeared."""


def first_line(exc: BaseException) -> str:
    """An exception as one line of an error message: its first line, or its type's name."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
