"""sing-synth: a real-time MIDI instrument voiced by SING (Défossez et al., 2018)."""

__version__ = "0.1.0"
