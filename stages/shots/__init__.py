from dubline.stages.shots.stage import ShotsStage

__all__ = ["ShotsStage"]
