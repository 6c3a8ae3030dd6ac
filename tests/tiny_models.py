"""A tiny, randomly initialised LLMLingua-2-shaped model: the real loading and compression path, in seconds.

Its keep/drop choices are meaningless; the mechanics (tokenizer, word merging, rate, force
tokens, device moves) are the real ones. Used by the tests and by bench/compression.py, which
also builds the `bert-base` shape: the real checkpoint's encoder size (not its vocabulary), so
its latency is the real model's latency.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path
from typing import Literal

Shape = Literal["tiny", "bert-base"]

# llmlingua picks its word-merging code from a substring of the model's name or path.
FOLDER_SUFFIX = "llmlingua-2-bert-base-multilingual-cased"
# hidden size, layers, heads, feed-forward size
_SHAPES: dict[str, tuple[int, int, int, int]] = {"tiny": (32, 2, 2, 64), "bert-base": (768, 12, 12, 3072)}

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Whole words keep common English from being split into single characters, as a real
# WordPiece vocabulary would.
_WORDS = """
the be to of and a in that have I it for not on with he as you do at this but his by from they we say her
she or an will my one all would there their what so up out if about who get which go me when make can like
time no just him know take people into year your good some could them see other than then now look only
come its over think also back after use two how our work first well way even new want because any these
give day most us is are was were has had been did does said trip book flight hotel week weekend plan help
need recommend favorite Thanks thanks Hi Hello yes Yes great love much more very really tell find
"""
# Beyond ASCII, so chat text is not mostly [UNK]: Latin-1 and Latin Extended-A letters,
# typographic quotes and dashes, the euro sign.
_EXTRA_CHARS = "".join(map(chr, [*range(0xA1, 0x180), *range(0x2010, 0x2028), 0x20AC]))


def vocabulary(extra_text: str = "") -> list[str]:
    """WordPiece vocabulary: specials, every character alone and as a `##` continuation, common words.

    Words that occur at least twice in `extra_text` join the vocabulary, so that text is split
    about as a real multilingual WordPiece vocabulary would split it.
    """
    chars = sorted(set(string.printable.strip()) | set(_EXTRA_CHARS) | {c for c in extra_text if not c.isspace()})
    frequent = [word for word, n in Counter(re.findall(r"[^\W_]{2,}", extra_text)).most_common() if n >= 2]
    return list(dict.fromkeys([*_SPECIALS, *chars, *(f"##{c}" for c in chars), *_WORDS.split(), *frequent]))


def build_tiny_llmlingua2(parent: Path, extra_text: str = "", seed: int = 0, shape: Shape = "tiny") -> Path:
    """Save a random BertForTokenClassification (2 labels) and its tokenizer under `parent`; returns the folder."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizer

    folder = parent / f"{shape}-{FOLDER_SUFFIX}"
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary(extra_text)) + "\n", encoding="utf-8")
    # Loading the folder (not the constructor, whose arguments changed in transformers 5)
    # builds the tokenizer from vocab.txt in every transformers version.
    tokenizer = BertTokenizer.from_pretrained(str(folder), do_lower_case=False)
    tokenizer.save_pretrained(folder)

    torch.manual_seed(seed)
    hidden, layers, heads, feed_forward = _SHAPES[shape]
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=feed_forward,
        # llmlingua pads every chunk to 512 tokens.
        max_position_embeddings=512,
        id2label={0: "drop", 1: "keep"},
        pad_token_id=0,
    )
    model = BertForTokenClassification(config)
    # Random init gives nearly equal logits; a wider classifier spreads the keep probabilities
    # so that rate-based thresholds have something to cut (the same logit spread at any width).
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, (32 / hidden) ** 0.5)
    model.save_pretrained(folder)
    return folder
