"""Levels 2 and 3 of the guide: fine-tune a preset's backbone as a `BertTextClassifier` on labelled text."""

import functools

from raynlp.train.recipes.base import Plan, Recipe, compile_model


class FinetuneRecipe(Recipe):
    summary = "fine-tune a preset's backbone as a text classifier (guide levels 2 and 3)"

    def build(self, config, plan: Plan):
        import keras_hub

        classifier = keras_hub.models.BertTextClassifier.from_preset(
            plan.preset_dir, num_classes=plan.num_classes, preprocessor=None, dropout=config.model.dropout
        )
        if config.model.freeze_backbone:
            classifier.backbone.trainable = False
        return compile_model(classifier, config, plan)

    def export(self, model, config, plan: Plan, folder: str) -> None:
        # Saved with the preprocessor it was trained for (same tokenizer, same sequence length), so that
        # `BertTextClassifier.from_preset(folder)` takes raw strings; training itself feeds packed arrays and
        # runs without one. (The task's `task.json` records its preprocessor: saving it beside is not enough.)
        model.preprocessor = _preprocessor(plan.tokenizer_dir, config.data.sequence_length)
        try:
            model.save_to_preset(folder)
        finally:
            model.preprocessor = None
        self.write_card(folder, model, config, plan, class_name="BertTextClassifier")


@functools.cache
def _preprocessor(tokenizer_dir: str, sequence_length: int):
    """Built once a worker: every epoch's export saves the same one."""
    import keras_hub

    return keras_hub.models.BertTextClassifierPreprocessor.from_preset(tokenizer_dir, sequence_length=sequence_length)
