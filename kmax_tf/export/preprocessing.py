"""In-graph input preprocessing and its undoing for exported models.

An exported model sees images of any size. Each image is prepared exactly as
the evaluation pipeline prepares it (`kmax_tf.data.preprocessing`,
`is_training=False`): resize to range (the maximum defaults to the eval crop),
then pad bottom/right with 127.5 to the eval crop. The model's maps at the crop
are cropped back to the resized region and resized (nearest, align corners)
to the input size, as the evaluator does before computing metrics. Exported
maps are therefore the maps evaluation scores.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import tensorflow as tf

from kmax_tf.data import preprocessing

# Value of output pixels outside an image, when a batch of encoded images of
# different sizes is padded to the largest one.
OUTPUT_PAD_VALUE = -1


@dataclasses.dataclass(frozen=True)
class ResizeSpec:
  """Evaluation resize settings (from `eval_dataset_options`).

  Attributes:
    crop_size: (height, width) the model runs at.
    min_resize_value: optional (height, width) of resize to range.
    max_resize_value: (height, width); defaults to the crop size, as evaluation.
    resize_factor: optional; resized sides become a multiple of it plus one.
  """

  crop_size: Tuple[int, int]
  min_resize_value: Optional[Tuple[int, int]] = None
  max_resize_value: Optional[Tuple[int, int]] = None
  resize_factor: Optional[int] = None

  def __post_init__(self):
    crop = preprocessing.normalize_size(self.crop_size)
    if crop is None:
      raise ValueError(f'eval crop_size must be [height, width] > 0, got {self.crop_size}')
    object.__setattr__(self, 'crop_size', crop)
    object.__setattr__(self, 'min_resize_value',
                       preprocessing.normalize_size(self.min_resize_value))
    object.__setattr__(self, 'max_resize_value', preprocessing.check_max_resize_value(
        self.max_resize_value, crop, is_training=False))
    object.__setattr__(self, 'resize_factor',
                       int(self.resize_factor) if self.resize_factor else None)

  @classmethod
  def from_dataset_options(cls, dataset_options) -> 'ResizeSpec':
    """From a `DatasetOptions` proto (use `eval_dataset_options`)."""
    return cls(crop_size=tuple(dataset_options.crop_size),
               min_resize_value=tuple(dataset_options.min_resize_value) or None,
               max_resize_value=tuple(dataset_options.max_resize_value) or None,
               resize_factor=dataset_options.resize_factor or None)

  def to_json(self) -> dict:
    return {'crop_size': list(self.crop_size),
            'min_resize_value': list(self.min_resize_value or ()),
            'max_resize_value': list(self.max_resize_value or ()),
            'resize_factor': self.resize_factor or 0}


def resized_size(raw_size: tf.Tensor, spec: ResizeSpec) -> tf.Tensor:
  """int32 [2] size of the image after resize to range (before padding)."""
  return preprocessing.resize_to_range_size(raw_size[0], raw_size[1], spec.min_resize_value,
                                            spec.max_resize_value, spec.resize_factor)


def preprocess_image(image: tf.Tensor, spec: ResizeSpec) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32 [crop_h, crop_w, 3] padded eval input (RGB 0..255)."""
  _, padded, _ = preprocessing.preprocess_image_and_label(
      image, None, spec.crop_size, label_pad_value=0, is_training=False,
      min_resize_value=spec.min_resize_value, max_resize_value=spec.max_resize_value,
      resize_factor=spec.resize_factor)
  return padded


def preprocess_batch(images: tf.Tensor, spec: ResizeSpec) -> tf.Tensor:
  """uint8 [B, H, W, 3] (one size) -> float32 [B, crop_h, crop_w, 3]."""
  crop_h, crop_w = spec.crop_size
  return tf.map_fn(lambda image: preprocess_image(image, spec), images,
                   fn_output_signature=tf.TensorSpec([crop_h, crop_w, 3], tf.float32))


def pad_to_size(image_map: tf.Tensor, size: Sequence[tf.Tensor]) -> tf.Tensor:
  """Pads a [h, w] map bottom/right with OUTPUT_PAD_VALUE to `size`."""
  shape = tf.shape(image_map)
  return tf.pad(image_map, [[0, size[0] - shape[0]], [0, size[1] - shape[1]]],
                constant_values=tf.cast(OUTPUT_PAD_VALUE, image_map.dtype))
