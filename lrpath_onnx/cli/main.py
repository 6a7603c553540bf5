"""The ``lrpath`` command: one group, one module per subcommand, one error policy.

Every expected failure is an ``LrpathError`` (or a click usage error) and ends as one line
on stderr with exit code 2; an audit that finds problems exits 1; anything unexpected is
still one line (exit 3), with the traceback only when ``LRPATH_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

import click

from ..allocator import tune_allocator
from ..errors import LrpathError
from . import (audit_cmd, bench_cmd, compile_cmd, deconv_cmd, demo_cmd, evaluate_cmd, explain_cmd, models_cmd,
               optimize_cmd, paths_cmd, plan_cmd, report_cmd)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lrpath-onnx", prog_name="lrpath")
def cli() -> None:
    """Explain ONNX image classifiers with Layer-wise Relevance Propagation."""


cli.add_command(plan_cmd.plan)
cli.add_command(explain_cmd.explain)
cli.add_command(bench_cmd.bench)
cli.add_command(demo_cmd.demo)
cli.add_command(models_cmd.models)
cli.add_command(paths_cmd.paths)
cli.add_command(optimize_cmd.optimize)
cli.add_command(deconv_cmd.deconv)
cli.add_command(audit_cmd.audit)
cli.add_command(report_cmd.report)
cli.add_command(evaluate_cmd.evaluate_cmd, name="evaluate")
cli.add_command(compile_cmd.compile_cmd, name="compile")


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map every outcome to an exit code."""
    tune_allocator()
    try:
        rv = cli.main(args=argv, prog_name="lrpath", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except LrpathError as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"error: {_one_line(exc.format_message())}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except MemoryError:
        click.echo("error: out of memory (try a smaller --batch-size)", err=True)
        return 2
    except Exception as exc:  # a bug: still one line, traceback on request
        if os.environ.get("LRPATH_DEBUG") == "1":
            raise
        click.echo(f"error: internal error ({type(exc).__name__}: {_one_line(exc)}); "
                   "rerun with LRPATH_DEBUG=1 for the traceback", err=True)
        return 3


def entry() -> None:  # pragma: no cover - console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
