"""Level 4 of the guide: a user's model around a preset's backbone, e.g. extra encoder layers on a frozen one.

`model.builder: "package.module:function"` names a function `build(backbone, config) -> keras.Model`
taking the packed features (`token_ids`, `segment_ids`, `padding_mask`); it may compile the model itself.
The features arrive in their stored types (int16 ids where the vocabulary allows, int8 segment ids, a bool mask:
`raynlp.data.columns`): a Functional model casts them to its `Input`s' dtypes, a subclassed one gets them as they are.
The export is the whole model as `model.keras` beside the backbone's tokenizer.
"""

import importlib

from raynlp.errors import RaynlpError
from raynlp.train.recipes.base import Plan, Recipe, compile_model


def load_builder(path: str):
    module_name, _, function = path.partition(":")
    if not module_name or not function:
        raise RaynlpError(f"model.builder {path!r} must read 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RaynlpError(f"model.builder: cannot import {module_name} ({e})") from None
    if not callable(getattr(module, function, None)):
        raise RaynlpError(f"model.builder: {module_name} has no function {function}")
    return getattr(module, function)


class FitRecipe(Recipe):
    summary = "train a user model built around a preset's backbone (guide level 4)"

    def check(self, config) -> None:
        super().check(config)
        if not config.model.builder:
            raise ValueError("task fit needs model.builder ('package.module:function')")

    def build(self, config, plan: Plan):
        import keras_hub

        backbone = keras_hub.models.BertBackbone.from_preset(plan.preset_dir)
        # The builder sees the number of classes the driver settled, also where the config left it out.
        settled = config.model_copy(update={"model": config.model.model_copy(update={"num_classes": plan.num_classes})})
        model = load_builder(config.model.builder)(backbone, settled)
        if not model.compiled:
            compile_model(model, config, plan)
        return model

    def export(self, model, config, plan: Plan, folder: str) -> None:
        import keras_hub

        model.save(f"{folder}/model.keras")
        keras_hub.models.BertTokenizer.from_preset(plan.tokenizer_dir).save_to_preset(folder)
        self.write_card(folder, model, config, plan, class_name="keras.Model", model_file="model.keras")
