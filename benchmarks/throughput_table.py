"""The README's training-step table, generated from `benchmarks/throughput.py`'s records (not typed by hand).

    .venv/bin/python benchmarks/throughput_table.py results/throughput_cpu-intel-xeon.json
    .venv/bin/python benchmarks/throughput_table.py results/throughput_*.json > table.md

Takes `--results` files (`{"records": [...]}`) and `--json` files (one record), in the order given. One row per
record, model and dtype: ours' img/s (best run, median run in brackets), the anchor's at its best worker count, the
ratio ours / anchor (best runs; medians in brackets), and the share of the measured matrix-product peak in that dtype
(ours, anchor). A model without an anchor (`vit_conv_lsa`) shows n/a. Device and data set columns are added when the
records come from more than one. Under the table, each record's command, machine, data set and date.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def read_records(path) -> list[dict]:
    """The records in a `--json` file (one record) or a `--results` file (`{"records": [...]}`)."""
    content = json.loads(Path(path).read_text())
    return content["records"] if "records" in content else [content]


def best_row(results, model: str, dtype: str, ours: bool) -> dict | None:
    """Ours' row, or the anchor's at its best worker count (best run), for `model` in `dtype`."""
    rows = [r for r in results
            if r["model"] == model and r["dtype"] == dtype and r["pipeline"].startswith("ours") == ours]
    return max(rows, key=lambda r: r["images_per_second_best"]) if rows else None


def rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def percent(row: dict | None) -> str:
    if row is None or row.get("fraction_of_peak") is None:
        return "n/a"
    value = 100 * row["fraction_of_peak"]
    return f"{value:.0f} %" if value >= 10 else f"{value:.1f} %"


def device_name(record: dict) -> str:
    """The record's device slug (older records: a slug of the machine's name)."""
    return record.get("device") or "-".join(re.findall(r"[a-z0-9]+", record["machine"].split(",")[0].lower()))


def dataset_name(record: dict) -> str:
    return record.get("dataset") or record["args"]["dataset"]


def geometry_cell(record: dict, model: str) -> str:
    """`default, 28 px / 4` (the recipe, input size / patch size); records written before --geometry measured the
    seed's geometry and did not record the model's config."""
    geometry = record.get("geometry", "seed")
    config = record.get("models", {}).get(model, {}).get("config")
    return f"{geometry}, {config['image_size']} px / {config['patch_size']}" if config else geometry


def markdown_table(records: list[dict]) -> str:
    """The Markdown table of `records` and, under it, what each was measured with."""
    with_device = len({device_name(r) for r in records}) > 1
    with_dataset = len({dataset_name(r) for r in records}) > 1
    header = ["model", "geometry, input px / patch", "dtype", "ours img/s best (median)",
              "anchor img/s best (median)", "ours / anchor", "% of peak (ours, anchor)"]
    if with_dataset:
        header.insert(0, "data set")
    if with_device:
        header.insert(0, "device")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for record in records:
        results = record["results"]
        for model in dict.fromkeys(r["model"] for r in results):
            for dtype in dict.fromkeys(r["dtype"] for r in results if r["model"] == model):
                mine, theirs = best_row(results, model, dtype, True), best_row(results, model, dtype, False)
                if mine is None:
                    continue
                anchor, ratio = "n/a", "n/a"
                if theirs is not None:
                    anchor = f"{rate(theirs['images_per_second_best'])} ({rate(theirs['images_per_second_median'])})"
                    ratio = (f"{mine['images_per_second_best'] / theirs['images_per_second_best']:.2f}× "
                             f"({mine['images_per_second_median'] / theirs['images_per_second_median']:.2f}×)")
                cells = [f"`{model}`", geometry_cell(record, model), dtype,
                         f"{rate(mine['images_per_second_best'])} ({rate(mine['images_per_second_median'])})",
                         anchor, ratio, f"{percent(mine)}, {percent(theirs)}"]
                if with_dataset:
                    cells.insert(0, dataset_name(record))
                if with_device:
                    cells.insert(0, device_name(record))
                lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for record in records:
        lines.append(f"- `{record['command']}`: {record['machine']}; {dataset_name(record)}"
                     f"{' (' + record['source'] + ')' if record.get('source') else ''}; "
                     f"{record.get('date', 'date not recorded')}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="throughput.py --results or --json files")
    args = parser.parse_args(argv)
    records = [record for path in args.files for record in read_records(path)]
    sys.stdout.write(markdown_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
