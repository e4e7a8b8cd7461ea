"""Level 5 of the guide: masked-LM pretraining of a backbone, from random init or continued (domain pretraining).

The documents are packed into full windows (`data.packing`, `raynlp.data.packing`) and each batch is masked
anew as a worker deals it (`model.masking.dynamic`; masked once when tokenizing otherwise, as the guide does);
the model sees `token_ids` with [MASK]s, predicts the original ids at `mask_positions`, and the loss is weighted
by `mask_weights`. On packed windows each document attends only to itself, its positions counted from its own
start (`model.document_attention`, `DocumentMaskedLM`). The export is a backbone preset (config, weights,
tokenizer) that `finetune` takes as its `preset`.
"""

from raynlp.data.tokenize import PACKED_FEATURES
from raynlp.train.recipes.base import Plan, Recipe, compile_model


class PretrainRecipe(Recipe):
    summary = "masked-LM pretraining of a backbone, from scratch or continued (guide level 5)"
    labelled = False
    masked_lm = True
    feature_columns = (*PACKED_FEATURES, "mask_positions")
    label_column = "mask_ids"
    weight_column = "mask_weights"
    packing = "documents"
    document_columns = ("document_ids", "position_ids")  # what the masker adds for document attention

    def check(self, config) -> None:
        super().check(config)
        if config.model.document_attention and config.data.packing == "none":
            raise ValueError("model.document_attention keeps attention within the documents of packed windows; "
                             "data.packing=none gives a document a row: leave it out or pack the documents")
        if config.model.document_attention and not config.model.masking.dynamic:
            raise ValueError("model.document_attention finds the documents in the ids before masking, which "
                             "model.masking.dynamic=false does not keep: leave one of them out")

    @staticmethod
    def document_attention(config) -> bool:
        asked = config.model.document_attention
        return asked if asked is not None else config.data.packing != "none" and config.model.masking.dynamic

    def inputs(self, config) -> tuple[str, ...]:
        return (*self.feature_columns, *self.document_columns) if self.document_attention(config) else \
            self.feature_columns

    def masker(self, config, plan: Plan, split: str):
        from raynlp.data.fast_tokenizer import FastWordPieceTokenizer
        from raynlp.data.masked_lm import BatchMasker
        from raynlp.data.tokenize import max_sequence_length

        masking = config.model.masking
        if not masking.dynamic:
            return None
        tokenizer = FastWordPieceTokenizer.from_keras_hub_preset_dir(plan.tokenizer_dir)
        documents = None
        if self.document_attention(config):
            documents = {"sep_id": tokenizer.sep_token_id, "pad_id": tokenizer.pad_token_id,
                         "max_position": max_sequence_length(plan.preset_dir)}
        return BatchMasker(masking.mask_kwargs(tokenizer), config.train.seed, split=split, documents=documents)

    def build(self, config, plan: Plan):
        import keras_hub

        masked_lm = keras_hub.models.BertMaskedLM.from_preset(plan.preset_dir, preprocessor=None)
        if self.document_attention(config):
            from raynlp.train.recipes.document_masked_lm import DocumentMaskedLM

            masked_lm = DocumentMaskedLM(masked_lm)
        return compile_model(masked_lm, config, plan, weighted=True)

    def export(self, model, config, plan: Plan, folder: str) -> None:
        import keras_hub

        model.backbone.save_to_preset(folder)
        keras_hub.models.BertTokenizer.from_preset(plan.tokenizer_dir).save_to_preset(folder)
        self.write_card(folder, model, config, plan, class_name="BertBackbone")
