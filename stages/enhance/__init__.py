"""enhance: GFPGAN v1.4 (our own network, official weights) on the re-rendered mouth region."""

from dubline.stages.enhance.stage import SKIPPED_NO_WEIGHTS, EnhanceStage

__all__ = ["SKIPPED_NO_WEIGHTS", "EnhanceStage"]
