"""Text written for this project: a small STS set scored by hand (evaluation without the shared data), a seeded
generator of plain English sentences (training text of the quick start, calibration text of the precision plan) and
a seeded generator of scored sentence pairs held out from that training text (the quick start's held-out score).

The quick start has to train without downloads and without the shared data folder. Sixty-four fixed
sentences were too few for MNTP and SimCSE to improve on the causal baseline on real STS data, so this
module composes everyday scenes, news items and statements from word lists written here (no dataset
is copied): thousands of distinct sentences, the same for the same seed. None of them is one of the
built-in evaluation pairs (:func:`builtin_sts_pairs`).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

_PEOPLE = (
    "a man", "a woman", "a young boy", "a little girl", "an old man", "an elderly woman", "two children",
    "a group of friends", "a teenager", "a nurse", "a farmer", "a police officer", "a student", "a waiter",
    "a tourist", "a mechanic", "a teacher", "three workers", "a couple", "a doctor", "a firefighter",
    "a fisherman", "a photographer", "a cyclist", "two girls", "a crowd of people", "a chef", "a baby",
    "a soldier", "a shop assistant", "a musician", "a pilot",
)
_ANIMALS = (
    "a dog", "a black cat", "two puppies", "a brown horse", "a flock of sheep", "a small bird", "a cow",
    "a white rabbit", "a goat", "a pair of ducks", "a kitten", "a large dog", "a monkey", "a squirrel",
)
_ACTIONS = (
    ("is playing", ("the guitar", "the piano", "a violin", "football", "chess", "cards", "the drums", "tennis")),
    ("is cutting", ("an onion", "a loaf of bread", "some paper", "the grass", "a piece of wood", "a cake")),
    ("is reading", ("a newspaper", "a book", "a letter", "a map", "a menu", "the instructions")),
    ("is carrying", ("a box", "a heavy bag", "a ladder", "a tray of drinks", "a basket of apples", "a child")),
    ("is washing", ("a car", "the dishes", "a window", "a dog", "some vegetables", "the floor")),
    ("is eating", ("an apple", "a sandwich", "a bowl of soup", "some rice", "a slice of pizza", "an ice cream")),
    ("is painting", ("a wall", "a picture", "a fence", "a portrait", "the door", "a small boat")),
    ("is fixing", ("a bicycle", "the roof", "a broken chair", "a computer", "the sink", "a car engine")),
    ("is writing", ("a letter", "on a whiteboard", "in a notebook", "an email", "a report", "a list")),
    ("is throwing", ("a ball", "a frisbee", "a stone into the water", "a stick", "a snowball")),
    ("is holding", ("an umbrella", "a baby", "a cup of coffee", "a sign", "a bunch of flowers", "a phone")),
    ("is cooking", ("dinner", "some eggs", "a pot of pasta", "fish on a grill", "pancakes", "a stew")),
    ("is riding", ("a bicycle", "a horse", "a motorbike", "a skateboard", "a bus", "an elevator")),
    ("is pushing", ("a pram", "a shopping trolley", "a wheelbarrow", "a car", "a swing")),
)
_MOTIONS = (
    "is running", "is walking slowly", "is sleeping", "is jumping", "is swimming", "is dancing", "is sitting",
    "is waiting", "is climbing", "is laughing", "is standing still", "is resting", "is singing", "is crying",
)
_PLACES = (
    "in the kitchen", "on the beach", "in a park", "on a busy street", "in the garden", "at the station",
    "in a small room", "on a bridge", "in the snow", "near a river", "in front of a house", "on a stage",
    "in a classroom", "at the market", "in the rain", "on the grass", "in a forest", "at the airport",
    "by the lake", "in an office", "on a boat", "in the city centre", "at a wedding", "in a hospital",
    "on a mountain path", "outside a cafe", "in a supermarket", "on the roof",
)
_ORGS = (
    "The government", "The city council", "The central bank", "A large technology company", "The school board",
    "The football club", "The national railway", "The hospital", "The university", "Local police",
    "The energy regulator", "A car manufacturer", "The airline", "The museum", "The union", "The ministry",
)
_NEWS = (
    "announced plans to cut {n} jobs", "raised its prices by {p} percent", "opened a new office in {city}",
    "reported a loss of {n} million", "postponed the vote until {day}", "agreed to a new contract",
    "cancelled {n} flights because of the storm", "hired {n} new staff", "closed {n} branches",
    "launched an investigation into the accident", "approved a budget of {n} million", "apologised for the delay",
    "warned of higher costs next year", "won an award for its work", "reduced its emissions by {p} percent",
)
_CITIES = ("Paris", "Madrid", "Berlin", "Tokyo", "Cairo", "Lima", "Oslo", "Toronto", "Mumbai", "Sydney", "Nairobi")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "next week", "the end of the month", "March")
_EVENTS = (
    "{n} people were injured in a crash on the motorway", "heavy rain flooded {n} homes near {city}",
    "a fire destroyed a warehouse in {city}", "prices of food rose for the {ord} month in a row",
    "{n} students passed the final exam", "a new bridge opened to traffic in {city}",
    "the match was stopped after {n} minutes because of fog", "thousands of fans gathered in {city}",
    "the strike at the port entered its {ord} day", "{n} new cases of the illness were reported",
)
_ORDINALS = ("second", "third", "fourth", "fifth", "sixth")
_THINGS = (
    "the soup", "the train", "the old car", "this phone", "the new film", "the lecture", "the hotel room",
    "the coffee", "the river", "the meeting", "the road", "the exam", "the concert", "the bread", "the garden",
)
_QUALITIES = (
    "was too cold", "arrived late", "broke down again", "is very expensive", "was surprisingly good",
    "lasted three hours", "was full of tourists", "tastes bitter", "is quite deep here", "was cancelled",
    "is closed for repairs", "was easier than expected", "sold out in minutes", "is fresh every morning",
)
_REASONS = (
    "because of the weather", "after a long delay", "for the first time", "despite the crowds",
    "without any warning", "as everyone expected", "for reasons nobody explained", "on a quiet afternoon",
)


def _agree(subject: str, verb: str) -> str:
    """``verb`` ("is ...") for a plural subject ("two girls are ...")."""
    return verb.replace("is ", "are ", 1) if subject.startswith(("two ", "three ")) else verb


def _scene(rng: random.Random) -> str:
    place = rng.choice(_PLACES)
    roll = rng.random()
    if roll < 0.45:
        verb, objects = rng.choice(_ACTIONS)
        subject = rng.choice(_PEOPLE)
        sentence = f"{subject} {_agree(subject, verb)} {rng.choice(objects)} {place}"
    elif roll < 0.65:
        subject = rng.choice(_ANIMALS)
        sentence = f"{subject} {_agree(subject, rng.choice(_MOTIONS))} {place}"
    elif roll < 0.8:
        verb, objects = rng.choice(_ACTIONS)
        subject = rng.choice(_PEOPLE)
        there = "there are" if subject.startswith(("two ", "three ")) else "there is"
        sentence = f"{there} {subject} who {_agree(subject, verb)} {rng.choice(objects)} {place}"
    else:
        verb, objects = rng.choice(_ACTIONS)
        subject = rng.choice(_PEOPLE)
        negated = _agree(subject, verb.replace("is ", "is not ", 1))
        sentence = f"{subject} {negated} {rng.choice(objects)} {place}"
    return sentence[0].upper() + sentence[1:] + "."


def _fill(template: str, rng: random.Random) -> str:
    return template.format(n=rng.choice((2, 3, 5, 12, 40, 150, 300, 1200)), p=rng.choice((2, 5, 8, 10, 15, 20)),
                           city=rng.choice(_CITIES), day=rng.choice(_DAYS), ord=rng.choice(_ORDINALS))


def _news(rng: random.Random) -> str:
    if rng.random() < 0.55:
        return f"{rng.choice(_ORGS)} {_fill(rng.choice(_NEWS), rng)} on {rng.choice(_DAYS)}."
    event = _fill(rng.choice(_EVENTS), rng)
    return event[0].upper() + event[1:] + "."


def _statement(rng: random.Random) -> str:
    text = f"{rng.choice(_THINGS)} {rng.choice(_QUALITIES)}"
    if rng.random() < 0.5:
        text += f" {rng.choice(_REASONS)}"
    return text[0].upper() + text[1:] + "."


def builtin_training_text(count: int, seed: int = 0, exclude: Collection[str] = ()) -> list[str]:
    """``count`` distinct generated sentences (scenes, news items, statements), deterministic for ``seed``; none of
    them is in ``exclude`` (the quick start passes :func:`heldout_sentences`)."""
    rng = random.Random(seed)
    makers = (_scene, _scene, _scene, _news, _statement)
    excluded = set(exclude)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < count and attempts < count * 50:
        attempts += 1
        sentence = rng.choice(makers)(rng)
        if sentence not in excluded:
            seen.setdefault(sentence, None)
    return list(seen)


# --------------------------------------------------------------------------- held-out scored pairs
#
# A pair is two renderings of two scenes; its score (0-5, the SemEval scale) is 5 x the weight of the slots the two
# scenes share (who, doing what, to what, where), whatever the wording: "A man is cutting an onion in the kitchen."
# and "Inside the kitchen, a guy is slicing an onion." score 5, a changed place costs its weight. The fronted-place
# form and the other wordings (_SYNONYMS) are never produced by the training generator. A scene paired with a news
# item scores 0.

HELDOUT_PAIRS = 200  # how many pairs the quick start holds out of its training text
HELDOUT_SEED = 2029  # fixed: the held-out set is the same whatever seed a run trains with
_PERSON_WEIGHTS = {"subject": 0.25, "verb": 0.25, "object": 0.3, "place": 0.2}
_ANIMAL_WEIGHTS = {"subject": 0.45, "verb": 0.35, "place": 0.2}
_STATEMENT_WEIGHTS = {"subject": 0.45, "verb": 0.45, "place": 0.1}  # thing, quality, reason


# Other wordings of the word lists' phrases (none is in the training generator's lists): a held-out sentence says
# its scene in words the training text never uses half of the time, so that shared words alone do not give the score.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    # people and animals
    "a man": ("a guy", "a gentleman"), "a woman": ("a lady",), "a young boy": ("a little boy", "a small boy"),
    "a little girl": ("a young girl", "a small girl"), "an old man": ("an elderly man", "an aged man"),
    "an elderly woman": ("an old woman", "an old lady"), "two children": ("two kids",), "a teenager": ("a teen",),
    "a student": ("a pupil",), "a doctor": ("a physician",), "a cyclist": ("a bike rider",), "a chef": ("a cook",),
    "a baby": ("an infant",), "a police officer": ("a policeman", "a cop"), "a tourist": ("a traveller", "a visitor"),
    "a mechanic": ("a repairman",), "a shop assistant": ("a sales clerk",), "a musician": ("a performer",),
    "a fisherman": ("an angler",), "a photographer": ("a cameraman",), "a firefighter": ("a fireman",),
    "a dog": ("a hound",), "a black cat": ("a dark cat",), "two puppies": ("two young dogs",),
    "a small bird": ("a little bird",), "a large dog": ("a big dog",), "a kitten": ("a young cat",),
    "a white rabbit": ("a white bunny",), "a brown horse": ("a chestnut horse",),
    # doings
    "is cutting": ("is slicing", "is chopping"), "is reading": ("is studying",), "is carrying": ("is hauling", "is lugging"),
    "is washing": ("is cleaning", "is scrubbing"), "is eating": ("is having",), "is fixing": ("is repairing", "is mending"),
    "is throwing": ("is tossing",), "is cooking": ("is preparing", "is making"), "is pushing": ("is shoving",),
    "is holding": ("is clutching",), "is running": ("is sprinting", "is jogging"),
    "is walking slowly": ("is strolling", "is ambling"), "is sleeping": ("is napping", "is asleep"),
    "is jumping": ("is leaping",), "is sitting": ("is seated",), "is resting": ("is relaxing",), "is crying": ("is weeping",),
    "is standing still": ("is not moving",),
    # things
    "a newspaper": ("a paper",), "a heavy bag": ("a weighty bag",), "a box": ("a carton",), "a car": ("an automobile",),
    "the dishes": ("the plates",), "a bicycle": ("a bike",), "a computer": ("a PC",), "a phone": ("a mobile phone",),
    "the grass": ("the lawn",), "dinner": ("supper",), "a motorbike": ("a motorcycle",), "a pram": ("a baby carriage",),
    "a shopping trolley": ("a shopping cart",), "a broken chair": ("a damaged chair",), "a car engine": ("an engine",),
    # places
    "in the kitchen": ("inside the kitchen",), "on the beach": ("at the seaside",), "in a park": ("at a park",),
    "on a busy street": ("on a crowded street",), "in the garden": ("in the yard",), "at the station": ("at the train station",),
    "in a small room": ("in a tiny room",), "near a river": ("close to a river", "by a river"),
    "in front of a house": ("outside a house",), "on a stage": ("on stage",), "in a forest": ("in the woods",),
    "by the lake": ("next to the lake",), "on a boat": ("aboard a boat",), "in the city centre": ("downtown",),
    "on a mountain path": ("on a mountain trail",), "outside a cafe": ("in front of a cafe",),
    "in a supermarket": ("in a grocery store",), "at the market": ("at the bazaar",),
    # statements
    "the new film": ("the new movie",), "the lecture": ("the talk",), "the road": ("the street",), "the exam": ("the test",),
    "the old car": ("the aging car",), "arrived late": ("came late", "was late"), "broke down again": ("failed again",),
    "is very expensive": ("costs a lot", "is pricey"), "lasted three hours": ("went on for three hours",),
    "was cancelled": ("was called off",), "sold out in minutes": ("sold out very quickly",),
    "is closed for repairs": ("is shut for repairs",), "because of the weather": ("due to the weather",),
    "without any warning": ("with no warning",), "after a long delay": ("after a lengthy delay",),
}


def _reworded(rng: random.Random, scene: dict[str, str]) -> dict[str, str]:
    """``scene`` with each phrase in another wording, for half of its phrases that have one (the meaning stays)."""
    return {slot: rng.choice(_SYNONYMS[text]) if text in _SYNONYMS and rng.random() < 0.5 else text
            for slot, text in scene.items()}


def _other(rng: random.Random, choices: Sequence[str], current: str) -> str:
    return rng.choice([c for c in choices if c != current])


def _render_person(s: dict[str, str], form: int) -> str:
    subject, verb = s["subject"], _agree(s["subject"], s["verb"])
    if form == 0:
        text = f"{subject} {verb} {s['object']} {s['place']}"
    elif form == 1:
        there = "there are" if subject.startswith(("two ", "three ")) else "there is"
        text = f"{there} {subject} who {verb} {s['object']} {s['place']}"
    else:
        text = f"{s['place']}, {subject} {verb} {s['object']}"
    return text[0].upper() + text[1:] + "."


def _render_animal(s: dict[str, str], form: int) -> str:
    verb = _agree(s["subject"], s["verb"])
    text = f"{s['place']}, {s['subject']} {verb}" if form == 2 else f"{s['subject']} {verb} {s['place']}"
    return text[0].upper() + text[1:] + "."


def _render_statement(s: dict[str, str], form: int) -> str:
    text = f"{s['place']}, {s['subject']} {s['verb']}" if form == 2 else f"{s['subject']} {s['verb']} {s['place']}"
    return text[0].upper() + text[1:] + "."


def _scored_pair(rng: random.Random) -> tuple[str, str, float]:
    roll = rng.random()
    if roll < 0.1:  # unrelated kinds: a scene and a news item
        return _scene(rng), _news(rng), 0.0
    if roll < 0.65:
        verb, objects = rng.choice(_ACTIONS)
        a = {"subject": rng.choice(_PEOPLE), "verb": verb, "object": rng.choice(objects), "place": rng.choice(_PLACES)}
        weights, render = _PERSON_WEIGHTS, _render_person
    elif roll < 0.85:
        a = {"subject": rng.choice(_ANIMALS), "verb": rng.choice(_MOTIONS), "place": rng.choice(_PLACES)}
        weights, render = _ANIMAL_WEIGHTS, _render_animal
    else:
        a = {"subject": rng.choice(_THINGS), "verb": rng.choice(_QUALITIES), "place": rng.choice(_REASONS)}
        weights, render = _STATEMENT_WEIGHTS, _render_statement
    b = dict(a)
    changed = rng.sample(list(weights), rng.randrange(len(weights)))  # none: same meaning … all but one
    for slot in weights:
        if slot not in changed:
            continue
        if render is _render_person and slot == "verb":
            verb, objects = rng.choice([(v, o) for v, o in _ACTIONS if v != a["verb"]])
            b["verb"], b["object"] = verb, rng.choice(objects)
        elif render is _render_person and slot == "object":
            if b["verb"] == a["verb"]:
                b["object"] = _other(rng, dict(_ACTIONS)[a["verb"]], a["object"])
        else:
            pool = {"subject": {_render_person: _PEOPLE, _render_animal: _ANIMALS, _render_statement: _THINGS},
                    "verb": {_render_animal: _MOTIONS, _render_statement: _QUALITIES},
                    "place": {_render_person: _PLACES, _render_animal: _PLACES, _render_statement: _REASONS}}[slot][render]
            b[slot] = _other(rng, pool, a[slot])
    score = 5.0 * sum(w for slot, w in weights.items() if a[slot] == b[slot])
    forms = (0, 1, 2) if render is _render_person else (0, 2)  # animals and statements have two forms
    form_a, form_b = rng.sample(forms, 2)  # never the same sentence form twice
    return render(_reworded(rng, a), form_a), render(_reworded(rng, b), form_b), round(score, 2)


def builtin_heldout_pairs(count: int = HELDOUT_PAIRS, seed: int = HELDOUT_SEED) -> list[tuple[str, str, float]]:
    """``count`` scored pairs (0-5) generated from the training generator's word lists, deterministic for ``seed``;
    no two pairs alike. The quick start trains on text without any of their sentences (:func:`heldout_sentences`)."""
    rng = random.Random(seed)
    pairs: dict[tuple[str, str], float] = {}
    attempts = 0
    while len(pairs) < count and attempts < count * 50:
        attempts += 1
        first, second, score = _scored_pair(rng)
        pairs.setdefault((first, second), score)
    return [(a, b, s) for (a, b), s in pairs.items()]


def heldout_sentences(pairs: Sequence[tuple[str, str, float]] | None = None) -> set[str]:
    """Every sentence of the held-out pairs (default :func:`builtin_heldout_pairs`): text the quick start never trains on."""
    return {text for a, b, _ in (builtin_heldout_pairs() if pairs is None else pairs) for text in (a, b)}


def builtin_fragments(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct short lowercase phrases (1-6 words: "act of washing", "a loaf of bread", "in the rain"),
    the kind of text (queries, dictionary glosses, titles) on which low precision moves an embedding most."""
    rng = random.Random(seed)
    verbs = [verb for verb, _ in _ACTIONS]
    makers = (
        lambda: rng.choice(rng.choice(_ACTIONS)[1]),
        lambda: rng.choice(_PLACES),
        lambda: rng.choice(_QUALITIES),
        lambda: (lambda verb, objects: f"{verb.removeprefix('is ')} {rng.choice(objects)}")(*rng.choice(_ACTIONS)),
        lambda: f"act of {rng.choice(verbs).removeprefix('is ')}",
        lambda: rng.choice(_MOTIONS).removeprefix("is "),
        lambda: rng.choice(_THINGS).removeprefix("the "),
        lambda: f"{rng.choice(_PEOPLE)} {rng.choice(_PLACES)}",
    )
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < count and attempts < count * 50:
        attempts += 1
        seen.setdefault(rng.choice(makers)(), None)
    return list(seen)


