"""Overlay pictures: boundaries, legend, blending."""

import numpy as np
import pytest

from kmax_tf.export import visualization

COLORMAP = [(0, 0, 0), (200, 0, 0), (0, 0, 200), (0, 200, 0)]
NAMES = ['void', 'person', 'car', 'grass']


def _panoptic():
  # grass (stuff) left, two persons right; divisor 256.
  panoptic = np.full((6, 8), 3 * 256, np.int32)
  panoptic[:3, 4:] = 1 * 256 + 1
  panoptic[3:, 4:] = 1 * 256 + 2
  panoptic[0, 0] = 0  # void pixel
  return panoptic


def test_segment_boundaries_hand_checked():
  boundary = visualization.segment_boundaries(_panoptic())
  expected = np.zeros((6, 8), bool)
  expected[:, 3:5] = True          # grass | persons
  expected[2:4, 4:] = True         # person 1 | person 2
  expected[0, 0:2] = expected[0:2, 0] = True  # void pixel
  np.testing.assert_array_equal(boundary, expected)


def test_legend_entries_largest_first_with_instance_counts():
  entries = visualization.legend_entries(_panoptic(), 256, 0, NAMES, [1, 2])
  assert entries == [(1, 'person (2)'), (3, 'grass')]


def test_overlay_blends_colors_draws_boundaries_and_legend():
  image = np.full((6, 8, 3), 100, np.uint8)
  picture = visualization.overlay_panoptic(
      image, _panoptic(), colormap=COLORMAP, class_names=NAMES, thing_class_ids=[1, 2],
      label_divisor=256, ignore_label=0, alpha=0.5)
  assert picture.shape[1] == 8 and picture.shape[0] > 6 and picture.dtype == np.uint8
  np.testing.assert_array_equal(picture[5, 1], [50, 150, 50])   # grass, blended 50/50
  np.testing.assert_array_equal(picture[0, 4], [255, 255, 255])  # boundary
  np.testing.assert_array_equal(picture[1, 6], [150, 50, 50])    # first person: class color
  assert not np.array_equal(picture[5, 6], picture[1, 6])        # second person: a shade
  legend = picture[6:]
  assert (legend == 255).mean() > 0.3 and (legend < 255).any()


def test_overlay_without_segments_and_bad_shapes():
  image = np.zeros((40, 60, 3), np.uint8)
  picture = visualization.overlay_panoptic(
      image, np.zeros((40, 60), np.int32), colormap=COLORMAP, class_names=NAMES,
      thing_class_ids=[1], label_divisor=256, ignore_label=0)
  np.testing.assert_array_equal(picture[:40], image)
  assert picture.shape[0] > 40  # the 'no segments' legend
  with pytest.raises(ValueError, match='panoptic map'):
    visualization.overlay_panoptic(image, np.zeros((4, 6), np.int32), colormap=COLORMAP,
                                   class_names=NAMES, thing_class_ids=[1], label_divisor=256,
                                   ignore_label=0)
