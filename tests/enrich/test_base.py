"""The steps' shared helpers: the per-thread memo of dictionary encodings, the byte search."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from clicklake.enrich import base
from clicklake.enrich.base import ENCODINGS_KEPT, contains_literal, encode, unique_map


def _plain(values: pa.Array) -> tuple[list[object], list[object]]:
    """What ``pc.dictionary_encode`` says: the distinct values and each row's value."""
    encoded = pc.dictionary_encode(values)
    return encoded.dictionary.to_pylist(), pc.take(encoded.dictionary, encoded.indices).to_pylist()


def _as_plain(values: pa.Array) -> tuple[list[object], list[object]]:
    encoded = encode(values)
    return encoded.dictionary.to_pylist(), pc.take(encoded.dictionary, encoded.indices).to_pylist()


def test_the_same_column_is_encoded_once_and_read_back_by_every_step() -> None:
    column = pa.array(["a", None, "b", "a"], pa.large_string())
    first = encode(column)
    batch = pa.RecordBatch.from_arrays([column], names=["c"])
    # Another wrapper around the same buffers (what batch.column() returns each time).
    assert encode(batch.column("c")) is first
    assert first.values() == ["a", "b"]
    assert first.indices.to_pylist() == [0, None, 1, 0]


def test_equal_values_in_other_buffers_and_slices_get_their_own_encoding() -> None:
    column = pa.array(["x", "y", "x", "z"], pa.large_string())
    copy = pa.array(["x", "y", "x", "z"], pa.large_string())
    assert encode(copy) is not encode(column)
    for piece in (column.slice(1), column.slice(1, 2), column.slice(0, 3)):
        assert _as_plain(piece) == _plain(piece)


def test_eviction_keeps_the_memo_bounded_and_the_answers_right() -> None:
    columns = [pa.array([f"v{i}", f"w{i}", f"v{i}"], pa.large_string()) for i in range(3 * ENCODINGS_KEPT)]
    for column in columns:
        assert _as_plain(column) == _plain(column)
    assert len(base._local.encodings) == ENCODINGS_KEPT
    # The first ones were forgotten: encoded again, with the same answers.
    for column in columns:
        assert _as_plain(column) == _plain(column)
    assert len(base._local.encodings) == ENCODINGS_KEPT


def test_an_encoding_not_kept_does_not_push_out_a_shared_one() -> None:
    shared = pa.array(["s", "t"], pa.large_string())
    kept = encode(shared)
    for i in range(2 * ENCODINGS_KEPT):
        encode(pa.array([str(i)], pa.large_string()), keep=False)
    assert encode(shared) is kept


def test_each_thread_has_its_own_memo() -> None:
    column = pa.array(["a", "b"], pa.large_string())
    mine = encode(column)
    theirs: list[base.Encoded] = []
    worker = threading.Thread(target=lambda: theirs.append(encode(column)))
    worker.start()
    worker.join()
    assert theirs[0] is not mine and _as_plain(column) == _plain(column)


def test_unique_map_spreads_results_and_nulls() -> None:
    column = pa.array(["ab", None, "c", "ab"], pa.large_string())
    lengths, upper = unique_map(column, lambda v: (len(v), v.upper()), (pa.int32(), pa.large_string()))
    assert lengths.to_pylist() == [2, None, 1, 2]
    assert upper.to_pylist() == ["AB", None, "C", "AB"]
    empty = unique_map(pa.nulls(3, pa.large_string()), lambda v: (v,), (pa.large_string(),))
    assert empty[0].to_pylist() == [None, None, None]


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_contains_literal_agrees_with_match_substring(kind: pa.DataType) -> None:
    rng = np.random.default_rng(3)
    alphabet = list('ab"c{}é')
    values = [
        None if rng.random() < 0.1 else "".join(rng.choice(alphabet, size=rng.integers(0, 12)))
        for _ in range(400)
    ]
    column = pa.array(values, kind)
    for literal in ('"a', "aa", "b", '"c"', "é", "aba"):
        for piece in (column, column.slice(7), column.slice(13, 50), column.slice(400)):
            expected = pc.match_substring(piece, literal).fill_null(False).to_numpy(zero_copy_only=False)
            assert contains_literal(piece, literal).tolist() == expected.tolist(), (literal, piece.offset)


def test_contains_literal_does_not_match_across_two_values() -> None:
    column = pa.array(['xx"cam', 'paign"', '"campaign"', None, 'a"campaign"'], pa.large_string())
    assert contains_literal(column, '"campaign"').tolist() == [False, False, True, False, True]


def test_the_chain_forgets_a_batch_s_encodings_once_it_is_through() -> None:
    from clicklake.enrich.base import Step
    from clicklake.enrich.chain import run_chain

    batch = pa.RecordBatch.from_arrays([pa.array(["a", "b", "a"], pa.large_string())], names=["c"])
    seen: list[base.Encoded] = []

    def reads_c(b: pa.RecordBatch) -> pa.RecordBatch:
        seen.append(encode(b.column("c")))
        return b

    out, failures = run_chain([Step("one", reads_c), Step("two", reads_c)], batch)
    assert not failures and out.num_rows == 3
    assert seen[0] is seen[1]  # the second step reused the first one's encoding
    assert not base._local.encodings


def test_an_all_null_result_is_spread_without_a_take() -> None:
    column = pa.array(["a", None, "b"], pa.large_string())
    (out,) = unique_map(column, lambda v: (None,), (pa.large_string(),))
    assert out.type == pa.large_string() and out.to_pylist() == [None, None, None]
