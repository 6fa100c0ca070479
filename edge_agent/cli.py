"""The ``edge-agent`` command: ``run``, ``validate`` and ``demo``.

User mistakes (a broken config, a missing file) end with a clear message and a non-zero
exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent import __version__
from edge_agent.config import AgentConfig, ConfigInvalid, load_config
from edge_agent.drivers.registry import DriverMissing

__all__ = ["main"]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the agent with a configuration file")
    run_p.add_argument("config", type=Path)
    val_p = sub.add_parser("validate", help="check a configuration file and list every problem")
    val_p.add_argument("config", type=Path)
    demo_p = sub.add_parser("demo", help="run the agent against simulated devices and a "
                            "local broker, and show the telemetry as the platform sees it")
    demo_p.add_argument("--dir", type=Path, default=Path(".quickstart"),
                        help="working folder for certificates, broker and buffer "
                        "(default: .quickstart)")
    demo_p.add_argument("--seconds", type=float, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from edge_agent.devtools.demo import run_demo

        return run_demo(args.dir, seconds=args.seconds)
    config = _load(args.config)
    if config is None:
        return EXIT_INVALID
    if args.command == "validate":
        points = sum(len(d.points) for d in config.devices)
        print(f"{args.config}: OK ({len(config.devices)} devices, {points} points)")
        return EXIT_OK
    return _run(config)


def _load(path: Path) -> AgentConfig | None:
    if not path.is_file():
        print(f"edge-agent: configuration file {path} does not exist", file=sys.stderr)
        return None
    try:
        return load_config(path)
    except ConfigInvalid as exc:
        if exc.problems:
            print(str(exc), file=sys.stderr)
        else:
            print(f"edge-agent: cannot read {path}: {exc.__cause__}", file=sys.stderr)
        return None
    except DriverMissing as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return None


def _run(config: AgentConfig) -> int:
    from edge_agent import agent

    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pymodbus logs every connection at INFO; the agent logs device state changes itself.
    logging.getLogger("pymodbus").setLevel(max(logging.WARNING, logging.root.level))
    try:
        asyncio.run(agent.run(config))
    except DriverMissing as exc:
        logging.getLogger("edge_agent").error("%s", exc)
        return EXIT_INVALID
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
