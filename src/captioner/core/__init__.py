"""Foundation shared by every stage: errors, atomic writes, default folders, progress events.

Nothing here imports another captioner module."""
