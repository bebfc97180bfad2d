"""The app's page: gradio widgets wired to the functions of :mod:`lodit.app` (no logic of its own).

gradio is imported here only, when the app starts (``pip install "lodit[app]"``). The page works
offline: gradio's usage analytics and version check are switched off (``analytics_enabled=False``
and ``GRADIO_ANALYTICS_ENABLED=False``, gradio's documented settings), its default theme uses the
fonts it ships, and server-side rendering (a Node process) is off. A
:class:`~lodit.errors.LoditError` from a handler becomes a gradio error message on the page: one
line, no traceback.
"""

from __future__ import annotations

import functools
import os
import random
from typing import Any

import numpy as np

from lodit.app import generate as generate_mod
from lodit.app import listening
from lodit.app.roundtrip import round_trip_audio
from lodit.app.state import AppState
from lodit.errors import LoditError
from lodit.samplers.schedules import SCHEDULES
from lodit.samplers.solvers import SOLVERS

TASK_CHOICES = ["auto", "tta", "ttm", "tts"]
CSS = ".lodit-metrics { font-size: 0.85em; }"


def require_gradio():
    """The gradio module, with its network calls off; a one-line error when it is not installed."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import and at Blocks creation
    try:
        import gradio
    except ImportError:
        raise LoditError('the web app needs gradio, which is not installed; pip install "lodit[app]"') from None
    return gradio


def _friendly(gr, fn):
    """``fn`` with LoditError shown as a gradio error message (one line, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LoditError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return wrapper


def build_app(state: AppState):
    """The gradio Blocks of the three tabs, bound to ``state``."""
    gr = require_gradio()
    with gr.Blocks(title="lodit", analytics_enabled=False) as app:
        gr.Markdown("## lodit: listen to latent DiT audio models")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                _generate_tab(gr, state)
            with gr.Tab("Tokenizer", id="tokenizer"):
                _tokenizer_tab(gr, state)
            with gr.Tab("Compare", id="compare"):
                _compare_tab(gr, state)
        device = f"device: {state.device}"
        gr.Markdown(f"<span class='lodit-metrics'>{device} · files of this session: {state.out_dir}</span>")
    return app


# ------------------------------------------------------------------------------ Generate


def _generate_tab(gr, state: AppState) -> None:
    labels = list(state.checkpoints)
    # The first checkpoint is already loaded (AppState.create): its sampling settings start the page.
    defaults = generate_mod.defaults_for(state.generator(labels[0])) if labels else generate_mod.GenerateRequest()
    if not labels:
        gr.Markdown("No DiT checkpoint: start the app with `--checkpoint DIR` (a `lodit train-dit` run) "
                    "or `--compare DIR` (a `lodit compare` folder) to generate.")
    with gr.Row():
        with gr.Column(scale=2):
            checkpoint = gr.Dropdown(labels, value=labels[0] if labels else None, label="checkpoint")
            prompt = gr.Textbox(label="caption", placeholder="a slow plucked melody in A minor at 80 BPM", lines=2,
                                elem_id="lodit-prompt")
            transcript = gr.Textbox(label="transcript (speech)", placeholder="what the voice should say", lines=2)
            with gr.Accordion("voice reference (speech)", open=False):
                reference = gr.Audio(sources=["upload", "microphone"], type="filepath", label="reference audio")
                reference_text = gr.Textbox(label="reference transcript", placeholder="what the reference says")
            with gr.Accordion("sampling", open=True):
                with gr.Row():
                    task = gr.Radio(TASK_CHOICES, value="auto", label="task")
                    seconds = gr.Number(value=0.0, minimum=0.0, maximum=generate_mod.MAX_SECONDS,
                                        label="seconds (0: automatic)")
                with gr.Row():
                    sampler = gr.Dropdown(SOLVERS.names(), value=defaults.sampler, label="sampler")
                    schedule = gr.Dropdown(SCHEDULES.names(), value=defaults.schedule, label="schedule")
                    steps = gr.Slider(1, 200, value=defaults.steps, step=1, label="steps")
                with gr.Row():
                    cfg = gr.Slider(0.0, 10.0, value=defaults.cfg, step=0.1, label="CFG scale (1: none)")
                    cfg_lo = gr.Slider(0.0, 1.0, value=defaults.cfg_interval[0], step=0.05, label="CFG from t")
                    cfg_hi = gr.Slider(0.0, 1.0, value=defaults.cfg_interval[1], step=0.05, label="CFG to t")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="seed")
                    batch = gr.Slider(1, generate_mod.MAX_BATCH, value=1, step=1, label="batch",
                                      elem_id="lodit-batch")
            button = gr.Button("Generate", variant="primary", elem_id="lodit-generate")
        with gr.Column(scale=3):
            players, images = [], []
            for i in range(generate_mod.MAX_BATCH):
                players.append(gr.Audio(label=f"sample {i}", type="filepath", interactive=False, visible=i == 0,
                                        elem_id=f"lodit-sample-{i}"))
                images.append(gr.Image(label=f"mel {i}", type="filepath", interactive=False, visible=i == 0))
            settings = gr.JSON(label="settings, NFE and RTF")
            download = gr.DownloadButton("download wavs + settings (zip)", visible=False)

    def run(label, prompt_, transcript_, reference_, reference_text_, task_, seconds_, sampler_, schedule_, steps_,
            cfg_, lo, hi, seed_, batch_, progress=gr.Progress()):  # noqa: B008 (gradio finds its tracker by this default)
        generator = state.generator(label)
        request = generate_mod.GenerateRequest(
            prompt=prompt_ or "",
            transcript=transcript_ or "",
            reference_audio=reference_ or None,
            reference_transcript=reference_text_ or "",
            task=task_ or "auto",
            seconds=float(seconds_ or 0.0),
            sampler=sampler_,
            steps=int(steps_),
            schedule=schedule_,
            cfg=float(cfg_),
            cfg_interval=(float(lo), float(hi)),
            seed=int(seed_ or 0),
            batch=int(batch_),
        )
        generate_mod.check_request(request, generator)  # before taking the lock: bad input answers at once
        with state.lock:
            output = generate_mod.generate(generator, request, state.request_dir("generate"),
                                           progress=lambda fraction, text: progress(fraction, desc=text))
        updates: list[Any] = []
        for i in range(generate_mod.MAX_BATCH):
            clip = output.clips[i] if i < len(output.clips) else None
            label_i = f"sample {i}: seed {clip.seed}, {clip.task}, {clip.seconds:.2f} s" if clip else f"sample {i}"
            updates.append(gr.Audio(value=str(clip.wav) if clip else None, visible=clip is not None, label=label_i))
        for i in range(generate_mod.MAX_BATCH):
            clip = output.clips[i] if i < len(output.clips) else None
            updates.append(gr.Image(value=str(clip.mel) if clip else None, visible=clip is not None))
        updates.append(output.settings)
        updates.append(gr.DownloadButton(value=str(output.archive), visible=True))
        return updates

    def pick_checkpoint(label):
        request = generate_mod.defaults_for(state.generator(label))
        return request.sampler, request.schedule, request.steps, request.cfg, *request.cfg_interval

    button.click(_friendly(gr, run), [checkpoint, prompt, transcript, reference, reference_text, task, seconds, sampler,
                                      schedule, steps, cfg, cfg_lo, cfg_hi, seed, batch],
                 [*players, *images, settings, download], concurrency_limit=1)
    checkpoint.change(_friendly(gr, pick_checkpoint), [checkpoint], [sampler, schedule, steps, cfg, cfg_lo, cfg_hi])


