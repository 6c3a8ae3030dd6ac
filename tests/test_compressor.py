"""The compression stage: real llmlingua on a tiny LLMLingua-2-shaped model, offline token counting."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from lightmem_mcp.compressor import Compressor, split_for_model
from lightmem_mcp.config import CompressionSettings, PipelineSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.errors import BackendUnavailable, ConfigError, InvalidInput
from lightmem_mcp.segmenter import SegmentationEncoders, TopicSegmenter
from lightmem_mcp.tokens import BUNDLED_ENCODINGS, TokenCounter, ensure_tiktoken_offline

LONG = (
    "I am planning a two week trip to Japan next spring with my sister, and we want to see the cherry "
    "blossoms in Kyoto before they fall. We land in Tokyo on the third of April and fly home from Osaka "
    "on the seventeenth. Could you suggest how many nights we should spend in each city? My sister loves "
    "temples and gardens, while I would rather explore food markets, small bars and vintage record shops. "
    "We are thinking about buying the rail pass, but I read that prices went up a lot last year, so maybe "
    "single tickets are cheaper for our route. Our budget is about 3000 dollars each, not counting the "
    "flights, and we would like one night in a traditional inn with an onsen. Also, what is the easiest way "
    "to get from the airport to Shinjuku with two big suitcases? Thanks a lot for your help, this is our "
    "first time in Asia and we are both very excited but also a little nervous about the language."
)


@pytest.fixture(scope="session")
def compressor(tiny_model: Path) -> Compressor:
    service = Compressor(CompressionSettings(path=tiny_model, device="cpu", allow_download=False))
    assert service.load() == "ready", service.reason
    return service


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No model anywhere: an empty Hugging Face cache, and the hub switched off."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_compressed_length_follows_the_rate(compressor: Compressor) -> None:
    half = compressor.compress(LONG, rate=0.5)
    most = compressor.compress(LONG, rate=0.8)

    assert half.applied and most.applied
    assert half.original_tokens == TokenCounter().count(LONG) > 150
    assert 0.35 <= half.ratio <= 0.6
    assert 0.65 <= most.ratio <= 0.9
    assert half.compressed_tokens < most.compressed_tokens < most.original_tokens
    assert half.compressed_tokens == TokenCounter().count(half.text)
    assert (half.model, half.device) == ("tiny-llmlingua-2-bert-base-multilingual-cased", "cpu")


def test_compressed_words_come_from_the_original(compressor: Compressor) -> None:
    original = str(LONG)
    result = compressor.compress(original, rate=0.5)

    assert original == LONG
    assert result.text != LONG
    source_words = set(LONG.replace(",", " ").replace(".", " ").replace("?", " ").split())
    assert set(result.text.replace(",", " ").replace(".", " ").replace("?", " ").split()) <= source_words


def test_long_texts_are_not_glued_at_chunk_borders(compressor: Compressor) -> None:
    text = "\n\n".join([LONG, LONG.replace("Japan", "Peru"), LONG.replace("Tokyo", "Lima")])
    encoder = compressor.encoder()
    assert encoder is not None
    assert len(encoder[1].tokenize(text)) > 3 * 512  # several llmlingua chunks

    result = compressor.compress(text, rate=0.5)

    assert 0.35 <= result.ratio <= 0.6
    source_words = set(text.replace(",", " ").replace(".", " ").replace("?", " ").split())
    assert set(result.text.replace(",", " ").replace(".", " ").replace("?", " ").split()) <= source_words
    assert result.text.count("\n") == 4


def test_split_for_model_cuts_at_sentence_ends_within_budget() -> None:
    def words(texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    text = "One two three. Four five six seven.\nEight nine. " + " ".join(f"w{n}" for n in range(12))

    pieces = split_for_model(text, words, budget=5)

    assert "".join(p.text + p.gap for p in pieces) == text
    assert all(0 < p.tokens == words([p.text])[0] <= 5 for p in pieces)
    assert [(p.text, p.gap) for p in pieces[:3]] == [
        ("One two three.", " "),
        ("Four five six seven.", "\n"),
        ("Eight nine. w0 w1 w2", " "),
    ]
    assert pieces[-1].gap == ""


def test_load_happens_once_across_threads(tiny_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lightmem_mcp.compressor")
    service = Compressor(CompressionSettings(path=tiny_model, device="cpu"))
    statuses: list[str] = []
    threads = [threading.Thread(target=lambda: statuses.append(service.load())) for _ in range(4)]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == ["ready"] * 4
    assert len([r for r in caplog.records if "loaded in" in r.message]) == 1


def test_default_rate_comes_from_the_settings(compressor: Compressor) -> None:
    assert compressor.compress(LONG).text == compressor.compress(LONG, rate=0.8).text


def test_target_tokens_caps_the_length(compressor: Compressor) -> None:
    result = compressor.compress(LONG, target_tokens=60)

    assert result.applied
    assert 40 <= result.compressed_tokens <= 75


def test_short_texts_are_stored_as_they_are(compressor: Compressor) -> None:
    result = compressor.compress("Hi, how are you?")

    assert not result.applied
    assert result.skipped_reason == "short"
    assert result.text == "Hi, how are you?"
    assert result.ratio == 1.0
    assert result.original_tokens == result.compressed_tokens == 6


def test_nothing_to_drop_leaves_the_text_alone(compressor: Compressor) -> None:
    assert compressor.compress(LONG, rate=1.0).skipped_reason == "no_gain"
    assert compressor.compress(LONG, target_tokens=10_000).text == LONG


def test_force_tokens_survive(compressor: Compressor) -> None:
    text = "\n".join(f"Question {n}: where did we park the car on day {n} of the trip, and why?" for n in range(8))

    result = compressor.compress(text, rate=0.3)

    assert result.applied and result.ratio < 0.6
    assert result.text.count("?") == text.count("?") == 8
    assert result.text.count("\n") == text.count("\n") == 7

    custom = compressor.compress(text, rate=0.3, force_tokens=["car"])
    assert custom.text.count("car") == 8


def test_compress_many_keeps_order_and_matches_single_calls(compressor: Compressor) -> None:
    texts = [LONG, "Short one.", LONG.upper(), "\n".join([LONG[:300], LONG[300:]])]

    batch = compressor.compress_many(texts, rate=0.6)

    assert [r.skipped_reason for r in batch] == [None, "short", None, None]
    assert [r.text for r in batch] == [compressor.compress(t, rate=0.6).text for t in texts]


def test_bad_arguments_name_the_field(compressor: Compressor) -> None:
    with pytest.raises(InvalidInput, match="rate"):
        compressor.compress(LONG, rate=0)
    with pytest.raises(InvalidInput, match="target_tokens"):
        compressor.compress(LONG, target_tokens=0)
    with pytest.raises(InvalidInput, match="force_tokens"):
        compressor.compress(LONG, force_tokens=[""])


def test_encoder_gives_attentions_for_segmentation(compressor: Compressor) -> None:
    import torch

    encoder = compressor.encoder()
    assert encoder is not None
    model, tokenizer = encoder
    inputs = tokenizer(["We land in Tokyo.", "Which rail pass?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions

    assert len(attentions) == 2  # one per layer of the tiny model
    assert attentions[-1].shape[:2] == (2, 2)  # batch, heads
    # The segmenter reads the fp32 model, also when compression runs an int8 copy.
    assert compressor.precision == "int8"
    assert any(isinstance(module, torch.nn.Linear) for module in model.bert.encoder.modules())


def test_describe_reports_a_loaded_model(compressor: Compressor, tiny_model: Path) -> None:
    info = compressor.describe()

    assert info["status"] == "ready"
    assert info["reason"] is None
    assert info["source"] == "path"
    assert info["location"] == str(tiny_model)
    assert info["device"] == "cpu"
    assert info["precision"] == "int8"
    assert info["tokenizer"] == "cl100k_base"


@pytest.fixture(scope="session")
def fp32_compressor(tiny_model: Path) -> Compressor:
    service = Compressor(CompressionSettings(path=tiny_model, device="cpu", allow_download=False, quantize="off"))
    assert service.load() == "ready", service.reason
    return service


def test_cpu_runs_int8_by_default_and_off_means_fp32(compressor: Compressor, fp32_compressor: Compressor) -> None:
    assert CompressionSettings().quantize == "auto"
    assert compressor.settings.quantize == "auto"
    assert (compressor.precision, compressor.describe()["precision"]) == ("int8", "int8")
    assert (fp32_compressor.precision, fp32_compressor.describe()["precision"]) == ("fp32", "fp32")


def test_int8_compression_keeps_the_rate_and_the_force_tokens(compressor: Compressor) -> None:
    text = "\n".join(f"Question {n}: where did we park the car on day {n} of the trip, and why?" for n in range(8))

    half = compressor.compress(LONG, rate=0.5)
    forced = compressor.compress(text, rate=0.3)

    assert compressor.precision == "int8"
    assert half.applied and 0.35 <= half.ratio <= 0.6
    assert half.compressed_tokens < half.original_tokens
    assert forced.applied and forced.compressed_tokens < forced.original_tokens
    assert forced.text.count("?") == 8
    assert forced.text.count("\n") == 7


def test_int8_keeps_and_drops_the_words_fp32_does(compressor: Compressor, fp32_compressor: Compressor) -> None:
    texts = [
        LONG,
        LONG.replace("Japan", "Peru").replace("Tokyo", "Lima"),
        LONG.upper(),
        "\n".join(f"Question {n}: where did we park the car on day {n} of the trip, and why?" for n in range(8)),
    ]

    for rate in (0.8, 0.5):
        fast = compressor.keep_decisions(texts, rate=rate)
        exact = fp32_compressor.keep_decisions(texts, rate=rate)

        assert [word for word, _ in fast] == [word for word, _ in exact]
        assert len(exact) > 600
        agreeing = sum(a == b for (_, a), (_, b) in zip(fast, exact, strict=True))
        assert agreeing / len(exact) >= 0.99, f"rate {rate}: {agreeing} of {len(exact)} words agree"


def test_segmenter_reads_the_fp32_attentions_while_int8_compresses(
    compressor: Compressor, embedder: SentenceTransformerEmbedder
) -> None:
    segmenter = TopicSegmenter(PipelineSettings(), SegmentationEncoders(compressor, embedder).get)
    before = compressor.compress(LONG, rate=0.5).text

    share = segmenter.predecessor_attention(["We land in Tokyo.", "Which rail pass?", "My cat hates the vacuum."])

    assert share is not None and len(share) == 3 and share[0] == 1.0
    assert all(0.0 <= value <= 1.0 for value in share)
    assert compressor.compress(LONG, rate=0.5).text == before


def test_keep_decisions_cover_the_words_compress_many_compresses(fp32_compressor: Compressor) -> None:
    decisions = fp32_compressor.keep_decisions(["Hi, how are you?", LONG], rate=0.5)

    assert decisions == fp32_compressor.keep_decisions([LONG], rate=0.5)  # the short text is stored as it is
    assert {word for word, _ in decisions} >= {"Japan", "Kyoto", "Shinjuku"}
    assert 0.4 <= sum(kept for _, kept in decisions) / len(decisions) <= 0.6


def test_compression_threads_are_bounded_per_pass_and_restored(tiny_model: Path) -> None:
    import torch

    service = Compressor(CompressionSettings(path=tiny_model, device="cpu", threads=1))
    automatic = Compressor(CompressionSettings(path=tiny_model, device="cpu"))
    before = torch.get_num_threads()

    assert service.compress(LONG, rate=0.5).applied

    assert torch.get_num_threads() == before
    assert service.cpu_threads() == 1
    assert automatic.cpu_threads() == max(1, len(os.sched_getaffinity(0)) - 1)


@pytest.mark.usefixtures("no_hub")
def test_missing_model_is_reported_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lightmem_mcp.compressor")
    service = Compressor(CompressionSettings(path=None, allow_download=False))

    passed = service.compress(LONG)
    service.compress_many([LONG, LONG])

    assert service.status == "unavailable"
    assert passed.text == LONG
    assert (passed.applied, passed.skipped_reason) == (False, "unavailable")
    assert passed.original_tokens == passed.compressed_tokens > 150
    reason = service.reason or ""
    for fix in ("LIGHTMEM_COMPRESSION_PATH", "bert-base-multilingual-cased", "LIGHTMEM_COMPRESSION_ENABLED=false"):
        assert fix in reason
    assert "LIGHTMEM_COMPRESSION_ALLOW_DOWNLOAD=false" in reason
    assert service.describe()["status"] == "unavailable"
    assert service.encoder() is None
    assert len([r for r in caplog.records if "compression unavailable" in r.message]) == 1

    with pytest.raises(BackendUnavailable, match="LIGHTMEM_COMPRESSION_PATH"):
        service.compress(LONG, required=True)


@pytest.mark.usefixtures("no_hub")
def test_offline_hub_is_named_in_the_reason() -> None:
    service = Compressor(CompressionSettings(path=None, allow_download=True))

    assert service.load() == "unavailable"
    assert "HF_HUB_OFFLINE" in (service.reason or "")


def test_folder_without_the_family_name_must_be_renamed(tiny_model: Path, tmp_path: Path) -> None:
    renamed = shutil.copytree(tiny_model, tmp_path / "my-compressor")
    service = Compressor(CompressionSettings(path=renamed, device="cpu"))

    assert service.load() == "unavailable"
    assert "rename the folder to include 'bert-base-multilingual-cased'" in (service.reason or "")
    assert service.compress(LONG).skipped_reason == "unavailable"


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    service = Compressor(CompressionSettings(path=tmp_path / "llmlingua-2-bert-base-multilingual-cased-gone"))

    assert service.load() == "unavailable"
    assert "is not a directory" in (service.reason or "")


def test_disabled_compression_never_loads() -> None:
    service = Compressor(CompressionSettings(enabled=False, path=None, allow_download=False))

    result = service.compress(LONG)

    assert (result.text, result.skipped_reason) == (LONG, "disabled")
    assert service.status == "disabled"
    with pytest.raises(BackendUnavailable, match="LIGHTMEM_COMPRESSION_ENABLED"):
        service.compress(LONG, required=True)


def test_token_counts_match_tiktoken_cl100k() -> None:
    counter = TokenCounter()

    assert counter.count("tiktoken is great!") == 6  # [83, 1609, 5963, 374, 2294, 0]
    assert counter.count_many(["hello world", "", "<|endoftext|>"]) == [2, 0, 7]


def test_unknown_encoding_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="LIGHTMEM_COMPRESSION_TOKENIZER"):
        TokenCounter("cl99k_nonsense")


def test_encoding_not_bundled_fails_clearly_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tiktoken.load

    def no_network(url: str) -> bytes:
        raise ConnectionError(f"no network for {url}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    with pytest.raises(BackendUnavailable, match="cl100k_base"):
        TokenCounter("r50k_base")


def test_users_own_tiktoken_cache_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    assert ensure_tiktoken_offline() == tmp_path
    assert ensure_tiktoken_offline() == tmp_path

    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path)
    assert len(list(tmp_path.iterdir())) == len(BUNDLED_ENCODINGS)


# A fresh interpreter (tiktoken caches encodings per process) with every socket refused.
_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import os, socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    socket.socket.connect = refuse
    socket.create_connection = refuse

    from lightmem_mcp.tokens import TokenCounter, ensure_tiktoken_offline
    import tiktoken

    print(TokenCounter().count("tiktoken is great!"))
    # What llmlingua's PromptCompressor.__init__ calls.
    print(tiktoken.encoding_for_model("gpt-3.5-turbo").name)
    print(os.environ["TIKTOKEN_CACHE_DIR"])
    """
)


def test_token_counting_needs_no_network(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    env.update(HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path), TMPDIR=str(tmp_path))

    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT], env=env, capture_output=True, text=True, check=False, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["6", "cl100k_base", str(tmp_path / "lightmem-mcp" / "tiktoken")]
