"""The Gradio demo (``mimo-audio demo``): every task in the browser, generation through one backend adapter.

``backend`` (the model and the serving engine), ``app`` (layout, queue, launch), ``tabs_speech`` and
``tabs_listen`` (one function per tab), ``plots`` (pictures), ``audio_io`` (checked inputs), ``model_card``.
Gradio is imported only by the modules that build the UI.
"""
