"""Runs exports through `Predictor.from_export` in a fresh process (used by the export tests).

  python tests/export/run_portable.py INPUTS.npz OUTPUTS.npz MODEL [MODEL ...]

INPUTS.npz: `image_<k>` uint8 [H, W, 3] images. OUTPUTS.npz, per model index m
and image k: `<m>/<k>/panoptic` (the predicted map) and `<m>/<k>/segments`
(the segments as JSON text), and `<m>/source` (the file the runtime loaded).
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# kmax_tf from this checkout, not from site-packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from kmax_tf.export import predictor  # noqa: E402


def main(inputs_path, outputs_path, *models):
  inputs = np.load(inputs_path)
  names = sorted((key for key in inputs.files if key.startswith('image_')),
                 key=lambda key: int(key.split('_')[1]))
  outputs = {}
  for index, model in enumerate(models):
    runner = predictor.Predictor.from_export(model)
    outputs[f'{index}/source'] = np.array(runner.source)
    for number, name in enumerate(names):
      result = runner(inputs[name])
      outputs[f'{index}/{number}/panoptic'] = result.panoptic
      outputs[f'{index}/{number}/segments'] = np.array(
          json.dumps([segment.to_json() for segment in result.segments]))
  np.savez(outputs_path, **outputs)


if __name__ == '__main__':
  main(*sys.argv[1:])
