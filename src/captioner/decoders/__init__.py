"""Stage 3: caption decoders (Show and Tell) behind one interface, and the searches that
decode them (greedy, beam)."""
