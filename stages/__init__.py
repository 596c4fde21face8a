"""The work itself: one subpackage per stage, plain Python + numpy/torch, runnable without Ray."""
