"""Evaluation: PQ (official panopticapi rules or DeepLab2's), mIoU, mask AP, writers.

Modules:
  panoptic_quality: numpy PQ engine (matching, float64 accumulation, summaries).
  panoptic_quality_metric: streaming PQ for the training loop / tf.distribute.
  mean_iou: streaming semantic mIoU.
  mask_ap: COCO mask AP/AR of thing instances (pycocotools).
  coco_panoptic_evaluation: PQ of COCO-panoptic files, = panopticapi's
    pq_compute (the CLI `evaluation/panoptic_quality.py`).
  panoptic_png: fast COCO panoptic PNG decoding.
  prediction_writers: COCO / Cityscapes panoptic submissions, raw predictions.
  file_io: atomic writes.
"""