# ------------------------------------------------------------------------------ Tokenizer


def _tokenizer_tab(gr, state: AppState) -> None:
    labels = list(state.tokenizers)
    if not labels:
        gr.Markdown("No tokenizer: start the app with `--tokenizer DIR` or `--compare DIR` to round-trip audio.")
    with gr.Row():
        with gr.Column(scale=2):
            tokenizer = gr.Dropdown(labels, value=labels[0] if labels else None, label="tokenizer")
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="audio to round-trip")
            button = gr.Button("Round trip", variant="primary", elem_id="lodit-roundtrip")
            metrics = gr.JSON(label="reconstruction metrics")
            latents = gr.JSON(label="latent statistics")
        with gr.Column(scale=3):
            original = gr.Audio(label="input (at the tokenizer's rate)", type="filepath", interactive=False)
            original_mel = gr.Image(label="input mel", type="filepath", interactive=False)
            recon = gr.Audio(label="reconstruction", type="filepath", interactive=False, elem_id="lodit-reconstruction")
            recon_mel = gr.Image(label="reconstruction mel (same colour scale)", type="filepath", interactive=False)

    def run(label, audio_):
        model = state.tokenizer(label)
        with state.lock:
            output = round_trip_audio(model, audio_, state.request_dir("roundtrip"))
        return (str(output.input_wav), str(output.input_mel), str(output.recon_wav), str(output.recon_mel),
                output.metrics, output.latents)

    button.click(_friendly(gr, run), [tokenizer, audio], [original, original_mel, recon, recon_mel, metrics, latents],
                 concurrency_limit=1)


# ------------------------------------------------------------------------------ Compare


