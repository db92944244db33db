"""The README works when pasted: its Python blocks run, its vaecodec commands parse (the quick ones run), and
its results summary is what ``python -m benchmarks.readme`` writes from benchmarks/results/.

Everything runs in a temporary folder holding small crops of Kodak images under the names the README uses
(photo.png, photos/), beside a link to ../shared as in a checkout.
"""

import json
import math
import re
import shlex
import shutil
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from benchmarks import readme as readme_generator
from vaecodec_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SHARED = ROOT.parent / "shared"
KODAK = SHARED / "datasets" / "kodak"
README_WORDS = " ".join(README.split())  # the README's text with every line break and indent one space
# Commands of the README that run here in a moment; the others (training, export, network, a cluster with
# --ray, and --refine, slow by design) are only parsed.
RUN_HERE = {"compress", "decompress", "info", "inspect"}


NOT_RUN = re.compile(r"<!-- not run here: (.+?) -->\n\n?$")  # written just above a block that needs what
                                                              # tests lack (a cluster, cloud storage)


def code_blocks(*languages) -> list:
    """(language, text, why it is not run or None) of every fenced block in one of ``languages``, in order."""
    blocks = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL):
        if match.group(1) in languages:
            not_run = NOT_RUN.search(README, 0, match.start())
            blocks.append((match.group(1), match.group(2), not_run.group(1) if not_run else None))
    return blocks


def vaecodec_commands() -> list:
    """Argument lists of the vaecodec command lines in the README's shell blocks (continuations joined, cut at
    a pipe or another command)."""
    commands = []
    for _, text, _ in code_blocks("sh", "bash", "shell", "console"):
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for end, word in enumerate(words):
                if word in ("|", "&&", ";", "||", ">"):
                    words = words[:end]
                    break
            if words[:1] == ["vaecodec"]:
                commands.append(words[1:])
    return commands


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """tmp_path/checkout with photo.png, photos/ (a subfolder too), and ../shared; the working directory."""
    checkout = tmp_path / "checkout"
    (checkout / "photos" / "holiday").mkdir(parents=True)
    (tmp_path / "shared").symlink_to(SHARED)
    # 64x48 crops of ordinary detail (quality 8 reaches 35-43 dB on them, as on whole photos)
    crops = {"photo.png": (23, 300, 100), "photos/a.png": (3, 200, 200), "photos/b.png": (7, 300, 200),
             "photos/holiday/c.png": (12, 200, 200)}
    for name, (index, left, top) in crops.items():
        image = Image.open(KODAK / f"kodim{index:02d}.png").convert("RGB")
        image.crop((left, top, left + 64, top + 48)).save(checkout / name)
    monkeypatch.chdir(checkout)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny images; the machine's other cores stay free
    yield checkout
    torch.set_num_threads(threads)


PYTHON_BLOCKS = [(text, not_run) for _, text, not_run in code_blocks("python")]


