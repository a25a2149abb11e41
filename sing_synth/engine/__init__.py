"""The live instrument's two real-time halves, in the FluidSynth style.

- `renderer.NoteRenderer`: the SING model, resident on the best device, rendering whole notes in
  one background worker thread (urgent requests ahead of prewarming), each note resampled once
  to the stream rate and kept in an LRU cache; `store.NoteStore` keeps every rendered note on disk
  for later sessions, read back instead of rendered again.
- `controller.Controller`: the control half, called on the MIDI thread with mido messages; it
  keeps the 16 channels' state and posts events to the mixer.
- `mixer.Mixer`: the real-time half, the sounddevice callback; a preallocated voice table mixed
  with no locks and no allocation in the steady state.

Events cross one way, control -> audio, through a `collections.deque`; note arrays the audio
thread no longer needs cross back through another deque, so nothing large is freed there.
"""
from .controller import Controller
from .mixer import (AllNotesOff, AllSoundOff, ChannelGain, ChannelPan, Mixer, NoteOff, NoteOn,
                    PitchBend, Sustain)
from .renderer import NoteRenderer, instrument_key, prewarm_order

__all__ = [
    "Controller", "Mixer", "NoteRenderer", "instrument_key", "prewarm_order",
    "NoteOn", "NoteOff", "Sustain", "ChannelGain", "ChannelPan", "PitchBend", "AllSoundOff",
    "AllNotesOff",
]
