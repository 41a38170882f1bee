"""Export and inference: TF Serving SavedModels, LiteRT / ONNX, one-image prediction, pictures.

* `serving`: `export_saved_model(config, checkpoint, output_path)` (used by
  `export_model.py`), the signatures, the version-folder convention.
* `portable`: LiteRT (TFLite) and ONNX export of the same pipeline
  (`export_model.py --format=tflite|onnx`); `runtimes` runs those files.
* `predictor`: `Predictor.from_checkpoint(...)` / `.from_saved_model(...)` /
  `.from_tflite(...)` / `.from_onnx(...)` / `.from_export(...)`,
  `predictor(image)` -> panoptic map + segments.
* `visualization`: colored overlay with boundaries and legend.
* `preprocessing`: in-graph resize/pad and its undoing, as evaluation.
* `image_io`: reading files / arrays as RGB uint8.
* CLI: `python -m kmax_tf.predict` (kmax_tf/predict.py).

Serving with TF Serving (REST):

  python export_model.py --experiment_option_path=CONFIG \
      --checkpoint_path=CKPT --output_path=/models/kmax     # -> /models/kmax/1
  docker run -p 8501:8501 -v /models/kmax:/models/kmax -e MODEL_NAME=kmax \
      tensorflow/serving

  # Encoded JPEG/PNG, base64 (signature `image_bytes`):
  import base64, requests, numpy as np
  payload = {'signature_name': 'image_bytes', 'instances': [
      {'b64': base64.b64encode(open('photo.jpg', 'rb').read()).decode()}]}
  reply = requests.post('http://localhost:8501/v1/models/kmax:predict', json=payload).json()
  panoptic = np.array(reply['predictions'][0]['panoptic_pred'])   # [H, W]

  # A uint8 image as nested lists (signature `serving_default`):
  payload = {'instances': [image.tolist()]}        # image: uint8 [H, W, 3]

`saved_model_cli show --dir /models/kmax/1 --all` lists the signatures.
Class names, colormap and label divisor are in `/models/kmax/1/assets/
kmax_metadata.json`.
"""
