"""The Keras U-Net, its metrics and losses, and saving and loading models with their records
(TensorFlow and Keras load only where a function needs them)."""
