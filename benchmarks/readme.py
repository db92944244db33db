"""Copy the committed benchmark results into README.md, between its results markers.

    python -m benchmarks.readme

The README's figures are thereby always the ones in ``benchmarks/results/`` (rd.md, refine.md, speed.md,
transfer.md, rd.png), which ``make bench`` and ``python -m benchmarks.transfer`` regenerate.
"""

from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"
SECTIONS = (
    ("Rate–distortion on Kodak", "rd.md", "python -m benchmarks.rd --data ../shared/datasets/kodak"),
    ("Encoder-side refinement", "refine.md", "python -m benchmarks.refine --data ../shared/datasets/kodak"),
    ("Speed and memory", "speed.md", "python -m benchmarks.speed --data ../shared/datasets/kodak"),
    ("Transform ceiling", "ceiling.md", "python -m benchmarks.ceiling --data ../shared/datasets/train"),
    ("Transfer over loopback", "transfer.md", "python -m benchmarks.transfer --data ../shared/datasets/kodak"),
)


def results_block(results: Path) -> str:
    parts = [START, "", "Everything below is copied from `benchmarks/results/` by `python -m benchmarks.readme`.", ""]
    if (results / "rd.png").exists():
        parts += ["![Rate-distortion on Kodak](benchmarks/results/rd.png)", ""]
    for title, file_name, command in SECTIONS:
        path = results / file_name
        if not path.exists():
            continue
        body = path.read_text().strip()
        body = "\n".join(("#" + line) if line.startswith("#") else line for line in body.splitlines())
        parts += [f"### {title}", "", f"Regenerate: `{command}`", "", body, ""]
    parts.append(END)
    return "\n".join(parts)


def main():
    readme = Path("README.md")
    text = readme.read_text()
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    readme.write_text(before + results_block(Path("benchmarks/results")) + after)
    print("README.md results updated")


if __name__ == "__main__":
    main()
