"""LLMLingua-2 pre-compression of messages (LightMem's sensory memory), loaded once and never fatal."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from lightmem_mcp.config import CompressionSettings
from lightmem_mcp.device import resolve_device
from lightmem_mcp.errors import BackendUnavailable, InvalidInput
from lightmem_mcp.hub import cached_snapshot, hub_offline
from lightmem_mcp.tokens import TokenCounter, ensure_tiktoken_offline

if TYPE_CHECKING:
    from llmlingua import PromptCompressor
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CompressorStatus = Literal["not_loaded", "ready", "unavailable", "disabled"]
Precision = Literal["fp32", "int8"]
Origin = Literal["path", "cache", "hub"]
# short: under min_tokens; no_gain: compression would not make it shorter (rate 1, a target
# above the length, or an output no shorter than the input); disabled / unavailable: no model.
SkipReason = Literal["short", "no_gain", "disabled", "unavailable"]

# llmlingua chooses its word-merging code by looking for these in the model's name or path;
# any other name raises NotImplementedError deep inside compression.
FAMILIES: Final = ("bert-base-multilingual-cased", "xlm-roberta-large")
_ARCHITECTURES: Final = {
    "bert-base-multilingual-cased": "BertForTokenClassification",
    "xlm-roberta-large": "XLMRobertaForTokenClassification",
}
# Model tokens kept free in each piece, should the tokenizer not be additive across a cut.
_PIECE_MARGIN: Final = 4
# Padded model tokens per forward pass: large enough to batch short turns, small enough that
# one long piece does not pad many short ones.
_BATCH_TOKENS: Final = 4096
# On the CPU, batching saves little (a piece's own tokens already make a large enough matrix)
# while padding is computed like real tokens: a batch there pads its pieces by at most this share.
_CPU_PADDING: Final = 0.05
_SENTENCE_GAP: Final = re.compile(r"(\s*\n\s*|(?<=[.!?])\s+)")
_WORD_GAP: Final = re.compile(r"(\s+)")
# llmlingua maps each multi-token force token onto one of this many added tokens.
MAX_FORCE_TOKENS: Final = 100
# Separators of llmlingua's word-label output: control characters, which BERT tokenizers drop
# from text, so no word contains them.
_WORD_SEP: Final = "\x1e"
_LABEL_SEP: Final = "\x1f"


@dataclass(frozen=True, slots=True)
class Compression:
    """One text after compression; `text` is the input itself whenever `applied` is False."""

    text: str
    original_tokens: int
    compressed_tokens: int
    ratio: float
    model: str | None
    device: str | None
    seconds: float
    applied: bool
    skipped_reason: SkipReason | None


@dataclass(frozen=True, slots=True)
class CompressionModelSource:
    """Where the model files come from: what llmlingua is given, and which kind of place that is."""

    location: str
    origin: Origin


def model_family(name: str) -> str | None:
    """The llmlingua model family named in `name`, in llmlingua's own order of checking."""
    return next((family for family in FAMILIES if family in name), None)


def _how_to_provide(model: str) -> str:
    family = model_family(model) or FAMILIES[0]
    return (
        f"set LIGHTMEM_COMPRESSION_PATH to a local copy of {model} (its folder name must contain "
        f"{family!r}, e.g. .../llmlingua-2-{family}-meetingbank), or allow the download "
        "(LIGHTMEM_COMPRESSION_ALLOW_DOWNLOAD=true with HF_HUB_OFFLINE unset), or turn compression off "
        "(LIGHTMEM_COMPRESSION_ENABLED=false); until then messages are stored uncompressed"
    )