@pytest.mark.parametrize("block, not_run", PYTHON_BLOCKS, ids=[f"python-{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_block_runs_as_pasted(block, not_run, workspace):
    if not_run:
        compile(block, "README.md", "exec")  # it must at least be valid Python
        pytest.skip(f"the README says it needs {not_run}")
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


def test_every_vaecodec_command_parses_and_the_quick_ones_run(workspace, tmp_path, monkeypatch):
    commands = vaecodec_commands()
    assert {words[0] for words in commands} >= {"compress", "decompress", "info", "send", "receive", "train",
                                                "export", "inspect"}
    for words in commands:
        if words[0] == "export":
            (workspace / words[1]).mkdir(parents=True, exist_ok=True)  # the run folder it reads must exist
        if words[0].startswith("-") or "--help" in words:  # vaecodec --version, vaecodec compress --help
            assert CliRunner().invoke(cli, words).exit_code == 0, shlex.join(words)
            continue
        command = cli.get_command(click.Context(cli), words[0])
        assert command is not None, f"README names an unknown command: vaecodec {shlex.join(words)}"
        with command.make_context(f"vaecodec {words[0]}", list(words[1:])):
            pass  # parsing checks every option, choice and type

    # Each quick command runs as a user would try it, in its own copy of the folder: compress beside the
    # images alone, the others also beside photo.vae and compressed/, made by the README's first commands.
    prepared = tmp_path / "prepared" / "checkout"
    shutil.copytree(workspace, prepared, symlinks=True)
    monkeypatch.chdir(prepared)
    for words in (["compress", "photo.png"], ["compress", "photos/", "-o", "compressed/"]):
        assert CliRunner().invoke(cli, words).exit_code == 0
    quick = [w for w in commands if w[0] in RUN_HERE and not {"--refine", "--ray"} & set(w)]
    for number, words in enumerate(quick):
        copy = tmp_path / f"try-{number}" / "checkout"
        shutil.copytree(workspace if words[0] == "compress" else prepared, copy, symlinks=True)
        monkeypatch.chdir(copy)
        result = CliRunner().invoke(cli, words)
        assert result.exit_code == 0, f"vaecodec {shlex.join(words)}: {result.output}"


def test_every_command_has_examples_in_its_help():
    context = click.Context(cli)
    for name in cli.list_commands(context):
        help_text = cli.get_command(context, name).get_help(click.Context(cli.get_command(context, name)))
        assert "Example" in help_text and f"vaecodec {name}" in help_text, name


def test_results_summary_is_what_the_generator_writes():
    assert readme_generator.updated(README, ROOT / "benchmarks" / "results") == README
    assert README.count("Versions") <= 1 and README.count("Measured with ") == 1


def committed_result(name: str) -> dict:
    """A results file's JSON, as committed under benchmarks/results/."""
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def test_the_quality_figures_quoted_by_the_readme_and_the_quality_help_are_rd_md_s():
    # Hand-written sentences (the README's command-line section, `compress --help`) quote what qualities 1, 3,
    # 5 and 8 give on Kodak; when new weights ship, rd.md changes and so must they.
    from vaecodec_cli.main import QUALITY_HELP

    points = {point["setting"]: point for point in committed_result("rd_summary.json")["codecs"]["vaecodec"]["points"]}
    expected = [f"{points[q]['bpp']:.2f} bpp {points[q]['psnr']:.1f} dB" for q in (1.0, 3.0, 5.0, 8.0)]
    ladder = re.compile(r"(\d+\.\d+) bpp(?: /| and) (\d+\.\d+) dB")
    readme_sentence = README_WORDS.split("Quality 1 to 8 means, on the Kodak photos,", 1)[1].split(")", 1)[0]
    for quoted in (readme_sentence, QUALITY_HELP):
        assert [f"{bpp} bpp {db} dB" for bpp, db in ladder.findall(quoted)] == expected, quoted


def test_the_folder_job_rates_quoted_by_the_readme_and_the_workers_help_are_folder_jobs_md_s():
    ways = committed_result("folder_jobs.json")["folder_jobs"]["ways"]

    def cells(way, job):  # as quoted: the rate, and the speed-up against one process in the same run
        rate = ways[way][job]["job_images_per_s"]
        return f"{rate:.2f}", f"{rate / ways['one process'][job]['job_images_per_s']:.2f}"

    table = README.split("| way | compress img/s | decompress img/s |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (.+?) \| ([\d.]+)(?: \(([\d.]+)x\))? \| ([\d.]+)(?: \(([\d.]+)x\))? \|$", table,
                      flags=re.MULTILINE)
    assert len(rows) == len(ways)
    for name, *quoted in rows:
        way = next(way for way in ways if name.startswith(way))
        for (rate, speed_up), job in zip((quoted[:2], quoted[2:]), ("compress", "decompress")):
            assert (rate, speed_up or cells(way, job)[1]) == cells(way, job), (name, job)
    workers_help = next(option.help for option in cli.get_command(None, "compress").params if option.name == "workers")
    measured = re.search(r"measured ([\d.]+)x one process for compress and ([\d.]+)x for decompress", workers_help)
    assert measured.groups() == (cells("worker processes", "compress")[1], cells("worker processes", "decompress")[1])


def test_how_it_works_quotes_the_shipped_model_s_training_and_its_gain_over_mshp_n64():
    from vaecodec.zoo import read_weights, weights_path

    rounds = read_weights(weights_path("mcc-n64"))[0]["training"]["rounds"]
    codecs = [r["config"]["model"].get("latent_codec", "hyperprior") for r in rounds]
    last_hyperprior = len(codecs) - 1 - codecs[::-1].index("hyperprior")
    with_context = [r["steps"] for r in rounds[last_hyperprior + 1:]]  # runs with context networks
    assert (f"{rounds[last_hyperprior]['steps']:,} steps as a hyperprior, then {sum(with_context):,} with context "
            f"networks in {len(with_context)} run{'s' if len(with_context) > 1 else ''}" in README_WORDS)
    gain = committed_result("heldout_mshp.json")["bd_rate_percent"]
    assert f"mshp-n64 ({gain:+.1f}% on the held-out photos".replace("(-", "(\u2212") in README_WORDS


def test_how_it_works_ends_the_context_share_list_with_context_share_md_s_latest_export():
    latest = committed_result("context_share.json")["models"][-1]
    share, at_level_1 = -latest["overall_percent"], -latest["levels"]["1"]["change_percent"]
    assert f"and {share}% at {latest['steps']:,} ({at_level_1:.1f}% at quality 1)" in README_WORDS


def test_the_weight_average_s_gain_quoted_by_the_readme_is_heldout_average_md_s():
    gain = committed_result("heldout_average.json")["bd_rate_percent"]
    assert f"the average was {gain:+.2f}% against the release".replace("-", "\u2212") in README_WORDS


def test_the_shipped_decayed_copy_s_gain_quoted_by_the_readme_is_heldout_md_s():
    shipped = committed_result("heldout.json")["bd_rate_percent"]
    assert f"decayed for 2400 more steps, the one that shipped, gained {shipped:+.2f}%".replace(
        "-", "\u2212") in README_WORDS


def test_the_grayscale_figures_quoted_by_the_readme_are_grayscale_md_s_and_the_offset_its_calibration_s():
    from vaecodec.quality import GRAY_QUALITY_OFFSET

    assert GRAY_QUALITY_OFFSET == committed_result("grayscale_calibration.json")["chosen_offset"]
    rows = committed_result("grayscale.json")["rows"]

    def spans(names):  # ("lo-hi" dB more, "lo-hi" % of the colour bytes), as the README rounds them
        more = [rows[name]["gray_psnr"] - rows[name]["colour_psnr"] for name in names]
        sizes = [round(100 * rows[name]["gray_to_colour"]) for name in names]
        return f"{min(more):.1f}-{max(more):.1f}", f"{min(sizes)}-{max(sizes)}", max(map(abs, more))

    more, sizes, _ = spans([f"vaecodec q{q}, gray at q{q} (before)" for q in range(2, 8)])
    assert f"a gray photo got {more} dB more PSNR than its colour original and cost {sizes}% of it" in README_WORDS
    _, sizes, largest = spans([f"vaecodec q{q}" for q in (2, 3, 4)])
    within = math.ceil(10 * largest) / 10
    assert f"gets within {within:.1f} dB of its colour original's PSNR in {sizes}%" in README_WORDS
    more, sizes, _ = spans([f"vaecodec q{q}" for q in (5, 6, 7)])
    assert f"at 5-7 it still gets {more} dB more, in {sizes}%" in README_WORDS
    classical = {round(100 * rows[f"{name} q75 (Pillow)"]["gray_to_colour"]) for name in ("JPEG", "WebP")}
    assert len(classical) == 1 and f"JPEG and WebP at quality 75: {classical.pop()}%" in README_WORDS


def test_headings_step_down_one_level_at_a_time():
    text = re.sub(r"^```.*?^```", "", README, flags=re.MULTILINE | re.DOTALL)
    levels = [len(match) for match in re.findall(r"^(#+) ", text, flags=re.MULTILINE)]
    assert levels[0] == 1 and levels.count(1) == 1
    assert all(later <= earlier + 1 for earlier, later in zip(levels, levels[1:]))
