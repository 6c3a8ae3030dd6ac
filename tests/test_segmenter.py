"""Topic segmentation with the real MiniLM encoder's attention and embeddings."""

from __future__ import annotations

import pytest

from lightmem_mcp.compressor import Compressor
from lightmem_mcp.config import CompressionSettings, PipelineSettings
from lightmem_mcp.embedder import SentenceTransformerEmbedder
from lightmem_mcp.segmenter import SegmentationEncoders, TopicSegmenter, attention_minima, fine_boundaries

CAT = [
    "I adopted a cat named Luna last week.",
    "She likes to sleep on my keyboard.",
    "Luna also hates the vacuum cleaner.",
    "Do you know a good vet for cats?",
]
TRIP = [
    "Anyway, I need help planning my trip to Japan.",
    "I want to visit Kyoto and Osaka in April.",
    "What's the best rail pass for that?",
]
CODE = [
    "Also, my Python script keeps crashing with a KeyError.",
    "It happens when I parse the JSON config file.",
    "How do I debug this?",
]


@pytest.fixture(scope="module")
def segmenter(embedder: SentenceTransformerEmbedder) -> TopicSegmenter:
    no_compressor = Compressor(CompressionSettings(enabled=False))
    return TopicSegmenter(PipelineSettings(), SegmentationEncoders(no_compressor, embedder).get)


def topics_of(segments: list[list[int]], labels: list[str]) -> list[set[str]]:
    return [{labels[i] for i in segment} for segment in segments]


def test_segments_never_mix_topics_and_split_where_topics_change(
    segmenter: TopicSegmenter, embedder: SentenceTransformerEmbedder
) -> None:
    texts = CAT + TRIP + CODE
    labels = ["cat"] * len(CAT) + ["trip"] * len(TRIP) + ["code"] * len(CODE)

    segments = segmenter.segment(texts, embedder.embed_documents(texts))

    assert [i for segment in segments for i in segment] == list(range(len(texts)))
    assert all(len(topics) == 1 for topics in topics_of(segments, labels))
    assert len(segments) <= 5  # close to the three real topics, not one segment per message


def test_any_speakers_and_tiny_inputs_work(segmenter: TopicSegmenter, embedder: SentenceTransformerEmbedder) -> None:
    # Several people, no user/assistant alternation: segmentation only sees texts.
    group_chat = ["Ann: the build is red again", "Ben: flaky test in payments", "Cem: lunch at noon?"]

    assert segmenter.segment([], []) == []
    assert segmenter.segment(CAT[:1], embedder.embed_documents(CAT[:1])) == [[0]]
    segments = segmenter.segment(group_chat, embedder.embed_documents(group_chat))
    assert [i for segment in segments for i in segment] == [0, 1, 2]


def test_coarse_cuts_are_local_minima_of_attention_to_the_previous_message() -> None:
    assert attention_minima([1.0, 1.0, 0.6, 0.2, 0.7, 0.8, 0.3]) == [3, 6]


def test_fine_cuts_need_a_coarse_cut_nearby_and_the_threshold_rises_until_one_appears() -> None:
    settings = PipelineSettings(boundary_window=1)
    similarity = [0.9, 0.45, 0.8, 0.8, 0.3, 0.9]  # pair i compares messages i and i + 1

    # 0.3 (before message 5) is far from the coarse cut at 2; 0.45 (before message 2) is next to
    # it, found once the threshold has risen past 0.45.
    assert fine_boundaries(similarity, [2], settings) == [2]
    assert fine_boundaries(similarity, [5], settings) == [5]
    assert fine_boundaries(similarity, [], settings) == []
