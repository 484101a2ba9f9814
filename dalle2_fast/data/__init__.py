"""Datasets (the embedded captioned shapes, the default; image folders for real data) and the
upsamplers' degradation transforms (``dalle2_fast.data.degradations``)."""
from dalle2_fast.data.captions import CaptionConfig
from dalle2_fast.data.folder import ImageFolderDataset
from dalle2_fast.data.shapes import COLOURS, NUM_CLASSES, SHAPES, Obj, ShapesDataset, caption_for, tokenize

__all__ = ["CaptionConfig", "ImageFolderDataset", "ShapesDataset", "Obj", "SHAPES", "COLOURS", "NUM_CLASSES",
           "caption_for", "tokenize"]
