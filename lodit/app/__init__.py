"""``lodit app``: a local web app to listen to lodit's models and comparisons in a browser.

Owns the app's logic as plain functions over a small state object, kept apart from the web layer so
tests call them directly:

- :mod:`lodit.app.state`: :class:`~lodit.app.state.AppState`, the models loaded once (DiT
  generators and tokenizers by folder), the device, the comparison folder and the output folder;
- :mod:`lodit.app.media`: audio coming in from the page (uploads, microphone recordings) checked
  and resampled, wavs and mel-spectrogram images going out;
- :mod:`lodit.app.generate`: the Generate tab (prompt -> audio, settings, NFE/RTF, a zip);
- :mod:`lodit.app.roundtrip`: the Tokenizer tab (audio -> tokenizer -> audio, metrics, latent
  statistics);
- :mod:`lodit.app.listening`: the Compare tab (a ``lodit compare`` folder listed by prompt, arm,
  seed and evaluation step, and a blind A/B test recording preferences to JSON);
- :mod:`lodit.app.ui`: the gradio layout, which only wires widgets to those functions; gradio is
  imported there, lazily (``pip install "lodit[app]"``);
The ``lodit app`` command that starts it is :mod:`lodit.commands.app`.

It sits just below :mod:`lodit.commands` in the dependency order: it may import every other
subpackage, and only its command imports it.
"""