def _check_folder(folder: Path) -> None:
    """Raise an actionable error unless llmlingua can load `folder` as an LLMLingua-2 model."""
    family = model_family(str(folder))
    if family is None:
        raise BackendUnavailable(
            f"LIGHTMEM_COMPRESSION_PATH={folder}: llmlingua recognises an LLMLingua-2 model only by its "
            f"folder name; rename the folder to include {FAMILIES[0]!r} (or {FAMILIES[1]!r} for the "
            f"XLM-RoBERTa model), e.g. {folder.parent / f'llmlingua-2-{FAMILIES[0]}-meetingbank'}"
        )
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(
            f"LIGHTMEM_COMPRESSION_PATH={folder} has no readable config.json ({exc}): point it at a "
            "complete copy of the LLMLingua-2 model folder"
        ) from exc
    expected = _ARCHITECTURES[family]
    architectures = config.get("architectures") or []
    if expected not in architectures:
        raise BackendUnavailable(
            f"LIGHTMEM_COMPRESSION_PATH={folder}: its folder name says {family!r}, so llmlingua expects a "
            f"{expected}, but config.json has architectures={architectures}; point it at the matching "
            "LLMLingua-2 model or rename the folder"
        )


def resolve_compression_model(settings: CompressionSettings) -> CompressionModelSource:
    """Explicit local path, then the Hugging Face cache, then a hub download; raises `BackendUnavailable`."""
    if settings.path is not None:
        # absolute(), not resolve(): a symlink's own name may be what carries the family.
        folder = settings.path.expanduser().absolute()
        if not folder.is_dir():
            raise BackendUnavailable(
                f"LIGHTMEM_COMPRESSION_PATH={settings.path} is not a directory: {_how_to_provide(settings.model)}"
            )
        _check_folder(folder)
        return CompressionModelSource(str(folder), "path")
    if model_family(settings.model) is None:
        raise BackendUnavailable(
            f"LIGHTMEM_COMPRESSION_MODEL={settings.model!r} is not an LLMLingua-2 model llmlingua can use: "
            f"its name must contain {FAMILIES[0]!r} or {FAMILIES[1]!r}, e.g. "
            "microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank"
        )
    cached = cached_snapshot(settings.model)
    if cached is not None:
        return CompressionModelSource(cached, "cache")
    if settings.allow_download and not hub_offline():
        return CompressionModelSource(settings.model, "hub")
    blocked = "HF_HUB_OFFLINE is set" if settings.allow_download else "LIGHTMEM_COMPRESSION_ALLOW_DOWNLOAD=false"
    raise BackendUnavailable(
        f"LLMLingua-2 model {settings.model!r} is not in the Hugging Face cache and may not be downloaded "
        f"({blocked}): {_how_to_provide(settings.model)}"
    )


