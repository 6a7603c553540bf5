"""Options shared by several subcommands, and their parsing into checked values."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from ..errors import InputError
from ..plan.presets import PRESETS
from ..runtime.native import FORWARD_ENGINES


def floats(text: str | None, name: str) -> tuple[float, ...] | None:
    """``"0.485,0.456,0.406"`` → a tuple; one clear error for anything else."""
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{name} '{text}': expected comma-separated numbers, e.g. 0.485,0.456,0.406") from None
    if not vals or any(v != v or v in (float("inf"), float("-inf")) for v in vals):
        raise InputError(f"{name} '{text}': values must be finite numbers")
    return vals


def size(text: str | None) -> tuple[int, int] | None:
    """``"224"`` or ``"224,192"`` (height, width)."""
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--size '{text}': expected H or H,W in pixels") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise InputError(f"--size '{text}': expected one or two positive integers")
    return (parts[0], parts[-1])


def device_option(fn):
    """--device and --forward-engine: where the kernels and the forward pass run."""
    fn = click.option("--forward-engine", type=click.Choice(list(FORWARD_ENGINES)), default="auto",
                      show_default=True,
                      help="What runs the forward pass: the analyzer's own CPU kernels (auto: where every "
                           "layer is one they run, on --device cpu; else onnxruntime), or onnxruntime "
                           "(its activations bit for bit).")(fn)
    return click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
                        help="Where the backward kernels run (cuda needs the CUDA kernels and a GPU).")(fn)


def model_options(fn):
    """--preset, --rule, --device: how the model is explained."""
    fn = device_option(fn)
    fn = click.option("--rule", "rules", multiple=True, metavar="PATTERN=RULE[:PARAM]",
                      help="Override the preset for layers whose name (glob) or index matches; "
                           "repeatable, applied in order. E.g. 'features.0=zbox', '*=epsilon:0.25', "
                           "'conv*=gamma:0.5,nobias'.")(fn)
    fn = click.option("--preset", default="auto", show_default=True, metavar="NAME",
                      help=f"Rule preset: auto (chosen by the network's structure), {', '.join(sorted(PRESETS))}; "
                           "`lrpath plan --presets` says what each is for.")(fn)
    return fn


def output_option(fn):
    """``--model-output``: which output of a model with several is explained."""
    return click.option("--model-output", "output", default=None, metavar="NAME",
                        help="Which output of a model with several to explain: its name or index "
                             "(default: the first).")(fn)


def path_score_option(fn):
    """``--path-score``: how the K best paths are ranked (``paths.ranking``)."""
    from ..paths.ranking import SCORES

    return click.option("--path-score", type=click.Choice(SCORES), default="auto",
                        show_default=True,
                        help="Rank paths by the sum of their flows (flow, the paper's) or by the relevance that "
                             "follows them, each neuron splitting its relevance in proportion to its edges "
                             "(carried); auto: flow where every path crosses the same layers, carried where skip "
                             "connections make paths differ in length.")(fn)


@contextlib.contextmanager
def progress(total: int, label: str):
    """A progress bar on stderr when it is a terminal; silent otherwise (CI logs stay clean)."""
    if sys.stderr.isatty():
        with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as bar:
            yield bar
    else:
        class _Silent:
            def update(self, n: int) -> None:
                pass
        yield _Silent()


def zoo_name(arg: str | Path) -> str | None:
    """The zoo name ``arg`` stands for, or None when it is a file."""
    from ..models.registry import ZOO

    return str(arg) if not Path(arg).exists() and str(arg) in ZOO else None


def model_file(arg: str | Path) -> Path:
    """A model argument: a .onnx path, or a zoo name (built into the cache if needed)."""
    from ..models.registry import ZOO

    p = Path(arg)
    if not p.exists() and str(arg) in ZOO:
        return ZOO[str(arg)].path()
    if not p.exists():  # onnxruntime's own "NoSuchFile" text is not a line a user should read
        raise InputError(f"model file not found: {p}{zoo_hint(p)}")
    return p


def zoo_hint(p: Path) -> str:
    """" (did you mean the zoo model 'vgg16'?)" for a missing model argument that is no .onnx
    path but near a zoo name; "" otherwise."""
    from ..models.registry import ZOO
    from ..names import did_you_mean

    if p.suffix.lower() == ".onnx":
        return ""
    return did_you_mean(str(p), ZOO).replace("(did you mean", "(did you mean the zoo model")
