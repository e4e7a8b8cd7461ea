"""A keras-hub `BertMaskedLM` that trains on packed windows as if each document were a row of its own.

Packing fills a window with several documents; plain BERT attention would let each read its neighbours and
count its positions from the window's start, so a document's first tokens sit mid-window after a `[SEP]`,
never at position 1 as in the rows a fine-tune (or the guide's pretraining) gives the model. Here each token
attends only to the tokens of its own document, and takes the position embedding of its place in that document
(`document_ids`, `position_ids`: `raynlp.data.packing.document_positions`), as packing without
cross-contamination (Krell et al., 2021) and Hugging Face's `DataCollatorWithFlattening` do.

Every document also attends to the window's `[CLS]`, which opens every row. Seen only by the window's first
part (most often the rest of a document begun in the window before), `[CLS]` would come to mean "mid-document",
and a model would read a row's opening tokens as a continuation. In the first layer the `[CLS]` a later document
reads is exactly its row's; in deeper ones it has read the window's first document instead of this one.

It is the masked LM's own layers called in the backbone's order (no weight of its own), so `backbone` is the
plain `BertBackbone` that a preset exports and a row-a-document model runs.
"""

import keras


class DocumentMaskedLM(keras.Model):
    def __init__(self, masked_lm, **kwargs):
        super().__init__(**kwargs)
        self.masked_lm = masked_lm
        self.backbone = masked_lm.backbone
        self.built = True  # no weights of its own: the masked LM's are built

    def call(self, inputs, training=None):
        backbone = self.backbone
        tokens = backbone.token_embedding(inputs["token_ids"])
        positions = backbone.position_embedding(tokens, positions=inputs["position_ids"])
        segments = backbone.segment_embedding(inputs["segment_ids"])
        x = backbone.embeddings_add((tokens, positions, segments))
        x = backbone.embeddings_dropout(backbone.embeddings_layer_norm(x), training=training)
        documents = inputs["document_ids"]
        same_document = keras.ops.equal(documents[:, :, None], documents[:, None, :])
        is_cls = keras.ops.equal(keras.ops.arange(keras.ops.shape(documents)[1]), 0)
        attends = keras.ops.logical_or(same_document, is_cls[None, None, :])
        for layer in backbone.transformer_layers:
            x = layer(x, padding_mask=inputs["padding_mask"], attention_mask=attends, training=training)
        return self.masked_lm.masked_lm_head(x, inputs["mask_positions"])
