"""litgpt's model, tokens and training: checkpoints, batched generation, the training runner."""
