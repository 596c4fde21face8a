"""selfcheck: the face mesh of the dubbed faces measured on the output video, for the report."""

from dubline.stages.selfcheck.stage import SelfCheckStage

__all__ = ["SelfCheckStage"]
