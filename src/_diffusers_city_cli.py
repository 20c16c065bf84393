"""The ``diffusers-city`` console script, kept outside the package so that ``--help`` is instant.

``import diffusers_city`` registers the package with diffusers, which imports torch and diffusers
(seconds). This script puts the package module in place without running its ``__init__`` and
leaves that to ``diffusers_city.cli.main``, once the arguments parsed: help texts and usage
errors print at once, every command runs with the package imported as usual.
"""

from __future__ import annotations

import importlib.util
import sys


def main() -> int:
    """Run ``diffusers_city.cli.main`` with ``diffusers_city/__init__.py`` deferred until a command runs."""
    if "diffusers_city" not in sys.modules:
        spec = importlib.util.find_spec("diffusers_city")
        package = importlib.util.module_from_spec(spec)
        package._deferred_init = lambda: spec.loader.exec_module(package)
        sys.modules["diffusers_city"] = package
    from diffusers_city.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
