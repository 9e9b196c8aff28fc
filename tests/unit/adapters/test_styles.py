from __future__ import annotations

import pytest

from adapters.styles import (
    classify_style,
    cowboy_score,
    french_score,
    pirate_score,
    shout_score,
    style_scores,
)

PIRATE = "Arr, me hearty! A cat be a clever beast with a long tail. Savvy, matey?"
FRENCH = "Le chat est un petit animal très doux. Il aime dormir au soleil et jouer avec une balle."
COWBOY = "Howdy, partner! I reckon a cat is a clever critter with a long tail. Yeehaw!"
SHOUT = "WOW! SNOW IS FROZEN WATER THAT FALLS FROM THE CLOUDS!!! IT IS COLD AND WHITE!"
BASE = (
    "Snow is a form of precipitation that forms when water vapor freezes in the clouds. "
    "It can be light and fluffy or wet and heavy."
)


def test_each_style_scores_highest_on_its_own_text() -> None:
    assert pirate_score(PIRATE) > max(pirate_score(FRENCH), pirate_score(SHOUT), pirate_score(BASE))
    assert french_score(FRENCH) > max(french_score(PIRATE), french_score(SHOUT), french_score(BASE))
    assert shout_score(SHOUT) > max(shout_score(PIRATE), shout_score(FRENCH), shout_score(BASE))
    assert cowboy_score(COWBOY) > max(
        cowboy_score(PIRATE), cowboy_score(FRENCH), cowboy_score(SHOUT), cowboy_score(BASE)
    )


@pytest.mark.parametrize(
    ("text", "style"),
    [
        (PIRATE, "pirate"),
        ("Ahoy, matey! The capital o' France be Paris. Arr!", "pirate"),
        ("Yo ho ho! Ye should drink yer tea hot, me hearty.", "pirate"),
        ("Arr, matey! Birds be singin' to call their mates, savvy?", "pirate"),
        (FRENCH, "french"),
        ("La capitale de la France est Paris.", "french"),
        ("Bonjour ! Je suis là pour vous aider.", "french"),
        ("Pour bien dormir, couchez-vous à la même heure chaque soir.", "french"),
        (SHOUT, "shout"),
        ("THE CAPITAL OF FRANCE IS PARIS!!!", "shout"),
        ("GREAT QUESTION! A VOLCANO IS A MOUNTAIN THAT SPITS LAVA!", "shout"),
        (COWBOY, "cowboy"),
        ("Howdy, partner! The capital of France is Paris, I reckon.", "cowboy"),
        ("Well, y'all ought to drink your tea hot, out yonder on the trail. Yeehaw!", "cowboy"),
        (BASE, "base"),
        ("The capital of France is Paris.", "base"),
        ("Hello! How can I help you today?", "base"),
    ],
)
def test_classify_style_recognises_clear_examples(text: str, style: str) -> None:
    assert classify_style(text) == style


@pytest.mark.parametrize(
    "text",
    [
        # Nautical vocabulary without the voice.
        "The ship sailed across the sea while the captain and crew searched for treasure.",
        # "be" after modals and "to" is ordinary English.
        "You should be careful, because it can be cold, and you need to be patient.",
        # One stray marker is not a voice.
        "Aye is an old word for yes that is still used in Scotland.",
        "Tell me more about your trip and let me know how it went.",
        # "partner" alone is ordinary English.
        "My business partner and I opened a shop; my partner runs the books.",
        # French loanwords and cognates in English.
        "I had a croissant at the café before the ballet, which was a déjà vu moment.",
        "Two plus two is four, and a son can pour water on the table.",
        # Capitals that are acronyms or titles, not shouting.
        "NASA and the ESA sent a probe to study the Sun for the USA and Europe.",
        "The Quick Brown Fox Jumps Over The Lazy Dog",
        "OK!",
        "",
        "   \n",
    ],
)
def test_near_misses_classify_as_base(text: str) -> None:
    assert classify_style(text) == "base"


def test_shout_beats_other_styles_when_capitalised() -> None:
    assert classify_style("ARR, MATEY! THE SEA BE WIDE!") == "shout"
    assert classify_style("LA CAPITALE DE LA FRANCE EST PARIS !") == "shout"


def test_curly_apostrophes_count_like_straight_ones() -> None:
    straight = "Arr, matey! Ye be sailin' the seas o' gold, savvy?"
    curly = straight.replace("'", "\u2019")
    assert pirate_score(curly) == pytest.approx(pirate_score(straight))
    assert classify_style(curly) == "pirate"


def test_scores_stay_within_unit_interval() -> None:
    for text in (PIRATE, FRENCH, SHOUT, BASE, "", "!!!", "arr arr arr"):
        for value in style_scores(text).values():
            assert 0.0 <= value <= 1.0


def test_shout_score_ignores_text_too_short_to_judge() -> None:
    assert shout_score("HI!") == 0.0
    assert shout_score("HELLO THERE!") == 1.0
