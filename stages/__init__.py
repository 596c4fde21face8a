"""The work itself: one subpackage per stage, plain Python + numpy/torch, runnable without Ray.

A stage imports no other stage's package (the one exception is the offline mouth-model training
tool, ``coeffs/training``, which runs probe, shots and faces on real clips as a flow would); what
stages share lives in ``face_model`` (the face mesh, pose, expression, similarity fits, crop
template), ``speech`` (audio clock, dub-length policy, dub scripts, Whisper, espeak-ng), ``media``
(video and audio as shown) and ``chunk_images`` (frame-chunk image coding)."""
