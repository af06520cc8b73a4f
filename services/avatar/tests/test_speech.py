# ruff: noqa: RUF001  (IPA phonemes look like Latin letters on purpose)
"""Speech from the real espeak-ng (Debian package espeak-ng): a WAV the `wave` module reads, whose
length matches duration_ms, and visemes that cover it in order with the mouth shapes its words need."""

from __future__ import annotations

import io
import itertools
import wave

import pytest

from services.avatar import speech
from services.avatar.narration import Personality

async_test = pytest.mark.asyncio(loop_scope="session")


def _check(said: speech.Speech) -> None:
    with wave.open(io.BytesIO(said.wav)) as audio:
        assert (audio.getnchannels(), audio.getsampwidth(), audio.getframerate()) == (1, 2, said.sample_rate)
        frames = audio.getnframes()
    assert frames > 0 and abs(frames * 1000 / said.sample_rate - said.duration_ms) <= 1
    shapes = said.visemes
    assert shapes[0].start_ms == 0 and shapes[-1].end_ms == said.duration_ms
    for before, after in itertools.pairwise(shapes):
        assert before.end_ms == after.start_ms and before.viseme != after.viseme  # contiguous, merged
    assert all(v.start_ms < v.end_ms <= said.duration_ms for v in shapes)
    starts = [p.start_ms for p in said.phonemes]
    assert starts == sorted(starts) and all(0 <= s <= said.duration_ms for s in starts)


def _shapes(said: speech.Speech) -> list[str]:
    return [v.viseme for v in said.visemes]


@async_test
async def test_bob_opens_and_closes_the_lips() -> None:
    said = await speech.speak("bob", Personality.ANALYST)
    _check(said)
    assert _shapes(said) == ["rest", "MBP", "AI", "MBP", "rest"]
    assert said.sample_rate == 22050 and 200 < said.duration_ms < 1000
    assert [p.phoneme for p in said.phonemes][:3] == ["b", "ɑː", "b"]


@pytest.mark.parametrize(("text", "shape"), [
    ("five", "FV"), ("we", "WQ"), ("hello", "L"), ("see", "E"), ("boot", "U"), ("go", "O"), ("tie", "AI"),
])
@async_test
async def test_words_get_their_mouth_shapes(text: str, shape: str) -> None:
    said = await speech.speak(text, Personality.ANALYST)
    _check(said)
    assert shape in _shapes(said), (text, _shapes(said), [p.phoneme for p in said.phonemes])


@async_test
async def test_a_narration_is_spoken_whole_and_each_personality_has_its_voice() -> None:
    text = "Found malware Emotet in evidence ev-9a2b. cdn-updates.example.net indicates PaleMoth."
    said = {p: await speech.speak(text, p) for p in Personality}
    for one in said.values():
        _check(one)
        assert len(one.visemes) > 20 and one.duration_ms > 3000
    durations = {p: s.duration_ms for p, s in said.items()}
    # the mentor speaks slowest and the red-teamer fastest (VOICES' rates), in different voices
    assert durations[Personality.MENTOR] > durations[Personality.ANALYST] > durations[Personality.RED_TEAMER]
    assert len({s.wav for s in said.values()}) == 3


@async_test
async def test_the_longest_text_and_odd_characters() -> None:
    said = await speech.speak("Indicator 203.0.113.9\x00 seen\tin  ev-1. " * 10 + "x" * 10, Personality.RED_TEAMER)
    _check(said)
    assert said.duration_ms > 10_000 and len(said.wav) < 2 * 1024 * 1024
    assert speech.speakable("a\x00b\n\nc \u200b d") == "a b c d"


def test_visemes_from_phonemes() -> None:
    phonemes = [speech.Phoneme("m", 10), speech.Phoneme("b", 40), speech.Phoneme("aɪ", 40),
                speech.Phoneme("_", 300), speech.Phoneme("_", 900)]
    assert speech.visemes_for(phonemes, 800) == [
        speech.Viseme("rest", 0, 10), speech.Viseme("MBP", 10, 40), speech.Viseme("AI", 40, 300),
        speech.Viseme("rest", 300, 800)]
    assert speech.visemes_for([], 120) == [speech.Viseme("rest", 0, 120)]
    assert [speech.viseme_of(p) for p in ("ˈoʊ", "uː", "ð", "ɹ", "")] == ["O", "U", "etc", "etc", "rest"]


def test_espeak_is_there() -> None:
    """`make setup` installs Debian's espeak-ng; without it Speak answers UNAVAILABLE with this cause."""
    assert speech.problem() == "", speech.problem()
