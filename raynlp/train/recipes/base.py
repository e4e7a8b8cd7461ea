"""What every recipe provides, and the facts the driver works out before training starts."""

from dataclasses import asdict, dataclass

from raynlp.train.config import RecipeConfig

PACKED_FEATURES = ("token_ids", "segment_ids", "padding_mask")


@dataclass(frozen=True)
class Plan:
    """Facts the driver settles once and hands to every worker."""

    preset_dir: str | None  # the backbone to start from (None for scratch)
    tokenizer_dir: str  # the keras-hub preset folder whose tokenizer made the token ids
    num_classes: int | None
    train_rows: int
    steps_per_epoch: int
    validation_steps: int | None
    world_size: int

    def to_dict(self) -> dict:
        return asdict(self)


class Recipe:
    labelled: bool = True
    masked_lm: bool = False
    feature_columns: tuple[str, ...] = PACKED_FEATURES
    label_column: str | None = "label"
    weight_column: str | None = None

    def build(self, config: RecipeConfig, plan: Plan):
        """The compiled keras.Model, identical on every rank (built after the shared seed is set)."""
        raise NotImplementedError

    def export(self, model, config: RecipeConfig, plan: Plan, folder: str) -> None:
        """Write the trained model into `folder` as a preset keras-hub (or raynlp serving) can load."""
        raise NotImplementedError


def compile_model(model, config: RecipeConfig, plan: Plan, *, loss=None, metrics=("sparse_categorical_accuracy",)):
    import keras

    opt = config.optimizer
    rate = opt.learning_rate * (plan.world_size if opt.scale_learning_rate else 1)
    if opt.name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=rate, weight_decay=opt.weight_decay)
    elif opt.name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=rate)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=rate)
    model.compile(
        optimizer=optimizer,
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=list(metrics) if metrics else None,
    )
    return model
