"""``diffusers-city`` command line: ``info``, ``demo``, ``scene``, ``generate <system>``.

Each subcommand lives in a module exposing ``add_arguments(parser)`` and ``run(args) -> int``:
the general ones in this package, ``generate <system>`` in its family
(``diffusers_city.pipelines.<system>.cli``, found through the registry of systems). Only the
invoked subcommand's module is imported, so one that is missing or broken cannot break
``--help`` or the others.

A failure prints one line, ``diffusers-city <command>: error: ...``, and exits with the status
of its kind (``cli.errors.ExitCode``, listed by ``--help``); ``DIFFUSERS_CITY_TRACEBACK=1``
re-raises instead, for a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .._systems import systems as registered_systems
from .._version import __version__
from .errors import ExitCode, classify, exit_codes_help
from .threads import add_threads, torch_threads

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": (f"{__name__}.info", "versions, sparse backends, renderer and device of this installation"),
    "demo": (f"{__name__}.demo", "run the shipped default pipelines and write their outputs"),
    "scene": (f"{__name__}.scene", "make, convert or preview a city scene"),
    "view": (f"{__name__}.view", "an interactive 3D view of an output in the browser"),
    "app": (f"{__name__}.app", "a browser app: pick a system and an input, generate, view, download"),
}


def _requested(argv: Sequence[str]) -> tuple[str, ...]:
    """The command path named in ``argv`` (e.g. ``("generate", "sat2city")``), before parsing.

    The top-level parser and ``generate`` take no valued options, so the first positional
    tokens are the command names.
    """
    words = [a for a in argv if not a.startswith("-")]
    if words[:1] == ["generate"]:
        return tuple(words[:2])
    return tuple(words[:1])


def _attach(parser: argparse.ArgumentParser, module_name: str, command: str) -> None:
    """Import the subcommand's module and let it add its arguments; record an import failure."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        parser.set_defaults(_cli_unavailable=f"diffusers-city {command} is not available: {error}")
        return
    module.add_arguments(parser)
    parser.set_defaults(_cli_run=module.run)


_EPILOG = {"epilog": exit_codes_help(), "formatter_class": argparse.RawDescriptionHelpFormatter}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The CLI parser; the subcommand named in ``argv`` gets its full arguments."""
    requested = _requested(argv)
    parser = argparse.ArgumentParser(
        prog="diffusers-city",
        description="Generative 3D cities (Sat2City, EarthCrafter, GaussianCity) as diffusers pipelines.",
        **_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"diffusers-city {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, **_EPILOG)
        add_threads(sub)
        if requested == (name,):
            _attach(sub, module, name)
    generate = commands.add_parser(
        "generate", help="run a pipeline on your own input", description="Run a pipeline on your own input."
    )
    systems = generate.add_subparsers(dest="system", metavar="SYSTEM", required=True)
    for name, system in registered_systems().items():
        sub = systems.add_parser(name, help=system.description, description=system.description, **_EPILOG)
        add_threads(sub)
        if requested == ("generate", name):
            _attach(sub, system.cli_module, f"generate {name}")
    return parser


def _finish_package_import() -> None:
    """Run ``diffusers_city/__init__.py`` (registration with diffusers) if the console script
    (``_diffusers_city_cli``) deferred it to parse the arguments first."""
    deferred = sys.modules[__name__.rpartition(".")[0]].__dict__.pop("_deferred_init", None)
    if deferred is not None:
        deferred()


def main(argv: Sequence[str] | None = None) -> int:
    """The ``diffusers-city`` command line (console script: ``_diffusers_city_cli``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    _finish_package_import()
    if hasattr(args, "_cli_unavailable"):
        print(args._cli_unavailable, file=sys.stderr)
        return ExitCode.FAILED
    command = " ".join(filter(None, (args.command, getattr(args, "system", None))))
    try:
        with torch_threads(args.threads):
            return int(args._cli_run(args))
    except (Exception, KeyboardInterrupt) as error:
        if os.environ.get("DIFFUSERS_CITY_TRACEBACK"):
            raise
        code, message = classify(error)
        print(f"diffusers-city {command}: error: {message}", file=sys.stderr)
        return int(code)
