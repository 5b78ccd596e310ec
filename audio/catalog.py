"""What the worker can speak with: model variants, preset speakers, voice aliases and languages.

Plain data and lookups only (no torch), so validation and the info actions never load a model.
"""

from __future__ import annotations

from dataclasses import dataclass

CUSTOM_VOICE = "custom_voice"
BASE = "base"
VOICE_DESIGN = "voice_design"

TOKENIZER_DIR_NAME = "Qwen3-TTS-Tokenizer-12Hz"


@dataclass(frozen=True)
class ModelVariant:
    name: str  # the short name callers use, e.g. "1.7B-CustomVoice"
    kind: str  # CUSTOM_VOICE | BASE | VOICE_DESIGN
    size: str  # "1.7B" | "0.6B"

    @property
    def dir_name(self) -> str:
        return f"Qwen3-TTS-12Hz-{self.name}"

    @property
    def repo_id(self) -> str:
        return f"Qwen/{self.dir_name}"

    @property
    def honours_instruct(self) -> bool:
        # qwen_tts drops `instruct` for 0.6B CustomVoice (tts_model_size "0b6"); VoiceDesign needs it.
        return not (self.kind == CUSTOM_VOICE and self.size == "0.6B")


MODELS: dict[str, ModelVariant] = {
    v.name: v
    for v in (
        ModelVariant("1.7B-CustomVoice", CUSTOM_VOICE, "1.7B"),
        ModelVariant("0.6B-CustomVoice", CUSTOM_VOICE, "0.6B"),
        ModelVariant("1.7B-Base", BASE, "1.7B"),
        ModelVariant("0.6B-Base", BASE, "0.6B"),
        ModelVariant("1.7B-VoiceDesign", VOICE_DESIGN, "1.7B"),
    )
}
DEFAULT_MODEL = "1.7B-CustomVoice"


def find_model(name: str) -> ModelVariant | None:
    """A variant by short name or full id (`Qwen/Qwen3-TTS-12Hz-1.7B-Base`), case-insensitive."""
    key = name.strip().lower()
    for prefix in ("qwen/", "qwen3-tts-12hz-"):
        key = key.removeprefix(prefix)
    for variant in MODELS.values():
        if variant.name.lower() == key:
            return variant
    return None


@dataclass(frozen=True)
class Speaker:
    name: str
    native_language: str
    description: str
    # qwen_tts speaks this dialect instead of Mandarin when the language is Auto or Chinese.
    dialect: str | None = None


SPEAKERS: dict[str, Speaker] = {
    s.name.lower(): s
    for s in (
        Speaker("Vivian", "Chinese", "Bright, slightly edgy young female voice"),
        Speaker("Serena", "Chinese", "Warm, gentle young female voice"),
        Speaker("Uncle_Fu", "Chinese", "Seasoned male voice with a low, mellow timbre"),
        Speaker("Dylan", "Chinese (Beijing dialect)", "Youthful Beijing male voice, clear and natural", "Beijing"),
        Speaker("Eric", "Chinese (Sichuan dialect)", "Lively Chengdu male voice, slightly husky", "Sichuan"),
        Speaker("Ryan", "English", "Dynamic male voice with strong rhythmic drive"),
        Speaker("Aiden", "English", "Sunny American male voice with a clear midrange"),
        Speaker("Ono_Anna", "Japanese", "Playful Japanese female voice, light and nimble"),
        Speaker("Sohee", "Korean", "Warm Korean female voice with rich emotion"),
    )
}
DEFAULT_VOICE = "Ryan"

# The seed handler's generic names and OpenAI's voice names, mapped to the closest preset speaker. Never to a
# dialect speaker: a caller naming an OpenAI voice expects standard speech.
VOICE_ALIASES: dict[str, str] = {
    "male_1": "Ryan",
    "male_2": "Aiden",
    "female_1": "Vivian",
    "female_2": "Serena",
    "alloy": "Serena",
    "ash": "Aiden",
    "ballad": "Uncle_Fu",
    "coral": "Vivian",
    "echo": "Ryan",
    "fable": "Aiden",
    "nova": "Serena",
    "onyx": "Uncle_Fu",
    "sage": "Ono_Anna",
    "shimmer": "Sohee",
    "verse": "Ryan",
}


def resolve_voice(name: str) -> str | None:
    """The canonical speaker name for a speaker or alias, case-insensitive; None if unknown."""
    key = name.strip().lower()
    if key in SPEAKERS:
        return SPEAKERS[key].name
    return VOICE_ALIASES.get(key)


LANGUAGES: tuple[str, ...] = (
    "Auto",
    "Chinese",
    "English",
    "Japanese",
    "Korean",
    "German",
    "French",
    "Russian",
    "Portuguese",
    "Spanish",
    "Italian",
)
LANGUAGE_CODES: dict[str, str] = {
    "zh": "Chinese",
    "en": "English",
    "ja": "Japanese",
    "ko": "Korean",
    "de": "German",
    "fr": "French",
    "ru": "Russian",
    "pt": "Portuguese",
    "es": "Spanish",
    "it": "Italian",
}


def resolve_language(value: str) -> str | None:
    """A language name (any case), ISO 639-1 code or locale (`pt-BR`, `zh_CN`) → canonical name; None if unknown."""
    key = value.strip().lower()
    for name in LANGUAGES:
        if name.lower() == key:
            return name
    code = key.replace("_", "-").split("-", 1)[0]
    return LANGUAGE_CODES.get(code)
