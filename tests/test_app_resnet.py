"""The dashboard's Before/after maps (Captum Grad-CAM and layer activations) on the zoo's
ResNet-18, before and after a removal with the engine default (the removal of
``tests/test_resnet.py``: four synthetic people on 16x16 images, person 0 removed)."""
from __future__ import annotations

import numpy as np

import apptest  # noqa: F401  (puts app/ on sys.path)
from lcodec_app import attributions
from test_resnet import PEOPLE, SHAPE, removal  # noqa: F401  (the module-scoped fixture)
from tiny import assert_state_equal, state_copy


def test_the_dashboards_maps_work_on_the_zoo_resnet(removal):
    """The Before/after page's Captum maps on ResNet-18, before and after a removal: Grad-CAM on
    the stem and on the last conv, the activation of a conv's channels and the head's unit
    of the person; right shapes, finite, and neither model's weights, buffers or mode move."""
    model, before, forget, _retain, _held_out, result = removal
    images, targets = forget.images[:3], forget.targets[:3]
    for network in (model, result.model):
        network.train()
        state = state_copy(network)
        convs = attributions.conv_layers(network)
        assert convs[0] == "conv1" and convs[-1] == "layer4.1.conv2"
        for layer in ("conv1", "layer4.1.conv2"):
            maps = attributions.gradcam(network, layer, images, targets)
            assert maps.shape == (3,) + SHAPE[1:] and np.isfinite(maps).all() and (maps >= 0).all()
        activation = attributions.channel_activation(network, "layer1.0.conv1", images, [0, 5])
        assert activation.shape == (3,) + SHAPE[1:] and np.isfinite(activation).all()
        head = attributions.head_layer(network, PEOPLE)
        assert head == "fc"
        assert attributions.slice_activation(network, head, 0, images).shape == (3,)
        assert network.training
        assert_state_equal(network, state)
    assert_state_equal(model, before)
