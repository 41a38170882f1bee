"""Panoptic Quality of COCO-panoptic-format files (same numbers as panopticapi).

Usage:
  python evaluation/panoptic_quality.py --gt_json_file=panoptic_val2017.json \
      --gt_folder=panoptic_val2017 --pred_json_file=pred.json --pred_folder=pred \
      [--output_json=pq.json] [--workers=N]

Prints panopticapi's PQ/SQ/RQ/N table (All, Things, Stuff) and optionally
writes the results, including per-class values, as JSON.
"""

import sys

from kmax_tf.evaluation import coco_panoptic_evaluation

if __name__ == '__main__':
  sys.exit(coco_panoptic_evaluation.main(sys.argv[1:]))
