"""The face model every stage shares: MediaPipe's 478-point mesh and its detector (``landmarks``),
head pose, expression and blink on that mesh (``geometry``), similarity fits (``similarity``),
landmark smoothing (``smoothing``) and the aligned face-crop template (``crop``)."""
