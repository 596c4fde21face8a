"""Speech and dub audio as every stage sees them: the working sample rate and loudness
(``features``), the dub-length policy (``fit``), dub scripts (``script``), Whisper models,
transcription and encoder states (``whisper_models``, ``transcribe``, ``speech_encoder``) and
espeak-ng synthesis (``espeak``)."""
