"""Runs an exported SavedModel in a fresh process (used by the export tests).

  python tests/export/run_saved_model.py SAVED_MODEL_DIR INPUTS.npz OUTPUTS.npz

INPUTS.npz: `batch` uint8 [B, H, W, 3], `single` uint8 [H, W, 3] and
`encoded_<k>` encoded image bytes (as uint8 arrays). OUTPUTS.npz: every output
of `serving_default` on `batch` (`batch/<key>`) and on `single`
(`single/<key>`), and of `image_bytes` on the encoded images (`bytes/<key>`).
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(saved_model_dir, inputs_path, outputs_path):
  inputs = np.load(inputs_path)
  loaded = tf.saved_model.load(saved_model_dir)
  outputs = {}
  images_fn = loaded.signatures['serving_default']
  for name in ('batch', 'single'):
    for key, value in images_fn(images=tf.constant(inputs[name])).items():
      outputs[f'{name}/{key}'] = value.numpy()
  encoded = [inputs[key].tobytes() for key in sorted(inputs.files) if key.startswith('encoded_')]
  bytes_fn = loaded.signatures['image_bytes']
  for key, value in bytes_fn(image_bytes=tf.constant(encoded)).items():
    outputs[f'bytes/{key}'] = value.numpy()
  np.savez(outputs_path, **outputs)


if __name__ == '__main__':
  main(*sys.argv[1:])
