"""Built-in few-shot task files (JSON), loaded by :class:`mimo_audio.fewshot.TaskLibrary`."""
