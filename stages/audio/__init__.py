"""audio: one dub track of one title analysed on the title's frame clock (speech, transcript,
subtitles, language check), with the shared speech tools of ``stages.speech``."""
