"""model/builder.py: the backbone name -> builder mapping decides what a name may set."""

import pytest

from kmax_tf.config import loader
from kmax_tf.model import builder


@pytest.mark.parametrize('name', sorted(builder.PIXEL_ENCODER_BUILDERS))
def test_only_the_resnet_encoders_take_scaling(name, monkeypatch):
  config = loader.parse_config_text(
      f'model_options {{ backbone {{ name: "{name}" backbone_width_multiplier: 0.5 }} }}')
  calls = []
  monkeypatch.setitem(builder.PIXEL_ENCODER_BUILDERS, name,
                      lambda **kwargs: calls.append(kwargs) or 'encoder')
  if name in ('kmax_resnet50', 'kmax_axial_resnet50'):
    assert builder._build_pixel_encoder(config, None, (65, 65, 3)) == 'encoder'
    assert calls[0]['scaling'] == {'backbone_width_multiplier': 0.5}
  else:
    with pytest.raises(ValueError, match='only the ResNet encoders are scalable'):
      builder._build_pixel_encoder(config, None, (65, 65, 3))
    assert not calls
