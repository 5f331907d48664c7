"""CUT / FastCUT itself: ``networks`` (G, D, F as the reference lays them out), ``patchnce`` (the loss on its own),
``losses`` (GAN objectives), ``cut`` (the objective and one training step), ``io`` (the checkpoint's ``model.pt``),
``official`` (importing the authors' released weights). Knows nothing of Ray or of the data pipeline."""
