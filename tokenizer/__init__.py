"""MiMo-Audio-compatible audio tokenizer (25 Hz RVQ): encode, decode, streaming decode.

Stands alone: imports nothing from the other packages of this project.

    from tokenizer import AudioTokenizer, TokenizerConfig
    tok = AudioTokenizer.from_pretrained("models/MiMo-Audio-Tokenizer")
    tok = AudioTokenizer.from_pretrained()    # the small embedded default shipped with the package
    codes = tok.encode("speech.wav")          # LongTensor [8, T] at 25 Hz
    wav = tok.decode(codes)                    # FloatTensor [960 * T] at 24 kHz
"""

from tokenizer.api import AudioTokenizer
from tokenizer.audio import load_audio, resample
from tokenizer.config import TokenizerConfig
from tokenizer.defaults import default_tokenizer_dir
from tokenizer.streaming import StreamDecoder

__all__ = ["AudioTokenizer", "TokenizerConfig", "StreamDecoder", "default_tokenizer_dir", "load_audio", "resample"]
