"""kseg-edge: run kseg .tflite models on a Raspberry Pi, a Coral or a laptop. Never imports TensorFlow."""
