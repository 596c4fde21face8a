"""Lip sync measured on a video: the mouth opening from the face mesh, and the self-check's sample
of frames. Shared by the selfcheck and report stages and by the lip-sync benchmark."""
