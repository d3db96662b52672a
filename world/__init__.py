"""A small offline world with known ground truth: scenes, a base model, scorers and an oracle.

``world.scene`` draws the images and captions; ``world.data`` writes the subject and class
folders in kohya's layout and yields base-world batches for the training scripts.
"""
