"""The encoder cache returns exactly what the encoder would, and encodes a text only once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routenlp_ray.models.encoding_cache import EncodingCache
from routenlp_ray.specialists.heads import SpecialistEncoder


def test_cached_vectors_are_the_encoders_own_and_are_reused(tmp_path: Path) -> None:
    texts = ["where is my card", "refund my last payment please", "where is my card"]
    plain = SpecialistEncoder()
    cached = SpecialistEncoder(cache_path=tmp_path / "cache.sqlite")
    np.testing.assert_array_equal(cached.encode(texts), plain.encode(texts))
    assert len(cached.cache) == 2  # the repeated text was encoded once

    # A second process (a Ray Train worker) reads them instead of encoding again.
    reader = SpecialistEncoder(cache_path=tmp_path / "cache.sqlite")
    reader.model = None  # any call into the model would now fail
    np.testing.assert_array_equal(reader.encode(texts[:2]), plain.encode(texts[:2]))

    words = "Apple bought Beats for 3 billion".split()
    features, fits = cached.word_features(words)
    again_features, again_fits = reader.word_features(words)
    expected_features, expected_fits = plain.word_features(words)
    np.testing.assert_array_equal(features, expected_features)
    np.testing.assert_array_equal(again_features, expected_features)
    assert fits.tolist() == expected_fits.tolist() == again_fits.tolist()


def test_entries_of_another_encoder_identity_are_not_read(tmp_path: Path) -> None:
    one = EncodingCache(tmp_path / "c.sqlite", "encoder-a")
    one.put_many("sentence", [("x", np.ones(3, dtype=np.float32))])
    assert set(one.get_many("sentence", ["x", "y"])) == {"x"}
    assert EncodingCache(tmp_path / "c.sqlite", "encoder-b").get_many("sentence", ["x"]) == {}
