"""Evaluation utilities: the shapes detector, reconstruction metrics."""
from dalle2_fast.eval.detector import Detection, detect, recognised, recognition_rate
from dalle2_fast.eval.metrics import psnr

__all__ = ["Detection", "detect", "recognised", "recognition_rate", "psnr"]
