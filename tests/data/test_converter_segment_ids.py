"""converter_utils.panoptic_from_segments: PNG ids missing from the JSON are errors."""

import numpy as np
import pytest

from kmax_tf.data import converter_utils
from kmax_tf.data import dataset_descriptors


def _spec():
  return converter_utils.label_spec_from_descriptor(
      dataset_descriptors.get_dataset_descriptor('kmax_demo_panoptic'))


def test_listed_ids_convert_and_unlisted_ids_are_errors():
  ids = np.zeros((6, 6), np.int32)  # 0: void.
  ids[:3] = 7
  ids[3:, :3] = 9
  segments = [{'id': 7, 'category_id': 4, 'area': 18}, {'id': 9, 'category_id': 1, 'area': 9}]
  panoptic, counts = converter_utils.panoptic_from_segments(ids, segments, _spec(), 'a.png')
  assert counts['segments'] == 2
  assert panoptic[0, 0] == 4 * 256 and panoptic[5, 0] == 1 * 256 + 1 and panoptic[5, 5] == 0
  # Id 12 sits on pixels that would be void anyway: still an error, naming the file and id.
  ids[5, 5] = 12
  with pytest.raises(converter_utils.ConversionError,
                     match=r'a.png: segment id\(s\) \[12\] appear in the PNG but not in its JSON'):
    converter_utils.panoptic_from_segments(ids, segments, _spec(), 'a.png')
