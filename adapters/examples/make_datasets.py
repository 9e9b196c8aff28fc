"""Write the example tasks' datasets: `python -m adapters.examples.make_datasets [--out DIR]`.

Each task's files go to `<out>/<task>/` (`data/*.jsonl`, and the SQL task's `fixture.sql`),
the shared general-ability set and replay rows to `<out>/general.jsonl`,
`<out>/replay.jsonl` and `<out>/replay_fr.jsonl`; `out` defaults to this package's directory,
where the files are checked in. The output is the same, byte for byte, on every
run: fixed seeds, no network, the standard library only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from adapters.examples import french_data, json_extract_data, sql_data
from adapters.examples.general_data import GENERAL, GENERAL_DEV, REPLAY, REPLAY_FR
from adapters.examples.rows import Files, jsonl

TASKS: Final[dict[str, Callable[[], Files]]] = {
    "json_extract": json_extract_data.files,
    "sql": sql_data.files,
    "french": french_data.files,
}
HERE: Final = Path(__file__).resolve().parent


def generate() -> dict[str, bytes]:
    """Every file, by its path under the output directory."""
    out = {
        "general.jsonl": jsonl(GENERAL),
        "general_dev.jsonl": jsonl(GENERAL_DEV),
        "replay.jsonl": jsonl(REPLAY),
        "replay_fr.jsonl": jsonl(REPLAY_FR),
    }
    for task, make in TASKS.items():
        for relative, content in make().items():
            data = content.encode("utf-8") if isinstance(content, str) else jsonl(content)
            out[f"{task}/{relative}"] = data
    return out


def write(out: Path) -> list[Path]:
    """Write every file under `out`; return their paths."""
    written = []
    for relative, data in generate().items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output directory")
    args = parser.parse_args(argv)
    for path in write(args.out):
        print(f"{path.stat().st_size:>8}  {path}")


if __name__ == "__main__":
    main()
