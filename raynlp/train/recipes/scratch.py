"""Level 6 of the guide: a vocabulary learned from the corpus and a small transformer trained from scratch.

    token ids → TokenAndPositionEmbedding → TransformerEncoder × n → [CLS] position → dropout → dense

Only `token_ids` and `padding_mask` are used. The export is `model.keras` beside the learned tokenizer.
"""

import logging
import os

from raynlp.errors import RaynlpError
from raynlp.train.recipes.base import Plan, Recipe, compile_model

logger = logging.getLogger(__name__)


def build_scratch_classifier(*, vocabulary_size: int, sequence_length: int, hidden_dim: int, num_layers: int,
                             num_heads: int, intermediate_dim: int, dropout: float, num_classes: int):
    import keras
    import keras_hub

    token_ids = keras.Input(shape=(sequence_length,), dtype="int32", name="token_ids")
    padding_mask = keras.Input(shape=(sequence_length,), dtype="bool", name="padding_mask")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size=vocabulary_size, sequence_length=sequence_length, embedding_dim=hidden_dim
    )(token_ids)
    for _ in range(num_layers):
        x = keras_hub.layers.TransformerEncoder(num_heads=num_heads, intermediate_dim=intermediate_dim,
                                                dropout=dropout)(x, padding_mask=padding_mask)
    x = keras.layers.Dropout(dropout)(x[:, 0, :])
    logits = keras.layers.Dense(num_classes)(x)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, logits, name="scratch_classifier")


class ScratchRecipe(Recipe):
    summary = "learn a vocabulary and train a small transformer from scratch (guide level 6)"
    needs_preset = False
    feature_columns = ("token_ids", "padding_mask")

    def tokenizer(self, config, train, run) -> str:
        """`model.vocabulary`, or one learned from the training text, as a keras-hub tokenizer preset saved in the
        run (`tokenizer/`; a learned vocabulary also as `vocabulary.txt`). A resumed run keeps its own."""
        import keras_hub

        made = run.fetch("tokenizer")
        if made is not None and (made / "tokenizer.json").exists():
            return run.for_workers("tokenizer")
        vocabulary = config.model.vocabulary
        if vocabulary is None:
            from raynlp.data import learn_vocabulary, save_vocabulary

            if isinstance(train, str):
                raise RaynlpError("task scratch learns its vocabulary from raw text; give model.vocabulary with "
                                  "tokenized data")
            if config.data.max_train_rows:
                train = train.limit(config.data.max_train_rows)
            logger.info("learning a %d-token WordPiece vocabulary from the training text", config.model.vocabulary_size)
            vocabulary = str(save_vocabulary(learn_vocabulary(train, config.model.vocabulary_size),
                                             run.staged("vocabulary.txt")))
            run.publish("vocabulary.txt")
        elif not os.path.isfile(vocabulary):
            raise RaynlpError(f"model.vocabulary {vocabulary} does not exist; make one with `raynlp vocab`")
        keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True).save_to_preset(str(run.staged("tokenizer")))
        run.publish("tokenizer")
        return run.for_workers("tokenizer")

    def build(self, config, plan: Plan):
        from raynlp.data.fast_tokenizer import FastWordPieceTokenizer

        m = config.model
        vocabulary_size = FastWordPieceTokenizer.from_keras_hub_preset_dir(plan.tokenizer_dir).vocabulary_size
        model = build_scratch_classifier(
            vocabulary_size=vocabulary_size, sequence_length=config.data.sequence_length, hidden_dim=m.hidden_dim,
            num_layers=m.num_layers, num_heads=m.num_heads, intermediate_dim=m.intermediate_dim,
            dropout=m.dropout, num_classes=plan.num_classes,
        )
        return compile_model(model, config, plan)

    def export(self, model, config, plan: Plan, folder: str) -> None:
        import shutil

        model.save(f"{folder}/model.keras")
        # The learned tokenizer: keras-hub's `tokenizer.json` and vocabulary asset, as the driver saved them.
        shutil.copytree(plan.tokenizer_dir, folder, dirs_exist_ok=True)
        self.write_card(folder, model, config, plan, class_name="keras.Model", model_file="model.keras")