class Compressor:
    """Drops the least informative tokens of each message with LLMLingua-2, keeping about `rate` of them.

    The model loads once, on `load()` or the first use. A model that cannot be found or loaded
    never stops the server: the status turns "unavailable", the reason is logged once, and
    texts pass through unchanged, marked skipped.
    """

    def __init__(self, settings: CompressionSettings, counter: TokenCounter | None = None) -> None:
        self.settings = settings
        self.counter = counter or TokenCounter(settings.tokenizer)
        self._status: CompressorStatus = "not_loaded" if settings.enabled else "disabled"
        self._reason: str | None = (
            None if settings.enabled else "compression is disabled (LIGHTMEM_COMPRESSION_ENABLED=false)"
        )
        self._source: CompressionModelSource | None = None
        self._device: str | None = None
        self._engine: PromptCompressor | None = None
        # The model `encoder()` hands out: the fp32 one, also when compression runs an int8 copy.
        self._full_model: PreTrainedModel | None = None
        self._precision: Precision | None = None
        self._max_seq_len = 512
        self._load_lock = threading.Lock()
        # llmlingua's tokenizer and batching are not safe to share between threads at once.
        self._run_lock = threading.Lock()

    @property
    def status(self) -> CompressorStatus:
        """not_loaded, ready, unavailable or disabled."""
        return self._status

    @property
    def reason(self) -> str | None:
        """Why the model is unavailable or disabled, and how to fix it; None otherwise."""
        return self._reason

    @property
    def model(self) -> str:
        """The model's name: the hub id, or the folder name of a local copy."""
        return self.settings.path.name if self.settings.path is not None else self.settings.model

    @property
    def device(self) -> str | None:
        """The torch device the model runs on, once loaded."""
        return self._device

    @property
    def precision(self) -> Precision | None:
        """fp32 or int8: the weights compression runs with, once loaded."""
        return self._precision

    def expected_tokens(self, tokens: int) -> int:
        """About how many of a text's `tokens` compression will keep: the buffer counts turns that wait
        to be compressed this way, so its batches fill as they do with compressed turns."""
        if self._status in ("disabled", "unavailable") or tokens < max(self.settings.min_tokens, 1):
            return tokens
        return max(1, round(tokens * self.settings.rate))

    def load(self) -> CompressorStatus:
        """Find and load the model once (thread-safe); returns the resulting status and never raises."""
        with self._load_lock:
            if self._status != "not_loaded":
                return self._status
            started = time.perf_counter()
            try:
                self._source = resolve_compression_model(self.settings)
                self._device = resolve_device(self.settings.device)
                self._engine = self._open(self._source, self._device)
                self._max_seq_len = int(self._engine.max_seq_len)
                self._full_model = self._engine.model
                self._precision = self._speed_up(self._engine)
            except Exception as exc:  # never fatal: stored turns simply stay uncompressed
                self._engine = self._full_model = self._precision = None
                self._reason = self._explain(exc)
                self._status = "unavailable"
                log.warning("compression unavailable: %s", self._reason)
                return self._status
            self._status = "ready"
            log.info(
                "compression model %s from %s on %s (%s), loaded in %.1f s",
                self.model,
                self._source.origin,
                self._device,
                self._precision,
                time.perf_counter() - started,
            )
            return self._status

    def _explain(self, exc: Exception) -> str:
        if isinstance(exc, BackendUnavailable):
            return str(exc)
        if self._source is None:
            how = _how_to_provide(self.settings.model)
            return f"cannot find the LLMLingua-2 model ({type(exc).__name__}: {exc}); {how}"
        if self._device is None:  # the configured device is not there
            return f"{exc}; set LIGHTMEM_COMPRESSION_DEVICE=auto or cpu"
        return (
            f"cannot load LLMLingua-2 model from {self._source.origin} ({self._source.location}) on "
            f"{self._device}: {type(exc).__name__}: {exc}; {_how_to_provide(self.settings.model)}"
        )

    @staticmethod
    def _open(source: CompressionModelSource, device: str) -> PromptCompressor:
        ensure_tiktoken_offline()  # PromptCompressor.__init__ loads tiktoken's cl100k_base
        from llmlingua import PromptCompressor

        # llmlingua loads natively only on cuda and cpu; elsewhere it would send inputs to cuda.
        # So load on the cpu, move the model, and repoint the device it sends inputs to.
        native = device.startswith(("cuda", "cpu"))
        engine = PromptCompressor(
            model_name=source.location,
            device_map=device if native else "cpu",
            # LLMLingua-2 checkpoints need no custom code; llmlingua would trust it by default.
            # A fresh dict each time: llmlingua mutates it.
            model_config={"trust_remote_code": False},
            use_llmlingua2=True,
        )
        if not native:
            engine.model.to(device)
            engine.device = device
        # llmlingua sets left padding and takes the pad id from `config.pad_token_id or eos`, which
        # is None for BERT (pad id 0, no eos). It pads its own inputs by hand, so restoring the
        # encoder's defaults changes nothing for compression and lets `encoder()` users pad batches.
        tokenizer = engine.tokenizer
        if tokenizer.pad_token_id is None and engine.model.config.pad_token_id is not None:
            tokenizer.pad_token_id = engine.model.config.pad_token_id
        tokenizer.padding_side = "right"
        return engine

    def _speed_up(self, engine: PromptCompressor) -> Precision:
        """On the CPU, swap in an int8 copy of the model for compression, as the settings allow."""
        if self._device != "cpu" or self.settings.quantize == "off":
            return "fp32"
        import torch

        engines = torch.backends.quantized.supported_engines
        if self.settings.quantize == "auto" and "fbgemm" not in engines:
            # The speed-up was measured with fbgemm's x86 kernels; elsewhere int8 may be no faster.
            log.info(
                "compression stays fp32: no x86 int8 kernels (fbgemm); LIGHTMEM_COMPRESSION_QUANTIZE=int8 forces int8"
            )
            return "fp32"
        try:
            engine.model = quantized_copy(engine.model, "fbgemm" if "fbgemm" in engines else None)
        except Exception as exc:  # an older or newer torch without these kernels: fp32 still works
            log.warning("compression stays fp32: int8 quantization failed (%s: %s)", type(exc).__name__, exc)
            return "fp32"
        return "int8"

    def cpu_threads(self) -> int:
        """Threads of each compression pass on the CPU: the setting, or one fewer than the cores."""
        if self.settings.threads:
            return self.settings.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores - 1)

    def encoder(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | None:
        """The loaded fp32 token-classification model, set to return attentions, and its tokenizer; None if unavailable.

        It is fp32 also when compression runs an int8 copy. llmlingua has added its `[NEWi]`
        force-token placeholders to this tokenizer (and resized the embeddings to match); it pads
        on the right with the model's pad token.
        """
        if self.load() != "ready" or self._full_model is None or self._engine is None:
            return None
        # The fp32 model, not an int8 copy: segmentation stays as it was, and the copy that
        # compresses keeps its faster attention kernels.
        model = self._full_model
        with self._run_lock:
            # transformers 5 picks the attention kernel per call from the config, and its default
            # (sdpa) returns no attention weights; the segmenter needs them. Under the run lock so
            # no compression is mid-pass; transformers 4 falls back to eager on its own.
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation("eager")
        return model, self._engine.tokenizer

    def describe(self) -> dict[str, str | None]:
        """Status, reason, model, source, location, device and precision, for `doctor` and health output."""
        return {
            "status": self._status,
            "reason": self._reason,
            "model": self.model,
            "source": self._source.origin if self._source else None,
            "location": self._source.location if self._source else None,
            "device": self._device,
            "precision": self._precision,
            "tokenizer": self.counter.encoding,
        }

    def compress(
        self,
        text: str,
        rate: float | None = None,
        target_tokens: int | None = None,
        force_tokens: Sequence[str] | None = None,
        *,
        required: bool = False,
    ) -> Compression:
        """Compress one text; with `required`, raise `BackendUnavailable` instead of passing it through."""
        return self.compress_many([text], rate, target_tokens, force_tokens, required=required)[0]

    def compress_many(
        self,
        texts: Sequence[str],
        rate: float | None = None,
        target_tokens: int | None = None,
        force_tokens: Sequence[str] | None = None,
        *,
        required: bool = False,
    ) -> list[Compression]:
        """Compress each text, in order, in batched model passes; `seconds` is each text's share of its batch."""
        rate = self.settings.rate if rate is None else rate
        forced = list(self.settings.force_tokens if force_tokens is None else force_tokens)
        _validate(rate, target_tokens, forced)
        counts = self.counter.count_many(texts)
        if required and self.load() != "ready":
            raise BackendUnavailable(self._reason or "compression model is not loaded")

        results: list[Compression | None] = [None] * len(texts)
        # Texts to compress, grouped by the share of tokens each keeps: one model pass per group.
        todo: dict[float, list[int]] = {}
        for index, (text, count) in enumerate(zip(texts, counts, strict=True)):
            keep = min(1.0, target_tokens / count) if target_tokens is not None and count else rate
            if self._status == "disabled":
                results[index] = _unchanged(text, count, "disabled")
            elif self._too_short(text, count):
                results[index] = _unchanged(text, count, "short")
            elif keep >= 1.0:
                results[index] = _unchanged(text, count, "no_gain")
            else:
                todo.setdefault(keep, []).append(index)
        # Load only when some text needs the model, so short turns never pay the start-up.
        if todo and self.load() != "ready":
            for index in (i for group in todo.values() for i in group):
                results[index] = _unchanged(texts[index], counts[index], "unavailable")
            todo = {}
        for keep, group in todo.items():
            outputs, seconds = self._run([texts[i] for i in group], keep, forced)
            for index, output in zip(group, outputs, strict=True):
                results[index] = self._result(texts[index], counts[index], output, seconds / len(group))
        return [result for result in results if result is not None]

    def keep_decisions(
        self, texts: Sequence[str], rate: float | None = None, force_tokens: Sequence[str] | None = None
    ) -> list[tuple[str, bool]]:
        """llmlingua's keep (True) or drop choice for each word `compress_many` would compress, from the same passes.

        Short texts, which `compress_many` stores as they are, have none. Words come in model-pass
        order (pieces shortest first), which depends only on the texts and the tokenizer: the
        choices of two compressors over one model line up word for word.
        """
        rate = self.settings.rate if rate is None else rate
        forced = list(self.settings.force_tokens if force_tokens is None else force_tokens)
        _validate(rate, None, forced)
        if self.load() != "ready":
            raise BackendUnavailable(self._reason or "compression model is not loaded")
        counts = self.counter.count_many(texts)
        compressible = [text for text, count in zip(texts, counts, strict=True) if not self._too_short(text, count)]
        decisions: list[tuple[str, bool]] = []
        if compressible:
            self._run(compressible, rate, forced, decisions)
        return decisions

    def _too_short(self, text: str, tokens: int) -> bool:
        return tokens < max(self.settings.min_tokens, 1) or not text.strip()

    def _run(
        self, texts: list[str], rate: float, forced: list[str], decisions: list[tuple[str, bool]] | None = None
    ) -> tuple[list[str], float]:
        engine = self._engine
        assert engine is not None
        with self._run_lock, self._pass():
            started = time.perf_counter()
            full = self._max_seq_len
            # llmlingua glues the compressed 512-token chunks of a long text without a space
            # ("innAlso"); so long texts are cut into pieces that fit one chunk, split at sentence
            # ends, and the pieces are joined again with the whitespace that separated them.
            lengths = _lengths(engine.tokenizer, _placeholders(engine.tokenizer, engine.added_tokens, forced))
            layouts = [split_for_model(text, lengths, full - 2 - _PIECE_MARGIN) for text in texts]
            pieces = [piece for layout in layouts for piece in layout]
            outputs = [""] * len(pieces)
            # llmlingua pads every input to max_seq_len (512), and most turns are far shorter: so
            # pieces go in batches of similar length, each padded only to its own longest piece.
            padding = _CPU_PADDING if self._device == "cpu" else None
            for batch in _batches(pieces, engine.max_batch_size, padding):
                engine.max_seq_len = min(full, pieces[batch[-1]].tokens + 2 + _PIECE_MARGIN)
                try:
                    result = engine.compress_prompt_llmlingua2(
                        [pieces[i].text for i in batch],
                        rate=rate,
                        force_tokens=forced,
                        return_word_label=decisions is not None,
                        word_sep=_WORD_SEP,
                        label_sep=_LABEL_SEP,
                    )
                finally:
                    engine.max_seq_len = full
                if decisions is not None:
                    decisions += _decisions(str(result["fn_labeled_original_prompt"]))
                for index, output in zip(batch, result["compressed_prompt_list"], strict=True):
                    outputs[index] = str(output)
            compressed = iter(outputs)
            keep_newlines = "\n" in forced
            joined = [_join([(next(compressed), p.gap) for p in layout], keep_newlines) for layout in layouts]
            return joined, time.perf_counter() - started

    @contextmanager
    def _pass(self) -> Iterator[None]:
        """On the CPU: no autograd bookkeeping, and at most `cpu_threads()` threads."""
        if self._device != "cpu":
            yield
            return
        import torch

        # torch.set_num_threads is process-wide in name, but with torch's OpenMP backend it sets
        # the calling thread's own OpenMP team size: threads already running torch keep theirs
        # (only one making its first torch call during a pass starts with the bound). So it is
        # set for each pass and restored after, and a search running meanwhile keeps its threads.
        before = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads())
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(before)

    def _result(self, original: str, original_tokens: int, output: str, seconds: float) -> Compression:
        tokens = self.counter.count(output)
        if tokens >= original_tokens:
            return _unchanged(original, original_tokens, "no_gain")
        return Compression(
            text=output,
            original_tokens=original_tokens,
            compressed_tokens=tokens,
            ratio=tokens / original_tokens,
            model=self.model,
            device=self._device,
            seconds=seconds,
            applied=True,
            skipped_reason=None,
        )


