"""Training: tf.data pipelines with augmentation, and the training run."""
