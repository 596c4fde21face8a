"""render: re-drive the mouth in each dubbed face's aligned crops."""

from dubline.stages.render.stage import RenderStage

__all__ = ["RenderStage"]