def quantized_copy(model: PreTrainedModel, kernels: str | None = None) -> PreTrainedModel:
    """A copy of `model` whose encoder's linear layers run in int8, sharing the original's other weights.

    Weights are int8 with one scale per output row; activations are quantized to 8 bits on each
    call (dynamic quantization). The classifier stays fp32: it is tiny, and its error would go
    straight into the keep probabilities. `kernels` names torch's quantized engine to pack the
    weights for (e.g. "fbgemm"); packed weights keep it, so torch's global choice is restored.
    """
    import torch

    class Int8Linear(torch.nn.Module):
        """`linear` with int8 weights; inputs are quantized per call, with the whole 8 bits unless `reduce_range`."""

        def __init__(self, linear: torch.nn.Linear, reduce_range: bool) -> None:
            super().__init__()
            weight = linear.weight.detach().float()
            scales = (weight.abs().amax(dim=1).double() / 127).clamp(min=1e-12)
            zeros = torch.zeros(len(scales), dtype=torch.long)
            quantized = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(quantized, linear.bias)
            self.reduce_range = reduce_range

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return torch.ops.quantized.linear_dynamic(inputs, self.packed, self.reduce_range)  # type: ignore[no-any-return]

    encoder = model.base_model
    linears = [(name, module) for name, module in encoder.named_modules() if isinstance(module, torch.nn.Linear)]
    # Shared, not copied: the embeddings (not quantized, and most of a multilingual model's
    # weights) and the fp32 linear layers, which the copy replaces. Inference writes neither.
    embeddings = model.get_input_embeddings()
    fast = copy.deepcopy(model, {id(embeddings): embeddings, **{id(module): module for _, module in linears}})
    # fbgemm's AVX2 kernels sum pairs of 8-bit products in 16 bits, which can saturate; 7-bit
    # inputs avoid it, at twice the rounding error. AVX512-VNNI kernels sum in 32 bits.
    vnni = bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())
    reduce_range = kernels == "fbgemm" and not vnni
    before = torch.backends.quantized.engine
    try:
        if kernels is not None:
            torch.backends.quantized.engine = kernels
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation", category=UserWarning)
            for name, module in linears:
                parent, _, attribute = name.rpartition(".")
                setattr(fast.base_model.get_submodule(parent), attribute, Int8Linear(module, reduce_range))
    finally:
        torch.backends.quantized.engine = before
    return fast


