"""What several commands share: the --config option and where the configuration comes from."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgevoice.settings import DEFAULT_CONFIG_PATH, Settings, load_settings


def config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, default=None,
                        help=f"YAML settings file (default {DEFAULT_CONFIG_PATH} if it exists)")


def config_path(args: argparse.Namespace) -> Path | None:
    """The file `--config` names, else the default one if it exists (reloads re-read it)."""
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    return path


def load(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args))