def _compare_tab(gr, state: AppState) -> None:
    start = listening.open_compare(state.compare_dir) if state.compare_dir is not None else None
    with gr.Row():
        folder = gr.Textbox(value=str(state.compare_dir or ""), label="lodit compare folder (its --out, or report/)",
                            scale=4)
        open_button = gr.Button("Open", scale=1)
    summary = gr.Markdown(_summary(start) if start else "Open a `lodit compare` output folder.")
    listing_state = gr.State(start)
    with gr.Row():
        prompt = gr.Dropdown(start.choices() if start else [], value=0 if start else None, label="evaluation prompt",
                             scale=4)
        seed = gr.Dropdown(start.seeds if start else [], value=start.seeds[0] if start else None, label="seed", scale=1)

    @gr.render(inputs=[listing_state, prompt, seed])
    def rows(listing, index, seed_):
        if listing is None or index is None:
            return
        try:
            rows_ = listening.prompt_rows(listing, int(index), seed_)
            reference = listening.reference_audio(listing, int(index))
        except LoditError as exc:
            gr.Markdown(f"**{exc}**")
            return
        item = listing.prompts[int(index)]
        text = f"**{item.task.upper()}**: {item.caption or '—'}" + (
            f" · transcript: *{item.transcript}*" if item.transcript else ""
        )
        gr.Markdown(text)
        gr.Audio(value=_pcm16(reference), label="reference", interactive=False)
        for row in rows_:
            gr.Markdown(f"**DiT step {row['step']}**")
            with gr.Row():
                for arm in row["arms"]:
                    with gr.Column(min_width=220):
                        gr.Audio(value=_pcm16(listening.clip_array(arm["audio"])), label=arm["arm"],
                                 interactive=False)
                        gr.Markdown(f"<span class='lodit-metrics'>{arm['metrics']}<br>reconstruction: "
                                    f"{arm['reconstruction']}</span>")

    with gr.Accordion("blind A/B test", open=False):
        gr.Markdown("Two arms' clips for the same prompt at one step, in random order. Your verdicts go to "
                    "`listening/preferences.json` in the comparison folder.")
        with gr.Row():
            ab_step = gr.Dropdown(start.steps if start else [], value=start.steps[-1] if start else None,
                                  label="DiT step")
            new_pair = gr.Button("New pair", elem_id="lodit-ab-new")
        ab_prompt = gr.Markdown()
        with gr.Row():
            audio_a = gr.Audio(label="A", interactive=False)
            audio_b = gr.Audio(label="B", interactive=False)
        with gr.Row():
            choose = {choice: gr.Button({"A": "A is better", "B": "B is better", "same": "no difference"}[choice])
                      for choice in listening.CHOICES}
        verdict = gr.Markdown()
        trial = gr.State(None)
    rng = random.Random()

    def open_folder(path):
        listing = listening.open_compare(path)
        return (listing, _summary(listing), gr.Dropdown(choices=listing.choices(), value=0),
                gr.Dropdown(choices=listing.seeds, value=listing.seeds[0]),
                gr.Dropdown(choices=listing.steps, value=listing.steps[-1]))

    def draw(listing, step):
        if listing is None:
            raise LoditError("open a comparison folder first")
        new = listening.new_trial(listing, rng, step=step)
        a, b = listening.trial_audio(listing, new)
        return new, _pcm16(a), _pcm16(b), f"prompt: {listing.prompts[new.prompt].text} (step {new.step})", ""

    def decide(choice):
        def handler(listing, current):
            if listing is None or current is None:
                raise LoditError("draw a pair first (New pair)")
            counts = listening.record_preference(listing, current, choice)
            lines = [f"A was **{current.arm_a}**, B was **{current.arm_b}**. Verdicts so far: {counts['verdicts']}."]
            lines += [
                f"- {arm}: {c['wins']} wins, {c['losses']} losses, {c['ties']} ties"
                for arm, c in counts["arms"].items()
            ]
            return None, "\n".join(lines)
        return handler

    open_button.click(_friendly(gr, open_folder), [folder], [listing_state, summary, prompt, seed, ab_step])
    new_pair.click(_friendly(gr, draw), [listing_state, ab_step], [trial, audio_a, audio_b, ab_prompt, verdict])
    for choice, button in choose.items():
        # The trial is cleared after a verdict, so one pair gets one vote.
        button.click(_friendly(gr, decide(choice)), [listing_state, trial], [trial, verdict])


def _pcm16(clip: tuple[int, np.ndarray]) -> tuple[int, np.ndarray]:
    """``(rate, float samples)`` as 16-bit PCM, the players' format (gradio would convert, with a warning)."""
    rate, samples = clip
    return rate, (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def _summary(listing: listening.CompareListing) -> str:
    arms = ", ".join(f"**{arm}**" + (f" ({listing.descriptions[arm]})" if listing.descriptions.get(arm) else "")
                     for arm in listing.arms)
    return (f"**{listing.experiment}**: arms {arms}; evaluation steps {', '.join(map(str, listing.steps))}; "
            f"seeds {', '.join(map(str, listing.seeds))}; {len(listing.prompts)} prompts.")


def launch(app, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve ``app`` on ``host:port`` (gradio picks a free port from 7860 when ``port`` is None)."""
    gr = require_gradio()
    return app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True,
                      share=False, inbrowser=False, ssr_mode=False, pwa=False, mcp_server=False,
                      theme=gr.themes.Default(), css=CSS, quiet=not block)
