"""``python -m schemas [--check]``: write (or check) the JSON Schema files in ``schemas/json/``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._jsonschema import all_schemas

OUT = Path(__file__).resolve().parent / "json"


def rendered() -> dict[Path, str]:
    return {OUT / name: json.dumps(schema, indent=2) + "\n" for name, schema in all_schemas().items()}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = [path for path, text in rendered().items() if not path.exists() or path.read_text() != text]
    for path in stale:
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rendered()[path])
        print(f"{'stale' if check else 'wrote'}: {path.name}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
