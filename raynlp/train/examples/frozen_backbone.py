"""Level 4 of the guide: a custom model on a frozen backbone.

The backbone's sequence output goes through two new `TransformerEncoder` layers; a dense head reads the
[CLS] position. Only the new layers train, so each step is cheap and the pretrained features are kept.
Named in `configs/fit_frozen_backbone.yaml` as `model.builder: raynlp.train.examples.frozen_backbone:build`.
"""


def build(backbone, config):
    import keras
    import keras_hub

    backbone.trainable = False
    inputs = backbone.input
    sequence = backbone(inputs)["sequence_output"]
    for _ in range(2):
        sequence = keras_hub.layers.TransformerEncoder(
            num_heads=config.model.num_heads,
            intermediate_dim=config.model.intermediate_dim,
            dropout=config.model.dropout,
        )(sequence, padding_mask=inputs["padding_mask"])
    logits = keras.layers.Dense(config.model.num_classes)(sequence[:, backbone.cls_token_index, :])
    return keras.Model(inputs, logits, name="frozen_backbone_classifier")
