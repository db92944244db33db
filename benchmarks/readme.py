"""Write the README's results summary from the committed benchmark results, between its results markers.

    python -m benchmarks.readme

The README shows what a reader needs: the rate-distortion plot, the BD-rate table of rd.md, the versions it
was measured with (once), and a link to every full results file in ``benchmarks/results/`` with the command
that regenerates it. The full tables stay in those files, which ``make bench`` and the benchmark modules
rewrite; ``results_block`` is deterministic, so tests/test_readme.py checks that the README is current.
"""

import json
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"
RESULTS = Path("benchmarks/results")
SUMMARY_FILE, SUMMARY_SECTION = "rd.md", "BD-rate of vaecodec"


def _refine_scope(result: dict) -> tuple:
    """All of Kodak takes about an hour on 2 cores, so refine.md may hold fewer photos: say how many."""
    return f", on {result['images']} Kodak photos", f" --images {result['images']}"


def _context_share_scope(result: dict) -> tuple:
    """The weights files it measured."""
    return "", " " + " ".join(result["weights"])


# (file, what it holds, command that regenerates it[, scope]): a scope reads the file's JSON twin and returns
# what to add to the description and to the command for the run it holds
FULL_RESULTS = (
    ("rd.md", "rate-distortion on Kodak: every codec's curve per quality setting, with encode and decode times; "
              "per image in rd_per_image.csv",
     "python -m benchmarks.rd --data ../shared/datasets/kodak"),
    ("refine.md", "encoder-side refinement (`--refine 50`) against the plain encoder",
     "python -m benchmarks.refine --data ../shared/datasets/kodak", _refine_scope),
    ("speed.md", "speed and memory: latency, batches, whole commands, peak memory up to 6000x4000",
     "python -m benchmarks.speed --data ../shared/datasets/kodak"),
    ("ceiling.md", "transform ceiling: reconstructions from unrounded against rounded latents",
     "python -m benchmarks.ceiling --data ../shared/datasets/train"),
    ("transfer.md", "sending images over loopback: PNG, .vae, and compressing on the way",
     "python -m benchmarks.transfer --data ../shared/datasets/kodak"),
    ("folder_jobs.md", "folder jobs: one process, worker processes and Ray against each other",
     "python -m benchmarks.speed --data ../shared/datasets/kodak --only-folder-jobs"),
    ("cli_speed.md", "whole-process times of the vaecodec command beside Pillow's WebP",
     "python -m benchmarks.cli_speed"),
    ("fuzz.md", "fuzzing with hostile files and peers",
     "python -m benchmarks.fuzz --cases 10000 --seed 0 --max-pixels 65536"),
    ("train_speed.md", "training speed: bf16 autocast against fp32",
     "python -m benchmarks.train_speed --data ../shared/datasets/train"),
    ("heldout.md", "a candidate model against the shipped one on held-out training photos",
     "python -m benchmarks.heldout --data ../shared/datasets/train --candidate CANDIDATE.pt"),
    ("heldout_mshp.md", "the shipped model against the earlier default, mshp-n64, on the held-out photos",
     "python -m benchmarks.heldout --data ../shared/datasets/train --candidate default --reference mshp-n64 "
     "--name heldout_mshp"),
    ("heldout_average.md", "the long run's moving average of its weights (`vaecodec export --average`) against "
                           "the release it was measured to replace, as heldout.md measures the decayed copy that "
                           "shipped instead",
     "python -m benchmarks.heldout --data ../shared/datasets/train --candidate AVERAGE.pt --reference RELEASE.pt "
     "--name heldout_average"),
    ("heldout_widened.md", "the long run's model widened to M = 192 latent channels and trained beside the run, "
                           "against the run's export at the same moment, on the held-out photos",
     "python -m benchmarks.heldout --data ../shared/datasets/train --candidate WIDENED.pt "
     "--reference RUN.pt --name heldout_widened"),
    ("context_model.md", "the channel-conditional latent codec against the hyperprior at equal training: BD-rate "
                         "and decode time on Kodak and the held-out photos",
     "python -m benchmarks.context_model --hyperprior-run RUN_A --context-run RUN_B --kodak ../shared/datasets/kodak "
     "--data ../shared/datasets/train"),
    ("context_model_long_run.md", "the same comparison from the long run's shipped weights (a channel-conditional "
                                  "model): its context networks kept against a hyperprior that drops them and "
                                  "fine-tunes h_s alone, the same steps and crops",
     "python -m benchmarks.context_model --hyperprior-run RUN_A --context-run RUN_B --kodak ../shared/datasets/kodak "
     "--data ../shared/datasets/train --name context_model_long_run"),
    ("context_model_checkerboard.md", "the same comparison with a spatial checkerboard added within each channel "
                                      "group (`channel-checkerboard`, its spatial networks starting at zero)",
     "python -m benchmarks.context_model --hyperprior-run RUN_A --context-run RUN_B --kodak ../shared/datasets/kodak "
     "--data ../shared/datasets/train --name context_model_checkerboard"),
    ("context_model_checkerboard_long_run.md", "the checkerboard comparison again, from the checkerboard model's "
                                               "first shipped export (every context network kept)",
     "python -m benchmarks.context_model --hyperprior-run RUN_A --context-run RUN_B --kodak ../shared/datasets/kodak "
     "--data ../shared/datasets/train --name context_model_checkerboard_long_run"),
    ("context_model_from_hyperprior_16k.md", "the checkerboard comparison from the shipped hyperprior for 16000 "
                                             "steps, the context networks fresh with their scale-position steps "
                                             "x0.125 (`--context-position-rate`)",
     "python -m benchmarks.context_model --hyperprior-run RUN_A --context-run RUN_B --kodak ../shared/datasets/kodak "
     "--data ../shared/datasets/train --name context_model_from_hyperprior_16k"),
    ("context_model_from_hyperprior_32k.md", "the same two runs resumed to 32000 steps: the equal-training "
                                             "comparison that meets the issue's target",
     "python -m benchmarks.context_model --hyperprior-run RUN_A --context-run RUN_B --kodak ../shared/datasets/kodak "
     "--data ../shared/datasets/train --name context_model_from_hyperprior_32k"),
    ("context_probe.md", "what each context idea (channel groups, checkerboard, latent residual prediction) could "
                         "save on top of the shipped model's frozen transforms: the model's rate estimate on "
                         "held-out crops",
     "python -m benchmarks.context_probe"),
    ("context_probe_long_run.md", "the same on a checkpoint of the long run",
     "python -m benchmarks.context_probe --run ../runs/cc64 --out benchmarks/results/context_probe_long_run"),
    ("context_probe_equal_training.md", "the same on the hyperprior of context_model_checkerboard_long_run.md "
                                        "(h_s fine-tuned without the context networks): what fresh context "
                                        "networks find that a hyperprior trained alone leaves",
     "python -m benchmarks.context_probe --weights EQ_HYPERPRIOR.pt --steps 600 --crops 1500 "
     "--out benchmarks/results/context_probe_equal_training"),
    ("context_share.md", "what the jointly trained context networks of each shipped mcc-n64 export take off its rate "
                         "(the model's estimate with and without their corrections)",
     "python -m benchmarks.context_share", _context_share_scope),
)


