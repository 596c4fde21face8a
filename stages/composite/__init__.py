from dubline.stages.composite.stage import CompositeStage

__all__ = ["CompositeStage"]
