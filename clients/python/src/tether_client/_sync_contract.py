"""Copy the session contract into this package (``python -m tether_client._sync_contract``).

The SDK validates frames with the contract's own JSON Schemas and reads the close-code
catalogue from the contract, shipped inside the wheel under ``tether_client/contract/``.
Run this from the repository after a change under ``contracts/session/``; ``--check``
only reports differences and exits 1 when there are any (the SDK's test suite fails on
them too).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

PACKAGE_CONTRACT = Path(__file__).resolve().parent / "contract"
SHIPPED = ("close-codes.json", "close-codes.schema.json", "frames/*.json")


def find_source(start: Path) -> Path:
    """``contracts/session`` of the repository ``start`` is in."""
    for folder in (start, *start.parents):
        candidate = folder / "contracts" / "session"
        if (candidate / "close-codes.json").is_file():
            return candidate
    raise FileNotFoundError(f"no contracts/session/ above {start}: run this inside the Tether repository")


def shipped_files(root: Path) -> set[str]:
    """The contract files under ``root`` that the package ships, relative to it."""
    return {path.relative_to(root).as_posix() for pattern in SHIPPED for path in root.glob(pattern)}


def differences(source: Path, target: Path = PACKAGE_CONTRACT) -> list[str]:
    """What differs between the contract and the package's copy, one line each."""
    wanted, have = shipped_files(source), shipped_files(target)
    found = [f"missing in the package: {name}" for name in sorted(wanted - have)]
    found += [f"not in the contract any more: {name}" for name in sorted(have - wanted)]
    found += [
        f"differs: {name}"
        for name in sorted(wanted & have)
        if (source / name).read_bytes() != (target / name).read_bytes()
    ]
    return found


def sync(source: Path, target: Path = PACKAGE_CONTRACT) -> list[str]:
    """Make ``target`` an exact copy of the shipped files of ``source``; return what changed."""
    changed = differences(source, target)
    for name in shipped_files(target) - shipped_files(source):
        (target / name).unlink()
    for name in shipped_files(source):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tether_client._sync_contract", description=__doc__)
    parser.add_argument("--source", type=Path, help="contracts/session of the repository (default: found from here)")
    parser.add_argument("--check", action="store_true", help="only report differences; exit 1 when there are any")
    args = parser.parse_args(argv)
    source = args.source or find_source(Path.cwd())
    changes = differences(source) if args.check else sync(source)
    for line in changes:
        print(line)
    if args.check and changes:
        print("the SDK's contract copy is out of date: run python -m tether_client._sync_contract", file=sys.stderr)
        return 1
    print(f"{len(changes)} file(s) {'differ' if args.check else 'updated'} ({source} -> {PACKAGE_CONTRACT})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
