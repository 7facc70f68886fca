"""Run the whole test suite; exit non-zero on any failure *and* when no test ran.

pytest's exit code 5 ("no tests collected") is a failure for Tether.
"""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    code = subprocess.call([sys.executable, "-m", "pytest", *args])
    if code == 5:
        print("runtests: pytest collected no tests: that is a failure", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
