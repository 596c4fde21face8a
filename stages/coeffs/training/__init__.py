"""Training data for the audio->mouth network (ExpNet's role in SadTalker's method)."""
