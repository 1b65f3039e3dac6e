"""Feed-forward stylisation (Johnson et al. 2016): a net per painting, trained with the engine's own loss.

    nst-jax train_fast --style painting.jpg --images skimage:astronaut,coffee --model_dir models/p
    nst-jax fast --model models/p --content photo.jpg --output out.png

Modules, one job each: `model` (the Flax transformer net, any input size), `model_file` (the versioned model
file), `data` (training images and augmented random crops), `train` (the training loss from the engine's
targets, the optax step and the resumable loop), `apply` (a trained net on photos: sizes, alpha, colours).
See docs/fast.md.
"""
