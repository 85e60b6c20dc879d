"""Snowflake ids: time-ordered, unique, and exactly ordered as Redis members."""

from __future__ import annotations

import random

import pytest

from domain.ids import (
    EPOCH_MS,
    ID_WIDTH,
    MAX_ID,
    IdGenerator,
    encode_member,
    id_timestamp_ms,
    parse_id,
    smallest_id_at,
)

NOW = EPOCH_MS + 330 * 86_400_000


def test_ids_increase_and_never_repeat() -> None:
    generator = IdGenerator(7)
    ids = [generator.next_id() for _ in range(20_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(0 < i <= MAX_ID for i in ids)


def test_an_id_carries_its_millisecond_and_worker() -> None:
    generator = IdGenerator(513, clock_ms=lambda: NOW)
    snowflake = generator.next_id()
    assert id_timestamp_ms(snowflake) == NOW
    assert (snowflake >> 12) & 0x3FF == 513
    assert smallest_id_at(NOW) <= snowflake < smallest_id_at(NOW + 1)


def test_a_clock_stepping_back_still_gives_increasing_ids() -> None:
    times = iter([NOW, NOW, NOW - 5_000, NOW - 4_000, NOW + 1])
    generator = IdGenerator(1, clock_ms=lambda: next(times))
    ids = [generator.next_id() for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_more_than_4096_ids_in_one_millisecond_move_on_to_the_next() -> None:
    calls = 0

    def clock() -> int:
        nonlocal calls
        calls += 1
        return NOW + (1 if calls > 4096 else 0)

    generator = IdGenerator(0, clock_ms=clock)
    ids = [generator.next_id() for _ in range(4098)]
    assert len(set(ids)) == 4098 and ids == sorted(ids)
    assert id_timestamp_ms(ids[4095]) == NOW
    assert id_timestamp_ms(ids[4096]) == NOW + 1


@pytest.mark.parametrize("worker", [-1, 1024])
def test_worker_ids_outside_10_bits_are_refused(worker: int) -> None:
    with pytest.raises(ValueError):
        IdGenerator(worker)


def test_members_are_fixed_width_so_byte_order_is_numeric_order_beyond_2_to_the_53() -> None:
    rng = random.Random(1)
    base = 2**62
    ids = [base + rng.randrange(1_000) for _ in range(500)] + [1, 2**53, 2**53 + 1, MAX_ID]
    members = [encode_member(i) for i in ids]
    assert all(len(m) == ID_WIDTH for m in members)
    assert sorted(members) == [encode_member(i) for i in sorted(ids)]
    # The trap the members avoid: as doubles these collapse.
    assert float(2**62 + 1) == float(2**62)
    assert encode_member(0) == "0" * 19 < encode_member(1)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "-1",
        "+5",
        "abc",
        "1.5",
        " 1",
        "1" * 20,
        str(MAX_ID + 1),
        "\u0661\u0662\u0663",
        "\uff11\uff12",
    ],
)
def test_parse_id_refuses_what_is_not_one_of_our_ids(text: str) -> None:
    assert parse_id(text) is None


@pytest.mark.parametrize("value", [1, 2**53 + 1, MAX_ID])
def test_parse_id_reads_back_what_the_api_writes(value: int) -> None:
    assert parse_id(str(value)) == value
