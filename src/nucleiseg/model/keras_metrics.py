"""Keras training objects: streaming metrics on logits (pooled over an epoch), the loss, and
`compile_model`."""

from __future__ import annotations

import keras
from keras import ops


class _ForegroundCounts(keras.metrics.Metric):
    """Accumulates foreground TP/FP/FN where foreground = any class but 0."""

    def __init__(self, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.tp = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        true = ops.reshape(ops.cast(y_true, "int32"), (-1,)) > 0
        pred = ops.reshape(ops.argmax(y_pred, axis=-1), (-1,)) > 0
        true, pred = ops.cast(true, "float32"), ops.cast(pred, "float32")
        self.tp.assign_add(ops.sum(true * pred))
        self.fp.assign_add(ops.sum((1.0 - true) * pred))
        self.fn.assign_add(ops.sum(true * (1.0 - pred)))

    def reset_state(self):
        for variable in (self.tp, self.fp, self.fn):
            variable.assign(0.0)


@keras.saving.register_keras_serializable(package="nucleiseg")
class ForegroundIoU(_ForegroundCounts):
    def __init__(self, name: str = "foreground_iou", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        union = self.tp + self.fp + self.fn
        return ops.where(union > 0, self.tp / ops.maximum(union, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="nucleiseg")
class ForegroundDice(_ForegroundCounts):
    def __init__(self, name: str = "dice", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        denominator = 2.0 * self.tp + self.fp + self.fn
        return ops.where(denominator > 0, 2.0 * self.tp / ops.maximum(denominator, 1.0), 1.0)


@keras.saving.register_keras_serializable(package="nucleiseg")
class WeightedCrossEntropy(keras.losses.Loss):
    """Sparse categorical cross-entropy on logits with a weight per true class."""

    def __init__(self, class_weights=(1.0, 1.0), name="weighted_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        per_pixel = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        weights = ops.take(ops.convert_to_tensor(self.class_weights), y_true)
        return per_pixel * weights

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


def compile_model(model: keras.Model, learning_rate: float = 1e-3, boundary_weight: float = 1.0,
                  decay_steps: int | None = None) -> keras.Model:
    """Adam + cross-entropy on logits (SparseCategoricalCrossentropy(from_logits=True), or with
    the boundary class weighted), pixel accuracy, foreground IoU and Dice.

    `decay_steps` switches the learning rate to a cosine decay over that many steps.
    """
    num_classes = model.output_shape[-1]
    if boundary_weight != 1.0 and num_classes == 3:
        loss = WeightedCrossEntropy((1.0, 1.0, boundary_weight))
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rate = (keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.05)
            if decay_steps else learning_rate)
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=loss,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), ForegroundIoU(),
                 ForegroundDice()],
    )
    return model
