"""``edgeva demo``: three applications sharing one decoder and one detector, on a bundled clip."""
