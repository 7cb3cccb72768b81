"""experiments/neighbour_entities.py: the share of gold mentions found in the neighbours' tweets."""
from __future__ import annotations

from types import SimpleNamespace

from experiments.neighbour_entities import contains, mention_recall, mentions, random_neighbours


def tweet(item_id, tokens, tags):
    return SimpleNamespace(item_id=item_id, tokens=tokens, tags=tags)


def test_mentions_are_found_as_whole_word_sequences_of_a_neighbour():
    query = tweet("q", ["Barack", "Obama", "in", "Paris"], ["B-PER", "I-PER", "O", "B-LOC"])
    assert mentions(query) == [("barack", "obama"), ("paris",)]
    assert contains(["meet", "barack", "obama"], ("barack", "obama"))
    assert not contains(["barack", "x", "obama"], ("barack", "obama"))
    words = {"a": ["barack", "obama", "speaks"], "b": ["parisian", "cafe"]}
    empty = tweet("e", ["hello"], ["O"])
    result = mention_recall([query, empty], [["a", "b"], ["a"]], words)
    assert result == {"mention_recall": 0.5, "query_hit_rate": 1.0, "mentions": 2}
    assert mention_recall([query], [["missing"]], words)["mention_recall"] == 0.0


def test_random_neighbours_never_pick_the_query_and_are_seeded():
    queries = [tweet(str(i), ["w"], ["O"]) for i in range(5)]
    pool = [str(i) for i in range(5)]
    first = random_neighbours(queries, pool, 3, seed=1)
    assert first == random_neighbours(queries, pool, 3, seed=1)
    assert all(len(n) == 3 and q.item_id not in n for q, n in zip(queries, first))
