"""Record the Kodak result of the shipped model's latest training round in benchmarks/results/rounds.json.

    python -m benchmarks.rounds [--results benchmarks/results]

Run after ``python -m benchmarks.rd`` on the full Kodak set: it takes that run's summary, checks that it
measured the weights now shipped (same hash), and stores one line per training round (the round number is
the length of the training history kept in the weights). The model card shows the table, so each round's
gain, or loss, stays visible.
"""

import json
from pathlib import Path

import click

COMPARED = ("jpeg-420", "webp", "heic-444")


def round_record(summary: dict) -> dict:
    points = sorted(summary["codecs"]["vaecodec"]["points"], key=lambda point: point["setting"])
    integer_points = [point for point in points if float(point["setting"]).is_integer()]
    against = summary["bd"]["against"]
    model = summary["vaecodec_model"]
    # Rounded once, to the digits the model card shows: rounding a stored -40.05 again printed -40.0% beside
    # rd.md's -40.1% for the same -40.054.
    return {
        "round": model["training_rounds"],
        "model_hash": model["hash"],
        "measured": summary["date"],
        "bpp": [round(integer_points[0]["bpp"], 3), round(integer_points[-1]["bpp"], 3)],
        "psnr": [round(integer_points[0]["psnr"], 2), round(integer_points[-1]["psnr"], 2)],
        "bd_rate_psnr_percent": {name: round(against[name]["bd_rate_psnr_percent"], 1)
                                 for name in COMPARED if against.get(name, {}).get("bd_rate_psnr_percent") is not None},
    }


@click.command()
@click.option("--results", "results_dir", default="benchmarks/results", type=click.Path(file_okay=False, path_type=Path))
def main(results_dir: Path):
    from vaecodec.zoo import read_weights, weights_path

    summary = json.loads((results_dir / "rd_summary.json").read_text())
    if summary.get("quick") or "vaecodec_model" not in summary:
        raise click.UsageError("rd_summary.json is not a full run of python -m benchmarks.rd with the model recorded")
    _, shipped_hash = read_weights(weights_path("default"))
    if summary["vaecodec_model"]["hash"] != shipped_hash.hex():
        raise click.UsageError("rd_summary.json measured other weights than those shipped: run benchmarks.rd first")
    record = round_record(summary)
    path = results_dir / "rounds.json"
    rounds = json.loads(path.read_text()) if path.exists() else []
    rounds = [entry for entry in rounds if entry["round"] != record["round"]] + [record]
    path.write_text(json.dumps(sorted(rounds, key=lambda entry: entry["round"]), indent=1) + "\n")
    click.echo(f"round {record['round']}: {record}")


if __name__ == "__main__":
    main()