def _decisions(labelled: str) -> list[tuple[str, bool]]:
    """llmlingua's `fn_labeled_original_prompt` as (word, kept) pairs."""
    pairs = [item.rsplit(_LABEL_SEP, 1) for item in labelled.split(_WORD_SEP)] if labelled else []
    return [(word, label == "1") for word, label in pairs]


def _unchanged(text: str, tokens: int, reason: SkipReason) -> Compression:
    return Compression(
        text=text,
        original_tokens=tokens,
        compressed_tokens=tokens,
        ratio=1.0,
        model=None,
        device=None,
        seconds=0.0,
        applied=False,
        skipped_reason=reason,
    )


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of a text that fits one model pass: its text, the whitespace after it, its model tokens."""

    text: str
    gap: str
    tokens: int


def split_for_model(text: str, lengths: Callable[[list[str]], list[int]], budget: int) -> list[Piece]:
    """`text` in pieces of at most `budget` model tokens, cut at sentence ends (else between words)."""
    units: list[tuple[str, str, int, int]] = []
    for unit, gap, size, gap_size in _sized(_with_gaps(text.strip(), _SENTENCE_GAP), lengths):
        if size <= budget:
            units.append((unit, gap, size, gap_size))
            continue
        words = _with_gaps(unit, _WORD_GAP)
        words[-1] = (words[-1][0], gap)
        units += _sized(words, lengths)

    pieces: list[Piece] = []
    parts: list[str] = []
    size = gap_before = 0
    for unit, gap, unit_size, gap_size in units:
        if parts and size + gap_before + unit_size > budget:
            pieces.append(Piece("".join(parts[:-1]), parts[-1], size))
            parts, size = [], 0
        # A gap inside a piece can cost tokens: a newline force token becomes a placeholder.
        size += (gap_before if parts else 0) + unit_size
        parts += [unit, gap]
        gap_before = gap_size
    if parts:
        pieces.append(Piece("".join(parts[:-1]), parts[-1], size))
    return pieces


def _sized(units: list[tuple[str, str]], lengths: Callable[[list[str]], list[int]]) -> list[tuple[str, str, int, int]]:
    sizes = lengths([unit for unit, _ in units] + [gap for _, gap in units])
    return [(unit, gap, sizes[i], sizes[len(units) + i]) for i, (unit, gap) in enumerate(units)]


def _batches(pieces: list[Piece], most: int, padding: float | None = None) -> list[list[int]]:
    """Indices of `pieces`, shortest first, in batches of at most `most` and `_BATCH_TOKENS` padded tokens.

    With `padding`, a batch also pads its pieces by at most that share of their own tokens.
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    real = 0
    for index in sorted(range(len(pieces)), key=lambda i: pieces[i].tokens):
        # Sorted ascending, so this piece is the longest: the batch would pad everything to it.
        size = pieces[index].tokens + 2
        padded = (len(batch) + 1) * size
        if batch and (
            len(batch) == most
            or padded > _BATCH_TOKENS
            or (padding is not None and padded > (1 + padding) * (real + size))
        ):
            batches.append(batch)
            batch, real = [], 0
        batch.append(index)
        real += size
    if batch:
        batches.append(batch)
    return batches


