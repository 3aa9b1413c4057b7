"""CRC-32C as RocksDB records it: unmasked, extendable, hashing buffers in place.

google-crc32c (Google's implementation) is the independent reference here."""
from __future__ import annotations

import array

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rbackup.format.checksum import crc32c, crc32c_combine, crc32c_hex


def test_check_value() -> None:
    assert crc32c(b"123456789") == 3808858755 == 0xE3069283


def test_empty_and_seed() -> None:
    assert crc32c(b"") == 0
    assert crc32c(b"", 12345) == 12345
    assert crc32c(memoryview(b"")) == 0


def test_current_file_matches_ldb() -> None:
    # spec §4: ldb 7.8.3 recorded this crc for CURRENT "MANIFEST-000027\n"
    assert crc32c(b"MANIFEST-000027\n") == 4132812863


def test_extend_semantics() -> None:
    data = bytes(range(256)) * 40
    crc = 0
    for i in range(0, len(data), 777):
        crc = crc32c(data[i : i + 777], crc)
    assert crc == crc32c(data)


def test_buffer_types_agree() -> None:
    data = bytes(range(256)) * 17
    want = crc32c(data[100:3000])
    assert crc32c(memoryview(data)[100:3000]) == want
    assert crc32c(bytearray(data)[100:3000]) == want
    assert crc32c(memoryview(bytearray(data))[100:3000]) == want
    ints = array.array("I", range(50))
    assert crc32c(ints) == crc32c(ints.tobytes())
    # a non-contiguous view has no single pointer: hashed via a copy, same value
    assert crc32c(memoryview(data)[::3]) == crc32c(data[::3])


def test_rejects_text() -> None:
    with pytest.raises(TypeError):
        crc32c("123456789")  # type: ignore[arg-type]


def test_hex_form() -> None:
    assert crc32c_hex(0xE3069283) == "E3069283"
    assert crc32c_hex(5) == "00000005"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 2000), st.integers(0, 2000), st.integers(0, 0xFFFFFFFF))
def test_views_match_google_crc32c(data: bytes, a: int, b: int, seed: int) -> None:
    expected = google_crc32c.extend(seed, data[a:b])
    assert crc32c(data[a:b], seed) == expected
    assert crc32c(memoryview(data)[a:b], seed) == expected
    assert crc32c(bytearray(data)[a:b], seed) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_combine_is_the_crc_of_the_concatenation(a: bytes, b: bytes) -> None:
    assert crc32c_combine(crc32c(a), crc32c(b), len(b)) == google_crc32c.value(a + b)


def test_combine_past_512_mib() -> None:
    """A second part longer than 2^32 bits needs x^(2^n) for n >= 32, which for CRC-32C's polynomial
    (unlike CRC-32's) is not x^(2^(n mod 32)): the table must not wrap."""
    zeros = bytes(16 << 20)
    head, tail = b"rbackup", 0
    whole = crc32c(head)
    for _ in range(64):  # 1 GiB of zeros
        whole, tail = crc32c(zeros, whole), crc32c(zeros, tail)
    assert crc32c_combine(crc32c(head), tail, 64 * len(zeros)) == whole
