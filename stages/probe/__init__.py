from dubline.stages.probe.stage import ProbeStage

__all__ = ["ProbeStage"]