def _with_gaps(text: str, pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    parts = pattern.split(text)
    # split() with one capturing group alternates text, gap, text, ...; the last text has no gap.
    return list(zip(parts[0::2], [*parts[1::2], ""], strict=True))


def _placeholders(tokenizer: PreTrainedTokenizerBase, added: list[str], forced: list[str]) -> dict[str, str]:
    # llmlingua's own rule: a force token that is not exactly one model token is swapped for
    # one of its added placeholder tokens before tokenizing.
    return {token: added[i] for i, token in enumerate(forced) if len(tokenizer.tokenize(token)) != 1}


def _lengths(tokenizer: PreTrainedTokenizerBase, placeholders: dict[str, str]) -> Callable[[list[str]], list[int]]:
    def count(texts: list[str]) -> list[int]:
        swapped = []
        for text in texts:
            for token, placeholder in placeholders.items():
                text = text.replace(token, placeholder)
            swapped.append(text)
        return [len(ids) for ids in tokenizer(swapped, add_special_tokens=False)["input_ids"]]

    return count


def _join(pieces: list[tuple[str, str]], keep_newlines: bool) -> str:
    kept = [(text, gap if keep_newlines and "\n" in gap else " ") for text, gap in pieces if text.strip()]
    return "".join(text + gap for text, gap in kept[:-1]) + (kept[-1][0] if kept else "")


def _validate(rate: float, target_tokens: int | None, forced: list[str]) -> None:
    if not 0 < rate <= 1:
        raise InvalidInput("rate", f"must be in (0, 1], the share of tokens kept; got {rate}")
    if target_tokens is not None and target_tokens < 1:
        raise InvalidInput("target_tokens", f"must be a positive number of tokens; got {target_tokens}")
    if len(forced) > MAX_FORCE_TOKENS:
        raise InvalidInput("force_tokens", f"at most {MAX_FORCE_TOKENS} tokens; got {len(forced)}")
    if any(not token for token in forced):
        raise InvalidInput("force_tokens", "tokens must be non-empty strings")
