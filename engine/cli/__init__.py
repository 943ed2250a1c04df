"""The `activessf-engine` command line: one module per group of commands, `main` puts them together."""

from activessf_engine.cli.main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
