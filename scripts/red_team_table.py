"""Write the red-team table of docs/errors.md from tests/red_team.py (the cases the tests run).

    python scripts/red_team_table.py          # rewrite the table in place
    python scripts/red_team_table.py --check  # exit 1 if docs/errors.md is stale

tests/test_red_team.py runs every case (and checks the same thing as --check), so the table
says only what the tests have seen happen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from red_team import TABLE_END, TABLE_START, render_table  # noqa: E402

DOC = ROOT / "docs" / "errors.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args()
    text = DOC.read_text()
    before, rest = text.split(TABLE_START)
    _, after = rest.split(TABLE_END)
    new = f"{before}{TABLE_START}\n{render_table()}{TABLE_END}{after}"
    if args.check:
        print("docs/errors.md is current" if new == text else "docs/errors.md is stale")
        return 0 if new == text else 1
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
