"""report: per title and language, the lip-sync self-check, plots and stats (HTML and JSON)."""

from dubline.stages.report.stage import ReportStage

__all__ = ["ReportStage"]
