"""Suite-wide test settings.

Tests use tiny models, for which one intra-op thread is faster than several (thread start-up
dominates), and which would otherwise oversubscribe a small CI machine.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LODIT_THREADS", "1")  # the lodit command (also run in subprocesses) would pick the idle cores

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Session-wide, so module-scoped fixtures (tiny models built once per file) get it too.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def save_tiny_whisper(folder, d_model: int):
    """Save a tiny randomly initialised Whisper like a hub checkpoint (80 mel bins, 30-s windows)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        d_model=d_model, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )
    transformers.WhisperForConditionalGeneration(config).save_pretrained(folder)
    return folder
