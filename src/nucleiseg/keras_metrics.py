"""Streaming Keras metrics on logits, for training logs (pooled over an epoch)."""

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


def compile_model(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    """Adam + SparseCategoricalCrossentropy(from_logits=True), pixel accuracy, IoU and Dice."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"), ForegroundIoU(),
                 ForegroundDice()],
    )
    return model
