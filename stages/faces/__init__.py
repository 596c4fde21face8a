"""faces: every face in every shot, tracked, with 3D pose, expression and blink coefficients."""

from dubline.stages.faces.stage import FaceStage

__all__ = ["FaceStage"]
