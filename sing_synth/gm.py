"""General MIDI (GM level 1) program names and their NSynth labels.

GM groups its 128 melodic programs into 16 groups of 8.  A soundfont rendered to an NSynth-style
dataset needs, per program, NSynth's ``instrument_family_str`` (one of 11 names) and
``instrument_source_str`` (acoustic / electronic / synthetic); this module is that table.

Family: taken from the program's GM group, except for a few programs whose group is a poor fit
(accordions and harmonica are free reeds, choirs are voices, timpani is struck, the Ethnic group
mixes plucked strings, reeds and a kalimba).  NSynth has no pad or effects family: Synth Pad
maps to ``synth_lead`` (NSynth's only synthesizer family).  The Synth Effects, Percussive and
Sound Effects groups are not tonal instruments in NSynth's sense and are skipped by default;
when asked for explicitly they get the nearest label (``synth_lead`` / ``mallet``).

Source: NSynth's meaning: ``acoustic`` = recorded acoustic instrument, ``electronic`` =
recorded electric/electronic instrument (electric piano, organ with tonewheels, electric guitar
and bass), ``synthetic`` = synthesized sound.  Decided by the GM program, not by the soundfont.
"""
from __future__ import annotations

FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet",
            "organ", "reed", "string", "synth_lead", "vocal")  # NSynth's order
SOURCES = ("acoustic", "electronic", "synthetic")  # NSynth's order

GM_PROGRAM_NAMES = (
    # 0-7 Piano
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    # 8-15 Chromatic Percussion
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone",
    "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    # 16-23 Organ
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ",
    "Reed Organ", "Accordion", "Harmonica", "Tango Accordion",
    # 24-31 Guitar
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar",
    "Distortion Guitar", "Guitar Harmonics",
    # 32-39 Bass
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    # 40-47 Strings
    "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    # 48-55 Ensemble
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2",
    "Choir Aahs", "Voice Oohs", "Synth Voice", "Orchestra Hit",
    # 56-63 Brass
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet",
    "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2",
    # 64-71 Reed
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax",
    "Oboe", "English Horn", "Bassoon", "Clarinet",
    # 72-79 Pipe
    "Piccolo", "Flute", "Recorder", "Pan Flute",
    "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    # 80-87 Synth Lead
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)",
    "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    # 88-95 Synth Pad
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)",
    "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    # 96-103 Synth Effects
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)",
    "FX 5 (brightness)", "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    # 104-111 Ethnic
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    # 112-119 Percussive
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock",
    "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    # 120-127 Sound Effects
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet",
    "Telephone Ring", "Helicopter", "Applause", "Gunshot",
)

GM_GROUPS = (
    "Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass",
    "Reed", "Pipe", "Synth Lead", "Synth Pad", "Synth Effects", "Ethnic", "Percussive",
    "Sound Effects",
)

# GM group -> NSynth instrument_family_str
GROUP_FAMILY = {
    "Piano": "keyboard",
    "Chromatic Percussion": "mallet",
    "Organ": "organ",
    "Guitar": "guitar",
    "Bass": "bass",
    "Strings": "string",
    "Ensemble": "string",
    "Brass": "brass",
    "Reed": "reed",
    "Pipe": "flute",
    "Synth Lead": "synth_lead",
    "Synth Pad": "synth_lead",
    "Synth Effects": "synth_lead",   # skipped by default
    "Ethnic": "guitar",              # most are plucked strings; see overrides
    "Percussive": "mallet",          # skipped by default
    "Sound Effects": "synth_lead",   # skipped by default; no NSynth counterpart
}

# Programs whose GM group is a poor fit for NSynth's family
PROGRAM_FAMILY_OVERRIDES = {
    21: "reed",      # Accordion (free reed)
    22: "reed",      # Harmonica (free reed)
    23: "reed",      # Tango Accordion (free reed)
    47: "mallet",    # Timpani (struck)
    52: "vocal",     # Choir Aahs
    53: "vocal",     # Voice Oohs
    54: "vocal",     # Synth Voice
    55: "brass",     # Orchestra Hit (brass-led stab)
    108: "mallet",   # Kalimba
    109: "reed",     # Bagpipe
    110: "string",   # Fiddle
    111: "reed",     # Shanai
}

# Groups left out when no programs are named: effects and unpitched/percussive sounds
SKIPPED_GROUPS = frozenset({"Synth Effects", "Percussive", "Sound Effects"})

_ELECTRONIC = frozenset({
    2, 4, 5, 7,                      # electric grand, electric pianos, clavinet
    16, 17, 18,                      # drawbar, percussive, rock organ
    26, 27, 28, 29, 30, 31,          # electric guitars
    33, 34, 35, 36, 37,              # electric basses
    124,                             # telephone ring
})
_SYNTHETIC = frozenset(
    {38, 39,                         # synth basses
     50, 51, 54,                     # synth strings, synth voice
     62, 63,                         # synth brass
     118}                            # synth drum
    | set(range(80, 104))            # synth lead, pad, effects
)


def _check(program: int) -> int:
    if isinstance(program, bool) or not isinstance(program, int) or not 0 <= program <= 127:
        raise ValueError(f"GM program must be an int in 0..127, got {program!r}")
    return program


def gm_name(program: int) -> str:
    """GM program name, e.g. 0 -> 'Acoustic Grand Piano'."""
    return GM_PROGRAM_NAMES[_check(program)]


def gm_group(program: int) -> str:
    """GM group of a program, e.g. 40 -> 'Strings'."""
    return GM_GROUPS[_check(program) // 8]


def gm_family(program: int) -> str:
    """NSynth instrument_family_str for a GM program."""
    program = _check(program)
    return PROGRAM_FAMILY_OVERRIDES.get(program, GROUP_FAMILY[gm_group(program)])


def gm_source(program: int) -> str:
    """NSynth instrument_source_str for a GM program."""
    program = _check(program)
    if program in _SYNTHETIC:
        return "synthetic"
    if program in _ELECTRONIC:
        return "electronic"
    return "acoustic"


def skipped_by_default(program: int) -> bool:
    """True for programs of the effects and percussive groups."""
    return gm_group(program) in SKIPPED_GROUPS


def default_programs() -> list[int]:
    """The programs rendered when none are named (104 of 128)."""
    return [p for p in range(128) if not skipped_by_default(p)]
