"""Property-based fuzzing of the file readers (Hypothesis), a few seconds of the longer run in benchmarks.fuzz.

Mutants of small real files: truncation at every offset, bit flips, header fields forged with the CRC
recomputed, random payloads and latents. Properties: only the documented error types (``InvalidFile`` and its
subclasses), bounded time per case, nothing decoded above the pixel limit, and never a decode of a file whose
CRC fails. Examples are derandomized, so the suite is reproducible; ``python -m benchmarks.fuzz`` explores more.
"""

import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import vaecodec
from benchmarks.fuzz import crc_holds, decode_latents, decode_vae, forge_vae, seed_files, vae_fields, with_crc
from vaecodec import container
from vaecodec.errors import InvalidFile

MAX_PIXELS = 128 * 128  # small: every case stays quick, and a decode above it would be a failure
CASE_SECONDS = 5.0
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def seeds():
    torch.set_num_threads(1)
    codec = vaecodec.load("default", device="cpu")
    vae, latents, _ = seed_files(codec)
    return codec, vae, latents


def decoded_in_time(codec, data: bytes, decode=decode_vae) -> str:
    started = time.monotonic()
    outcome = decode(codec, data, MAX_PIXELS)  # raises on an undocumented outcome
    assert time.monotonic() - started < CASE_SECONDS
    return outcome


def test_every_truncation_of_a_small_file_is_invalid(seeds):
    codec, vae, _ = seeds
    data = min(vae, key=len)
    for cut in range(len(data)):
        with pytest.raises(InvalidFile):
            codec.decompress(data[:cut], max_pixels=MAX_PIXELS)


@FUZZ
@given(data=st.data())
def test_bit_flips_are_never_decoded(seeds, data):
    codec, vae, _ = seeds
    original = data.draw(st.sampled_from(vae))
    positions = data.draw(st.lists(st.integers(0, 8 * len(original) - 1), min_size=1, max_size=3, unique=True))
    flipped = bytearray(original)
    for position in positions:
        flipped[position // 8] ^= 1 << (position % 8)
    # CRC-32 has Hamming distance 4 on messages up to 91607 bits: every 1 to 3 flipped bits are caught
    assert 8 * len(original) <= 91607 and not crc_holds(bytes(flipped))
    assert decoded_in_time(codec, bytes(flipped)) != "decoded"


def varints():
    """Numbers as the format writes them, and the encodings it must refuse: padded, overlong, cut."""
    return st.one_of(
        st.integers(0, 2**35 - 1).map(container.write_varint),
        st.tuples(st.integers(0, 127), st.integers(1, 4)).map(lambda v: bytes([v[0] | 0x80] * v[1] + [0])),
        st.binary(min_size=1, max_size=7))


@FUZZ
@given(data=st.data())
def test_forged_header_fields_end_in_documented_errors(seeds, data):
    codec, vae, _ = seeds
    fields = vae_fields(data.draw(st.sampled_from(vae)))
    field = data.draw(st.sampled_from(["version", "name", "hash", "quality", "mode", "width", "height", "length"]))
    fields[field] = data.draw({
        "version": st.integers(0, 255), "quality": st.integers(0, 255), "mode": st.integers(0, 255),
        "name": st.binary(max_size=255), "hash": st.binary(min_size=4, max_size=4),
        "width": varints(), "height": varints(), "length": varints()}[field])
    decoded_in_time(codec, forge_vae(fields))


@FUZZ
@given(data=st.data())
def test_random_payloads_with_a_valid_crc_never_crash(seeds, data):
    codec, vae, _ = seeds
    fields = vae_fields(data.draw(st.sampled_from(vae)))
    fields["payload"] = data.draw(st.one_of(
        st.binary(max_size=2 * len(fields["payload"]) + 8),
        st.integers(0, len(fields["payload"])).map(lambda cut: fields["payload"][:cut]),
        st.binary(min_size=4, max_size=12).map(lambda extra: fields["payload"] + extra)))
    fields["length"] = container.write_varint(len(fields["payload"]))
    side = data.draw(st.sampled_from([None, 1024, 8192]))  # the decompression bomb: a big image, a small payload
    if side:
        fields["width"] = fields["height"] = container.write_varint(side)
    decoded_in_time(codec, forge_vae(fields))


@FUZZ
@given(data=st.data())
def test_mutated_latents_end_in_documented_errors(seeds, data):
    codec, _, latents = seeds
    raw = bytearray(data.draw(st.sampled_from(latents)))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at:at + 4] = data.draw(st.binary(min_size=1, max_size=4))
    mutant = with_crc(bytes(raw[:-4])) if data.draw(st.booleans()) else bytes(raw)
    decoded_in_time(codec, mutant, decode_latents)
