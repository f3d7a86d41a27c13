"""Synthetic studio speakers for training IASA-mini: identities, drawing, speech, motion, shards.

Drawing and shard I/O need only numpy + cv2 (+ safetensors / torch for shards), so they run on a
training machine without librosa or soundfile; speech (espeak-ng) and motion are made beforehand.
"""