# Hand-written for this project (not taken from any dataset). Scores follow the SemEval 0-5 scale:
# 5 same meaning, 4 nearly the same, 3 roughly the same with details differing, 2 same topic,
# 1 barely related, 0 unrelated.
_BUILTIN_STS: tuple[tuple[str, str, float], ...] = (
    ("The kettle on the stove began to whistle.", "The kettle started whistling on the stove.", 5.0),
    ("She locked the front door before leaving.", "Before she left, she locked the front door.", 5.0),
    ("The train to Leeds was cancelled this morning.", "This morning's train to Leeds was cancelled.", 5.0),
    ("My grandfather repairs old clocks in his garage.", "In his garage, my grandfather fixes antique clocks.", 4.8),
    ("The museum is closed on Mondays.", "On Mondays the museum does not open.", 4.8),
    ("He forgot his umbrella and got soaked.", "Having left his umbrella behind, he got drenched.", 4.6),
    ("The children built a sandcastle near the water.", "Near the sea, the kids made a castle out of sand.", 4.6),
    ("A cat is sleeping on the warm windowsill.", "A cat naps on the sunny window ledge.", 4.4),
    ("The bakery sells fresh bread every morning.", "Fresh loaves are sold at the bakery each morning.", 4.4),
    ("The committee approved the new budget on Friday.", "On Friday the new budget was approved by the committee.", 4.8),
    ("Two dogs are chasing a ball across the park.", "A pair of dogs runs after a ball in the park.", 4.4),
    ("The price of coffee rose sharply last year.", "Coffee became a lot more expensive last year.", 4.2),
    ("A woman is slicing onions in the kitchen.", "A woman is chopping vegetables in the kitchen.", 3.8),
    ("The team won the match in the final minute.", "The team scored late to win the game.", 3.8),
    ("He plays the violin in the city orchestra.", "He is a violinist who performs with an orchestra.", 3.6),
    ("The bridge will be closed for repairs next week.", "Repair work on the bridge starts next week.", 3.4),
    ("A man is riding a bicycle down a hill.", "A man is riding a motorbike down a hill.", 3.0),
    ("The company hired twenty new engineers.", "The company laid off twenty engineers.", 2.6),
    ("The river flooded several villages after the storm.", "Heavy rain caused damage in the region.", 2.8),
    ("She is reading a novel on the train.", "She is writing a novel at home.", 2.2),
    ("The restaurant serves vegetarian dishes.", "The restaurant has a new head chef.", 2.0),
    ("The students are preparing for their exams.", "The teacher marked the exam papers.", 2.0),
    ("A boy is feeding ducks at the pond.", "Ducks swim in the pond in the summer.", 2.2),
    ("The airport added three new routes to Spain.", "Flights to Spain are popular in August.", 1.8),
    ("He bought a new laptop for work.", "His office is on the fourth floor.", 1.2),
    ("The garden is full of tomatoes this year.", "Tomato soup is easy to make.", 1.4),
    ("The orchestra rehearsed for the concert.", "The concert hall has a red roof.", 1.2),
    ("A girl is painting a picture of a horse.", "Horses need a lot of space to run.", 1.0),
    ("The mayor opened the new library.", "Libraries lend books, films and music.", 1.4),
    ("The phone battery lasts two days.", "The mountain trail is steep and rocky.", 0.0),
    ("A chef is tasting the sauce.", "The satellite was launched from a remote island.", 0.0),
    ("The old man is feeding pigeons.", "Interest rates were left unchanged.", 0.0),
    ("My sister is learning to swim.", "The printer on the second floor is jammed.", 0.0),
    ("The parcel arrived two days late.", "Penguins live in the southern hemisphere.", 0.0),
    ("A musician is tuning his guitar.", "The glacier has retreated over the past century.", 0.2),
    ("The volcano erupted without warning.", "Nobody expected the volcano to erupt.", 4.0),
    ("The shop does not accept cash.", "The shop only takes card payments.", 4.2),
    ("The meeting has been moved to Thursday.", "The meeting was cancelled.", 2.4),
    ("A dog is barking at the postman.", "A dog is sleeping by the fire.", 1.8),
    ("The soup is too salty.", "The soup needs more salt.", 2.6),
)


def builtin_sts_pairs() -> list[tuple[str, str, float]]:
    """A small hand-written STS set (0-5 scores) so evaluation works without the shared data."""
    return list(_BUILTIN_STS)
