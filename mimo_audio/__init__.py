"""MiMo-Audio-compatible patch-based speech LM, prompt rendering and the task API.

Main entry points::

    from mimo_audio import MimoAudio, Conversation
    m = MimoAudio.from_pretrained("path/to/MiMo-Audio-7B-Instruct", "path/to/MiMo-Audio-Tokenizer")
    m.tts("Hello there").save_audio("hello.wav")
    m = MimoAudio.from_pretrained()   # the small embedded default model (LM + audio tokenizer)

Low level: :class:`SpeechLM` (the model), :func:`generate` / :func:`iter_patches` (the loop),
:class:`PromptRenderer` and the segment types (prompts), :mod:`mimo_audio.formats` (official prompts).
"""

from .api import ChatResult, Conversation, Message, MimoAudio, StreamEvent
from .config import SpeechLMConfig
from .defaults import default_model_dir
from .delay_pattern import DelayPattern
from .formats import QAExample, SpeechPair
from .generation import GenerationConfig, GenerationOutput, decode_one, generate, iter_patches, prefill
from .modeling import SpeechLM, SpeechLMOutput
from .prompts import PromptRenderer, Speech, Stream, Text
from .sampling import PRESETS, Sampler
from .text_tokenizer import SpecialTokens, load_text_tokenizer

__all__ = [
    "PRESETS",
    "ChatResult",
    "Conversation",
    "DelayPattern",
    "GenerationConfig",
    "GenerationOutput",
    "Message",
    "MimoAudio",
    "PromptRenderer",
    "QAExample",
    "Sampler",
    "SpecialTokens",
    "Speech",
    "SpeechLM",
    "SpeechLMConfig",
    "SpeechLMOutput",
    "SpeechPair",
    "StreamEvent",
    "Stream",
    "Text",
    "decode_one",
    "default_model_dir",
    "generate",
    "iter_patches",
    "load_text_tokenizer",
    "prefill",
]