def sections(markdown: str) -> dict:
    """{heading text: the text under it, up to the next heading of any level} of a markdown file."""
    found, heading = {}, None
    for line in markdown.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            found[heading] = []
        elif heading is not None:
            found[heading].append(line)
    return {heading: "\n".join(lines).strip() for heading, lines in found.items()}


def versions_line(versions_section: str) -> str:
    """The '- name: version' list of a results file as one sentence."""
    items = [line[2:].strip().replace(": ", " ", 1) for line in versions_section.splitlines() if line.startswith("- ")]
    return "Measured with " + "; ".join(items) + "."


def results_block(results: Path = RESULTS) -> str:
    """The README text between the markers (markers included)."""
    parts = [START, "", "<!-- Written by `python -m benchmarks.readme` from benchmarks/results/: edit those. -->", ""]
    if (results / "rd.png").exists():
        parts += ["![Rate-distortion on Kodak](benchmarks/results/rd.png)", ""]
    if (results / SUMMARY_FILE).exists():
        rd = sections((results / SUMMARY_FILE).read_text())
        parts += [f"{SUMMARY_SECTION} against each codec on Kodak, from [{SUMMARY_FILE}](benchmarks/results/"
                  f"{SUMMARY_FILE}). {rd[SUMMARY_SECTION]}", ""]
        if "Versions" in rd:
            parts += [versions_line(rd["Versions"]), ""]
    parts += ["Full results, each regenerated by its command:", ""]
    for file_name, description, command, *scope in FULL_RESULTS:
        if (results / file_name).exists():
            for scope_of in scope:
                more_description, more_command = scope_of(
                    json.loads((results / file_name).with_suffix(".json").read_text()))
                description, command = description + more_description, command + more_command
            parts.append(f"* [{file_name}](benchmarks/results/{file_name}): {description} (`{command}`)")
    known = {entry[0] for entry in FULL_RESULTS}
    for path in sorted(results.glob("*.md")):
        if path.name not in known:  # a new results file is listed under its own title until described above
            title = next((line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")),
                         path.stem)
            parts.append(f"* [{path.name}](benchmarks/results/{path.name}): {title}")
    parts += ["", END]
    return "\n".join(parts)


def updated(readme_text: str, results: Path = RESULTS) -> str:
    """The README text with its results block replaced by the current one."""
    before, rest = readme_text.split(START, 1)
    _, after = rest.split(END, 1)
    return before + results_block(results) + after


def main():
    readme = Path("README.md")
    readme.write_text(updated(readme.read_text()))
    print("README.md results updated")


if __name__ == "__main__":
    main()
