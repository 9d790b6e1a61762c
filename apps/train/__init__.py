"""Training recipes for the embedded default model (issue 7): the audio tokenizer, then the speech LM.

Plain scripts in the torchtune spirit: :mod:`apps.train.tokenizer` and :mod:`apps.train.speech_lm`, data
from the offline corpus (:mod:`apps.train.data`), resumable state in :mod:`apps.train.state`.
"""
